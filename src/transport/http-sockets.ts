/**
 * The sockets under each pod's undici client, for httpTransport: dialled by the transport, so a
 * connection the server closes is replaced at once and the pool hears only of a pod that is
 * gone (a refused connect, a fresh socket dropped unanswered) or that can take no calls for now
 * (no socket open past a grace).
 */
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import type { Endpoint } from '../endpoint.ts';
import { ConnectionLostError } from '../errors.ts';
import type { ConnectContext } from './transport.ts';

/** How a pod is dialled: what `openSocket` needs. */
export interface Dial {
  readonly tls: ConnectionOptions | undefined;
  readonly http2: boolean;
  readonly timeoutMs: number;
}

/**
 * A socket the pod closes (its FIN or a reset) without a byte read, younger than this, was
 * dropped by the pod (it accepted and closed: overloaded or dying), not recycled: the pod is
 * lost. One closed from this side (a request aborted by its signal or deadline) is replaced.
 */
const YOUNG_SOCKET_MS = 1_000;

/**
 * How long a pod may have no socket open (its last one closed, the replacement still
 * connecting) before the pool stops picking it. A replacement to a healthy pod opens in well
 * under this, so a server that recycles its connections (after every response, with a keep-alive
 * timeout of 2 s or less) never moves its pod in and out of the picks; one that is refused makes
 * the pod lost sooner; one that hangs (a black hole) takes the pod out of the picks after this.
 * Requests picked meanwhile wait in undici for the replacement, and go to another pod (never
 * sent) if it fails.
 */
const REPLACEMENT_GRACE_MS = 50;

/** Socket errors that mean the pod, or the path to it, ended the connection. */
const POD_RESETS = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH']);

/**
 * The sockets of one pod's undici client. A server closes keep-alive connections as a matter of
 * course (its keep-alive timeout, `maxRequestsPerSocket`, nginx's `keepalive_requests`): when one
 * closes, a replacement is opened at once, and undici, which re-dispatches the requests it had
 * queued but not written, takes it when it next connects. When the pod has had no socket open for
 * {@link REPLACEMENT_GRACE_MS} (its last one closed, the next still not open) the pool stops
 * picking it until one is. The pod is lost (the pool backs off and reconnects) only when a connect fails, or the pod
 * drops a fresh socket before answering on it; a reset in the middle of a response fails that
 * request, which counts against the pod.
 */
export class PodSockets {
  /** Set by `close()`: sockets closing from now on are ours or undici's doing. */
  closing = false;
  readonly #endpoint: Endpoint;
  readonly #dial: Dial;
  readonly #context: ConnectContext;
  /** No socket is open: the pool is (or is about to be) told the pod takes no new calls. */
  #down = false;
  /** The pool was told `unavailable`, and not `available` since. */
  #told = false;
  /** Tells the pool `unavailable` when the grace passes with no socket open. */
  #grace: NodeJS.Timeout | undefined = undefined;
  /** Aborts the replacements being opened when the connection closes. */
  readonly #abort = new AbortController();
  /** Opened, not yet given to undici. */
  #spare: Socket | undefined;
  /** A replacement being opened that undici has not asked for yet. */
  #opening: Promise<Socket> | undefined;
  /** Every socket not closed yet, and every open being attempted, for `destroy()` to wait on. */
  readonly #sockets = new Set<Socket>();
  readonly #dialling = new Set<Promise<unknown>>();
  #gone = false;

  constructor(endpoint: Endpoint, dial: Dial, context: ConnectContext) {
    this.#endpoint = endpoint;
    this.#dial = dial;
    this.#context = context;
  }

  /** The first socket, opened before the member counts as ready: undici's first connect takes it. */
  first(socket: Socket): void {
    this.#watch(socket);
    this.#spare = socket;
  }

  /** The socket for undici's connect: the spare, the replacement being opened, or a new one. */
  take(): Promise<Socket> {
    const spare = this.#spare;
    if (spare !== undefined) {
      this.#spare = undefined;
      return Promise.resolve(spare);
    }
    const opening = this.#opening ?? this.#open();
    this.#opening = undefined;
    return opening;
  }

