/**
 * Hedging (Dean and Barroso, "The Tail at Scale"): a call still unanswered after a delay is sent
 * to a second pod too; the first answer wins and the other attempt is cancelled. The delay is
 * fixed, or a percentile of the pool's recent latencies; then, as Finagle's backup requests,
 * hedges are also capped at `100 - percentile` % of the calls made plus one a second (a budget of their own), so
 * a percentile says both when to hedge and how much extra load it may cost. Each hedge also
 * takes one from the retry budget.
 */
import { checkDelay, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';

/** Options of the pool's `hedge`, and of `use(fn, { hedge })`: exactly one of the two. */
export interface HedgeOptions {
  /** Send the hedge after this long. */
  delayMs?: number;
  /**
   * Send the hedge once the call has taken longer than this percentile (50–99.9) of the pool's
   * answered calls over the last 5–10 s (a call made before 20 have answered is hedged once they
   * have, if it is still running past that percentile), and to at most
   * `100 - percentile` % of calls, plus one a second: `95` costs at most 5 % extra calls.
   */
  percentile?: number;
}

/** The checked hedging policy: a fixed delay, or a percentile. */
export interface HedgePolicy {
  readonly delayMs: number | undefined;
  readonly percentile: number | undefined;
}

const HEDGE_OPTIONS = optionNames<HedgeOptions>({ delayMs: true, percentile: true });

/** Checks `hedge` options, naming any bad one; `false` or `undefined`: no hedging. */
export function hedgePolicy(options: HedgeOptions | false | undefined, name = 'hedge'): HedgePolicy | undefined {
  if (options === undefined || options === false) return undefined;
  checkOptions(options, HEDGE_OPTIONS, name);
  const { delayMs, percentile } = options;
  if ((delayMs === undefined) === (percentile === undefined)) {
    invalidOption(name, 'an object with exactly one of delayMs and percentile', options);
  }
  if (delayMs !== undefined) checkDelay(`${name}.delayMs`, delayMs, 0);
  if (percentile !== undefined) {
    checkNumber(`${name}.percentile`, percentile, { min: 50 });
    if (percentile > 99.9) invalidOption(`${name}.percentile`, 'a number from 50 to 99.9', percentile);
  }
  return Object.freeze({ delayMs, percentile });
}

/** Buckets per doubling of latency: 8 gives percentiles within about 9 %. */
const SUB_BUCKETS = 8;
/** From 1/64 ms (about 16 µs) up: 30 doublings reach 4.6 hours. */
const MIN_MS = 1 / 64;
const BUCKETS = 30 * SUB_BUCKETS;
const WINDOW_MS = 5_000;
/** A percentile is recomputed at most this often: reading it is then a field, not a scan. */
const REFRESH_MS = 100;
const MIN_SAMPLES = 20;

/**
 * Latencies of the pool's answered calls over the last 5–10 s, in log-spaced buckets (two
 * windows of 5 s, the older dropped as a new one starts): recording is an increment, and a
 * percentile is a scan of 240 counts at most every 100 ms.
 */
export class LatencyWindow {
  readonly #clock: () => number;
  #current = new Uint32Array(BUCKETS);
  #previous = new Uint32Array(BUCKETS);
  #currentSamples = 0;
  #previousSamples = 0;
  #windowStart: number;
  /** The last percentile computed, for which percentile, and when. */
  #cachedFor = NaN;
  #cached: number | undefined = undefined;
  #cachedAt = -Infinity;
  /** Calls that started before the window knew enough, waiting to learn their hedge's delay. */
  readonly #waiting = new Set<() => void>();

  constructor(clock: () => number) {
    this.#clock = clock;
    this.#windowStart = clock();
  }

  record(latencyMs: number, now: number): void {
    if (now - this.#windowStart >= WINDOW_MS) this.#rotate(now);
    this.#current[bucketOf(latencyMs)]!++;
    this.#currentSamples++;
    if (this.#waiting.size > 0 && this.#currentSamples + this.#previousSamples >= MIN_SAMPLES) {
      const waiting = [...this.#waiting];
      this.#waiting.clear();
      for (const known of waiting) known();
    }
  }

  /**
   * Calls `known` once the window has enough samples for a percentile (a pool's first calls start
   * before any has answered: they learn their hedge's delay then). Returns what cancels the wait.
   */
  whenKnown(known: () => void): () => void {
    this.#waiting.add(known);
    return () => this.#waiting.delete(known);
  }

  /** The latency at `percentile` over the window, or undefined with fewer than 20 samples. */
  percentileMs(percentile: number): number | undefined {
    const now = this.#clock();
    if (percentile === this.#cachedFor && now - this.#cachedAt < REFRESH_MS) return this.#cached;
    if (now - this.#windowStart >= WINDOW_MS) this.#rotate(now);
    const samples = this.#currentSamples + this.#previousSamples;
    // Too few to go by: asked again next time, not cached.
    if (samples < MIN_SAMPLES) return undefined;
    this.#cachedFor = percentile;
    this.#cachedAt = now;
    const rank = Math.ceil((percentile / 100) * samples);
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.#current[i]! + this.#previous[i]!;
      if (seen >= rank) return (this.#cached = upperBoundOf(i));
    }
    return (this.#cached = upperBoundOf(BUCKETS - 1));
  }

  #rotate(now: number): void {
    const stale = now - this.#windowStart >= 2 * WINDOW_MS;
    const previous = this.#previous;
    previous.fill(0);
    this.#previous = this.#current;
    this.#previousSamples = this.#currentSamples;
    this.#current = previous;
    this.#currentSamples = 0;
    if (stale) {
      // Nothing recorded for a whole window: what is in the older one is too old to go by.
      this.#previous.fill(0);
      this.#previousSamples = 0;
    }
    this.#windowStart = now;
  }
}

function bucketOf(latencyMs: number): number {
  if (!(latencyMs > MIN_MS)) return 0;
  const bucket = Math.floor(Math.log2(latencyMs / MIN_MS) * SUB_BUCKETS);
  return bucket >= BUCKETS ? BUCKETS - 1 : bucket;
}

function upperBoundOf(bucket: number): number {
  return MIN_MS * 2 ** ((bucket + 1) / SUB_BUCKETS);
}
