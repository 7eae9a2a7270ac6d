/**
 * The bench's pods. In the stand-in cluster they run in their own process (so the clients' CPU
 * does not serve them): the bench forks this file and drives it over IPC with {@link PodFleet}.
 * On a real cluster each pod is one `podpool pod` process (pod-server.ts) around one {@link Pod}.
 *
 * A pod has bounded capacity: it serves at most `concurrency` requests at a time, each for
 * `serviceMs` (times its slow factor); the rest wait in its queue. So throughput grows with the
 * number of pods a client actually uses, as in a cluster, rather than with the CPU of this
 * machine. Each pod counts what it served, per protocol.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { createServer, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createNetServer, isIPv6, type Server as NetServer, type Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { WebSocketServer } from 'ws';
// The pod side of podpool's WebSocket requests and datagrams, as a user's pod would take it.
import { answerRequests, datagramReceiver } from '../../src/index.ts';

/** The ports every pod listens on, as a Deployment's container ports would say. */
export const POD_PORTS = { http: 8080, grpc: 50051, ws: 8081, udp: 9090 } as const;

export type Protocol = 'http' | 'grpc' | 'ws' | 'udp';

/** The gRPC service the pods serve: one unary method over raw bytes, so no .proto is needed. */
export const echoService = {
  call: {
    path: '/podpool.bench.Echo/Call',
    requestStream: false,
    responseStream: false,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  },
} satisfies grpc.ServiceDefinition;

/** A generated-style client class for {@link echoService}: `new EchoClient(target, credentials)`. */
export const EchoClient = grpc.makeGenericClientConstructor(echoService, 'Echo');
/** What an `EchoClient` instance offers. */
export type EchoClientInstance = InstanceType<typeof EchoClient> & {
  call(request: Buffer, callback: (error: grpc.ServiceError | null, reply?: Buffer) => void): grpc.ClientUnaryCall;
};

export interface PodSpec {
  readonly name: string;
  readonly address: string;
  readonly protocols: readonly Protocol[];
  readonly concurrency: number;
  readonly serviceMs: number;
  /** How the pod's HTTP server recycles its keep-alive connections; none (2 min idle) unless given. */
  readonly recycling?: Recycling;
}

/**
 * An HTTP server that closes its keep-alive connections as servers do in production: after
 * `keepAliveTimeoutMs` idle (Node's `keepAliveTimeout`; it announces `Keep-Alive: timeout=…`, and
 * undici drops a socket after each response when that is ≤ its 2 s threshold), and after
 * `maxRequestsPerSocket` requests (Node's option; nginx's `keepalive_requests`).
 */
export interface Recycling {
  readonly keepAliveTimeoutMs: number;
  readonly maxRequestsPerSocket: number;
}

/** What the bench's pods do when nothing recycles: keep a connection 2 min idle, serve it for ever. */
const NO_RECYCLING: Recycling = { keepAliveTimeoutMs: 120_000, maxRequestsPerSocket: 0 };

/** What a killed pod had on its hands. */
export interface KillResult {
  /** Requests it had received (served or queued, any protocol) and not answered: they never will be. */
  readonly unanswered: number;
}

/** What one pod served and accepted (see {@link PodCounts}). */
export interface PodCount {
  http: number;
  grpc: number;
  ws: number;
  wsMessages: number;
  httpBroadcasts: number;
  wsBroadcasts: number;
  udp: number;
  httpSockets: number;
  wsSockets: number;
}

/**
 * Requests each pod served since it started, per protocol (and datagrams received), and the TCP
 * connections its HTTP and WebSocket servers accepted: what a row's "sockets" are, counted where
 * they arrive.
 */
export type PodCounts = Record<string, PodCount>;

type Command =
  | { op: 'add'; spec: PodSpec }
  | { op: 'terminate'; name: string; graceMs: number }
  | { op: 'slow'; name: string; factor: number }
  | { op: 'kill'; name: string }
  | { op: 'recycle'; recycling: Recycling | undefined }
  | { op: 'counts' }
  | { op: 'stop' };

interface Request {
  seq: number;
  command: Command;
}

interface Reply {
  seq: number;
  value?: unknown;
  error?: string;
}

