import { checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import type { Balancer, Pickable, Picker, PickerContext } from './balancer.ts';
import { otherIndex, randomIndex } from './draw.ts';

/** Options of {@link peakEwma}. */
export interface PeakEwmaOptions {
  /** Time constant of the members' latency EWMA, in ms: how long a slow answer is remembered. */
  decayMs?: number;
  /** The latency assumed for a member that has not answered yet, in ms. */
  defaultLatencyMs?: number;
}

// Linkerd's proxy uses the same pair (EWMA_DEFAULT_RTT 30 ms, EWMA_DECAY 10 s). A default above
// a typical in-cluster call only delays a new pod's first call until its peers have a few in
// flight; one below it lets a cold pod take a pile of calls before its first (slow) answer.
const DEFAULT_DECAY_MS = 10_000;
const DEFAULT_LATENCY_MS = 30;
const OPTIONS = optionNames<PeakEwmaOptions>({ decayMs: true, defaultLatencyMs: true });

/** Power of two choices over latency EWMA × (in flight + 1), as Linkerd and Finagle balance. */
export function peakEwma(options: PeakEwmaOptions = {}): Balancer {
  checkOptions(options, OPTIONS);
  const { decayMs = DEFAULT_DECAY_MS, defaultLatencyMs = DEFAULT_LATENCY_MS } = options;
  checkNumber('decayMs', decayMs, { min: 1 });
  checkNumber('defaultLatencyMs', defaultLatencyMs);
  // 0 would make a member with no answer yet free, however many calls it holds.
  if (defaultLatencyMs === 0) invalidOption('defaultLatencyMs', 'a number > 0', defaultLatencyMs);
  return Object.freeze({
    name: 'peak-ewma',
    latencyDecayMs: decayMs,
    picker<M extends Pickable>(members: readonly M[], context: PickerContext): Picker<M> {
      return new PeakEwmaPicker(members, defaultLatencyMs, context);
    },
  });
}

class PeakEwmaPicker<M extends Pickable> implements Picker<M> {
  readonly #members: readonly M[];
  readonly #defaultLatencyMs: number;
  readonly #clock: () => number;
  readonly #random: () => number;

  constructor(members: readonly M[], defaultLatencyMs: number, context: PickerContext) {
    this.#members = members;
    this.#defaultLatencyMs = defaultLatencyMs;
    this.#clock = context.clock;
    this.#random = context.random;
  }

  pick(): M | undefined {
    const members = this.#members;
    const n = members.length;
    if (n <= 1) return members[0];
    const i = randomIndex(this.#random, n);
    const a = members[i];
    const b = members[otherIndex(this.#random, n, i)];
    const now = this.#clock();
    return this.#cost(b, now) < this.#cost(a, now) ? b : a;
  }

  #cost(member: M, now: number): number {
    const latency = member.samples === 0 ? this.#defaultLatencyMs : member.latencyMs(now);
    return latency * (member.inFlight + 1);
  }
}
