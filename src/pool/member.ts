import type { Pickable } from '../balance/balancer.ts';
import type { CallOutcome, CallTarget } from '../call/call.ts';
import type { Cohort } from '../call/deadline.ts';
import type { Endpoint } from '../endpoint.ts';
import { ClosedError, type PodpoolError } from '../errors.ts';
import type { Connection } from '../transport/transport.ts';
import type { LatencyReading } from './latency.ts';
import { Load } from './load.ts';

/** The signal of a member that never connected: no call runs on it, so it never aborts. */
const NO_CONNECTION_YET = new AbortController().signal;

/**
 * Why a connect loop stops (the member drains or closes): one reason for all, since an abort
 * without one makes a DOMException with a stack trace, 20 µs each, and nobody reads it (the loop
 * ends quietly when its signal aborts).
 */
const LOOP_STOPPED = new ClosedError('the member stopped connecting: its endpoint is gone or the pool is closing');

/**
 * A member's life: `connecting → ready ⇄ ejected → draining → closed`. `connecting` is also
 * where a member waits out its reconnect backoff after a lost connection, and where it waits,
 * connection kept, while the transport says that connection can take no new calls for now (a
 * gRPC channel reconnecting in place, an HTTP pod between sockets): calls in flight finish on it
 * and broadcasts still reach it. `ready` means connected, able to take calls and not ejected:
 * pickable, the only state the picker sees. It is not discovery's
 * `endpoint.ready` (the pod passes its readiness probe), which decides whether a pod has a
 * member at all; nor `pool.ready()`, which waits for pickable members.
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
  /** Call latency: the balancer's estimate, and what recent calls took. */
  readonly latency: MemberLatency;
  /**
   * The peak-sensitive EWMA, as `latency.peakEwmaMs`.
   * @deprecated Use `latency.peakEwmaMs` for the balancer's estimate, or `latency.meanMs` / `latency.p50Ms` for what calls took.
   */
  readonly latencyMs: number;
  /** Times this member was ejected as an outlier. */
  readonly ejections: number;
  /** Connections opened to this pod so far (1 for a connection that never dropped). */
  readonly connects: number;
  /** The last connect or call failure, if any. */
  readonly lastError?: Error;
}

/**
 * A member's call latency in ms, of the calls the pod answered (failed calls count in
 * `failures`, not here). The percentiles come from an HDR histogram (within 1%) of the last one
 * to two windows of `windowMs`; all are 0 with no sample there.
 */
export interface MemberLatency extends LatencyReading {
  /**
   * The peak-sensitive EWMA the `peakEwma()` balancer weighs: a slow call raises it at once, it
   * decays toward 0 while the member is idle. An estimate for picking, above what calls took
   * after a slow one: read `meanMs` and the percentiles for that.
   */
  readonly peakEwmaMs: number;
  /** The length of a window: the figures cover the last `windowMs` to `2 × windowMs`. */
  readonly windowMs: number;
}

/** What the pool hears from its members: one object for all of them, so no closure per member. */
export interface MemberEvents {
  /** The member moved from one state to another. */
  transition(member: Member<unknown>, from: MemberState, to: MemberState, error: PodpoolError | undefined): void;
  /** A call failed against the pod (for ejection); `now` is when it was counted. */
  failed(member: Member<unknown>, now: number): void;
  /** The last call of a draining member ended: it can close. */
  drained(member: Member<unknown>): void;
}

/**
 * One pod: its connection, its state and its load. It owns its state transitions and call
 * accounting; the pool says what happened (`connected`, `startCall`, `endCall`, `lost`, …)
 * and hears transitions through {@link MemberEvents}.
 */
export class Member<C> implements Pickable, CallTarget<C> {
  #endpoint: Endpoint;
  #state: MemberState = 'connecting';
  #connection: Connection<C> | undefined = undefined;
  readonly #load: Load;
  readonly #events: MemberEvents;
  #ejections = 0;
  #connects = 0;
  #lastError: Error | undefined = undefined;
  #connectFailed = false;
  /** Whether the connection can take new calls; false between the transport's `unavailable` and `available`. */
  #available = true;
  /** Aborted to stop the connect loop (endpoint gone, pool closing). */
  #connectLoop = new AbortController();
  /**
   * Aborted when the pool closes the connection the current calls run on (lost, drained, pool
   * closed); its signal is what `use()` callbacks get when the caller passed none, so a call
   * learns that its connection is gone without an allocation per call. A new one per connection,
   * none before the first (a controller costs a member more than the rest of it).
   */
  #connectionClosed: AbortController | undefined = undefined;
  /** The call layer's open deadline cohort (src/call/deadline.ts): kept here, found without a lookup. */
  cohort: Cohort | undefined = undefined;
  /** Pending drain timer. */
  #drainTimer: NodeJS.Timeout | undefined = undefined;
  /** When the current connection was opened, to tell a flapping pod from a long-lived one. */
  #connectedAt = 0;
  /** Connections in a row that died young; drives the delay before the next connect. */
  #flaps = 0;
  /**
   * Resolved once the member is closed and its connection is gone. Not typed
   * `PromiseWithResolvers`: published declarations must compile without the es2024 lib.
   */
  readonly closed: { readonly promise: Promise<void>; resolve(): void } = Promise.withResolvers();

