import { Dispatcher } from 'undici';
import { ClosedError, ErrorCode, PodpoolError } from '../errors.ts';
import { checkDelay, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import type { PoolCall } from '../call/call.ts';
import type { AdapterPool } from '../pool/adapter-pool.ts';
import { RequestRelay, type CallerHandler, type RelaySettings } from './http-relay.ts';

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
  /**
   * When a request is sent again on another pod (see {@link HttpDispatcherRetryOptions});
   * `false`: never. A request that never reached a pod is always sent again while attempts are left.
   */
  retry?: HttpDispatcherRetryOptions | false;
}

/**
 * `httpDispatcher(pool, { retry })`. A request that never reached its pod (refused connect, a
 * connection closed before it was written) is sent again on another pod, at once and free of the
 * pool's retry budget. One that may have reached it (a wire error before any response, or a
 * status of `statusCodes`) is sent again only for a method of `methods`, with a body that can be
 * sent twice (none, a string, bytes: not a stream, and `fetch` streams every body), before the
 * caller saw anything of the response, when the pool's `retryBudget` allows, after the pool's
 * `retry` backoff, and on another pod when one is ready. When no attempt is left, the caller gets
 * the last response or error as it would have without retries.
 */
export interface HttpDispatcherRetryOptions {
  /** Attempts after the first. Default: the pool's `retry.retries` (2). */
  retries?: number;
  /**
   * Methods sent again after they may have reached a pod. Default RFC 9110's idempotent methods
   * (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or every method when the pool's `retry` says
   * `idempotent: true`.
   */
  methods?: readonly string[];
  /**
   * Statuses that send a request of `methods` again: its response is read, dropped, and counted
   * against the pod. Default 502, 503 and 504: the pod (or its sidecar) could not answer now.
   * A 429 is not among them: the pod asks the client to slow down, and rate limits are often
   * shared by every pod. `Retry-After` is not waited for: it speaks for the pod that sent it,
   * and the retry goes to another.
   */
  statusCodes?: readonly number[];
}

const DISPATCHER_OPTIONS = optionNames<HttpDispatcherOptions>({ waitForReady: true, readyTimeoutMs: true, retry: true });
const RETRY_OPTIONS = optionNames<HttpDispatcherRetryOptions>({ retries: true, methods: true, statusCodes: true });

/** RFC 9110 §9.2.2: a second request has the effect of the first (CONNECT excepted). */
const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);
const RETRIED_STATUSES: ReadonlySet<number> = new Set([502, 503, 504]);
const NO_STATUSES: ReadonlySet<number> = new Set();

/** The retry part of the relays' settings, from the dispatcher's `retry` option and the pool's policy. */
function retrySettings(pool: AdapterPool<Dispatcher>, retry: HttpDispatcherRetryOptions | false | undefined): Pick<RelaySettings, 'retries' | 'methods' | 'statusCodes'> {
  if (retry === false) return { retries: 0, methods: IDEMPOTENT_METHODS, statusCodes: NO_STATUSES };
  checkOptions(retry ?? {}, RETRY_OPTIONS, 'retry');
  const { policy } = pool.retry;
  const { retries = policy.retries, methods, statusCodes } = retry ?? {};
  checkNumber('retry.retries', retries, { min: 0, integer: true });
  if (methods !== undefined && (!Array.isArray(methods) || !methods.every((m) => typeof m === 'string' && /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(m)))) {
    invalidOption('retry.methods', 'an array of HTTP method names', methods);
  }
  if (statusCodes !== undefined && (!Array.isArray(statusCodes) || !statusCodes.every((c) => Number.isInteger(c) && c >= 400 && c <= 599))) {
    invalidOption('retry.statusCodes', 'an array of HTTP statuses from 400 to 599', statusCodes);
  }
  return {
    retries,
    methods: methods !== undefined ? new Set(methods.map((m) => m.toUpperCase())) : policy.idempotent ? undefined : IDEMPOTENT_METHODS,
    statusCodes: statusCodes !== undefined ? new Set(statusCodes) : RETRIED_STATUSES,
  };
}

/**
 * An undici `Dispatcher` that sends each request to a pod the pool picks, so
 * `request(url, { dispatcher })` and `fetch(url, { dispatcher })` balance per request, whether
 * the `fetch` is Node's built-in one (Node 22 and 24) or that of undici 6, 7 or 8. The URL's
 * host names the Service and is sent as `Host` (unless the request sets one), as through the
 * ClusterIP; path and query are kept. A 5xx, a 429 or a wire error counts against the pod, on
 * every attempt. A request that never reached its pod is sent again on another; an idempotent
 * one also after it may have (see {@link HttpDispatcherRetryOptions}); the last error or
 * response, and an abort, reach the caller. Closing the dispatcher stops it taking requests;
 * close the pool to close connections.
 */
export class PoolDispatcher extends Dispatcher {
  readonly #settings: RelaySettings;
  #closed = false;

  constructor(pool: AdapterPool<Dispatcher>, options: HttpDispatcherOptions = {}) {
    super();
    if (pool === null || typeof pool !== 'object' || typeof pool.begin !== 'function') {
      invalidOption('pool', 'a pool made with createPool({ transport: httpTransport(…) })', pool);
    }
    checkOptions(options, DISPATCHER_OPTIONS);
    const { waitForReady = true, readyTimeoutMs = 10_000 } = options;
    if (typeof waitForReady !== 'boolean') invalidOption('waitForReady', 'a boolean', waitForReady);
    checkDelay('readyTimeoutMs', readyTimeoutMs);
    this.#settings = Object.freeze({ pool, waitForReady, readyTimeoutMs, ...retrySettings(pool, options.retry) });
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const relay = new RequestRelay(handler as CallerHandler, this.#settings, this.#toPod(options));
    let call: PoolCall<Dispatcher>;
    try {
      if (this.#closed) throw new ClosedError('the dispatcher is closed');
      call = this.#settings.pool.begin();
    } catch (error) {
      if (this.#settings.waitForReady && error instanceof PodpoolError && error.code === ErrorCode.NO_ENDPOINTS) {
        relay.wait();
        return true;
      }
      relay.reject(error as Error);
      return false;
    }
    return relay.send(call);
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
