/**
 * One request through `httpDispatcher`: the handler the pod's undici `Client` calls, the
 * controller the caller holds, and the decision to send the request again on another pod.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import { errors as undiciErrors, type Dispatcher } from 'undici';
import type { PoolCall } from '../call/call.ts';
import type { Endpoint } from '../endpoint.ts';
import { ErrorCode, PodpoolError } from '../errors.ts';
import type { AdapterPool } from '../pool/adapter-pool.ts';
import { isFailedStatus } from '../transport/http.ts';

/** A 5xx or 429 seen by the dispatcher: it counts against the pod that sent it. */
class ServerError extends Error {
  readonly statusCode: number;
  constructor(statusCode: number) {
    super(`HTTP ${statusCode}`);
    this.statusCode = statusCode;
  }
}

type RawHeaders = Buffer[] | string[];

/**
 * The handler API of undici ≤ 7, which Node's built-in `fetch` (undici 6 in Node 22, 7 in
 * Node 24) and undici 6 and 7's `request`/`fetch` hand a dispatcher. undici 8 speaks the newer
 * one (`onRequestStart`, `onResponseStart`, …); a handler is one or the other by whether it has
 * `onRequestStart`, as undici's own wrappers tell them apart.
 */
interface LegacyHandler {
  onConnect?(abort: (reason?: Error) => void, context?: unknown): void;
  onHeaders?(statusCode: number, rawHeaders: RawHeaders, resume: () => void, statusText: string): boolean | void;
  onData?(chunk: Buffer): boolean | void;
  onComplete?(trailers: RawHeaders | null): void;
  onError?(error: Error): void;
  onUpgrade?(statusCode: number, rawHeaders: RawHeaders | null, socket: Duplex): void;
}

export type CallerHandler = Dispatcher.DispatchHandler & LegacyHandler;

/** What every request of one dispatcher shares: its pool, and when a request waits or is sent again. */
export interface RelaySettings {
  readonly pool: AdapterPool<Dispatcher>;
  readonly waitForReady: boolean;
  readonly readyTimeoutMs: number;
  /** Attempts after the first; 0: a request is never sent twice. */
  readonly retries: number;
  /** Methods sent again after they may have reached a pod; `undefined`: every method. */
  readonly methods: ReadonlySet<string> | undefined;
  /** Statuses whose response is dropped and the request sent again, for a method of `methods`. */
  readonly statusCodes: ReadonlySet<number>;
}

/**
 * How much of a dropped response's body is read (and thrown away) so its connection can carry
 * the next request; past it the attempt is aborted and its socket goes. undici's own `dump`
 * interceptor stops at the same size.
 */
const DUMP_LIMIT = 1024 * 1024;

/**
 * undici's codes for a request its `Client` refused before sending it because of the request
 * itself (a bad header, a body of the wrong length): any pod would refuse it the same way.
 */
const REQUEST_FAULTS = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED', 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH']);

/**
 * A request body that can be sent twice: the same bytes again. A stream or an (async) iterable
 * is consumed by the first attempt that starts writing it. Node's and undici's `fetch` pass
 * every body as an async iterable, so through `fetch` only a request without a body is sent
 * again once it may have reached a pod.
 */
function replayable(body: Dispatcher.DispatchOptions['body']): boolean {
  return body == null || typeof body === 'string' || ArrayBuffer.isView(body) || body instanceof ArrayBuffer;
}

/**
 * Where an attempt is: `queued` on the pod's `Client` (it never reached the pod, whatever fails
 * it), `sent` once the `Client` called `onRequestStart` (it may have reached the pod), `dumping`
 * a response of a retried status (read and thrown away), `answered` once the caller heard the
 * response's head (nothing is sent again from then on).
 */
type Phase = 'queued' | 'sent' | 'dumping' | 'answered';

