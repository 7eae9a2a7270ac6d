import type { EventEmitter } from 'node:events';
import type { Endpoint, EndpointDiff, EndpointSet } from '../endpoint.ts';
import type { PodpoolError } from '../errors.ts';
import type { PoolConnectivity } from './adapter-pool.ts';
import type { MemberState } from './member.ts';

/** A member changed state. */
export interface StateChange {
  readonly endpoint: Endpoint;
  readonly from: MemberState;
  readonly to: MemberState;
  /** Why, for transitions caused by a failure (`PODPOOL_CONNECTION_LOST`, `PODPOOL_EJECTED`, …). */
  readonly error?: PodpoolError;
}

/** The pool's events. */
export interface PoolEvents {
  /** A new snapshot from discovery, with what changed. */
  change: [endpoints: EndpointSet, diff: EndpointDiff];
  /** A member moved from one state to another. */
  state: [change: StateChange];
  /** An attempt to connect to a pod failed; the pool will try again after a backoff. */
  connectError: [endpoint: Endpoint, error: PodpoolError];
  /** Discovery failed; the pool keeps the last good snapshot. */
  sourceError: [error: PodpoolError];
  /** `pool.connectivity` changed: what an adapter watches instead of every state change. */
  connectivity: [connectivity: PoolConnectivity];
}

/**
 * Emits without letting a listener's throw cut a state change in half (a transition left
 * undone, a connect loop ended): the error is thrown again on its own, so it still surfaces as
 * an uncaught exception, and the pool's state stays whole.
 */
export function emitGuarded<E extends keyof PoolEvents>(emitter: EventEmitter<PoolEvents>, event: E, args: PoolEvents[E]): void {
  try {
    (emitter.emit as (event: E, ...args: PoolEvents[E]) => boolean).call(emitter, event, ...args);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}
