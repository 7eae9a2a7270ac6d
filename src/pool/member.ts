import type { Pickable } from '../balance/balancer.ts';
import type { Endpoint } from '../endpoint.ts';
import type { Connection } from '../transport/transport.ts';
import { PeakEwma } from './latency.ts';

/**
 * A member's life: `connecting → ready ⇄ ejected → draining → closed`. `connecting` is also
 * where a member waits out its reconnect backoff after a lost connection; only `ready` members
 * are picked.
 */
export type MemberState = 'connecting' | 'ready' | 'ejected' | 'draining' | 'closed';

/** One member's numbers, as `pool.stats()` reports them. */
export interface MemberStats {
  readonly endpoint: Endpoint;
  readonly state: MemberState;
  readonly inFlight: number;
  /** Calls started on this member (use, broadcast deliveries, dispatcher requests). */
  readonly requests: number;
  /** Calls that failed in a way that counts against the pod. */
  readonly failures: number;
  readonly consecutiveFailures: number;
  /** Peak-sensitive EWMA of call latency, in ms (0 before the first call). */
  readonly latencyMs: number;
  /** Times this member was ejected as an outlier. */
  readonly ejections: number;
  /** Connections opened to this pod so far (1 for a connection that never dropped). */
  readonly connects: number;
  /** The last connect or call failure, if any. */
  readonly lastError?: Error;
}

/**
 * One pod: its connection and the numbers the balancers read. The pool owns every transition;
 * a member only holds state, so there is one place where states change.
 */
export class Member<C> implements Pickable {
  endpoint: Endpoint;
  state: MemberState = 'connecting';
  connection: Connection<C> | undefined = undefined;
  inFlight = 0;
  requests = 0;
  failures = 0;
  consecutiveFailures = 0;
  ejections = 0;
  /** Ejections in a row, each longer than the last; back to 0 after a healthy `maxMs`. */
  ejectionStreak = 0;
  connects = 0;
  lastError: Error | undefined = undefined;
  /** The last connect attempt failed and none has succeeded since: the pool counts it failing. */
  connectFailed = false;
  /** Aborted to stop the connect loop (endpoint gone, pool closing). */
  abort = new AbortController();
  /**
   * Aborted when the pool closes the connection the current calls run on (lost, drained, pool
   * closed); its signal is what `use()` callbacks get when the caller passed none, so a call
   * learns that its connection is gone without an allocation per call. A new one per connection.
   */
  calls = new AbortController();
  /** Pending drain or ejection timer. */
  timer: NodeJS.Timeout | undefined = undefined;
  /** When the current connection was opened, to tell a flapping pod from a long-lived one. */
  connectedAt = 0;
  /** Connections in a row that died young; drives the delay before the next connect. */
  flaps = 0;
  /** When the member last left `ejected`; a long healthy stretch resets the ejection multiplier. */
  unejectedAt = 0;
  /**
   * Resolved once the member is closed and its connection is gone. Not typed
   * `PromiseWithResolvers`: published declarations must compile without the es2024 lib.
   */
  readonly closed: { readonly promise: Promise<void>; resolve(): void } = Promise.withResolvers();
  readonly latency: PeakEwma;

  constructor(endpoint: Endpoint, latencyDecayMs: number) {
    this.endpoint = endpoint;
    this.latency = new PeakEwma(latencyDecayMs);
  }

  get samples(): number {
    return this.latency.samples;
  }

  latencyMs(now: number): number {
    return this.latency.at(now);
  }

  stats(now: number): MemberStats {
    return {
      endpoint: this.endpoint,
      state: this.state,
      inFlight: this.inFlight,
      requests: this.requests,
      failures: this.failures,
      consecutiveFailures: this.consecutiveFailures,
      latencyMs: this.latency.at(now),
      ejections: this.ejections,
      connects: this.connects,
      ...(this.lastError !== undefined && { lastError: this.lastError }),
    };
  }
}