/**
 * One request through the dispatcher. Toward the pod's undici `Client` it is a handler of
 * undici 8's API; toward the caller it is the controller, and it speaks whichever handler API
 * the caller's undici uses. Each attempt is one pool call, ended exactly once.
 *
 * An attempt the pod's `Client` failed before `onRequestStart` (which undici calls right before
 * writing the request to a socket) never reached the pod: refused connect, a client destroyed
 * as the request was dispatched. It is sent again on another pod, without asking the budget.
 * One that may have reached the pod (a wire error, or a status of `statusCodes`) is sent again
 * only before the caller saw anything of the response, for a method of `methods`, with a body
 * that can be sent twice, when the pool's retry budget allows, after the pool's backoff, and
 * never once the caller aborted. When no attempt is left, the last failure reaches the caller
 * as it would have without retries: the last response, or the last error.
 */
export class RequestRelay implements Dispatcher.DispatchHandler, Dispatcher.DispatchController {
  readonly #caller: CallerHandler;
  readonly #legacy: boolean;
  readonly #settings: RelaySettings;
  /** The options for the pod's `Client`, kept to send the request again. */
  readonly #options: Dispatcher.DispatchOptions;
  /** The current attempt's pool call, until it is ended. */
  #call: PoolCall<Dispatcher> | undefined = undefined;
  /** The pod of the last attempt ended: the next one avoids it. */
  #last: Endpoint | undefined = undefined;
  /** Attempts made after the first. */
  #attempt = 0;
  /** The pod's controller, once its `Client` started the request. */
  #pod: Dispatcher.DispatchController | undefined = undefined;
  /** Where the current attempt is; see {@link Phase}. */
  #phase: Phase = 'queued';
  /** Bytes of a dropped response read so far. */
  #dumped = 0;
  /** The error of the last attempt that failed with one, for the caller when no retry can be made. */
  #failure: Error | undefined = undefined;
  /** The caller heard `onRequestStart` / `onConnect`. */
  #started = false;
  #aborted = false;
  #reason: Error | null = null;
  #paused = false;
  #status = 0;
  /** Ends the wait for a ready pod, when the request waits for one. */
  #waiting: AbortController | undefined = undefined;
  /** The backoff before a retry. */
  #timer: NodeJS.Timeout | undefined = undefined;

  constructor(caller: CallerHandler, settings: RelaySettings, options: Dispatcher.DispatchOptions) {
    this.#caller = caller;
    this.#legacy = typeof caller.onRequestStart !== 'function';
    this.#settings = settings;
    this.#options = options;
  }

