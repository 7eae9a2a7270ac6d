import type { IncomingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ConnectionOptions } from 'node:tls';
import { Client, Dispatcher, Pool as UndiciPool, type buildConnector } from 'undici';
import type { Endpoint } from '../endpoint.ts';
import { messageOf } from '../abort.ts';
import { InvalidOptionError } from '../errors.ts';
import { checkDelay, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import { checkTls } from './tls.ts';
import { PodSockets, openSocket, type Dial } from './http-sockets.ts';
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
   * Either way the first is opened before the member counts as ready; the others are opened
   * when load needs them and kept alive. A connection the server closes is replaced; a connect
   * that fails makes the pod lost.
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
  /**
   * Connect with TLS, with these options (`ca`, `servername` naming the Service, …). Loaded once,
   * at the door: a CA, certificate or key Node can't load throws `PODPOOL_INVALID_OPTION` here.
   */
  tls?: ConnectionOptions;
  /** Gives up on a TCP (and TLS) handshake after this long. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * More undici `Client` options (`headersTimeout`, `bodyTimeout`, `maxResponseSize`,
   * `maxConcurrentStreams`, …). `headersTimeout` defaults to 30 s here (undici's own is 300 s),
   * the pool's default call deadline: a request through `httpDispatcher` to a pod that accepts
   * and never answers fails then (`UND_ERR_HEADERS_TIMEOUT`, counted against the pod). Checked
   * at the door: an unknown name, a timer past 2^31 - 1 ms, a value undici refuses, and the
   * dialling options undici ignores here (`connectTimeout`, `socketPath`, `localAddress`, …:
   * the transport opens the sockets) throw `PODPOOL_INVALID_OPTION`.
   */
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

type ClientOptions = NonNullable<HttpTransportOptions['client']>;

/**
 * undici's options for dialling, which it ignores once it is given a `connect` function, as
 * every pod's `Client` is: the transport opens the sockets, with `tls` and `connectTimeoutMs`.
 */
const DIAL_OPTIONS = ['connectTimeout', 'socketPath', 'localAddress', 'maxCachedSessions', 'autoSelectFamily', 'autoSelectFamilyAttemptTimeout', 'tls'] as const;

/**
 * undici's `Client` options that take effect on a pod's `Client`, for telling a misspelled one
 * (`headerTimeout`) from a real one: not the ones undici 8 removed (it refuses them), nor those
 * for dialling ({@link DIAL_OPTIONS}).
 */
const CLIENT_OPTIONS = optionNames<Omit<ClientOptions, 'socketTimeout' | 'requestTimeout' | 'idleTimeout' | 'keepAlive' | 'maxKeepAliveTimeout' | (typeof DIAL_OPTIONS)[number]>>({
  maxHeaderSize: true,
  headersTimeout: true,
  bodyTimeout: true,
  keepAliveTimeout: true,
  keepAliveMaxTimeout: true,
  keepAliveTimeoutThreshold: true,
  strictContentLength: true,
  maxRequestsPerClient: true,
  maxResponseSize: true,
  webSocket: true,
  eventSource: true,
  maxConcurrentStreams: true,
  initialWindowSize: true,
  connectionWindowSize: true,
  pingInterval: true,
  h2Options: true,
  useMilo: true,
});

/** `client` options undici reads as timers: refused past what a timer holds, as podpool's own. */
const CLIENT_DELAYS = ['headersTimeout', 'bodyTimeout', 'keepAliveTimeout', 'keepAliveMaxTimeout', 'keepAliveTimeoutThreshold', 'pingInterval'] as const;

/** Checks `client` at the door: known names, timers a timer holds, nothing silently ignored. */
function checkClientOptions(client: unknown): asserts client is ClientOptions {
  if (client === null || typeof client !== 'object' || Array.isArray(client)) invalidOption('client', 'undici Client options', client);
  for (const name of ['allowH2', 'useH2c'] as const) {
    if (name in client) invalidOption(`client.${name}`, 'left out: use the http2 option', (client as Record<string, unknown>)[name]);
  }
  for (const name of ['connect', 'pipelining', 'connections'] as const) {
    if (name in client) invalidOption(`client.${name}`, `left out: ${name === 'connect' ? 'the transport opens the sockets (see tls and connectTimeoutMs)' : `use the transport's ${name} option`}`, (client as Record<string, unknown>)[name]);
  }
  for (const name of DIAL_OPTIONS) {
    if (name in client) invalidOption(`client.${name}`, 'left out: the transport opens the sockets itself (see its tls and connectTimeoutMs options)', (client as Record<string, unknown>)[name]);
  }
  checkOptions(client, CLIENT_OPTIONS, 'client');
  for (const name of CLIENT_DELAYS) {
    const value = (client as Record<string, unknown>)[name];
    if (value !== undefined) checkDelay(`client.${name}`, value, 0);
  }
}

/**
 * An HTTP status that counts against the pod that sent it: a 5xx (it failed) or a 429 (it is
 * overloaded and says so). A 4xx otherwise is the request's fault.
 */
export function isFailedStatus(status: number): boolean {
  return status >= 500 || status === 429;
}

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
]);

