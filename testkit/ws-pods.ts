/**
 * Real `ws` servers on loopback addresses (127.0.0.11, 127.0.0.12, …), one per stand-in pod,
 * speaking podpool's WebSocket framing through `answerRequests`. Each pod counts what it
 * received and emits an event for it, so tests wait on "the pod got its message" instead of
 * sleeping. A pod can stop reading (backpressure), stop answering pings (heartbeat), and be
 * killed and restarted on the same address and port (a pod crash and its replacement).
 */
import { EventEmitter, once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { createServer as createTlsServer, type ServerOptions as TlsServerOptions } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { WebSocketServer, type WebSocket } from 'ws';
import { answerRequests, type WebSocketMessage, type WebSocketHandler } from '../src/index.ts';

/** Options of {@link WsPod.start}. */
export interface WsPodOptions {
  /** A loopback address: 127.0.0.x or ::1. */
  address: string;
  /** Default 0: the system picks one (kept across restarts). */
  port?: number;
  /** Answers each message; default: `{ pod: key, data }`. */
  handler?: WebSocketHandler;
  /** Answer pings (ws's default). `false` makes a pod whose heartbeat the client will miss. */
  autoPong?: boolean;
  /** Keep every received message's data in `received`. Default true; the bench turns it off. */
  record?: boolean;
  /** Serve `wss://` over an HTTPS server with these options (`key`, `cert`, `requestCert`, `ca`, …). */
  tls?: TlsServerOptions;
}

/** What a client sent on the upgrade request. */
export interface Handshake {
  readonly url: string;
  readonly protocol: string;
  readonly headers: IncomingHttpHeaders;
  /** Over TLS: the server name the client sent (SNI), and the CN of the certificate it presented. */
  readonly servername?: string;
  readonly clientCertificate?: string;
}

/** Events a pod emits, for tests to wait on. */
export interface WsPodEvents {
  connection: [socket: WebSocket];
  disconnect: [socket: WebSocket];
  message: [data: unknown, message: WebSocketMessage];
  ping: [];
}

/** One stand-in pod: a `ws` server on its own loopback address. */
export class WsPod extends EventEmitter<WsPodEvents> {
  readonly address: string;
  readonly server: Server;
  readonly wss: WebSocketServer;
  /** Every message's data, in arrival order (when `record` is on). */
  readonly received: unknown[] = [];
  readonly handshakes: Handshake[] = [];
  /** Messages received: requests plus fire-and-forget. */
  messages = 0;
  requests = 0;
  pings = 0;
  /** Sockets connected now. */
  connections = 0;
  /** Sockets ever accepted. */
  accepted = 0;
  #port: number;
  readonly #tcp = new Set<Socket>();

  private constructor(options: WsPodOptions) {
    super();
    this.address = options.address;
    this.#port = options.port ?? 0;
    const record = options.record ?? true;
    const handler = options.handler ?? ((data: unknown) => ({ pod: this.key, data }));
    const upgradeRequired = (_req: unknown, res: { writeHead(status: number): { end(body: string): void } }): void => {
      res.writeHead(426).end('upgrade required');
    };
    // An HTTPS server is an http.Server as far as ws and these tests go; the type says otherwise.
    this.server = options.tls === undefined ? createServer(upgradeRequired) : (createTlsServer(options.tls, upgradeRequired) as unknown as Server);
    this.server.on('connection', (socket) => {
      this.#tcp.add(socket);
      socket.once('close', () => this.#tcp.delete(socket));
    });
    this.wss = new WebSocketServer({ server: this.server, autoPong: options.autoPong ?? true, perMessageDeflate: false });
    this.wss.on('connection', (socket, request) => {
      this.connections++;
      this.accepted++;
      const tls = options.tls === undefined ? undefined : (request.socket as TLSSocket);
      const subject = tls?.getPeerCertificate().subject;
      this.handshakes.push({
        url: request.url ?? '',
        protocol: socket.protocol,
        headers: request.headers,
        ...(tls !== undefined && { servername: (tls as TLSSocket & { servername?: string | false }).servername || undefined }),
        ...(subject?.CN !== undefined && { clientCertificate: String(subject.CN) }),
      });
      socket.on('ping', () => {
        this.pings++;
        this.emit('ping');
      });
      socket.once('close', () => {
        this.connections--;
        this.emit('disconnect', socket);
      });
      this.emit('connection', socket);
    });
    answerRequests(this.wss, (data, message) => {
      this.messages++;
      if (message.expectsReply) this.requests++;
      if (record) this.received.push(data);
      this.emit('message', data, message);
      return handler(data, message);
    });
  }

  /** Starts a pod listening on `address` (and `port`, or one the system picks). */
  static async start(options: WsPodOptions): Promise<WsPod> {
    const pod = new WsPod(options);
    await pod.restart();
    return pod;
  }

  get port(): number {
    return this.#port;
  }

  /** `address:port`, as podpool keys endpoints. */
  get key(): string {
    return this.address.includes(':') ? `[${this.address}]:${this.#port}` : `${this.address}:${this.#port}`;
  }

  /** What `staticEndpoints` takes. */
  get endpoint(): { address: string; port: number } {
    return { address: this.address, port: this.#port };
  }

  get listening(): boolean {
    return this.server.listening;
  }

  /** Stops reading from its open sockets (ws's `pause()`): the kernel buffers fill and the client's `bufferedAmount` grows. */
  pauseReading(): void {
    for (const socket of this.wss.clients) socket.pause();
  }

  resumeReading(): void {
    for (const socket of this.wss.clients) socket.resume();
  }

  /** Resolves once `predicate()` holds, checked after each `event`; rejects after `timeoutMs` (a safety net, not a clock). */
  async until(event: keyof WsPodEvents, predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
    if (predicate()) return;
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (!predicate()) return;
        this.off(event, check);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.off(event, check);
        reject(new Error(`${this.key}: still waiting on '${event}' after ${timeoutMs} ms`));
      }, timeoutMs);
      this.on(event, check);
    });
  }

  /** A crash: every socket cut at once (no close handshake), and the port closed. */
  async kill(): Promise<void> {
    if (!this.server.listening) return;
    const closed = once(this.server, 'close');
    this.server.close();
    for (const socket of this.wss.clients) socket.terminate();
    for (const socket of this.#tcp) socket.destroy();
    await closed;
  }

  /** Listens again on the same address and port (the first start picks the port). */
  async restart(): Promise<void> {
    if (this.server.listening) return;
    this.server.listen(this.#port, this.address);
    await once(this.server, 'listening');
    this.#port = (this.server.address() as { port: number }).port;
  }

  /** Stops for good. */
  async close(): Promise<void> {
    await this.kill();
    this.wss.close();
  }
}

/** `count` pods on 127.0.0.(first), 127.0.0.(first + 1), … */
export async function startPods(count: number, options: Omit<WsPodOptions, 'address'> & { first?: number } = {}): Promise<WsPod[]> {
  const { first = 11, ...rest } = options;
  if (first + count - 1 > 254) throw new RangeError(`127.0.0.${first}… has no room for ${count} pods`);
  const pods: WsPod[] = [];
  try {
    for (let i = 0; i < count; i++) pods.push(await WsPod.start({ ...rest, address: `127.0.0.${first + i}` }));
  } catch (error) {
    await closePods(pods);
    throw error;
  }
  return pods;
}

export async function closePods(pods: readonly WsPod[]): Promise<void> {
  await Promise.all(pods.map((p) => p.close()));
}
