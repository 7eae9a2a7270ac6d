import type { PoolCall } from '../call/call.ts';
import type { RetryGate } from '../call/retry.ts';
import type { Endpoint } from '../endpoint.ts';

/**
 * The pool as a grpc-js channel would report it: `ready` while a pod can be picked; else
 * `connecting` while discovery has not answered yet or a pod is connecting for the first time
 * since it was last ready; else `failing` (every pod's last connect failed, or is ejected, or there
 * is none); `closed` once `close()` was called.
 */
export type PoolConnectivity = 'ready' | 'connecting' | 'failing' | 'closed';

/** Options of `pool.beginWhenReady()`. */
export interface BeginOptions {
  /** Affinity key, for `ringHash()`. */
  key?: string;
  /** Ends the wait with `PODPOOL_ABORTED` (or the signal's `PodpoolError` reason). */
  signal?: AbortSignal;
  /** Ends the wait with `PODPOOL_NO_ENDPOINTS` after this long. Without it, only `signal` or `close()` end the wait. */
  timeoutMs?: number;
  /**
   * Fails with `PODPOOL_NO_ENDPOINTS` as soon as the pool is `failing`, instead of waiting for a
   * pod to come back: what grpc-js does to a call without `waitForReady`. Default false.
   */
  failFast?: boolean;
  /**
   * A retry's pod to avoid (the one the last attempt ran on): another is picked when one is
   * ready. A call begun with `avoid` is a retry and adds nothing to the retry budget.
   */
  avoid?: Endpoint;
}

/**
 * What an adapter over the pool (`grpcChannel`, `httpDispatcher`) needs of it: begin a call now
 * or once a pod can be picked, the connectivity in O(1) while one can, and word when it
 * changes. Adapters depend on this, never on `Pool` itself.
 */
export interface AdapterPool<C> {
  /** The source's kind (`static`, `dns`, `kubernetes`), for names such as a channel's target. */
  readonly sourceKind: string;
  readonly connectivity: PoolConnectivity;
  /**
   * Picks a pod and counts a call in flight until `end()`; `avoid` as in {@link BeginOptions}.
   * Throws `PODPOOL_NO_ENDPOINTS` when none is ready.
   */
  begin(key?: string, avoid?: Endpoint): PoolCall<C>;
  beginWhenReady(options?: BeginOptions): Promise<PoolCall<C>>;
  /** The pool's retry policy and budget, for an adapter that sends a request again itself. */
  readonly retry: RetryGate;
  on(event: 'connectivity', listener: (connectivity: PoolConnectivity) => void): unknown;
  off(event: 'connectivity', listener: (connectivity: PoolConnectivity) => void): unknown;
}
