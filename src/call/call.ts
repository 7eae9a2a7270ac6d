import { reasonOf } from '../abort.ts';
import type { Endpoint } from '../endpoint.ts';
import { ErrorCode, NotSupportedError, PodpoolError, TimeoutError } from '../errors.ts';
import type { Connection, Transport } from '../transport/transport.ts';

/**
 * How a call ended, as far as the pod is concerned: it `answered` (a success, or a request the
 * pod refused), it `failed` in a way that counts against the pod, or it says nothing about the
 * pod (`unrecorded`: the caller gave up, or its failure was counted when its deadline passed).
 */
export type CallOutcome = 'answered' | 'failed' | 'unrecorded';

/**
 * What one call needs of the member it runs on: its connection, and the accounting that the
 * member owns. The pool's `Member` is one; this layer never sees the pool.
 */
export interface CallTarget<C> {
  readonly endpoint: Endpoint;
  readonly connection: Connection<C> | undefined;
  /** Aborts when the connection under the call closes. */
  readonly connectionClosedSignal: AbortSignal;
  startCall(): void;
  endCall(outcome: CallOutcome, latencyMs: number, now: number, error?: unknown): void;
  /** Counts a failure against the pod while the call still runs (its deadline passed). */
  countFailure(latencyMs: number, now: number, error: unknown): void;
}

/** What a caller runs on a pod: `use()`'s callback, a broadcast's delivery. */
export type CallFn<C, T> = (client: C, endpoint: Endpoint, signal: AbortSignal) => T | PromiseLike<T>;

/** Says whether a value a call returned is the pod failing (`use(fn, { failedResult })`). */
export type ResultCheck<T> = (result: T) => boolean;

/**
 * One call begun with `pool.begin()`: the connection to use and the endpoint it goes to. Call
 * `end()` exactly once, with the error if it failed; later calls are ignored.
 */
export interface PoolCall<C> {
  readonly endpoint: Endpoint;
  readonly client: C;
  end(error?: unknown): void;
}

/**
 * What wraps one call on a picked member: the accounting (start, end, outcome), the deadline
 * and the signals; later, retries and hedging. It knows the transport (which errors count
 * against a pod, whether a connection is lent per call) and the clock, nothing of the pool.
 */
export class Calls<C> {
  readonly #transport: Transport<C>;
  readonly #clock: () => number;

  constructor(transport: Transport<C>, clock: () => number) {
    this.#transport = transport;
    this.#clock = clock;
  }

  /**
   * Runs `fn` on `m`'s connection and records its outcome. With neither a signal nor a timeout
   * it is one async call and no more (`use()`'s common path); else see {@link #within}.
   * `what` names the call in errors (`use() on`, `broadcast to`), followed by the endpoint.
   * `failedResult` classifies what `fn` returned, instead of the transport's `isFailedResult`.
   */
  run<T>(
    m: CallTarget<C>,
    fn: CallFn<C, T>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    what: string,
    failedResult?: ResultCheck<T>,
  ): Promise<T> {
    if (signal === undefined && timeoutMs === undefined) return this.#call(m, fn, undefined, undefined, this.#clock(), failedResult);
    return this.#within(m, fn, signal, timeoutMs, `${what} ${m.endpoint.key}`, failedResult);
  }

  /**
   * For adapters that must pick synchronously: counts a call in flight on `m` until `end()`.
   * Throws `PODPOOL_NOT_SUPPORTED` for a transport that lends a connection per call.
   */
  begin(m: CallTarget<C>): PoolCall<C> {
    const connection = m.connection!;
    if (connection.acquire !== undefined) {
      throw new NotSupportedError(`the ${this.#transport.name} transport lends a connection per call; use pool.use() instead of begin()`);
    }
    m.startCall();
    const started = this.#clock();
    let ended = false;
    return {
      endpoint: m.endpoint,
      client: connection.client as C,
      end: (error?: unknown) => {
        if (ended) return;
        ended = true;
        const now = this.#clock();
        m.endCall(this.#outcomeOf(error !== undefined, error), now - started, now, error);
      },
    };
  }

  async #call<T>(
    m: CallTarget<C>,
    fn: CallFn<C, T>,
    signal: AbortSignal | undefined,
    deadline: { expired: boolean } | undefined,
    started: number,
    failedResult: ResultCheck<T> | undefined,
  ): Promise<T> {
    const connection = m.connection!;
    // The caller's signal, or else the connection's: either way fn learns when to give up.
    const callSignal = signal ?? m.connectionClosedSignal;
    m.startCall();
    let client: C | undefined;
    // A call that ended past its deadline was counted as a failure when the deadline passed.
    let outcome: CallOutcome = 'unrecorded';
    let failure: unknown;
    let threw = false;
    try {
      client = connection.acquire === undefined ? (connection.client as C) : await connection.acquire(callSignal);
      const value = await fn(client, m.endpoint, callSignal);
      if (!deadline?.expired) {
        outcome = 'answered';
        if (failedResult === undefined ? this.#transport.isFailedResult?.(value) === true : failedResult(value)) {
          // Allocated only for a failure: it is what stats() and the ejection message show.
          outcome = 'failed';
          failure = new FailedResultError(m.endpoint.key, value);
        }
      }
      return value;
    } catch (error) {
      // A caller that gave up says nothing about the pod; a deadline that passed does, and was
      // counted then (the signal is aborted in both cases).
      if (!signal?.aborted) outcome = this.#outcomeOf(true, error);
      failure = error ?? null;
      threw = true;
      throw error;
    } finally {
      // A lent connection is given back as failed when the call threw, not for a failed result:
      // the connection carried the answer well.
      if (client !== undefined && connection.release !== undefined) connection.release(client, threw || deadline?.expired === true);
      const now = this.#clock();
      m.endCall(outcome, now - started, now, failure);
    }
  }

