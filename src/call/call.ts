import { setTimeout as sleep } from 'node:timers/promises';
import { reasonOf } from '../abort.ts';
import { channels, type CallKind, type CallStartMessage } from '../channels.ts';
import type { Endpoint } from '../endpoint.ts';
import { AbortedError, ErrorCode, NotSupportedError, PodpoolError, TimeoutError } from '../errors.ts';
import type { Connection, Transport } from '../transport/transport.ts';
import { CohortCall, cohortFor, type Cohort, type CohortHost } from './deadline.ts';
import { LatencyWindow, type HedgePolicy } from './hedge.ts';
import { RetryBudget, retryDelayMs, type RetryPolicy } from './retry.ts';

/**
 * How a call ended, as far as the pod is concerned: it `answered` (a success, or a request the
 * pod refused), it `failed` in a way that counts against the pod, it was `abandoned` (a hedge
 * answered first: its time so far is a lower bound of the pod's latency, nothing more), or it
 * says nothing about the pod (`unrecorded`: the caller gave up, or its failure was counted when
 * its deadline passed).
 */
export type CallOutcome = 'answered' | 'failed' | 'abandoned' | 'unrecorded';

/**
 * What one call needs of the member it runs on: its connection, and the accounting that the
 * member owns. The pool's `Member` is one; this layer never sees the pool.
 */
export interface CallTarget<C> extends CohortHost {
  readonly endpoint: Endpoint;
  readonly connection: Connection<C> | undefined;
  /** Aborts when the connection under the call closes. */
  readonly connectionClosedSignal: AbortSignal;
  startCall(): void;
  endCall(outcome: CallOutcome, latencyMs: number, now: number, error?: unknown): void;
}

/** What a caller runs on a pod: `use()`'s callback, a broadcast's delivery. */
export type CallFn<C, T> = (client: C, endpoint: Endpoint, signal: AbortSignal) => T | PromiseLike<T>;

/** Says whether a value a call returned is the pod failing (`use(fn, { failedResult })`). */
export type ResultCheck<T> = (result: T) => boolean;

/**
 * How one call runs: the pool's defaults with the call's options over them. The plan of a call
 * made without options is made once per pool.
 */
export interface CallPlan<T> {
  /** Affinity key, for the picks of retries and hedges. */
  readonly key: string | undefined;
  /** The caller's signal. */
  readonly signal: AbortSignal | undefined;
  /** The call's deadline, retries and hedges included; `Infinity`: none. */
  readonly timeoutMs: number;
  readonly failedResult: ResultCheck<T> | undefined;
  readonly retry: RetryPolicy;
  readonly hedge: HedgePolicy | undefined;
  /** Whether a retry that finds no pod ready waits for one (`use()`'s `waitForReady`). */
  readonly waitForReady: boolean;
  /** Names the call in errors (`use() on`), followed by the endpoint. */
  readonly what: string;
  /** Which of the pool's doors the call came through, for the diagnostics channels; default `use`. */
  readonly kind?: CallKind;
}

/** What the diagnostics channels' messages say of the pool the calls run in. */
export interface CallOwner {
  /** The pool, which subscribers compare by identity. */
  readonly pool: object;
  /** Its balancer's name. */
  readonly balancer: string;
}

/** What the call layer asks of the pool for a retry or a hedge: another member, and the budget. */
export interface CallRouter<C> {
  /** A pickable member other than `avoid` when there is one; `avoid` itself when it is the only one. */
  pickAnother(key: string | undefined, avoid: CallTarget<C>): CallTarget<C> | undefined;
  /**
   * A member once one is pickable, for a retry that found none: rejects when `timeoutMs`
   * passes, `signal` aborts or the pool closes.
   */
  pickWhenReady(key: string | undefined, signal: AbortSignal | undefined, timeoutMs: number): Promise<CallTarget<C>>;
  /** Takes one retry or hedge from the budget; false when it is spent. */
  withdraw(): boolean;
  /** A call was made at `now` (not a retry nor a hedge): the budget grows by it. */
  deposit(now: number): void;
}

