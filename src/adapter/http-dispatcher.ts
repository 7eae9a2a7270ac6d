import type { IncomingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import { Dispatcher, errors as undiciErrors } from 'undici';
import { ClosedError, ErrorCode, PodpoolError } from '../errors.ts';
import { checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import type { PoolCall } from '../call/call.ts';
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

type CallerHandler = Dispatcher.DispatchHandler & LegacyHandler;

/**
 * One request through the dispatcher. Toward the pod's undici `Client` it is a handler of
 * undici 8's API; toward the caller it is the controller, and it speaks whichever handler API
 * the caller's undici uses. It tells the pool how the request ended, exactly once. When no pod
 * is ready it holds the request: the caller can abort it meanwhile, and hears why it failed.
 */
class RequestRelay implements Dispatcher.DispatchHandler, Dispatcher.DispatchController {
  readonly #caller: CallerHandler;
  readonly #legacy: boolean;
  #end: PoolCall<Dispatcher>['end'] | undefined = undefined;
  /** The pod's controller, once its `Client` started the request. */
  #pod: Dispatcher.DispatchController | undefined = undefined;
  /** The caller heard `onRequestStart` / `onConnect`. */
  #started = false;
  #aborted = false;
  #reason: Error | null = null;
  #paused = false;
  #status = 0;
  /** Ends the wait for a ready pod, when the request waits for one. */
  #waiting: AbortController | undefined = undefined;

  constructor(caller: CallerHandler) {
    this.#caller = caller;
    this.#legacy = typeof caller.onRequestStart !== 'function';
  }

  /** Sends the request on the pod's connection. */
  send(call: PoolCall<Dispatcher>, options: Dispatcher.DispatchOptions): boolean {
    this.#end = call.end;
    return call.client.dispatch(options, this);
  }

  /** Holds the request until a pod is ready, then sends it; fails it when the wait ends without one. */
  wait(pool: AdapterPool<Dispatcher>, timeoutMs: number, options: Dispatcher.DispatchOptions): void {
    const waiting = new AbortController();
    this.#waiting = waiting;
    // Started now, so the caller has its abort while the request waits.
    this.#start(undefined);
    if (this.#aborted) {
      this.reject(this.#reason!);
      return;
    }
    pool.beginWhenReady({ signal: waiting.signal, timeoutMs }).then(
      (call) => {
        this.#waiting = undefined;
        this.send(call, options);
      },
      (error: Error) => {
        this.#waiting = undefined;
        this.reject(this.#aborted ? this.#reason! : error);
      },
    );
  }

  /** Fails a request that never reached a pod. */
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
    return this.#pod?.paused ?? this.#paused;
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
    if (this.#pod !== undefined) this.#pod.abort(reason);
    else this.#waiting?.abort(reason);
  }

  pause(): void {
    if (this.#pod !== undefined) this.#pod.pause();
    else this.#paused = true;
  }

  resume(): void {
    if (this.#pod !== undefined) this.#pod.resume();
    else this.#paused = false;
  }

  // ---- the handler, as the pod's Client sees it ----

  onRequestStart(controller: Dispatcher.DispatchController, context: unknown): void {
    this.#pod = controller;
    if (this.#aborted) {
      controller.abort(this.#reason!);
      return;
    }
    if (this.#paused) controller.pause();
    if (!this.#started) this.#start(context);
  }

  onRequestUpgrade(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, socket: Duplex): void {
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
    if (!this.#legacy) this.#caller.onResponseData?.(this, chunk);
    else if (this.#caller.onData?.(chunk) === false) controller.pause();
  }

  onResponseEnd(controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    this.#finish(isFailedStatus(this.#status) ? new ServerError(this.#status) : undefined);
    if (!this.#legacy) this.#caller.onResponseEnd?.(this, trailers);
    else this.#caller.onComplete?.(rawOf(controller.rawTrailers, trailers));
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, error: Error): void {
    this.#finish(error);
    this.reject(error);
  }

  #start(context: unknown): void {
    this.#started = true;
    if (!this.#legacy) this.#caller.onRequestStart!(this, context);
    else this.#caller.onConnect?.((reason) => this.abort(reason ?? new undiciErrors.RequestAbortedError()), context);
  }

  /** The pool hears first, so whoever waits on the response sees the call no longer in flight. */
  #finish(error: Error | undefined): void {
    const end = this.#end;
    this.#end = undefined;
    end?.(error);
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

/** Options of {@link httpDispatcher}. */
export interface HttpDispatcherOptions {
  /**
   * When no pod is ready: `true` (the default) holds the request until one is, up to
   * `readyTimeoutMs` or until the caller aborts it (`signal`), then fails it with
   * `PODPOOL_NO_ENDPOINTS`; `false` fails it at once.
   */
  waitForReady?: boolean;
  /** How long a request may wait for a ready pod. Default 10 s. */
  readyTimeoutMs?: number;
}

const DISPATCHER_OPTIONS = optionNames<HttpDispatcherOptions>({ waitForReady: true, readyTimeoutMs: true });

/**
 * An undici `Dispatcher` that sends each request to a pod the pool picks, so
 * `request(url, { dispatcher })` and `fetch(url, { dispatcher })` balance per request, whether
 * the `fetch` is Node's built-in one (Node 22 and 24) or that of undici 6, 7 or 8. The URL's
 * host names the Service and is sent as `Host` (unless the request sets one), as through the
 * ClusterIP; path and query are kept. A 5xx, a 429 or a wire error counts against the pod; a wire
 * error or an abort reaches the caller. Closing the dispatcher stops it taking requests; close
 * the pool to close connections.
 */
export class PoolDispatcher extends Dispatcher {
  readonly #pool: AdapterPool<Dispatcher>;
  readonly #waitForReady: boolean;
  readonly #readyTimeoutMs: number;
  #closed = false;

  constructor(pool: AdapterPool<Dispatcher>, options: HttpDispatcherOptions = {}) {
    super();
    if (pool === null || typeof pool !== 'object' || typeof pool.begin !== 'function') {
      invalidOption('pool', 'a pool made with createPool({ transport: httpTransport(…) })', pool);
    }
    checkOptions(options, DISPATCHER_OPTIONS);
    const { waitForReady = true, readyTimeoutMs = 10_000 } = options;
    if (typeof waitForReady !== 'boolean') invalidOption('waitForReady', 'a boolean', waitForReady);
    checkNumber('readyTimeoutMs', readyTimeoutMs, { min: 1 });
    this.#pool = pool;
    this.#waitForReady = waitForReady;
    this.#readyTimeoutMs = readyTimeoutMs;
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const relay = new RequestRelay(handler as CallerHandler);
    let call: PoolCall<Dispatcher>;
    try {
      if (this.#closed) throw new ClosedError('the dispatcher is closed');
      call = this.#pool.begin();
    } catch (error) {
      if (this.#waitForReady && error instanceof PodpoolError && error.code === ErrorCode.NO_ENDPOINTS) {
        relay.wait(this.#pool, this.#readyTimeoutMs, this.#toPod(options));
        return true;
      }
      relay.reject(error as Error);
      return false;
    }
    return relay.send(call, this.#toPod(options));
  }

  #origin: string | URL | undefined = undefined;
  #host = '';

  /**
   * The options for the pod's `Client`. The URL names the Service; the request goes to a pod's
   * address. Like a request through the ClusterIP, it carries the URL's host as `Host` (virtual
   * hosts, TLS-terminating sidecars and logs expect the Service name), unless the caller set one.
   * undici 6 and 7's `request()` leave their `dispatcher` option in, which undici 8's `Client`
   * refuses: it goes.
   */
  #toPod(options: Dispatcher.DispatchOptions): Dispatcher.DispatchOptions {
    if ('dispatcher' in options) {
      const { dispatcher: _, ...rest } = options as Dispatcher.DispatchOptions & { dispatcher?: unknown };
      options = rest;
    }
    const { origin, headers } = options;
    if (origin === undefined) return options;
    if (origin !== this.#origin) {
      this.#host = typeof origin === 'string' ? new URL(origin).host : origin.host;
      this.#origin = origin;
    }
    const host = this.#host;
    if (headers == null) return { ...options, headers: { host } };
    if (Array.isArray(headers)) {
      for (let i = 0; i < headers.length; i += 2) if (String(headers[i]).toLowerCase() === 'host') return options;
      return { ...options, headers: [...headers, 'host', host] };
    }
    if (Symbol.iterator in headers) {
      const pairs = [...(headers as Iterable<[string, string | string[] | undefined]>)];
      if (pairs.some(([name]) => name.toLowerCase() === 'host')) return options;
      return { ...options, headers: [...pairs, ['host', host]] as Iterable<[string, string]> };
    }
    for (const name of Object.keys(headers)) if (name.toLowerCase() === 'host') return options;
    return { ...options, headers: { ...(headers as Record<string, string>), host } };
  }

  override close(): Promise<void>;
  override close(callback: () => void): void;
  override close(callback?: () => void): Promise<void> | void {
    this.#closed = true;
    if (callback === undefined) return Promise.resolve();
    queueMicrotask(callback);
  }

  override destroy(): Promise<void>;
  override destroy(error: Error | null): Promise<void>;
  override destroy(callback: () => void): void;
  override destroy(error: Error | null, callback: () => void): void;
  override destroy(a?: Error | null | (() => void), b?: () => void): Promise<void> | void {
    this.#closed = true;
    const callback = typeof a === 'function' ? a : b;
    if (callback === undefined) return Promise.resolve();
    queueMicrotask(callback);
  }
}

/**
 * An undici `Dispatcher` over an HTTP pool: `fetch(url, { dispatcher: httpDispatcher(pool) })`.
 * A request made while no pod is ready waits for one (see {@link HttpDispatcherOptions}).
 */
export function httpDispatcher(pool: AdapterPool<Dispatcher>, options?: HttpDispatcherOptions): PoolDispatcher {
  return new PoolDispatcher(pool, options);
}