/** How long a request waits for its response's headers unless `client.headersTimeout` says: the pool's default deadline. */
const DEFAULT_HEADERS_TIMEOUT_MS = 30_000;

/** undici's own default, which its `H2CClient` also uses for pipelining. */
const DEFAULT_H2_STREAMS = 100;


/**
 * HTTP keep-alive: per pod, an undici `Client` over one connection (or a `Pool` of
 * `connections`), the first opened before the member counts as ready. A connection the server
 * closes (keep-alive timeout, `maxRequestsPerSocket`, nginx's `keepalive_requests`) is replaced
 * at once, without losing the pod: requests queued on it go out on the new one, and only when no
 * connection has been open for 50 ms (the replacement hangs) is the pod out of the picks. A
 * request that failed before undici wrote it is one `wasNotSent` says never reached the pod. The
 * pod is lost (the pool reconnects with backoff) when a connect fails (a terminating pod's port
 * refuses the replacement) or a fresh connection is dropped unanswered. HTTP/1.1 by default; HTTP/2 with `http2: true`, over TLS (ALPN) or
 * cleartext (h2c). Callbacks get the pod's undici `Dispatcher`: `client.request(…)`.
 */
export function httpTransport(options: HttpTransportOptions = {}): Transport<Dispatcher> {
  checkOptions(options, TRANSPORT_OPTIONS);
  const { connections = 1, http2 = false, connectTimeoutMs = 10_000, client: clientOptions = {} } = options;
  checkNumber('connections', connections, { min: 1, integer: true });
  if (typeof http2 !== 'boolean') invalidOption('http2', 'a boolean', http2);
  if (http2 && options.pipelining !== undefined) {
    invalidOption('pipelining', 'left out with http2: HTTP/2 carries concurrent requests as streams (client.maxConcurrentStreams)', options.pipelining);
  }
  checkDelay('connectTimeoutMs', connectTimeoutMs);
  const tls = options.tls === undefined ? undefined : checkTls(options.tls);
  checkClientOptions(clientOptions);
  // Over HTTP/2, undici counts `pipelining` until the first connection says it speaks HTTP/2;
  // as many as the streams keeps a burst of first requests on one connection.
  const { maxConcurrentStreams = DEFAULT_H2_STREAMS } = clientOptions as { maxConcurrentStreams?: number };
  const pipelining = http2 ? maxConcurrentStreams : (options.pipelining ?? 1);
  checkNumber(http2 ? 'client.maxConcurrentStreams' : 'pipelining', pipelining, { min: 1, integer: true });
  const dial: Dial = { tls, http2, timeoutMs: connectTimeoutMs };
  // What undici itself would refuse when the first pod connects, refused here instead.
  try {
    void new Client('http://127.0.0.1:1', { ...clientOptions, pipelining, connect: () => {}, allowH2: http2 }).destroy().catch(() => {});
  } catch (error) {
    throw new InvalidOptionError(`option client must be undici Client options: ${messageOf(error)}`, { cause: error });
  }

  return {
    name: 'http',
    async connect(endpoint, context): Promise<Connection<Dispatcher>> {
      const { signal } = context;
      const sockets = new PodSockets(endpoint, dial, context);
      // The first socket is opened before the member counts as ready: a pod that can't be
      // reached never is.
      sockets.first(await openSocket(endpoint, dial, signal));
      // undici connects lazily, on the first request and again whenever a socket closed, and gets
      // the socket already opened (the first, or the replacement opened when one closed).
      const connect: buildConnector.connector = (_opts, callback) => {
        // The callback must not run inside the connector: undici's resume loop is not re-entrant.
        sockets.take().then(
          (socket) => callback(null, socket),
          (error: Error) => callback(error, null),
        );
      };
      const origin = originOf(endpoint, tls !== undefined);
      const undiciOptions = { headersTimeout: DEFAULT_HEADERS_TIMEOUT_MS, ...clientOptions, pipelining, connect, allowH2: http2 };
      const client = connections === 1 ? new Client(origin, undiciOptions) : new UndiciPool(origin, { ...undiciOptions, connections });
      return {
        client: tls === undefined ? intercepted(client, watchSending) : intercepted(client, withServername(tls.servername ?? endpoint.address), watchSending),
        async close() {
          sockets.closing = true;
          await client.destroy().catch(() => {});
          await sockets.destroy();
        },
      };
    },
    isPodFailure(error) {
      if (error === null || typeof error !== 'object') return false;
      const { code, statusCode } = error as { code?: unknown; statusCode?: unknown };
      if (typeof statusCode === 'number') return isFailedStatus(statusCode);
      return typeof code === 'string' && WIRE_FAILURES.has(code);
    },
    isFailedResult(result) {
      if (result === null || typeof result !== 'object') return false;
      // undici's request() answers { statusCode }; fetch through the pod's dispatcher a Response.
      const { statusCode, status, ok } = result as { statusCode?: unknown; status?: unknown; ok?: unknown };
      if (typeof statusCode === 'number') return isFailedStatus(statusCode);
      return typeof status === 'number' && typeof ok === 'boolean' && isFailedStatus(status);
    },
    wasNotSent(error) {
      if (error === null || typeof error !== 'object') return false;
      const sent = sending.get(error);
      if (sent !== undefined) return !sent;
      // fetch() rejects with a TypeError of its own ('fetch failed'), the dispatcher's error as its cause.
      const { cause } = error as { cause?: unknown };
      return cause !== null && typeof cause === 'object' && sending.get(cause) === false;
    },
    discard(result) {
      if (result === null || typeof result !== 'object') return;
      const { body } = result as { body?: unknown };
      if (body === null || typeof body !== 'object') return;
      // undici's request() answers a body to dump (its socket then carries the next request); fetch a Response whose stream to cancel.
      const { dump, cancel, locked } = body as { dump?: unknown; cancel?: unknown; locked?: unknown };
      if (typeof dump === 'function') (body as { dump(): Promise<void> }).dump().catch(() => {});
      else if (typeof cancel === 'function' && locked !== true) (body as ReadableStream).cancel().catch(() => {});
    },
  };
}

