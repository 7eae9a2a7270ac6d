import { validateHeaderName, validateHeaderValue } from 'node:http';
import type { ConnectionOptions } from 'node:tls';
import { WebSocket, type ClientOptions, type PerMessageDeflateOptions } from 'ws';
import { urlHost, type Endpoint } from '../endpoint.ts';
import { ClosedError, ConnectionLostError, ErrorCode, TimeoutError } from '../errors.ts';
import { checkDelay, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import { checkTls } from './tls.ts';
import type { Connection, Transport } from './transport.ts';
import { failPending, wasNotWritten, WebSocketClient } from './websocket-client.ts';

// The type of what the transport's callbacks get, for those who import the transport alone.
export type { WebSocketClient } from './websocket-client.ts';

/** How long `close()` waits for the pod to answer the close handshake before cutting the TCP connection. */
const CLOSE_GRACE_MS = 1_000;

/** Options of {@link webSocketTransport}. */
export interface WebSocketTransportOptions {
  /** The path of the WebSocket URL, with its query if any. Default `/`. */
  path?: string;
  /** Subprotocols offered in `Sec-WebSocket-Protocol`. */
  protocols?: string | readonly string[];
  /** Extra headers on the upgrade request (authorization, …). */
  headers?: Readonly<Record<string, string>>;
  /**
   * Pings the pod this often, and terminates the connection when the previous ping got no pong.
   * Default 30 s: ws's documented interval, below the 60 s idle timeouts common on proxies and
   * cloud load balancers, and a dead pod that sent no FIN is noticed within 30–60 s at a cost
   * of one small frame per pod per interval.
   */
  heartbeatMs?: number;
  /**
   * `send()` and `request()` refuse a message with `PODPOOL_BACKPRESSURE` while the socket's
   * `bufferedAmount` is at or above this many bytes, so a pod that stops reading costs at most
   * this plus one message. Default 1 MiB.
   */
  highWaterMark?: number;
  /** Default `timeoutMs` of `request()`, so no answer is waited for forever. Default 30 s. */
  requestTimeoutMs?: number;
  /** Gives up on the TCP connection and the upgrade after this long. Default 10 s. */
  connectTimeoutMs?: number;
  /** Negotiates permessage-deflate, with these options when an object. Default `false`: it costs CPU and memory per socket. */
  perMessageDeflate?: boolean | PerMessageDeflateOptions;
  /**
   * Connect with TLS (`wss://`), with these options, as `httpTransport`'s `tls`: `ca` to trust
   * the pods' CA, `servername` naming the Service (`backend.default.svc.cluster.local`: pods are
   * dialled by IP, and their certificate names the Service), `cert` and `key` to present a
   * client certificate when the pods ask for one. `servername` is also sent as `Host` unless
   * `headers` set one, as a client of the Service would send it. Checked at the door: a CA, a
   * certificate or a key Node can't load throws `PODPOOL_INVALID_OPTION` here, not at connect.
   */
  tls?: ConnectionOptions;
}

const OPTIONS = optionNames<WebSocketTransportOptions>({
  path: true,
  protocols: true,
  headers: true,
  heartbeatMs: true,
  highWaterMark: true,
  requestTimeoutMs: true,
  connectTimeoutMs: true,
  perMessageDeflate: true,
  tls: true,
});

/** Codes that say the pod or the path to it failed; an error reply from the pod's handler does not. */
const POD_FAILURES = new Set<string>([
  ErrorCode.TIMEOUT,
  ErrorCode.CONNECTION_LOST,
  ErrorCode.NOT_CONNECTED,
  // A pod that does not read what it is sent is failing, and picking another one is the remedy.
  ErrorCode.BACKPRESSURE,
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
]);

/**
 * WebSocket (`ws`): one socket per pod, opened before the member counts as ready. The client
 * pings every `heartbeatMs` and terminates a socket whose previous ping got no pong (ws's
 * heartbeat pattern); a closed socket is the pool's to reopen, with its backoff. Callbacks get a
 * {@link WebSocketClient}: `pool.use((ws) => ws.request(data))` balances request/response
 * traffic, and `pool.broadcast((ws, _, { signal }) => ws.request(data, { signal }))` waits for
 * every pod's acknowledgement.
 */
export function webSocketTransport(options: WebSocketTransportOptions = {}): Transport<WebSocketClient> {
  checkOptions(options, OPTIONS);
  const {
    path = '/',
    protocols = [],
    headers = {},
    heartbeatMs = 30_000,
    highWaterMark = 1024 * 1024,
    requestTimeoutMs = 30_000,
    connectTimeoutMs = 10_000,
    perMessageDeflate = false,
    tls,
  } = options;
  if (typeof path !== 'string' || !path.startsWith('/')) invalidOption('path', 'a string starting with "/"', path);
  const protocolList = typeof protocols === 'string' ? [protocols] : protocols;
  if (!Array.isArray(protocolList) || !protocolList.every((p) => typeof p === 'string' && p !== '')) {
    invalidOption('protocols', 'a subprotocol name or an array of them', protocols);
  }
  checkHeaders(headers);
  checkDelay('heartbeatMs', heartbeatMs);
  checkNumber('highWaterMark', highWaterMark, { min: 1 });
  checkDelay('requestTimeoutMs', requestTimeoutMs);
  checkDelay('connectTimeoutMs', connectTimeoutMs);
  if (typeof perMessageDeflate !== 'boolean' && (perMessageDeflate === null || typeof perMessageDeflate !== 'object')) {
    invalidOption('perMessageDeflate', 'a boolean or permessage-deflate options', perMessageDeflate);
  }
  const secure = tls === undefined ? undefined : checkTls(tls);
  const socketOptions: ClientOptions = {
    ...(secure as ClientOptions | undefined),
    headers: { ...headers },
    perMessageDeflate,
    handshakeTimeout: connectTimeoutMs,
    followRedirects: false,
  };
  const scheme = tls === undefined ? 'ws' : 'wss';
  // Host names the Service, as SNI does, unless the caller set it: a TLS-terminating sidecar or a
  // virtual host routes on it. The pod's port goes with it unless it is 443, as a URL would send it.
  const hostHeader = secure?.servername && !Object.keys(headers).some((name) => name.toLowerCase() === 'host') ? secure.servername : undefined;

  return {
    name: 'websocket',
    connect(endpoint, { signal, lost }): Promise<Connection<WebSocketClient>> {
      return new Promise((resolve, reject) => {
        signal.throwIfAborted();
        const socket = new WebSocket(
          urlOf(scheme, endpoint, path),
          [...protocolList],
          hostHeader === undefined ? socketOptions : { ...socketOptions, headers: { ...socketOptions.headers, host: endpoint.port === 443 ? hostHeader : `${hostHeader}:${endpoint.port}` } },
        );
        let lastError: Error | undefined;
        let connection: WebSocketConnection | undefined;
        // Always listened to: ws emits 'error' before 'close', and an unheard 'error' would crash.
        // 'unexpected-response' is left unheard on purpose: ws then aborts the upgrade itself and
        // reports the status in an 'error' ("Unexpected server response: 404").
        socket.on('error', (error) => {
          lastError = error;
        });
        const onAbort = (): void => {
          lastError = signal.reason;
          socket.terminate();
        };
        signal.addEventListener('abort', onAbort, { once: true });
        socket.once('open', () => {
          signal.removeEventListener('abort', onAbort);
          connection = new WebSocketConnection(socket, endpoint, { heartbeatMs, highWaterMark, requestTimeoutMs }, lost);
          resolve(connection);
        });
        socket.once('close', (code, reason) => {
          signal.removeEventListener('abort', onAbort);
          if (connection !== undefined) {
            connection.closed(lastError ?? new Error(describeClose(code, reason)));
            return;
          }
          // Settled only once the socket is gone, so a failed connect leaves nothing behind.
          if (signal.aborted) reject(signal.reason);
          else reject(lastError === undefined ? new Error(`${describeClose(code, reason)} during the upgrade`) : explainTls(lastError, secure));
        });
      });
    },
    isPodFailure(error) {
      if (error === null || typeof error !== 'object') return false;
      const { code } = error as { code?: unknown };
      return typeof code === 'string' && POD_FAILURES.has(code);
    },
    wasNotSent: wasNotWritten,
  };
}

/** An open socket, its heartbeat and its life cycle; the pool sees it as a `Connection`. */
class WebSocketConnection implements Connection<WebSocketClient> {
  readonly client: WebSocketClient;
  readonly #socket: WebSocket;
  readonly #endpoint: Endpoint;
  readonly #lost: (error: Error) => void;
  readonly #heartbeat: NodeJS.Timeout;
  #closing: Promise<void> | undefined = undefined;
  /** Set just before the heartbeat terminates the socket, so 'close' reports why. */
  #missedPong: Error | undefined = undefined;

  constructor(
    socket: WebSocket,
    endpoint: Endpoint,
    options: { heartbeatMs: number; highWaterMark: number; requestTimeoutMs: number },
    lost: (error: Error) => void,
  ) {
    this.#socket = socket;
    this.#endpoint = endpoint;
    this.#lost = lost;
    this.client = new WebSocketClient(socket, endpoint, options.highWaterMark, options.requestTimeoutMs);
    let alive = true;
    socket.on('pong', () => {
      alive = true;
    });
    const { heartbeatMs } = options;
    this.#heartbeat = setInterval(() => {
      if (!alive) {
        this.#missedPong = new TimeoutError(`no pong from ${endpoint.key} within ${heartbeatMs} ms`);
        socket.terminate();
        return;
      }
      alive = false;
      socket.ping();
    }, heartbeatMs);
  }

  /** @internal The socket closed: settle what waits on it and tell the pool, unless the pool closed it. */
  closed(error: Error): void {
    clearInterval(this.#heartbeat);
    const reason = this.#missedPong ?? error;
    failPending(
      this.client,
      new ConnectionLostError(`lost the WebSocket to ${this.#endpoint.key}: ${reason.message}`, { cause: reason }),
    );
    if (this.#closing === undefined) this.#lost(reason);
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearInterval(this.#heartbeat);
    const socket = this.#socket;
    failPending(this.client, new ClosedError(`the WebSocket to ${this.#endpoint.key} was closed by the pool`));
    if (socket.readyState === WebSocket.CLOSED) return;
    const { promise, resolve } = Promise.withResolvers<void>();
    socket.once('close', () => resolve());
    const timer = setTimeout(() => socket.terminate(), CLOSE_GRACE_MS);
    if (socket.readyState === WebSocket.OPEN) socket.close(1000);
    await promise;
    clearTimeout(timer);
  }
}

/**
 * Checks the upgrade's headers as Node's HTTP client will (a name it refuses, a value with a
 * line break) at the door, not at every connect; no message shows a header's value.
 */
function checkHeaders(headers: unknown): void {
  if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) invalidOption('headers', 'an object of string header values', headers);
  for (const [name, value] of Object.entries(headers)) {
    try {
      validateHeaderName(name);
    } catch {
      invalidOption('headers', `an object of string header values, with valid header names (not ${JSON.stringify(name)})`, headers);
    }
    if (typeof value !== 'string') invalidOption(`headers[${JSON.stringify(name)}]`, 'a string', value);
    try {
      validateHeaderValue(name, value);
    } catch {
      invalidOption(`headers[${JSON.stringify(name)}]`, 'a header value without line breaks or NUL', value);
    }
  }
}

function urlOf(scheme: 'ws' | 'wss', endpoint: Endpoint, path: string): string {
  return `${scheme}://${urlHost(endpoint.address)}:${endpoint.port}${path}`;
}

/** Codes of a pod certificate that no CA in `tls.ca` (or the system's) signed. */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
]);