  /** Sends the request on the pod's connection. */
  send(call: PoolCall<Dispatcher>): boolean {
    this.#call = call;
    this.#phase = 'queued';
    return call.client.dispatch(this.#options, this);
  }

  /**
   * Holds the request until a pod is ready, then sends it; fails it when the wait ends without
   * one. A retry waits only while a pod may come (not while every pod fails), for another pod
   * than the last one when one is ready, and fails with the last attempt's error.
   */
  wait(): void {
    const retry = this.#last !== undefined;
    const waiting = new AbortController();
    this.#waiting = waiting;
    // Started now, so the caller has its abort while the request waits.
    if (!this.#started) this.#start(undefined);
    if (this.#aborted) {
      this.reject(this.#reason!);
      return;
    }
    const { pool, readyTimeoutMs } = this.#settings;
    pool.beginWhenReady({ signal: waiting.signal, timeoutMs: readyTimeoutMs, failFast: retry, avoid: this.#last }).then(
      (call) => {
        this.#waiting = undefined;
        this.send(call);
      },
      (error: Error) => {
        this.#waiting = undefined;
        this.reject(this.#aborted ? this.#reason! : (this.#failure ?? error));
      },
    );
  }

  /** Fails the request: the caller hears `error`. */
  reject(error: Error): void {
    if (!this.#legacy) {
      this.#caller.onResponseError?.(this, error);
      return;
    }
    // undici's own wrappers throw when a legacy handler can't hear an error; so does this.
    if (typeof this.#caller.onError !== 'function') throw error;
    this.#caller.onError(error);
  }

  // ---- the controller, as the caller sees it ----

  get aborted(): boolean {
    return this.#aborted || (this.#pod?.aborted ?? false);
  }

  get paused(): boolean {
    return this.#pod !== undefined && this.#phase !== 'dumping' ? this.#pod.paused : this.#paused;
  }

  get reason(): Error | null {
    return this.#reason ?? this.#pod?.reason ?? null;
  }

  get rawHeaders(): Dispatcher.DispatchController['rawHeaders'] {
    return this.#pod?.rawHeaders;
  }

  get rawTrailers(): Dispatcher.DispatchController['rawTrailers'] {
    return this.#pod?.rawTrailers;
  }

  abort(reason: Error): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    if (this.#pod !== undefined) {
      this.#pod.abort(reason);
    } else if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      this.reject(reason);
    } else {
      // Waiting for a pod: the wait ends and fails the request. Queued on a pod's Client: it is
      // aborted when the Client starts it.
      this.#waiting?.abort(reason);
    }
  }

  pause(): void {
    this.#paused = true;
    if (this.#pod !== undefined && this.#phase !== 'dumping') this.#pod.pause();
  }

  resume(): void {
    this.#paused = false;
    if (this.#pod !== undefined && this.#phase !== 'dumping') this.#pod.resume();
  }

  // ---- the handler, as the pod's Client sees it ----

  onRequestStart(controller: Dispatcher.DispatchController, context: unknown): void {
    this.#pod = controller;
    this.#phase = 'sent';
    if (this.#aborted) {
      controller.abort(this.#reason!);
      return;
    }
    if (this.#paused) controller.pause();
    if (!this.#started) this.#start(context);
  }

  onRequestUpgrade(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, socket: Duplex): void {
    this.#phase = 'answered';
    this.#finish(undefined);
    if (!this.#legacy) this.#caller.onRequestUpgrade?.(this, statusCode, headers, socket);
    else this.#caller.onUpgrade?.(statusCode, rawOf(controller.rawHeaders, headers), socket);
  }

  onResponseStarted(): void {
    this.#caller.onResponseStarted?.();
  }

  onBodySent(chunk: Buffer): void {
    this.#caller.onBodySent?.(chunk);
  }

  onRequestSent(): void {
    this.#caller.onRequestSent?.();
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
    statusMessage?: string,
  ): void {
    this.#status = statusCode;
    if (this.#settings.statusCodes.has(statusCode) && this.#mayResend(true)) {
      // Read to its end and thrown away, so the connection carries the next request.
      this.#phase = 'dumping';
      this.#dumped = 0;
      if (controller.paused) controller.resume();
      return;
    }
    this.#phase = 'answered';
    if (!this.#legacy) {
      this.#caller.onResponseStart?.(this, statusCode, headers, statusMessage);
      return;
    }
    const resume = (): void => controller.resume();
    if (this.#caller.onHeaders?.(statusCode, rawOf(controller.rawHeaders, headers), resume, statusMessage ?? '') === false) {
      controller.pause();
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#phase === 'dumping') {
      this.#dumped += chunk.length;
      if (this.#dumped > DUMP_LIMIT) controller.abort(new undiciErrors.ResponseExceededMaxSizeError(`a ${this.#status} response dropped for a retry exceeded ${DUMP_LIMIT} bytes`));
      return;
    }
    if (!this.#legacy) this.#caller.onResponseData?.(this, chunk);
    else if (this.#caller.onData?.(chunk) === false) controller.pause();
  }

  onResponseEnd(controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    if (this.#phase === 'dumping') {
      this.#resendAfterStatus();
      return;
    }
    this.#finish(isFailedStatus(this.#status) ? new ServerError(this.#status) : undefined);
    if (!this.#legacy) this.#caller.onResponseEnd?.(this, trailers);
    else this.#caller.onComplete?.(rawOf(controller.rawTrailers, trailers));
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, error: Error): void {
    if (this.#phase === 'dumping') {
      // The dropped response's body failed (or was too long, or the caller aborted): the
      // status was the pod's answer, and the retry was decided on it.
      this.#resendAfterStatus();
      return;
    }
    this.#finish(error);
    if (this.#phase !== 'answered' && this.#mayResend(this.#phase === 'sent', error)) {
      this.#failure = error;
      this.#resend();
      return;
    }
    this.reject(error);
  }

  #start(context: unknown): void {
    this.#started = true;
    if (!this.#legacy) this.#caller.onRequestStart!(this, context);
    else this.#caller.onConnect?.((reason) => this.abort(reason ?? new undiciErrors.RequestAbortedError()), context);
  }

  /**
   * Whether the attempt that just failed (with `error`, or a status) may be sent again: one that
   * never reached the pod (`sent` false) while attempts are left, unless the request itself was
   * at fault; one that may have, when its method and body allow and the budget has one to
   * spare (taken from it here).
   */
  #mayResend(sent: boolean, error?: Error): boolean {
    if (this.#aborted || this.#attempt >= this.#settings.retries) return false;
    if (!sent) return !REQUEST_FAULTS.has((error as { code?: string } | undefined)?.code ?? '');
    const { methods, pool } = this.#settings;
    const method = this.#options.method;
    if (methods !== undefined && !methods.has(method) && !methods.has(method.toUpperCase())) return false;
    return replayable(this.#options.body) && pool.retry.withdraw();
  }

  #resendAfterStatus(): void {
    this.#finish(new ServerError(this.#status));
    // The caller never saw this response; if no pod takes the retry, it hears why from the wait.
    this.#failure = undefined;
    this.#resend();
  }

  /** The next attempt: at once for a request that never reached its pod, after the backoff for one that may have. */
  #resend(): void {
    if (this.#aborted) {
      this.reject(this.#reason!);
      return;
    }
    this.#attempt++;
    this.#pod = undefined;
    this.#status = 0;
    // A dropped response was sent too.
    const sent = this.#phase !== 'queued';
    if (!sent) {
      // Not from inside the Client that failed it: it may be failing its whole queue right now.
      queueMicrotask(() => this.#redispatch());
      return;
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#redispatch();
    }, this.#settings.pool.retry.delayMs(this.#attempt));
  }

  #redispatch(): void {
    if (this.#aborted) {
      this.reject(this.#reason!);
      return;
    }
    const { pool, waitForReady } = this.#settings;
    let call: PoolCall<Dispatcher>;
    try {
      call = pool.begin(undefined, this.#last);
    } catch (error) {
      if (waitForReady && error instanceof PodpoolError && error.code === ErrorCode.NO_ENDPOINTS) this.wait();
      else this.reject(this.#failure ?? (error as Error));
      return;
    }
    this.send(call);
  }

  /** The pool hears first, so whoever waits on the response sees the call no longer in flight. */
  #finish(error: Error | undefined): void {
    const call = this.#call;
    if (call === undefined) return;
    this.#call = undefined;
    this.#last = call.endpoint;
    call.end(error);
  }
}

/**
 * Headers as the legacy API passes them: undici's raw list when the connection kept one
 * (HTTP/1.1), else built from the parsed object (HTTP/2), as undici's own wrappers do.
 */
function rawOf(raw: Dispatcher.DispatchController['rawHeaders'], parsed: IncomingHttpHeaders | null | undefined): RawHeaders {
  if (Array.isArray(raw)) return raw;
  const headers = (raw ?? parsed ?? {}) as IncomingHttpHeaders;
  const list: Buffer[] = [];
  for (const name of Object.keys(headers)) {
    if (name.startsWith(':')) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const one of value) list.push(Buffer.from(name, 'latin1'), Buffer.from(one, 'latin1'));
    else list.push(Buffer.from(name, 'latin1'), Buffer.from(String(value), 'latin1'));
  }
  return list;
}