/**
 * Whether the request an error ended was written, by error: true once undici started writing
 * one that the error ended, false for one it ended before (refused at connect, queued on a client
 * destroyed or behind a socket that closed). Keyed by the error, as callers see it; since undici
 * hands one error object to every request it fails at once, written and queued alike, a written
 * one wins: an error that may have ended a request on the wire never says "not sent".
 */
const sending = new WeakMap<object, boolean>();

/**
 * One request on its way to the pod: tells {@link sending} whether undici had started writing
 * it when it failed. undici calls `onRequestStart` right before it writes a request to a socket
 * (HTTP/1.1) or opens its stream (HTTP/2). Every other step is passed through as is.
 */
class SendWatch implements Dispatcher.DispatchHandler {
  readonly #handler: Dispatcher.DispatchHandler;
  #started = false;

  constructor(handler: Dispatcher.DispatchHandler) {
    this.#handler = handler;
  }

  onRequestStart(controller: Dispatcher.DispatchController, context: unknown): void {
    this.#started = true;
    this.#handler.onRequestStart?.(controller, context);
  }

  onRequestUpgrade(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, socket: Duplex): void {
    this.#handler.onRequestUpgrade?.(controller, statusCode, headers, socket);
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    this.#handler.onResponseStart?.(controller, statusCode, headers, statusMessage);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#handler.onResponseData?.(controller, chunk);
  }