/** A deadline that may pass while an attempt runs: a cohort's call, or one attempt's own timer. */
interface Deadline {
  expired: boolean;
}

/** The longest a retry waits for a pod to be pickable, as a call made with none waits by default. */
const MAX_RETRY_WAIT_MS = 10_000;

/** The reason a hedge's other attempt is cancelled with, once one attempt answered. */
class HedgeLostError extends AbortedError {
  constructor(endpoint: string) {
    super(`another pod answered first; the hedged call on ${endpoint} was cancelled`);
  }
}

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
 * What wraps one call on a picked member: the accounting (start, end, outcome), the deadline and
 * the signals, retries on another pod, and hedging. It knows the transport (which errors count
 * against a pod, which never reached it, whether a connection is lent per call), the clock and
 * the budget, and of the pool only what {@link CallRouter} gives it.
 */
export class Calls<C> {
  readonly #transport: Transport<C>;
  readonly #clock: () => number;
  readonly #random: () => number;
  readonly #router: CallRouter<C>;
  readonly #owner: CallOwner;
  /** The pool's default deadline, which calls share through cohorts ({@link cohortFor}). */
  readonly #defaultTimeoutMs: number;
  readonly #onExpiry = (m: CohortHost, call: CohortCall, error: TimeoutError): void => {
    const now = this.#clock();
    m.countFailure(now - call.started, now, error);
    call.reject(error);
  };
  /** Answered calls' latencies, kept once a call hedges at a percentile. */
  #latencies: LatencyWindow | undefined = undefined;
  /** Percentile hedges' own budgets, by percentile: at most `100 - percentile` % of calls. */
  readonly #hedgeBudgets = new Map<number, RetryBudget>();
  /** Attempts sent again after one failed, and hedges sent, since the pool started. */
  retries = 0;
  hedges = 0;

  constructor(transport: Transport<C>, clock: () => number, random: () => number, router: CallRouter<C>, defaultTimeoutMs: number, owner: CallOwner) {
    this.#owner = owner;
    this.#transport = transport;
    this.#clock = clock;
    this.#random = random;
    this.#router = router;
    this.#defaultTimeoutMs = defaultTimeoutMs;
  }

  /** Starts keeping latencies for percentile hedges (the pool's `hedge` asks for it at once). */
  keepLatencies(): void {
    this.#latencies ??= new LatencyWindow(this.#clock);
  }

  /**
   * Runs `fn` on `m`'s connection as `plan` says and records its outcome; retries and hedges go
   * to other members. A call with the pool's default deadline and no signal joins a deadline
   * cohort (no timer of its own); see {@link #within} for the others. `attempt` numbers the
   * first attempt on the diagnostics channels (a broadcast's delivery retried by the broadcast).
   */
  run<T>(m: CallTarget<C>, fn: CallFn<C, T>, plan: CallPlan<T>, first?: number): Promise<T> {
    // Not a default parameter: a parameter list with one costs every call a bigger closure context.
    const attempt = first ?? 1;
    const started = this.#clock();
    this.#router.deposit(started);
    if (plan.hedge !== undefined) return this.#hedged(m, fn, plan, started);
    if (plan.signal === undefined) {
      if (plan.timeoutMs === Infinity) return this.#attempt(m, fn, plan, m.connectionClosedSignal, undefined, undefined, undefined, started, started, attempt, false, undefined);
      if (plan.timeoutMs === this.#defaultTimeoutMs) return this.#inCohort(m, fn, plan, started, attempt);
    }
    return this.#within(m, fn, plan, plan.signal, started, attempt, false, undefined);
  }

  /**
   * For adapters that must pick synchronously: counts a call in flight on `m` until `end()`.
   * Throws `PODPOOL_NOT_SUPPORTED` for a transport that lends a connection per call. `attempt`
   * is what the diagnostics channels report: 2 for an adapter's retry, however many came before.
   */
  begin(m: CallTarget<C>, attempt?: number): PoolCall<C> {
    const connection = m.connection!;
    if (connection.acquire !== undefined) {
      throw new NotSupportedError(`the ${this.#transport.name} transport lends a connection per call; use pool.use() instead of begin()`);
    }
    m.startCall();
    const started = this.#clock();
    // A call nobody traces keeps the closure it always had: capturing the message too would make
    // every adapter call's context bigger.
    if (channels.callStart.hasSubscribers || channels.callEnd.hasSubscribers || channels.callError.hasSubscribers) {
      return this.#tracedBegin(m, connection.client as C, started, attempt ?? 1);
    }
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

  /** {@link begin} while somebody subscribes to the call channels: the same, published. */
  #tracedBegin(m: CallTarget<C>, client: C, started: number, attempt: number): PoolCall<C> {
    const call = channels.callStart.hasSubscribers ? this.#publishStart(m, 'adapter', attempt, false, undefined) : undefined;
    let ended = false;
    return {
      endpoint: m.endpoint,
      client,
      end: (error?: unknown) => {
        if (ended) return;
        ended = true;
        const now = this.#clock();
        const outcome = this.#outcomeOf(error !== undefined, error);
        m.endCall(outcome, now - started, now, error);
        if (error === undefined ? channels.callEnd.hasSubscribers : channels.callError.hasSubscribers) {
          this.#publishEnd(call ?? this.#startMessage(m, 'adapter', attempt, false, undefined), error !== undefined, outcome, error, now - started);
        }
      },
    };
  }

  /** The default deadline, shared by the calls of a cohort. */
  #inCohort<T>(m: CallTarget<C>, fn: CallFn<C, T>, plan: CallPlan<T>, started: number, attempt: number): Promise<T> {
    const cohort = cohortFor(m, started, this.#defaultTimeoutMs, plan.what, this.#onExpiry);
    return new Promise<T>((resolve, reject) => {
      const call = new CohortCall(reject, started);
      cohort.join(call);
      this.#attempt(m, fn, plan, cohort.signal, undefined, call, cohort, started, started, attempt, false, undefined).then(resolve, reject);
    });
  }

  /**
   * One attempt raced against the caller's signal (`outer`) and what is left of the deadline. The
   * caller's promise settles at the deadline, and the timeout counts against the pod then: a pod
   * that never answers must add up to an ejection even when `fn` ignores its signal. The member
   * keeps counting the call in flight until `fn` really ends, which is the truth the balancers need.
   */
  #within<T>(
    m: CallTarget<C>,
    fn: CallFn<C, T>,
    plan: CallPlan<T>,
    outer: AbortSignal | undefined,
    callStarted: number,
    attempt: number,
    hedge: boolean,
    logical: object | undefined,
  ): Promise<T> {
    const what = `${plan.what} ${m.endpoint.key}`;
    if (outer?.aborted) return Promise.reject(reasonOf(outer, what));
    const started = this.#clock();
    const timeoutMs = plan.timeoutMs === Infinity ? Infinity : plan.timeoutMs - (started - callStarted);
    if (timeoutMs === Infinity && outer === undefined) {
      return this.#attempt(m, fn, plan, m.connectionClosedSignal, undefined, undefined, undefined, callStarted, started, attempt, hedge, logical);
    }
    return new Promise<T>((resolve, reject) => {
      const controller = new AbortController();
      const deadline: Deadline = { expired: false };
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
      if (timeoutMs !== Infinity) {
        timer = setTimeout(() => {
          deadline.expired = true;
          const error = new TimeoutError(`${what} did not finish within ${plan.timeoutMs} ms`);
          const now = this.#clock();
          m.countFailure(now - started, now, error);
          controller.abort(error);
          finish();
          reject(error);
        }, Math.max(1, timeoutMs));
      }
      outer?.addEventListener('abort', onAbort, { once: true });
      connection.addEventListener('abort', onConnectionClosed, { once: true });
      this.#attempt(m, fn, plan, controller.signal, outer, deadline, undefined, callStarted, started, attempt, hedge, logical).then(
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

  /**
   * One attempt on `m`: runs `fn`, records the outcome, and sends the call again on another
   * member when it may: always when it never reached the pod (a retry, not charged to the
   * budget), and when it failed against the pod (thrown, or a failed result) only for an
   * idempotent call and within the budget. Never once the caller gave up or the deadline passed.
   * `signal` is fn's; `outer` the caller's (or a hedge's), which a retry carries on. `hedge`
   * and `logical` are for the diagnostics channels: whether this attempt is a hedge, and the
   * object every attempt of the call shares (undefined: this attempt's own, when it is published).
   */
  async #attempt<T>(
    m: CallTarget<C>,
    fn: CallFn<C, T>,
    plan: CallPlan<T>,
    signal: AbortSignal,
    outer: AbortSignal | undefined,
    deadline: Deadline | undefined,
    cohort: Cohort | undefined,
    callStarted: number,
    started: number,
    attempt: number,
    hedge: boolean,
    logical: object | undefined,
  ): Promise<T> {
    const connection = m.connection!;
    m.startCall();
    // Nobody listening: one check, nothing built.
    const call = channels.callStart.hasSubscribers ? this.#publishStart(m, plan.kind ?? 'use', attempt, hedge, logical) : undefined;
    logical = call?.logicalCall ?? logical;
    let client: C | undefined;
    let value: T | undefined;
    let error: unknown;
    let threw = false;
    // A call that could not get a connection lent never reached the pod.
    let lent = connection.acquire === undefined;
    try {
      client = lent ? (connection.client as C) : await connection.acquire!(signal);
      lent = true;
      value = await fn(client, m.endpoint, signal);
    } catch (e) {
      error = e ?? null;
      threw = true;
    }
    const expired = deadline?.expired === true;
    // A lent connection is given back as failed when the call threw, not for a failed result:
    // the connection carried the answer well.
    if (client !== undefined && connection.release !== undefined) connection.release(client, threw || expired);
    if (cohort !== undefined) cohort.leave(deadline as CohortCall);
    const now = this.#clock();
    // A call that ended past its deadline was counted as a failure when the deadline passed; one
    // whose caller gave up says nothing about the pod; one that lost a hedge says a little.
    let outcome: CallOutcome = 'unrecorded';
    let failure: unknown = error;
    if (expired || plan.signal?.aborted) outcome = 'unrecorded';
    else if (!threw) {
      outcome = 'answered';
      if (plan.failedResult === undefined ? this.#transport.isFailedResult?.(value) === true : plan.failedResult(value as T)) {
        outcome = 'failed';
        // Allocated only for a failure: it is what stats() and the ejection message show.
        failure = new FailedResultError(m.endpoint.key, value);
      }
    } else if (signal.aborted && signal.reason instanceof HedgeLostError) outcome = 'abandoned';
    else outcome = this.#outcomeOf(true, error);
    m.endCall(outcome, now - started, now, failure);
    if (outcome === 'answered') this.#latencies?.record(now - started, now);
    // An answer counted as the pod failing (an HTTP 503) is an error on the channels too.
    const errored = threw || outcome !== 'answered';
    if (errored ? channels.callError.hasSubscribers : channels.callEnd.hasSubscribers) {
      this.#publishEnd(call ?? this.#startMessage(m, plan.kind ?? 'use', attempt, hedge, logical), errored, outcome, failure, now - started);
    }

    if (!threw) {
      // Nobody waits for a value that came after the deadline or the caller's abort: free it.
      if (expired || outer?.aborted) {
        this.#transport.discard?.(value);
        return value as T;
      }
      if (outcome !== 'failed' || !plan.retry.idempotent || !this.#mayRetry(plan, attempt, outer)) return value as T;
      // Only with another pod to send it to, and budget for it, is the answer dropped.
      if (this.#router.pickAnother(plan.key, m) === undefined || !this.#router.withdraw()) return value as T;
      this.#transport.discard?.(value);
      return this.#retry(m, fn, plan, outer, callStarted, attempt, false, failure, logical);
    }
    if (expired || !this.#mayRetry(plan, attempt, outer)) throw error;
    if (!lent || this.#transport.wasNotSent?.(error) === true) return this.#retry(m, fn, plan, outer, callStarted, attempt, true, error, logical);
    if (plan.retry.idempotent && outcome === 'failed' && this.#router.withdraw()) return this.#retry(m, fn, plan, outer, callStarted, attempt, false, error, logical);
    throw error;
  }

  /** Whether an attempt that failed may be followed by another: retries left, and nobody gave up (nor lost a hedge). */
  #mayRetry<T>(plan: CallPlan<T>, attempt: number, outer: AbortSignal | undefined): boolean {
    return attempt <= plan.retry.retries && !plan.signal?.aborted && !outer?.aborted;
  }

  /**
   * Sends the call again on another member, after a jittered backoff unless it never reached
   * its pod, within what is left of the deadline. With no other member to take it, the last
   * failure stands.
   */
  async #retry<T>(
    last: CallTarget<C>,
    fn: CallFn<C, T>,
    plan: CallPlan<T>,
    outer: AbortSignal | undefined,
    callStarted: number,
    attempt: number,
    notSent: boolean,
    failure: unknown,
    logical: object | undefined,
  ): Promise<T> {
    if (!notSent) {
      const delay = retryDelayMs(plan.retry, attempt, this.#random);
      const left = plan.timeoutMs - (this.#clock() - callStarted);
      if (delay >= left) throw failure;
      if (delay > 0) {
        try {
          await sleep(delay, undefined, outer === undefined ? undefined : { signal: outer });
        } catch {
          throw reasonOf(outer!, `${plan.what} ${last.endpoint.key}`);
        }
      }
    }
    let next = this.#router.pickAnother(plan.key, last);
    if (next === undefined) {
      // Every pod is reconnecting or gone (a rolling restart outran discovery): the call waits
      // for one, as a call made then would, within what is left of its deadline.
      const left = Math.min(MAX_RETRY_WAIT_MS, plan.timeoutMs - (this.#clock() - callStarted));
      if (!plan.waitForReady || !(left > 0)) throw failure;
      next = await this.#router.pickWhenReady(plan.key, outer, left).catch(() => undefined);
      if (next === undefined) throw failure;
    }
    this.retries++;
    return this.#within(next, fn, plan, outer, callStarted, attempt + 1, false, logical);
  }

  /**
   * A hedged call: the first attempt, and after the hedge's delay (when the budget allows and
   * another member is pickable) a second on another member. The first to answer wins; the other
   * is cancelled (its outcome `abandoned`) and whatever it returns later is discarded. A call
   * fails only when every attempt failed. A percentile hedge made before the pool knew its
   * percentile is armed once it does.
   */
  #hedged<T>(m: CallTarget<C>, fn: CallFn<C, T>, plan: CallPlan<T>, started: number): Promise<T> {
    const hedge = plan.hedge!;
    let budget: RetryBudget | undefined;
    if (hedge.percentile !== undefined) {
      budget = this.#hedgeBudgetFor(hedge.percentile);
      budget.deposit(started);
    }
    const latencies = hedge.delayMs === undefined ? (this.#latencies ??= new LatencyWindow(this.#clock)) : undefined;
    const delay = hedge.delayMs ?? latencies!.percentileMs(hedge.percentile!);
    if (plan.signal?.aborted) return this.#within(m, fn, plan, plan.signal, started, 1, false, undefined);
    // The hedge and the first attempt are one call on the channels.
    const logical = channels.callStart.hasSubscribers ? {} : undefined;
    return new Promise<T>((resolve, reject) => {
      const attempts: { readonly m: CallTarget<C>; readonly controller: AbortController }[] = [];
      let running = 0;
      let done = false;
      let timer: NodeJS.Timeout | undefined;
      let stopWaiting: (() => void) | undefined;
      const finish = (): void => {
        done = true;
        clearTimeout(timer);
        stopWaiting?.();
        plan.signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        for (const a of attempts) a.controller.abort(plan.signal!.reason);
      };
      const launch = (target: CallTarget<C>, attempt: number): void => {
        const controller = new AbortController();
        attempts.push({ m: target, controller });
        running++;
        this.#within(target, fn, plan, controller.signal, started, attempt, attempt > 1, logical).then(
          (value) => {
            running--;
            if (done) {
              this.#transport.discard?.(value);
              return;
            }
            finish();
            for (const a of attempts) if (a.controller !== controller) a.controller.abort(new HedgeLostError(a.m.endpoint.key));
            resolve(value);
          },
          (error: unknown) => {
            running--;
            if (done || running > 0) return;
            // Every attempt so far failed: a hedge still to come would only repeat a retry's work.
            finish();
            reject(error);
          },
        );
      };
      const hedgeNow = (): void => {
        timer = undefined;
        if (done) return;
        const other = this.#router.pickAnother(plan.key, m);
        if (other === undefined || other === m || (budget !== undefined && !budget.withdraw()) || !this.#router.withdraw()) return;
        this.hedges++;
        launch(other, 2);
      };
      plan.signal?.addEventListener('abort', onAbort, { once: true });
      launch(m, 1);
      if (delay !== undefined) timer = setTimeout(hedgeNow, delay);
      else {
        // Too few answers yet for a percentile (the pool just started): the hedge is armed once
        // there are, for what is left of its delay.
        stopWaiting = latencies!.whenKnown(() => {
          stopWaiting = undefined;
          const known = latencies!.percentileMs(hedge.percentile!);
          if (!done && known !== undefined) timer = setTimeout(hedgeNow, Math.max(0, known - (this.#clock() - started)));
        });
      }
    });
  }

  /** An attempt's start message: its `call` is a new object, which its end or error carries on. */
  #startMessage(m: CallTarget<C>, kind: CallKind, attempt: number, hedge: boolean, logical: object | undefined): CallStartMessage {
    const call = {};
    const { pool, balancer } = this.#owner;
    return { pool, call, logicalCall: logical ?? call, kind, endpoint: m.endpoint, attempt, hedge, balancer };
  }

  #publishStart(m: CallTarget<C>, kind: CallKind, attempt: number, hedge: boolean, logical: object | undefined): CallStartMessage {
    const message = this.#startMessage(m, kind, attempt, hedge, logical);
    channels.callStart.publish(message);
    return message;
  }

  /** `podpool:call:end`, or `podpool:call:error` when the attempt threw or its answer counts as the pod failing. */
  #publishEnd(start: CallStartMessage, errored: boolean, outcome: CallOutcome, error: unknown, durationMs: number): void {
    if (errored) channels.callError.publish({ ...start, durationMs, outcome, error });
    else channels.callEnd.publish({ ...start, durationMs });
  }

  #hedgeBudgetFor(percentile: number): RetryBudget {
    let budget = this.#hedgeBudgets.get(percentile);
    if (budget === undefined) {
      // A floor of one a second, as the retry budget has its own: a pool's first calls (its
      // balancer still blind, the slow pods not known) can be hedged before many calls paid for it.
      budget = new RetryBudget({ ratio: (100 - percentile) / 100, minPerSecond: 1 }, this.#clock);
      this.#hedgeBudgets.set(percentile, budget);
    }
    return budget;
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