  /** Closes every socket (undici's client is destroyed first) and waits until they are gone. */
  async destroy(): Promise<void> {
    this.closing = true;
    clearTimeout(this.#grace);
    this.#abort.abort(new ConnectionLostError(`the connection to ${this.#endpoint.key} is closed`));
    await Promise.allSettled(this.#dialling);
    // `socket.closed` turns true at destroy(), before the handle is freed: wait for the event.
    await Promise.all(
      [...this.#sockets].map((socket) => {
        const closed = once(socket, 'close').then(() => {});
        socket.destroy();
        return closed;
      }),
    );
  }

  #closed(socket: Socket, openedAt: number, byPod: boolean, error: Error | undefined): void {
    this.#sockets.delete(socket);
    if (this.#spare === socket) this.#spare = undefined;
    if (this.closing || this.#gone) return;
    if (byPod && socket.bytesRead === 0 && Date.now() - openedAt < YOUNG_SOCKET_MS) {
      this.#lose(error ?? new Error(`${this.#endpoint.key} closed a connection before answering on it`));
      return;
    }
    if (this.#sockets.size === 0) this.#unavailable(error);
    // Recycled by the server (or by undici after a response): open the next one now, so a dead
    // pod is found by the connect, not by the next request.
    if (this.#spare !== undefined || this.#opening !== undefined) return;
    const opening = this.#open();
    this.#opening = opening;
    opening.then(
      (next) => {
        if (this.#opening !== opening) return;
        this.#opening = undefined;
        this.#spare = next;
      },
      () => {
        if (this.#opening === opening) this.#opening = undefined;
      },
    );
  }

  /** Opens a socket; a failure is the pod lost. */
  #open(): Promise<Socket> {
    const opening = openSocket(this.#endpoint, this.#dial, this.#abort.signal).then(
      (socket) => {
        this.#watch(socket);
        return socket;
      },
      (error: Error) => {
        this.#lose(error);
        throw error;
      },
    );
    this.#dialling.add(opening);
    void opening.then(
      () => this.#dialling.delete(opening),
      () => this.#dialling.delete(opening),
    );
    return opening;
  }

  /** The pod has no socket open: no new calls if none is open within the grace. */
  #unavailable(error: Error | undefined): void {
    if (this.#down) return;
    this.#down = true;
    this.#grace = setTimeout(() => {
      this.#grace = undefined;
      if (!this.#down || this.closing || this.#gone) return;
      this.#told = true;
      this.#context.unavailable?.(
        new Error(`its last connection closed${error ? ` (${error.message})` : ''} and no new one opened within ${REPLACEMENT_GRACE_MS} ms`),
      );
    }, REPLACEMENT_GRACE_MS);
  }

  #watch(socket: Socket): void {
    this.#sockets.add(socket);
    this.#down = false;
    clearTimeout(this.#grace);
    this.#grace = undefined;
    if (this.#told) {
      this.#told = false;
      this.#context.available?.();
    }
    const openedAt = Date.now();
    let error: Error | undefined;
    // Whether the pod ended the connection (its FIN or a reset), as opposed to undici or the
    // caller (a request aborted by its signal or deadline destroys its socket from this side).
    let byPod = false;
    socket.on('error', (e) => {
      error = e;
      byPod ||= POD_RESETS.has((e as NodeJS.ErrnoException).code ?? '');
    });
    socket.once('end', () => (byPod = true));
    socket.once('close', () => this.#closed(socket, openedAt, byPod, error));
  }

  #lose(error: Error): void {
    if (this.closing || this.#gone) return;
    this.#gone = true;
    clearTimeout(this.#grace);
    // After every 'close' listener has run: undici's own marks the socket closed, and a
    // Client.destroy() that the pool calls from lost() waits forever for a 'close' that is
    // being emitted right now unless undici has seen it.
    queueMicrotask(() => this.#context.lost(error));
  }
}

/** Opens one connection to the pod, agreeing on HTTP/2 when asked; `signal` only for the pool's own. */
export function openSocket(endpoint: Endpoint, { tls, http2, timeoutMs }: Dial, signal: AbortSignal | undefined): Promise<Socket> {
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
      // Settled once the handle is freed, so a closed connection leaves nothing behind.
      socket.once('close', () => reject(error));
      socket.destroy();
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