  /**
   * `#call` raced against a signal and a timeout. The caller's promise settles at the deadline,
   * and the timeout counts against the pod then: a pod that never answers must add up to an
   * ejection even when `fn` ignores its signal. The member keeps counting the call in flight until
   * `fn` really ends, which is the truth the balancers need.
   */
  #within<T>(
    m: CallTarget<C>,
    fn: CallFn<C, T>,
    outer: AbortSignal | undefined,
    timeoutMs: number | undefined,
    what: string,
    failedResult: ResultCheck<T> | undefined,
  ): Promise<T> {
    if (outer?.aborted) return Promise.reject(reasonOf(outer, what));
    return new Promise<T>((resolve, reject) => {
      const controller = new AbortController();
      const deadline = { expired: false };
      const started = this.#clock();
      let timer: NodeJS.Timeout | undefined;
      // fn's signal also aborts when the pool closes the connection under the call.
      const connection = m.connectionClosedSignal;
      const onConnectionClosed = (): void => controller.abort(connection.reason);
      const finish = (): void => {
        clearTimeout(timer);
        outer?.removeEventListener('abort', onAbort);
        connection.removeEventListener('abort', onConnectionClosed);
      };
      const onAbort = (): void => {
        const error = reasonOf(outer!, what);
        controller.abort(error);
        finish();
        reject(error);
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          deadline.expired = true;
          const error = new TimeoutError(`${what} did not finish within ${timeoutMs} ms`);
          const now = this.#clock();
          m.countFailure(now - started, now, error);
          controller.abort(error);
          finish();
          reject(error);
        }, timeoutMs);
      }
      outer?.addEventListener('abort', onAbort, { once: true });
      connection.addEventListener('abort', onConnectionClosed, { once: true });
      this.#call(m, fn, controller.signal, deadline, started, failedResult).then(
        (value) => {
          finish();
          resolve(value);
        },
        (error: unknown) => {
          finish();
          reject(error);
        },
      );
    });
  }

  /** How a call that ended counts against its pod. */
  #outcomeOf(failed: boolean, error: unknown): CallOutcome {
    // A request the pod refused (`isPodFailure` says so) is an answer: its latency is as real as a success's.
    return !failed || (error !== undefined && !this.#isPodFailure(error)) ? 'answered' : 'failed';
  }

  /**
   * The pool's own TIMEOUT (a call past its `timeoutMs`) and CONNECTION_LOST (the connection
   * closed under a call) always count against the pod; for everything else the transport, which
   * knows its protocol's errors, decides.
   */
  #isPodFailure(error: unknown): boolean {
    if (error instanceof PodpoolError && (error.code === ErrorCode.TIMEOUT || error.code === ErrorCode.CONNECTION_LOST)) return true;
    return this.#transport.isPodFailure === undefined || this.#transport.isPodFailure(error);
  }
}

/**
 * A value a call returned that counts against its pod (an HTTP 503, say): recorded as the
 * member's last error, never thrown: the caller has the value.
 */
class FailedResultError extends Error {
  readonly statusCode: number | undefined;
  constructor(endpoint: string, result: unknown) {
    const status = (result as { statusCode?: unknown } | null | undefined)?.statusCode;
    const statusCode = typeof status === 'number' ? status : undefined;
    super(`${endpoint} answered ${statusCode === undefined ? 'with a result counted as a pod failure' : `HTTP ${statusCode}`}`);
    this.name = 'FailedResultError';
    this.statusCode = statusCode;
  }
}
