/**
 * Slow start, as Envoy's slow-start window has it: a pod that just became ready (a new pod, or
 * one back with a new connection) takes a share of the calls that grows over a window, instead
 * of its full share at once while its caches are cold and its JIT has compiled nothing yet.
 * Works over any balancer: a pick that lands on a warming pod is kept with probability
 * `max(minWeight, (age / windowMs) ^ (1 / aggression))`, else the balancer picks once more. A
 * call with an affinity key is never moved (the key's pod is the point of it).
 */
import { checkDelay, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import type { Pickable, Picker, PickerContext } from './balancer.ts';

/** Options of the pool's `slowStart`. */
export interface SlowStartOptions {
  /** How long a new pod's share takes to grow to full. */
  windowMs: number;
  /** How the share grows over the window: 1 (the default) linearly, more for faster at first. */
  aggression?: number;
  /** The share a pod starts from, as a fraction of its full share. Default 0.1. */
  minWeight?: number;
}

/** The checked slow-start settings. */
export interface SlowStartPolicy {
  readonly windowMs: number;
  readonly aggression: number;
  readonly minWeight: number;
}

const SLOW_START_OPTIONS = optionNames<SlowStartOptions>({ windowMs: true, aggression: true, minWeight: true });

/** Checks `slowStart`, naming any bad option; `undefined` or `false`: none. */
export function slowStartPolicy(options: SlowStartOptions | false | undefined): SlowStartPolicy | undefined {
  if (options === undefined || options === false) return undefined;
  checkOptions(options, SLOW_START_OPTIONS, 'slowStart');
  const { windowMs, aggression = 1, minWeight = 0.1 } = options;
  checkDelay('slowStart.windowMs', windowMs);
  checkNumber('slowStart.aggression', aggression, { min: 0.1 });
  checkNumber('slowStart.minWeight', minWeight, { min: 0 });
  if (minWeight > 1) invalidOption('slowStart.minWeight', 'a fraction from 0 to 1', minWeight);
  return Object.freeze({ windowMs, aggression, minWeight });
}

/**
 * A picker that holds warming members back. `since(m)` is when `m` became ready, or undefined
 * when it is warm. Built only while at least one member warms and one is warm: when all of them
 * start together (the pool starts), none is colder than another.
 */
export function slowStartPicker<M extends Pickable>(
  inner: Picker<M>,
  policy: SlowStartPolicy,
  since: (m: M) => number | undefined,
  context: PickerContext,
): Picker<M> {
  const { windowMs, aggression, minWeight } = policy;
  return {
    pick(key) {
      const m = inner.pick(key);
      if (m === undefined || key !== undefined) return m;
      const readyAt = since(m);
      if (readyAt === undefined) return m;
      const age = context.clock() - readyAt;
      if (age >= windowMs) return m;
      const weight = Math.max(minWeight, (age / windowMs) ** (1 / aggression));
      return context.random() < weight ? m : (inner.pick(key) ?? m);
    },
  };
}
