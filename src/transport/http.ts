import { connect as netConnect, type Socket } from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { Client, Dispatcher, Pool as UndiciPool, errors as undiciErrors, type buildConnector } from 'undici';
import type { Endpoint } from '../endpoint.ts';
import { ErrorCode, PodpoolError } from '../errors.ts';
import { checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import type { Pool, PoolCall } from '../pool/pool.ts';
import type { Connection, Transport } from './transport.ts';

/** Options of {@link httpTransport}. */
export interface HttpTransportOptions {
  /**
   * Connections per pod. Default 1.
   *
   * HTTP/1.1: keep-alive sockets, each carrying one request at a time (or `pipelining`).
   * HTTP/1.1 servers (Node's among them) answer one request per socket at a time, so a pod that
   * serves several requests at once needs as many connections to be kept busy.
   *
   * HTTP/2 (`http2: true`): HTTP/2 connections, each carrying up to `client.maxConcurrentStreams`
   * requests at once as streams (undici's default 100, lowered to what the pod's SETTINGS
   * allow). One is nearly always enough; another opens only while every stream of the first is
   * taken.
   *
   * Either way the first is opened before the member counts as ready and decides when it is
   * lost; the others are opened when load needs them and kept alive.
   */
  connections?: number;
  /** HTTP/1.1 only: requests sent on each connection before their responses arrive (pipelining). Default 1. */
  pipelining?: number;
  /**
   * Speak HTTP/2 to the pods. With `tls`, it is agreed with ALPN (`h2` only: a pod that doesn't
   * agree fails the connect, naming what it chose); without, it is cleartext HTTP/2 with prior
   * knowledge (h2c), as gRPC speaks it. Default false: HTTP/1.1.
   */
  http2?: boolean;
  /** Connect with TLS, with these options (`ca`, `servername` naming the Service, …). */
  tls?: ConnectionOptions;
  /** Gives up on a TCP (and TLS) handshake after this long. Default 10 s. */
  connectTimeoutMs?: number;
  /** More undici `Client` options (`headersTimeout`, `bodyTimeout`, `maxResponseSize`, `maxConcurrentStreams`, …). */
  client?: Omit<Client.Options, 'connect' | 'pipelining' | 'connections' | 'allowH2' | 'useH2c'>;
}

const TRANSPORT_OPTIONS = optionNames<HttpTransportOptions>({
  connections: true,
  pipelining: true,
  http2: true,
  tls: true,
  connectTimeoutMs: true,
  client: true,
});

/** undici's and the socket's codes that say the pod or the path to it failed, not the request. */
const WIRE_FAILURES = new Set([
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
  'UND_ERR_DESTROYED',
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ERR_HTTP2_STREAM_ERROR',
  'ERR_HTTP2_SESSION_ERROR',
  'ERR_HTTP2_GOAWAY_SESSION',
  ErrorCode.TIMEOUT,
  ErrorCode.CONNECTION_LOST,
]);

/** undici's own default, which its `H2CClient` also uses for pipelining. */
const DEFAULT_H2_STREAMS = 100;

/** How a pod is dialled: what `openSocket` needs. */
interface Dial {
  readonly tls: ConnectionOptions | undefined;
  readonly http2: boolean;
  readonly timeoutMs: number;
}

/**
 * HTTP keep-alive: per pod, an undici `Client` over one connection (or a `Pool` of
 * `connections`), the first opened before the member counts as ready and watched for as long
 * as it lives. When it closes (the pod died, or it closed an idle keep-alive connection) the
 * pool opens a new one. HTTP/1.1 by default; HTTP/2 with `http2: true`, over TLS (ALPN) or
 * cleartext (h2c). Callbacks get the pod's undici `Dispatcher`: `client.request(…)`.
 */
export function httpTransport(options: HttpTransportOptions = {}): Transport<Dispatcher> {
  checkOptions(options, TRANSPORT_OPTIONS);
  const { connections = 1, http2 = false, tls, connectTimeoutMs = 10_000, client: clientOptions = {} } = options;
  checkNumber('connections', connections, { min: 1, integer: true });
  if (typeof http2 !== 'boolean') invalidOption('http2', 'a boolean', http2);
  if (http2 && options.pipelining !== undefined) {
    invalidOption('pipelining', 'left out with http2: HTTP/2 carries concurrent requests as streams (client.maxConcurrentStreams)', options.pipelining);
  }
  checkNumber('connectTimeoutMs', connectTimeoutMs, { min: 1 });
  if (tls !== undefined && (tls === null || typeof tls !== 'object')) invalidOption('tls', 'TLS connection options', tls);
  if (clientOptions === null || typeof clientOptions !== 'object') invalidOption('client', 'undici Client options', clientOptions);
  for (const name of ['allowH2', 'useH2c'] as const) {
    if (name in clientOptions) invalidOption(`client.${name}`, 'left out: use the http2 option', (clientOptions as Record<string, unknown>)[name]);
  }
  // Over HTTP/2, undici counts `pipelining` until the first connection says it speaks HTTP/2;
  // as many as the streams keeps a burst of first requests on one connection.
  const { maxConcurrentStreams = DEFAULT_H2_STREAMS } = clientOptions as { maxConcurrentStreams?: number };
  const pipelining = http2 ? maxConcurrentStreams : (options.pipelining ?? 1);
  checkNumber('pipelining', pipelining, { min: 1, integer: true });
  const dial: Dial = { tls, http2, timeoutMs: connectTimeoutMs };

  return {
    name: 'http',
    async connect(endpoint, { signal, lost }): Promise<Connection<Dispatcher>> {
      const socket = await openSocket(endpoint, dial, signal);
      let handedOver = false;
      // undici connects lazily, on the first request, and gets the socket we already opened.
      // With one connection it never gets a second: a lost socket is the pool's to replace,
      // with its backoff. With more, the others are undici's to open and keep alive.
      const connect: buildConnector.connector = (_opts, callback) => {
        if (handedOver && connections > 1) {
          openSocket(endpoint, dial, undefined).then(
            (more) => callback(null, more),
            (error: Error) => callback(error, null),
          );
          return;
        }
        const first = !handedOver;
        handedOver = true;
        // The callback must not run inside the connector: undici's resume loop is not re-entrant.
        queueMicrotask(() => {
          if (first) callback(null, socket);
          else callback(new PodpoolError(ErrorCode.CONNECTION_LOST, `the connection to ${endpoint.key} is closed`), null);
        });
      };
      const origin = originOf(endpoint, tls !== undefined);
      const undiciOptions = { ...clientOptions, pipelining, connect, allowH2: http2 };
      const client = connections === 1 ? new Client(origin, undiciOptions) : new UndiciPool(origin, { ...undiciOptions, connections });
      let socketError: Error | undefined;
      socket.on('error', (error) => {
        socketError = error;
      });
      // `socket.closed` turns true at destroy(), before the handle is freed: wait for the event.
      const socketClosed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.once('close', () => {
        // After every 'close' listener has run: undici's own marks the socket closed, and a
        // Client.destroy() that the pool calls from lost() waits forever for a 'close' that is
        // being emitted right now unless undici has seen it.
        queueMicrotask(() => lost(socketError ?? new Error(`${endpoint.key} closed the connection`)));
      });
      return {
        client: tls === undefined ? client : withServername(client, tls.servername ?? endpoint.address),
        async close() {
          await client.destroy().catch(() => {});
          socket.destroy();
          await socketClosed;
        },
      };
    },
    isPodFailure(error) {
      if (error === null || typeof error !== 'object') return false;
      const { code, statusCode } = error as { code?: unknown; statusCode?: unknown };
      if (typeof statusCode === 'number') return statusCode >= 500;
      return typeof code === 'string' && WIRE_FAILURES.has(code);
    },
  };
}

/**
 * undici reconnects an `https:` client whenever a request's servername (taken from its `Host`)
 * differs from the connection's, which here is a pod's: a request naming the Service would cost
 * the pool its connection. The TLS session was agreed once, with the transport's `servername`;
 * every request names that one.
 */
function withServername(client: Dispatcher, servername: string): Dispatcher {
  return client.compose(
    (dispatch) => (options, handler) =>
      dispatch((options as { servername?: string }).servername === servername ? options : { ...options, servername } as Dispatcher.DispatchOptions, handler),
  );
}

function originOf(endpoint: Endpoint, secure: boolean): string {
  const host = endpoint.address.includes(':') ? `[${endpoint.address}]` : endpoint.address;
  return `${secure ? 'https' : 'http'}://${host}:${endpoint.port}`;
}

/** Opens one connection to the pod, agreeing on HTTP/2 when asked; `signal` only for the pool's own. */
function openSocket(endpoint: Endpoint, { tls, http2, timeoutMs }: Dial, signal: AbortSignal | undefined): Promise<Socket> {
  return new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    const socket =
      tls === undefined
        ? netConnect({ host: endpoint.address, port: endpoint.port, noDelay: true })
        : tlsConnect({ ALPNProtocols: [http2 ? 'h2' : 'http/1.1'], ...tls, host: endpoint.address, port: endpoint.port });
    const cleanup = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('error', fail);
    };
    const fail = (error: unknown): void => {
      cleanup();
      socket.destroy();
      reject(error);
    };
    const onAbort = (): void => fail(signal!.reason);
    const timer = setTimeout(() => fail(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('error', fail);
    socket.once(tls === undefined ? 'connect' : 'secureConnect', () => {
      if (http2) {
        const agreed = (socket as Socket & { alpnProtocol?: string | false }).alpnProtocol;
        if (tls === undefined) {
          // Prior knowledge: undici speaks HTTP/2 on a socket that says it agreed on h2.
          (socket as Socket & { alpnProtocol?: string }).alpnProtocol = 'h2';
        } else if (agreed !== 'h2') {
          fail(new Error(`the pod did not agree to HTTP/2 over TLS (ALPN: ${agreed || 'none'}); leave http2 off for an HTTP/1.1 pod`));
          return;
        }
      }
      cleanup();
      socket.setKeepAlive(true, 60_000);
      resolve(socket);
    });
  });
}

/** An HTTP status ≥ 500 seen by the dispatcher: it counts against the pod that sent it. */
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
  wait(pool: Pool<Dispatcher>, timeoutMs: number, options: Dispatcher.DispatchOptions): void {
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
    this.#finish(this.#status >= 500 ? new ServerError(this.#status) : undefined);
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
 * ClusterIP; path and query are kept. A 5xx or a wire error counts against the pod; a wire
 * error or an abort reaches the caller. Closing the dispatcher stops it taking requests; close
 * the pool to close connections.
 */
export class PoolDispatcher extends Dispatcher {
  readonly #pool: Pool<Dispatcher>;
  readonly #waitForReady: boolean;
  readonly #readyTimeoutMs: number;
  #closed = false;

  constructor(pool: Pool<Dispatcher>, options: HttpDispatcherOptions = {}) {
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
      if (this.#closed) throw new PodpoolError(ErrorCode.CLOSED, 'the dispatcher is closed');
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
export function httpDispatcher(pool: Pool<Dispatcher>, options?: HttpDispatcherOptions): PoolDispatcher {
  return new PoolDispatcher(pool, options);
}