/** The bench's handle on the pods process. */
export class PodFleet {
  readonly #child: ChildProcess;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #seq = 0;
  #exited = false;

  private constructor(child: ChildProcess) {
    this.#child = child;
    child.on('message', (reply: Reply) => {
      const waiter = this.#pending.get(reply.seq);
      if (!waiter) return;
      this.#pending.delete(reply.seq);
      if (reply.error !== undefined) waiter.reject(new Error(reply.error));
      else waiter.resolve(reply.value);
    });
    child.once('exit', (code, signal) => {
      this.#exited = true;
      const error = new Error(`the pods process exited (${signal ?? code})`);
      for (const w of this.#pending.values()) w.reject(error);
      this.#pending.clear();
    });
  }

  /** Forks the pods process; it inherits this process's network namespace. */
  static async start(): Promise<PodFleet> {
    const child = fork(new URL(import.meta.url), ['--pods-process'], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'advanced',
    });
    await once(child, 'spawn');
    return new PodFleet(child);
  }

  #send<T>(command: Command): Promise<T> {
    if (this.#exited) return Promise.reject(new Error('the pods process is gone'));
    const seq = ++this.#seq;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(seq, { resolve: resolve as (v: unknown) => void, reject });
      this.#child.send({ seq, command } satisfies Request);
    });
  }

  /** Starts a pod; resolves once it listens on every protocol. */
  add(spec: PodSpec): Promise<void> {
    return this.#send({ op: 'add', spec });
  }

  /** Stops accepting, lets work in flight finish for up to `graceMs`, then drops every connection. */
  terminate(name: string, graceMs = 0): Promise<void> {
    return this.#send({ op: 'terminate', name, graceMs });
  }

  /** Multiplies the pod's service time by `factor` (1 restores it). */
  slow(name: string, factor: number): Promise<void> {
    return this.#send({ op: 'slow', name, factor });
  }

  /**
   * The pod's process dies: every connection it holds is reset (RST), its listeners close, so
   * its address refuses connections, as when a container crashes on a live node. Requests it
   * held are never answered.
   */
  kill(name: string): Promise<KillResult> {
    return this.#send({ op: 'kill', name });
  }

  /** Every pod's HTTP server, and every pod started later, recycles its connections so (none: `undefined`). */
  recycle(recycling: Recycling | undefined): Promise<void> {
    return this.#send({ op: 'recycle', recycling });
  }

  counts(): Promise<PodCounts> {
    return this.#send({ op: 'counts' });
  }

  async stop(): Promise<void> {
    if (this.#exited) return;
    const exited = once(this.#child, 'exit');
    await this.#send({ op: 'stop' }).catch(() => {});
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 3_000);
    await exited;
    clearTimeout(timer);
  }
}

// ---- a pod --------------------------------------------------------------------------------

/**
 * One pod's servers on `spec.address` at {@link POD_PORTS}: HTTP, gRPC Echo, WebSocket requests
 * and the UDP datagram receiver, for whichever protocols the spec names.
 */
export class Pod {
  readonly spec: PodSpec;
  readonly counts: PodCount = { http: 0, grpc: 0, ws: 0, wsMessages: 0, httpBroadcasts: 0, wsBroadcasts: 0, udp: 0, httpSockets: 0, wsSockets: 0 };
  #factor = 1;
  #busy = 0;
  readonly #queue: (() => void)[] = [];
  readonly #sockets = new Set<Socket>();
  #killed = false;
  #terminating = false;
  #http: HttpServer | undefined;
  #grpc: { server: grpc.Server; listener: NetServer } | undefined;
  #ws: { http: HttpServer; wss: WebSocketServer } | undefined;
  #udp: UdpSocket | undefined;

  constructor(spec: PodSpec) {
    this.spec = spec;
  }

