/**
 * The pool's default deadline, shared: calls that start on one member within a short window
 * join one cohort, with one timer and one `AbortSignal` between them, instead of a timer, a
 * controller and two listeners each (about 0.2 µs a call against 1.5 µs, three times the rest
 * of `use()`). A call's deadline is then `timeoutMs` plus at most a 32nd of it; a call that
 * outlives it is rejected and counted against its pod even when its callback ignores the
 * signal, as with a per-call `timeoutMs`.
 */
import { TimeoutError } from '../errors.ts';
import { MAX_DELAY_MS } from '../options.ts';

/** What a cohort needs of a member: where it keeps its open cohort, and the signal of its connection. */
export interface CohortHost {
  readonly endpoint: { readonly key: string };
  /** The cohort calls join now; the call layer's, kept on the member so finding it costs no lookup. */
  cohort: Cohort | undefined;
  readonly connectionClosedSignal: AbortSignal;
  /** Counts a failure against the pod while the call still runs (its deadline passed). */
  countFailure(latencyMs: number, now: number, error: unknown): void;
}

/** A call of a cohort: rejected at the cohort's deadline unless it ended first. */
export class CohortCall {
  /** Set when the deadline passed while the call ran: it was rejected and counted then. */
  expired = false;
  readonly reject: (error: unknown) => void;
  readonly started: number;
  next: CohortCall | undefined = undefined;
  previous: CohortCall | undefined = undefined;

  constructor(reject: (error: unknown) => void, started: number) {
    this.reject = reject;
    this.started = started;
  }
}

/** What happens to a call still running at its cohort's deadline: counted against `host`, and rejected. */
export type OnExpiry = (host: CohortHost, call: CohortCall, error: TimeoutError) => void;

/**
 * Calls that started on one member in one window. Its signal aborts at the deadline (with
 * `PODPOOL_TIMEOUT`) or when the member's connection closes (with that reason); the calls still
 * running at the deadline are rejected one by one, which is the only per-call work it does.
 */
export class Cohort {
  readonly #controller = new AbortController();
  /** Joining closes at this time; later calls open the next cohort. */
  readonly openUntil: number;
  readonly #timeoutMs: number;
  readonly #what: string;
  readonly #host: CohortHost;
  readonly #onExpiry: OnExpiry;
  readonly #connection: AbortSignal;
  readonly #onConnectionClosed = (): void => this.#abort(this.#connection.reason);
  /** Calls still running, newest first; unlinked as they end. */
  #head: CohortCall | undefined = undefined;

  constructor(host: CohortHost, now: number, timeoutMs: number, what: string, onExpiry: OnExpiry) {
    const window = Math.max(1, timeoutMs / 32);
    this.openUntil = now + window;
    this.#timeoutMs = timeoutMs;
    this.#what = what;
    this.#host = host;
    this.#onExpiry = onExpiry;
    this.#connection = host.connectionClosedSignal;
    this.#connection.addEventListener('abort', this.#onConnectionClosed, { once: true });
    // One timer for the cohort's life, even once its calls have ended: cheaper than starting
    // and stopping one as they come and go. It must not keep the process alive by itself.
    setTimeout(() => this.#expire(), Math.min(MAX_DELAY_MS, timeoutMs + window)).unref();
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  join(call: CohortCall): void {
    call.next = this.#head;
    if (this.#head !== undefined) this.#head.previous = call;
    this.#head = call;
  }

  /** The call ended before its deadline. */
  leave(call: CohortCall): void {
    if (call.expired) return;
    if (call.previous !== undefined) call.previous.next = call.next;
    else this.#head = call.next;
    if (call.next !== undefined) call.next.previous = call.previous;
    call.next = call.previous = undefined;
  }

  #expire(): void {
    this.#connection.removeEventListener('abort', this.#onConnectionClosed);
    const message = `${this.#what} ${this.#host.endpoint.key} did not finish within ${this.#timeoutMs} ms`;
    this.#abort(new TimeoutError(message));
    let call = this.#head;
    this.#head = undefined;
    while (call !== undefined) {
      const next = call.next;
      call.expired = true;
      call.next = call.previous = undefined;
      this.#onExpiry(this.#host, call, new TimeoutError(message));
      call = next;
    }
  }

  #abort(reason: unknown): void {
    if (!this.#controller.signal.aborted) this.#controller.abort(reason);
  }
}

/**
 * The cohort a call starting now on `host` joins: the open one, or a new one when its window
 * passed or its signal aborted (its connection closed: a cohort belongs to one connection).
 * `what` names the calls in the timeout's message, followed by the endpoint.
 */
export function cohortFor(host: CohortHost, now: number, timeoutMs: number, what: string, onExpiry: OnExpiry): Cohort {
  const open = host.cohort;
  if (open !== undefined && now < open.openUntil && !open.signal.aborted) return open;
  const cohort = new Cohort(host, now, timeoutMs, what, onExpiry);
  host.cohort = cohort;
  return cohort;
}