/** A TLS failure at connect with what to change in `tls`; any other error as it is. */
function explainTls(error: Error, tls: ConnectionOptions | undefined): Error {
  if (tls === undefined) return error;
  const { code } = error as NodeJS.ErrnoException;
  let advice: string | undefined;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    advice =
      tls.servername === undefined
        ? 'set tls.servername to the name the certificate holds (the Service\'s DNS name): pods are dialled by IP'
        : `the certificate does not name ${tls.servername}: set tls.servername to a name it holds`;
  } else if (code !== undefined && UNTRUSTED.has(code)) {
    advice = 'no CA in tls.ca signed the pod\'s certificate: pass the CA that issued it';
  } else if (/certificate required/i.test(error.message)) {
    advice = 'the pod asks for a client certificate: pass tls.cert and tls.key, issued by a CA the pod trusts';
  } else if (/alert (handshake failure|bad certificate|unknown ca)/i.test(error.message)) {
    // TLS 1.2 says only "handshake failure" for a missing client certificate, and for other refusals too.
    advice = 'the pod refused the handshake: if it asks for a client certificate, pass tls.cert and tls.key issued by a CA it trusts';
  }
  if (advice === undefined) return error;
  const explained = new Error(`TLS: ${error.message.trim()}; ${advice}`, { cause: error }) as NodeJS.ErrnoException;
  if (code !== undefined) explained.code = code;
  return explained;
}

/** Why a socket closed, for the pool's "lost the connection to …: <this>". */
function describeClose(code: number, reason: Buffer): string {
  // 1006 is never sent: ws reports it when the TCP connection ended without a close frame.
  if (code === 1006) return 'the WebSocket dropped without a close frame (1006)';
  const text = reason.toString();
  return `the pod closed the WebSocket (${text === '' ? code : `${code}: ${text}`})`;
}