  /** Holds one of the pod's `concurrency` slots for its service time, then runs `done`. */
  serve(done: () => void): void {
    if (this.#killed) return;
    const run = (): void => {
      this.#busy++;
      setTimeout(() => {
        // A dead process answers nothing, and counts nothing it did not answer.
        if (this.#killed) return;
        this.#busy--;
        done();
        const next = this.#queue.shift();
        if (next) next();
      }, this.spec.serviceMs * this.#factor);
    };
    if (this.#busy < this.spec.concurrency) run();
    else this.#queue.push(run);
  }

  /** What the pod's service time is multiplied by (1 unless {@link slow} said otherwise). */
  get factor(): number {
    return this.#factor;
  }

  /** Requests received and not answered yet: being served or queued. */
  get pending(): number {
    return this.#killed ? 0 : this.#busy + this.#queue.length;
  }

  /** Multiplies the service time of every request served from now on by `factor` (1 restores it). */
  slow(factor: number): void {
    this.#factor = factor;
  }

  /** Listens on every protocol of the spec; rejects if an address is taken. */
  async start(): Promise<void> {
    const { address, protocols, name } = this.spec;
    const reply = Buffer.from(name);
    if (protocols.includes('http')) {
      const server = createServer({ requestTimeout: 0 }, (req, res) => {
        req.resume();
        // A broadcast (cache invalidation, config push) is cheap to apply: answered at once.
        if (req.url === '/broadcast') {
          req.once('end', () => {
            this.counts.httpBroadcasts++;
            this.#answer(res, reply);
          });
          return;
        }
        this.serve(() => {
          this.counts.http++;
          this.#answer(res, reply);
        });
      });
      this.#track(server, 'httpSockets');
      this.#http = server;
      this.recycle(this.spec.recycling);
      server.listen(POD_PORTS.http, address);
      await once(server, 'listening');
    }
    if (protocols.includes('grpc')) {
      const server = new grpc.Server();
      server.addService(echoService, {
        call: (_call: unknown, callback: (e: null, r: Buffer) => void) => {
          this.serve(() => {
            this.counts.grpc++;
            callback(null, reply);
          });
        },
      });
      // The pod listens itself and hands each connection to grpc-js, so that it holds the TCP
      // sockets a killed process would drop (grpc-js's forceShutdown says GOAWAY first).
      const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
      const listener = createNetServer((socket) => {
        this.#sockets.add(socket);
        socket.once('close', () => this.#sockets.delete(socket));
        injector.injectConnection(socket);
      });
      listener.listen(POD_PORTS.grpc, address);
      await once(listener, 'listening');
      this.#grpc = { server, listener };
    }
    if (protocols.includes('ws')) {
      const http = createServer((_req, res) => res.writeHead(426).end());
      this.#track(http, 'wsSockets');
      const wss = new WebSocketServer({ server: http });
      // A request() is answered with the pod's name: a broadcast at once, other work once served;
      // a message sent with send() (a broadcast over send) is counted and answered with nothing.
      answerRequests(wss, (data, { expectsReply }) => {
        if (!expectsReply) {
          this.counts.wsMessages++;
          return undefined;
        }
        if ((data as { kind?: unknown } | null)?.kind === 'broadcast') {
          this.counts.wsBroadcasts++;
          return name;
        }
        return new Promise<string>((resolve) =>
          this.serve(() => {
            this.counts.ws++;
            resolve(name);
          }),
        );
      });
      http.listen(POD_PORTS.ws, address);
      await once(http, 'listening');
      this.#ws = { http, wss };
    }
    if (protocols.includes('udp')) {
      // A pod of an IPv6 cluster has an IPv6 address only.
      const socket = createSocket(isIPv6(address) ? 'udp6' : 'udp4');
      // Repeats and retries of a (sender, sequence) count once, as an application's would.
      datagramReceiver({ onMessage: () => this.counts.udp++ }).listen(socket);
      socket.bind(POD_PORTS.udp, address);
      await once(socket, 'listening');
      this.#udp = socket;
    }
  }

  /**
   * Once terminating, an answer closes its keep-alive connection (`Connection: close`), as a
   * server shutting down gracefully does: `close()` alone leaves a busy connection open, so the
   * pod would wait out the whole grace period and then reset it.
   */
  #answer(res: ServerResponse, reply: Buffer): void {
    if (this.#terminating) res.shouldKeepAlive = false;
    res.end(reply);
  }

  #track(server: HttpServer, counter: 'httpSockets' | 'wsSockets'): void {
    server.on('connection', (socket: Socket) => {
      this.counts[counter]++;
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
  }

  /** Sets the HTTP server's keep-alive recycling (Node reads both options per connection and request). */
  recycle(recycling: Recycling = NO_RECYCLING): void {
    if (!this.#http) return;
    this.#http.keepAliveTimeout = recycling.keepAliveTimeoutMs;
    this.#http.maxRequestsPerSocket = recycling.maxRequestsPerSocket;
  }

  /** Like a process killed (SIGKILL, OOM): every connection reset at once, listeners closed. */
  kill(): KillResult {
    if (this.#killed) return { unanswered: 0 };
    const unanswered = this.#busy + this.#queue.length;
    this.#killed = true;
    this.#queue.length = 0;
    for (const s of this.#sockets) s.resetAndDestroy();
    this.#http?.close();
    this.#ws?.http.close();
    this.#ws?.wss.close();
    if (this.#grpc) {
      this.#grpc.listener.close();
      this.#grpc.server.forceShutdown();
    }
    this.#udp?.close();
    return { unanswered };
  }

  /** Like a pod given SIGTERM: stop listening, finish what is in flight (up to `graceMs`), exit. */
  async terminate(graceMs: number): Promise<void> {
    if (this.#killed) return;
    this.#terminating = true;
    const closing: Promise<unknown>[] = [];
    if (this.#http) {
      const server = this.#http;
      closing.push(new Promise((r) => server.close(r)));
      server.closeIdleConnections();
    }
    if (this.#ws) {
      const { http, wss } = this.#ws;
      for (const client of wss.clients) client.close(1001, 'pod terminating');
      closing.push(new Promise((r) => wss.close(r)), new Promise((r) => http.close(r)));
    }
    if (this.#grpc) {
      const { server, listener } = this.#grpc;
      closing.push(new Promise<void>((r) => server.tryShutdown(() => r())), new Promise((r) => listener.close(r)));
    }
    if (this.#udp) {
      const socket = this.#udp;
      closing.push(new Promise<void>((r) => socket.close(() => r())));
    }
    const grace = new Promise<void>((r) => setTimeout(r, graceMs).unref());
    await Promise.race([Promise.all(closing), grace]);
    this.#grpc?.server.forceShutdown();
    for (const s of this.#sockets) s.destroy();
    if (this.#ws) for (const client of this.#ws.wss.clients) client.terminate();
    await Promise.all(closing);
  }
}

// ---- the pods process ---------------------------------------------------------------------

function podsProcess(): void {
  const pods = new Map<string, Pod>();
  let recycling: Recycling | undefined;
  const run = async (command: Command): Promise<unknown> => {
    switch (command.op) {
      case 'add': {
        const pod = new Pod({ ...command.spec, recycling: command.spec.recycling ?? recycling });
        pods.set(command.spec.name, pod);
        await pod.start();
        return undefined;
      }
      case 'terminate': {
        const pod = pods.get(command.name);
        if (!pod) throw new Error(`no pod ${command.name}`);
        await pod.terminate(command.graceMs);
        return undefined;
      }
      case 'slow': {
        const pod = pods.get(command.name);
        if (!pod) throw new Error(`no pod ${command.name}`);
        pod.slow(command.factor);
        return undefined;
      }
      case 'kill': {
        const pod = pods.get(command.name);
        if (!pod) throw new Error(`no pod ${command.name}`);
        return pod.kill();
      }
      case 'recycle':
        recycling = command.recycling;
        for (const pod of pods.values()) pod.recycle(recycling);
        return undefined;
      case 'counts': {
        const counts: PodCounts = {};
        for (const [name, pod] of pods) counts[name] = { ...pod.counts };
        return counts;
      }
      case 'stop':
        await Promise.all([...pods.values()].map((p) => p.terminate(0).catch(() => {})));
        setImmediate(() => process.exit(0));
        return undefined;
    }
  };
  process.on('message', (request: Request) => {
    run(request.command).then(
      (value) => process.send!({ seq: request.seq, value } satisfies Reply),
      (error: unknown) => process.send!({ seq: request.seq, error: error instanceof Error ? error.message : String(error) } satisfies Reply),
    );
  });
  // The bench went away without saying stop (crash, SIGKILL): don't outlive it.
  process.on('disconnect', () => process.exit(0));
}

if (process.argv.includes('--pods-process')) podsProcess();