  constructor(endpoint: Endpoint, latencyDecayMs: number, events: MemberEvents) {
    this.#endpoint = endpoint;
    this.#load = new Load(latencyDecayMs);
    this.#events = events;
  }

  // ---- what balancers read (Pickable) ----

  get endpoint(): Endpoint {
    return this.#endpoint;
  }

  get inFlight(): number {
    return this.#load.inFlight;
  }

  get samples(): number {
    return this.#load.latency.samples;
  }

  latencyMs(now: number): number {
    return this.#load.latency.at(now);
  }

  // ---- what the pool reads ----

  get state(): MemberState {
    return this.#state;
  }

  get connection(): Connection<C> | undefined {
    return this.#connection;
  }

  get lastError(): Error | undefined {
    return this.#lastError;
  }

  /** The last connect attempt failed and none has succeeded since: the pool counts it failing. */
  get connectFailed(): boolean {
    return this.#connectFailed;
  }

  get consecutiveFailures(): number {
    return this.#load.consecutiveFailures;
  }

  get flaps(): number {
    return this.#flaps;
  }

  /** When the current connection was opened (a `clock()` reading): slow start counts from it. */
  get connectedAt(): number {
    return this.#connectedAt;
  }

  /** Aborts the connect loop. */
  get connectLoopSignal(): AbortSignal {
    return this.#connectLoop.signal;
  }

  /** Aborts when the connection under the current calls closes. */
  get connectionClosedSignal(): AbortSignal {
    return this.#connectionClosed?.signal ?? NO_CONNECTION_YET;
  }

  /** Discovery's newer view of the same endpoint (readiness, zone, …). */
  updateEndpoint(endpoint: Endpoint): void {
    this.#endpoint = endpoint;
  }

  // ---- call accounting: one piece, for use(), broadcast and the adapters' begin() ----

  startCall(): void {
    this.#load.started();
  }

