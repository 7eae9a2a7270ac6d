/**
 * A small real TCP line server on a loopback address, standing in for a pod whose connections
 * serve one caller at a time (a database, a raw socket protocol). Each line it receives is echoed
 * back. It keeps the numbers the exclusive-connection tests check: connections open now and at
 * most, and requests outstanding on one socket at most (more than 1 means two callers shared a
 * socket). `hold()` keeps replies back until `release()`, so a test can keep connections borrowed
 * and wait on events instead of sleeping.
 *
 * `connectLineClient` is the matching client: one socket, `request(line)` resolving with the reply.
 */
import { EventEmitter, once } from 'node:events';
import { createServer, Socket, type AddressInfo, type Server } from 'node:net';

export interface LineServerEvents {
  /** A request arrived; `outstanding` counts every unanswered request on every socket. */
  request: [outstanding: number];
  /** A connection closed. */
  disconnect: [open: number];
}

export class LineServer extends EventEmitter<LineServerEvents> {
  readonly address: string;
  #port = 0;
  #server: Server | undefined = undefined;
  readonly #sockets = new Set<Socket>();
  /** Unanswered requests per socket. */
  readonly #outstanding = new Map<Socket, number>();
  /** Resolves on each socket's 'close' (`socket.closed` turns true before the handle is gone). */
  readonly #closed = new Map<Socket, Promise<void>>();
  #held: (() => void)[] = [];
  #holding = false;
  /** Connections accepted since start. */
  connections = 0;
  /** The most connections open at once. */
  maxOpen = 0;
  /** The most unanswered requests seen on one socket at once. */
  maxOutstandingPerSocket = 0;
  requests = 0;

  private constructor(address: string) {
    super();
    this.address = address;
  }

  /** Starts listening on `address` (a free port unless `port` is given). */
  static async start(address: string, port = 0): Promise<LineServer> {
    const server = new LineServer(address);
    await server.#listen(port);
    return server;
  }

  get port(): number {
    return this.#port;
  }

  get key(): string {
    return `${this.address}:${this.#port}`;
  }

  /** Connections open now. */
  get open(): number {
    return this.#sockets.size;
  }

  /** Unanswered requests over all sockets. */
  get outstanding(): number {
    let n = 0;
    for (const count of this.#outstanding.values()) n += count;
    return n;
  }

  /** Keeps replies back from now on. */
  hold(): void {
    this.#holding = true;
  }

  /** Sends every held reply and stops holding. */
  release(): void {
    this.#holding = false;
    const held = this.#held;
    this.#held = [];
    for (const reply of held) reply();
  }

  /** Resolves once `outstanding` reaches `n` (at once if it has). */
  async outstandingReaches(n: number): Promise<void> {
    while (this.outstanding < n) await once(this, 'request');
  }

  /** Resolves once no connection is open. */
  async idle(): Promise<void> {
    while (this.open > 0) await once(this, 'disconnect');
  }

  /** Stops listening and drops every connection (and held replies), as a killed pod does; resolves once all closed. */
  async kill(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    this.#held = [];
    this.#holding = false;
    const closing = [...this.#sockets].map((s) => this.#closed.get(s));
    for (const s of this.#sockets) s.destroy();
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
    await Promise.all(closing);
  }

  /** Listens again on the same address and port. */
  restart(): Promise<void> {
    return this.#listen(this.#port);
  }

  close(): Promise<void> {
    return this.kill();
  }

  #listen(port: number): Promise<void> {
    const server = createServer((socket) => this.#serve(socket));
    this.#server = server;
    return new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, this.address, () => {
        server.off('error', reject);
        this.#port = (server.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  #serve(socket: Socket): void {
    this.#sockets.add(socket);
    this.#outstanding.set(socket, 0);
    this.#closed.set(socket, new Promise((resolve) => socket.once('close', () => resolve())));
    this.connections++;
    this.maxOpen = Math.max(this.maxOpen, this.#sockets.size);
    socket.setNoDelay(true);
    socket.on('error', () => {});
    socket.once('close', () => {
      this.#sockets.delete(socket);
      this.#outstanding.delete(socket);
      this.#closed.delete(socket);
      this.emit('disconnect', this.#sockets.size);
    });
    let buffered = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const outstanding = (this.#outstanding.get(socket) ?? 0) + 1;
        this.#outstanding.set(socket, outstanding);
        this.maxOutstandingPerSocket = Math.max(this.maxOutstandingPerSocket, outstanding);
        this.requests++;
        const reply = (): void => {
          if (socket.destroyed) return;
          this.#outstanding.set(socket, (this.#outstanding.get(socket) ?? 1) - 1);
          socket.write(`${line}\n`);
        };
        if (this.#holding) this.#held.push(reply);
        else reply();
        this.emit('request', this.outstanding);
      }
    });
  }
}

/** One socket to a line server; requests on it are answered in order. */
export interface LineClient {
  readonly socket: Socket;
  /** Sends `line` and resolves with the reply; rejects if the socket closes first. */
  request(line: string): Promise<string>;
  /** Destroys the socket; resolves once it is closed. */
  close(): Promise<void>;
}

/** Connects to `address:port`; gives up when `signal` aborts. */
export function connectLineClient(address: string, port: number, signal?: AbortSignal): Promise<LineClient> {
  return new Promise((resolve, reject) => {
    const socket = new Socket(signal === undefined ? {} : { signal });
    const pending: { resolve: (line: string) => void; reject: (error: Error) => void }[] = [];
    let buffered = '';
    let failure: Error | undefined;
    // Not `socket.closed`: it turns true when destroy() is called, before the handle is closed.
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        pending.shift()?.resolve(line);
      }
    });
    socket.on('error', (error) => {
      failure = error;
    });
    socket.once('close', () => {
      const error = failure ?? new Error('the line server closed the connection');
      for (const p of pending.splice(0)) p.reject(error);
    });
    const onConnectError = (error: Error): void => reject(error);
    socket.once('error', onConnectError);
    socket.connect({ host: address, port }, () => {
      socket.off('error', onConnectError);
      socket.setNoDelay(true);
      resolve({
        socket,
        request(line) {
          if (socket.destroyed) return Promise.reject(failure ?? new Error('the connection is closed'));
          return new Promise<string>((res, rej) => {
            pending.push({ resolve: res, reject: rej });
            socket.write(`${line}\n`);
          });
        },
        async close() {
          socket.destroy();
          await closed;
        },
      });
    });
  });
}