  onResponseEnd(controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    this.#handler.onResponseEnd?.(controller, trailers);
  }

  onResponseError(controller: Dispatcher.DispatchController, error: Error): void {
    if (error !== null && typeof error === 'object') {
      if (this.#started) sending.set(error, true);
      else if (!sending.has(error)) sending.set(error, false);
    }
    // undici throws an error that a handler can't hear; so does this.
    if (typeof this.#handler.onResponseError !== 'function') throw error;
    this.#handler.onResponseError(controller, error);
  }

  onResponseStarted(): void {
    (this.#handler as { onResponseStarted?(): void }).onResponseStarted?.();
  }

  onBodySent(chunk: Buffer): void {
    this.#handler.onBodySent?.(chunk);
  }

  onRequestSent(): void {
    this.#handler.onRequestSent?.();
  }
}

/**
 * The interceptor every pod's dispatcher is composed with, so `wasNotSent` can tell a request
 * that never left from one that may have reached the pod. A handler of undici ≤ 7's API (no
 * `onRequestStart`), which undici 8's `Client` refuses anyway, is passed through.
 */
const watchSending: Dispatcher.DispatcherComposeInterceptor = (dispatch) => (options, handler) =>
  dispatch(options, typeof handler.onRequestStart === 'function' ? new SendWatch(handler) : handler);


/**
 * undici reconnects an `https:` client whenever a request's servername (taken from its `Host`)
 * differs from the connection's, which here is a pod's: a request naming the Service would cost
 * the pool its connection. The TLS session was agreed once, with the transport's `servername`;
 * every request names that one.
 */
function withServername(servername: string): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (options, handler) =>
    dispatch((options as { servername?: string }).servername === servername ? options : ({ ...options, servername } as Dispatcher.DispatchOptions), handler);
}

/**
 * `client` with its `dispatch` passed through `interceptors`, as `client.compose(…)` makes it,
 * without the copy of each request's options that `compose` makes to add an `origin` (some 200
 * bytes a request when the caller gives none): neither interceptor here reads it, nor does the
 * pod's `Client`.
 */
function intercepted(client: Dispatcher, ...interceptors: Dispatcher.DispatcherComposeInterceptor[]): Dispatcher {
  let dispatch: Dispatcher['dispatch'] = client.dispatch.bind(client);
  for (const interceptor of interceptors) dispatch = interceptor(dispatch);
  // Methods read through the proxy (`request`, `stream`, …) call `this.dispatch`: this one.
  return new Proxy(client, { get: (target, key) => (key === 'dispatch' ? dispatch : Reflect.get(target, key)) });
}

function originOf(endpoint: Endpoint, secure: boolean): string {
  const host = endpoint.address.includes(':') ? `[${endpoint.address}]` : endpoint.address;
  return `${secure ? 'https' : 'http'}://${host}:${endpoint.port}`;
}
