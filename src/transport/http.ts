import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { Client, Dispatcher, Pool as UndiciPool, buildConnector } from 'undici';
import type { Endpoint } from '../endpoint.ts';
import { ErrorCode, PodpoolError, checkNumber, invalidOption } from '../errors.ts';
import type { Pool } from '../pool/pool.ts';
import type { Connection, Transport } from './transport.ts';

/** Options of {@link httpTransport}. */
export interface HttpTransportOptions {
  /**
   * Connections per pod. Default 1: one keep-alive socket, one request at a time on it (or
   * `pipelining`). HTTP/1.1 servers (Node's among them) answer one request per socket at a
   * time, so a pod that serves several requests at once needs as many connections to be kept
   * busy. The first is opened before the member counts as ready and decides when it is lost;
   * the others are opened when load needs them and kept alive.
   */
  connections?: number;
  /** Requests sent on each connection before their responses arrive (HTTP/1.1 pipelining). Default 1. */
  pipelining?: number;
  /** Connect with TLS, with these options (`ca`, `servername` naming the Service, …). */
  tls?: ConnectionOptions;
  /** Gives up on a TCP (and TLS) handshake after this long. Default 10 s. */
  connectTimeoutMs?: number;
  /** More undici `Client` options (`headersTimeout`, `bodyTimeout`, `maxResponseSize`, …). */
  client?: Omit<Client.Options, 'connect' | 'pipelining' | 'connections'>;
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
  ErrorCode.TIMEOUT,
  ErrorCode.CONNECTION_LOST,
]);

/**
 * HTTP/1.1 keep-alive: per pod, an undici `Client` over one socket (or a `Pool` of
 * `connections` sockets), the first opened before the member counts as ready and watched for as
 * long as it lives. When it closes (the pod died, or it closed an idle keep-alive connection)
 * the pool opens a new one. Callbacks get the pod's undici `Dispatcher`: `client.request(…)`.
 */
export function httpTransport(options: HttpTransportOptions = {}): Transport<Dispatcher> {
  if (options === null || typeof options !== 'object') invalidOption('options', 'an object', options);
  const { connections = 1, pipelining = 1, tls, connectTimeoutMs = 10_000, client: clientOptions = {} } = options;
  checkNumber('connections', connections, { min: 1, integer: true });
  checkNumber('pipelining', pipelining, { min: 1, integer: true });
  checkNumber('connectTimeoutMs', connectTimeoutMs, { min: 1 });
  if (tls !== undefined && (tls === null || typeof tls !== 'object')) invalidOption('tls', 'TLS connection options', tls);
  if (clientOptions === null || typeof clientOptions !== 'object') invalidOption('client', 'undici Client options', clientOptions);

  return {
    name: 'http',
    async connect(endpoint, { signal, lost }): Promise<Connection<Dispatcher>> {
      const socket = await openSocket(endpoint, tls, connectTimeoutMs, signal);
      let handedOver = false;
      const more = connections > 1 ? buildConnector({ ...tls, timeout: connectTimeoutMs }) : undefined;
      // undici connects lazily, on the first request, and gets the socket we already opened.
      // With one connection it never gets a second: a lost socket is the pool's to replace,
      // with its backoff. With more, the others are undici's to open and keep alive.
      const connect: buildConnector.connector = (opts, callback) => {
        if (handedOver && more !== undefined) {
          more(opts, callback);
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
      const client =
        connections === 1
          ? new Client(origin, { ...clientOptions, pipelining, connect })
          : new UndiciPool(origin, { ...clientOptions, pipelining, connections, connect });
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
        client,
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

function originOf(endpoint: Endpoint, secure: boolean): string {
  const host = endpoint.address.includes(':') ? `[${endpoint.address}]` : endpoint.address;
  return `${secure ? 'https' : 'http'}://${host}:${endpoint.port}`;
}

function openSocket(
  endpoint: Endpoint,
  tls: ConnectionOptions | undefined,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    signal.throwIfAborted();
    const socket =
      tls === undefined
        ? netConnect({ host: endpoint.address, port: endpoint.port, noDelay: true })
        : tlsConnect({ ALPNProtocols: ['http/1.1'], ...tls, host: endpoint.address, port: endpoint.port });
    const cleanup = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket.off('error', fail);
    };
    const fail = (error: unknown): void => {
      cleanup();
      socket.destroy();
      reject(error);
    };
    const onAbort = (): void => fail(signal.reason);
    const timer = setTimeout(() => fail(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('error', fail);
    socket.once(tls === undefined ? 'connect' : 'secureConnect', () => {
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

/** Forwards every callback to the caller's handler and tells the pool how the request ended. */
class RecordingHandler implements Dispatcher.DispatchHandler {
  readonly #handler: Dispatcher.DispatchHandler;
  readonly #end: (error?: unknown) => void;
  #status = 0;

  constructor(handler: Dispatcher.DispatchHandler, end: (error?: unknown) => void) {
    this.#handler = handler;
    this.#end = end;
  }

  onRequestStart(controller: Dispatcher.DispatchController, context: unknown): void {
    this.#handler.onRequestStart?.(controller, context);
  }

  onRequestUpgrade(controller: Dispatcher.DispatchController, statusCode: number, headers: any, socket: any): void {
    this.#end();
    this.#handler.onRequestUpgrade?.(controller, statusCode, headers, socket);
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: any, statusMessage?: string): void {
    this.#status = statusCode;
    this.#handler.onResponseStart?.(controller, statusCode, headers, statusMessage);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#handler.onResponseData?.(controller, chunk);
  }

  onResponseEnd(controller: Dispatcher.DispatchController, trailers: any): void {
    this.#end(this.#status >= 500 ? new ServerError(this.#status) : undefined);
    this.#handler.onResponseEnd?.(controller, trailers);
  }

  onResponseError(controller: Dispatcher.DispatchController, error: Error): void {
    this.#end(error);
    this.#handler.onResponseError?.(controller, error);
  }
}

/**
 * An undici `Dispatcher` that sends each request to a pod the pool picks, so
 * `request(url, { dispatcher })` and `fetch(url, { dispatcher })` balance per request. The URL's
 * host names the Service and is sent as `Host` (unless the request sets one), as through the
 * ClusterIP; path and query are kept. A 5xx or a wire error counts against the pod. Closing the dispatcher stops it taking requests; close the pool to close connections.
 */
export class PoolDispatcher extends Dispatcher {
  readonly #pool: Pool<Dispatcher>;
  #closed = false;

  constructor(pool: Pool<Dispatcher>) {
    super();
    this.#pool = pool;
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    let call;
    try {
      if (this.#closed) throw new PodpoolError(ErrorCode.CLOSED, 'the dispatcher is closed');
      call = this.#pool.begin();
    } catch (error) {
      handler.onResponseError?.(null as unknown as Dispatcher.DispatchController, error as Error);
      return false;
    }
    return call.client.dispatch(this.#withHost(options), new RecordingHandler(handler, call.end));
  }

  #origin: string | URL | undefined = undefined;
  #host = '';

  /**
   * The URL names the Service; the request goes to a pod's address. Like a request through the
   * ClusterIP, it carries the URL's host as `Host` (virtual hosts, TLS-terminating sidecars and
   * logs expect the Service name), unless the caller set one.
   */
  #withHost(options: Dispatcher.DispatchOptions): Dispatcher.DispatchOptions {
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

/** An undici `Dispatcher` over an HTTP pool: `fetch(url, { dispatcher: httpDispatcher(pool) })`. */
export function httpDispatcher(pool: Pool<Dispatcher>): PoolDispatcher {
  return new PoolDispatcher(pool);
}