  /** Ends a call begun with `startCall()`, counting `outcome` against the pod or not. */
  endCall(outcome: CallOutcome, latencyMs: number, now: number, error?: unknown): void {
    if (outcome === 'answered') this.#load.answered(latencyMs, now);
    // A hedge's loser ran this long and was cancelled: its pod is at least this slow, which
    // says something only when it is slower than the pod is thought to be.
    else if (outcome === 'abandoned' && latencyMs > this.#load.latency.at(now)) this.#load.latency.observe(latencyMs, now);
    else if (outcome === 'failed') this.countFailure(latencyMs, now, error);
    if (this.#load.settled() === 0 && this.#state === 'draining') this.#events.drained(this as Member<unknown>);
  }

  /** A call failed against the pod; also for a call still running past its deadline. */
  countFailure(latencyMs: number, now: number, error: unknown): void {
    this.#load.failed(latencyMs, now);
    if (error instanceof Error) this.#lastError = error;
    this.#events.failed(this as Member<unknown>, now);
  }

  // ---- state transitions ----

  /** A connect attempt failed; the loop tries again after its backoff. */
  connectAttemptFailed(error: Error): void {
    this.#lastError = error;
    this.#connectFailed = true;
  }

  /** A new connection; `unavailable` when the transport said, before the member took it, that it can take no calls yet. */
  connected(connection: Connection<C>, now: number, unavailable?: PodpoolError): void {
    this.#connection = connection;
    this.#available = unavailable === undefined;
    this.#connectionClosed = new AbortController();
    this.#connects++;
    this.#connectedAt = now;
    // The run of failures is kept: a pod whose calls time out and whose connection is then
    // replaced (a hung process, a black hole) must still add up to an ejection. A success, or
    // the end of an ejection, starts it again.
    this.#connectFailed = false;
    this.#moveTo(this.#available ? 'ready' : 'connecting', unavailable);
  }

  /**
   * `connection` can take no new calls for now: a ready member stops being picked (an ejected
   * or draining one stays as it is, and comes back to `connecting` rather than `ready`).
   */
  unavailable(connection: Connection<C>, error: PodpoolError): void {
    if (this.#connection !== connection || !this.#available) return;
    this.#available = false;
    if (this.#state === 'ready') this.#moveTo('connecting', error);
  }

  /** `connection` can take new calls again: a member that left `ready` for it is back. */
  available(connection: Connection<C>): void {
    if (this.#connection !== connection || this.#available) return;
    this.#available = true;
    if (this.#state === 'connecting') this.#moveTo('ready');
  }

  /**
   * The connection is gone: calls on it hear `error`, and a connection that died younger than
   * `stableMs` counts as a flap. Returns false when `connection` is no longer this member's.
   */
  lost(connection: Connection<C>, error: PodpoolError, now: number, stableMs: number): boolean {
    if (this.#connection !== connection) return false;
    this.#connection = undefined;
    this.#available = true;
    this.#connectionClosed?.abort(error);
    this.#lastError = error;
    this.#flaps = now - this.#connectedAt < stableMs ? this.#flaps + 1 : 0;
    return true;
  }

  /** Waiting to reconnect after a lost connection. */
  reconnecting(error: PodpoolError): void {
    this.#moveTo('connecting', error);
  }

  eject(error: PodpoolError): void {
    this.#ejections++;
    this.#moveTo('ejected', error);
  }

  /** Back from an ejection, with a clean run of failures. */
  unejected(): void {
    this.#load.consecutiveFailures = 0;
    this.#moveTo(this.#available ? 'ready' : 'connecting');
  }

  /**
   * No new picks; in-flight calls may run up to `timeoutMs`, then `expired` runs. Stops the
   * connect loop of a member with no connection. Returns whether it has calls left to wait for.
   */
  drain(timeoutMs: number, expired: () => void): boolean {
    clearTimeout(this.#drainTimer);
    this.#drainTimer = undefined;
    if (this.#connection === undefined) this.#connectLoop.abort(LOOP_STOPPED);
    this.#moveTo('draining');
    if (this.#connection === undefined || this.#load.inFlight === 0) return false;
    this.#drainTimer = setTimeout(expired, timeoutMs);
    return true;
  }

  /** Its endpoint came back while it drained. Returns whether it must connect again. */
  revive(): boolean {
    clearTimeout(this.#drainTimer);
    this.#drainTimer = undefined;
    if (this.#connection !== undefined) {
      this.#moveTo(this.#available ? 'ready' : 'connecting');
      return false;
    }
    this.#connectLoop = new AbortController();
    this.#moveTo('connecting');
    return true;
  }

  /**
   * Closed: the connect loop stops, calls still running hear `error` (when given) and the
   * connection is handed back for the pool to close.
   */
  close(error: (() => PodpoolError) | undefined): Connection<C> | undefined {
    clearTimeout(this.#drainTimer);
    this.#drainTimer = undefined;
    // A member with a connection has no connect loop running (the loop ends once it connects):
    // aborting would only make an event nobody hears, 10,000 times when a big pool closes.
    if (this.#connection === undefined) this.#connectLoop.abort(LOOP_STOPPED);
    const connection = this.#connection;
    this.#connection = undefined;
    if (connection !== undefined && this.#load.inFlight > 0 && error !== undefined) this.#connectionClosed?.abort(error());
    this.#moveTo('closed');
    return connection;
  }

  #moveTo(to: MemberState, error?: PodpoolError): void {
    const from = this.#state;
    if (from === to) return;
    this.#state = to;
    this.#events.transition(this as Member<unknown>, from, to, error);
  }

  stats(now: number): MemberStats {
    const load = this.#load;
    const peakEwmaMs = load.latency.at(now);
    return {
      endpoint: this.#endpoint,
      state: this.#state,
      inFlight: load.inFlight,
      requests: load.requests,
      failures: load.failures,
      consecutiveFailures: load.consecutiveFailures,
      latency: { peakEwmaMs, ...load.recent.read(now), windowMs: load.recent.windowMs },
      latencyMs: peakEwmaMs,
      ejections: this.#ejections,
      connects: this.#connects,
      ...(this.#lastError !== undefined && { lastError: this.#lastError }),
    };
  }
}

/** Orders members (or anything with an endpoint) by endpoint key, as `stats()` and broadcasts list them. */
export function byEndpointKey(a: { endpoint: Endpoint }, b: { endpoint: Endpoint }): number {
  return a.endpoint.key < b.endpoint.key ? -1 : a.endpoint.key > b.endpoint.key ? 1 : 0;
}
