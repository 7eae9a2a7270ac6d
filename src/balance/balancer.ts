import type { Endpoint } from '../endpoint.ts';

/**
 * How busy a member is, as the pool measures it. Pickers read these numbers; they never write
 * them, and nothing but the pool measures (tower's split of `Load` from `Balance`).
 */
export interface Pickable {
  readonly endpoint: Endpoint;
  /** Calls running on this member right now (for pooled transports: connections borrowed). */
  readonly inFlight: number;
  /** Completed calls whose latency was observed. */
  readonly samples: number;
  /**
   * The peak-sensitive EWMA of call latency in ms, decayed to `now` (a `clock()` reading):
   * a slow call raises it at once, fast calls and idle time lower it gradually. 0 when
   * `samples` is 0.
   */
  latencyMs(now: number): number;
}

/** What the pool hands a balancer: its injected clock (ms) and random source ([0, 1)). */
export interface PickerContext {
  readonly clock: () => number;
  readonly random: () => number;
}

/**
 * A picker is a frozen snapshot of the members that may take new work, built again once per
 * burst of membership or readiness changes (at the first pick after them, or in a microtask).
 * `pick()` is synchronous and does not allocate.
 */
export interface Picker<M extends Pickable> {
  /**
   * One of the members it was built over; `undefined` only when it was built over none.
   * Balancers that need a key throw `PODPOOL_KEY_REQUIRED` when it is missing; others ignore it.
   */
  pick(key?: string): M | undefined;
}

/** A strategy: builds pickers. Options are checked when the balancer is made, not at pick time. */
export interface Balancer {
  /** `round-robin`, `random`, `least-loaded`, `peak-ewma`, `ring-hash`. */
  readonly name: string;
  /** The time constant the pool should use for members' latency EWMA, when the balancer has one. */
  readonly latencyDecayMs?: number;
  /**
   * A picker over `members`: the pickable members in a stable order (by endpoint key). The
   * array is not modified afterwards; the picker may keep it. `previous`, when given, is the
   * picker this balancer built for the same pool before: a balancer whose build is costly may
   * start from it (ring-hash merges the ring's changes instead of sorting it again), and must
   * then build what a fresh build over `members` would.
   */
  picker<M extends Pickable>(members: readonly M[], context: PickerContext, previous?: Picker<M>): Picker<M>;
}
