/**
 * Real grpc-js servers on loopback addresses (127.0.0.11, 127.0.0.12, …), one per stand-in pod,
 * serving `protos/echo.proto`: the tests' and the bench's answer to "the pods behind a headless
 * Service". Each pod counts the calls it served (per method), knows how many TCP connections it
 * holds open, can be killed (every connection dropped at once, as when a pod's process dies) and
 * restarted on the same address and port, as a restarted pod keeps its IP in these tests.
 *
 * Every wait is on an event (a call arrived, a connection closed, the port is free), never a
 * sleep, so tests that use this stay exact.
 */
import { subscribe } from 'node:diagnostics_channel';
import { setImmediate } from 'node:timers/promises';
import { EventEmitter, once } from 'node:events';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import {
  Server,
  ServerCredentials,
  loadPackageDefinition,
  status,
  type ChannelCredentials,
  type Client,
  type ClientDuplexStream,
  type ClientOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  type ClientWritableStream,
  type CallOptions,
  type Metadata,
  type ServerDuplexStream,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServerOptions,
  type ServiceDefinition,
  type requestCallback,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { endpointKey, type EndpointInit } from '../src/index.ts';

/** The directory of podpool's `.proto` files. */
export const PROTOS_DIR = fileURLToPath(new URL('../protos/', import.meta.url));
/** `protos/echo.proto`. */
export const ECHO_PROTO = fileURLToPath(new URL('../protos/echo.proto', import.meta.url));

/** `podpool.echo.v1.Pod`. */
export interface PodIdentity {
  name: string;
  address: string;
}

/** `podpool.echo.v1.EchoRequest` (fields in lowerCamelCase, as proto-loader gives them). */
export interface EchoRequest {
  message?: string;
  /** When not 0, the pod answers with this status code instead. */
  failWith?: number;
}

/** `podpool.echo.v1.EchoReply`. */
export interface EchoReply {
  message: string;
  pod: PodIdentity;
  seq: number;
  /** The `:authority` the call carried. */
  authority: string;
}

/** `podpool.echo.v1.StreamRequest`. */
export interface StreamRequest {
  message?: string;
  count?: number;
}

/** The generated `Echo` client, typed. */
export interface EchoClient extends Client {
  unary(request: EchoRequest, callback: requestCallback<EchoReply>): ClientUnaryCall;
  unary(request: EchoRequest, metadata: Metadata, callback: requestCallback<EchoReply>): ClientUnaryCall;
  unary(request: EchoRequest, metadata: Metadata, options: CallOptions, callback: requestCallback<EchoReply>): ClientUnaryCall;
  serverStream(request: StreamRequest, options?: CallOptions): ClientReadableStream<EchoReply>;
  clientStream(callback: requestCallback<EchoReply>): ClientWritableStream<EchoRequest>;
  bidi(options?: CallOptions): ClientDuplexStream<EchoRequest, EchoReply>;
  bidi(metadata: Metadata, options?: CallOptions): ClientDuplexStream<EchoRequest, EchoReply>;
  whoAmI(request: Record<string, never>, callback: requestCallback<PodIdentity>): ClientUnaryCall;
}

/** What `grpcTransport` takes: the generated client's constructor. */
export type EchoClientConstructor = new (
  address: string,
  credentials: ChannelCredentials,
  options?: ClientOptions,
) => EchoClient;

/** proto-loader's options for podpool's protos: lowerCamelCase fields, defaults filled in. */
export const PROTO_LOADER_OPTIONS = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true } as const;

interface EchoPackage {
  podpool: { echo: { v1: { Echo: EchoClientConstructor & { service: ServiceDefinition } } } };
}

const echoPackage = loadPackageDefinition(loadSync(ECHO_PROTO, PROTO_LOADER_OPTIONS)) as unknown as EchoPackage;

/** The `Echo` client constructor, loaded from `protos/echo.proto` with `@grpc/proto-loader`. */
export const EchoClient: EchoClientConstructor = echoPackage.podpool.echo.v1.Echo;

/** The `Echo` service definition, for `server.addService`. */
export const echoService: ServiceDefinition = echoPackage.podpool.echo.v1.Echo.service;

/** The Echo methods, as the pods count them. */
export type EchoMethod = 'Unary' | 'ServerStream' | 'ClientStream' | 'Bidi' | 'WhoAmI';

/** Options of {@link GrpcPod.start}. */
export interface GrpcPodOptions {
  /** A loopback address: `127.0.0.11`, `::1`. */
  address: string;
  /** Default 0: the system picks a free port, which restarts keep. */
  port?: number;
  /** Default `pod-<last address byte>`. */
  name?: string;
  /** Serve TLS with this key and certificate chain (PEM). */
  tls?: { key: Buffer | string; cert: Buffer | string };
  /** grpc-js server options (`grpc.max_connection_age_ms`, …). */
  serverOptions?: ServerOptions;
}

/** A pod's events. */
export interface GrpcPodEvents {
  /** A call arrived (before its handler answers). */
  call: [method: EchoMethod];
  /** A TCP connection to the pod opened or closed; `open` is how many are open now. */
  connections: [open: number];
}

// Node publishes every accepted TCP socket here; pods pick theirs out by local address and port.
const podsByListenKey = new Map<string, GrpcPod>();
subscribe('net.server.socket', (message) => {
  const { socket } = message as { socket: Socket };
  const pod = podsByListenKey.get(endpointKey(socket.localAddress ?? '', socket.localPort ?? 0));
  pod?.track(socket);
});

/** One stand-in pod: a grpc-js `Server` serving Echo on one address and port. */
export class GrpcPod extends EventEmitter<GrpcPodEvents> {
  readonly address: string;
  readonly name: string;
  readonly #tls: GrpcPodOptions['tls'];
  readonly #serverOptions: ServerOptions | undefined;
  #port: number;
  #server: Server | undefined = undefined;
  readonly #calls = new Map<EchoMethod, number>();
  readonly #sockets = new Set<Socket>();
  #accepted = 0;

  private constructor(options: GrpcPodOptions) {
    super();
    this.address = options.address;
    this.#port = options.port ?? 0;
    this.name = options.name ?? `pod-${options.address.split(/[.:]/).at(-1) || '0'}`;
    this.#tls = options.tls;
    this.#serverOptions = options.serverOptions;
  }

  /** Starts a pod and resolves once it listens. */
  static async start(options: GrpcPodOptions): Promise<GrpcPod> {
    const pod = new GrpcPod(options);
    await pod.restart();
    return pod;
  }

  get port(): number {
    return this.#port;
  }

  /** `address:port`, as `Endpoint.key` spells it. */
  get key(): string {
    return endpointKey(this.address, this.#port);
  }

  /** What a static source needs to know about this pod. */
  get endpoint(): EndpointInit {
    return { address: this.address, port: this.#port, podName: this.name };
  }

  get running(): boolean {
    return this.#server !== undefined;
  }

  /** Calls served, of one method or of all of them. */
  calls(method?: EchoMethod): number {
    if (method !== undefined) return this.#calls.get(method) ?? 0;
    let total = 0;
    for (const n of this.#calls.values()) total += n;
    return total;
  }

  /** Forgets the call counts. */
  resetCalls(): void {
    this.#calls.clear();
  }

  /** TCP connections this pod accepted since it started. */
  get acceptedConnections(): number {
    return this.#accepted;
  }

  /** Resolves once the pod has accepted `n` connections in all. */
  async acceptedReach(n: number): Promise<void> {
    while (this.#accepted < n) await once(this, 'connections');
  }

  /** TCP connections open to this pod now. */
  get openConnections(): number {
    return this.#sockets.size;
  }

  /** Resolves once at most `n` connections are open (0: every client has gone). */
  async connectionsAtMost(n: number): Promise<void> {
    while (this.#sockets.size > n) await once(this, 'connections');
  }

  /** Resolves once `method` has been called `n` times in all. */
  async callsReach(n: number, method?: EchoMethod): Promise<void> {
    while (this.calls(method) < n) await once(this, 'call');
  }

  /**
   * Kills the pod: every connection is dropped at once, streams and all, as the kernel drops
   * them when a pod's process dies, and the port is closed. Resolves once the port is free to
   * bind again.
   */
  async kill(): Promise<void> {
    const server = this.#server;
    if (server === undefined) return;
    this.#server = undefined;
    // Sockets first: grpc-js's own shutdown would end each stream politely (RST_STREAM CANCEL),
    // which is not what a client sees when a pod dies.
    for (const socket of this.#sockets) socket.destroy();
    server.forceShutdown();
    // forceShutdown closes the listeners without waiting; tryShutdown waits for them.
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    await this.connectionsAtMost(0);
    podsByListenKey.delete(this.key);
    // A closed listener's handle is released on the event loop's next turn.
    await setImmediate();
  }

  /** Starts serving again on the same address and port (the first start picks the port). */
  async restart(): Promise<void> {
    if (this.#server !== undefined) return;
    const server = new Server(this.#serverOptions);
    server.addService(echoService, this.#handlers());
    const credentials =
      this.#tls === undefined
        ? ServerCredentials.createInsecure()
        : ServerCredentials.createSsl(null, [{ private_key: toBuffer(this.#tls.key), cert_chain: toBuffer(this.#tls.cert) }], false);
    const host = this.address.includes(':') ? `[${this.address}]` : this.address;
    this.#port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(`${host}:${this.#port}`, credentials, (error, port) => (error ? reject(error) : resolve(port)));
    });
    this.#server = server;
    podsByListenKey.set(this.key, this);
  }

  /** Stops the pod for good (same as `kill`, named for `after()` hooks). */
  close(): Promise<void> {
    return this.kill();
  }

  /** @internal Called for each TCP connection the pod accepts. */
  track(socket: Socket): void {
    this.#accepted++;
    this.#sockets.add(socket);
    this.emit('connections', this.#sockets.size);
    socket.once('close', () => {
      this.#sockets.delete(socket);
      this.emit('connections', this.#sockets.size);
    });
  }

  #count(method: EchoMethod): void {
    this.#calls.set(method, (this.#calls.get(method) ?? 0) + 1);
    this.emit('call', method);
  }

  #identity(): PodIdentity {
    return { name: this.name, address: this.key };
  }

  #handlers() {
    const failure = (request: EchoRequest) =>
      request.failWith ? { code: request.failWith, details: `${this.name} was asked to fail with code ${request.failWith}` } : undefined;
    return {
      Unary: (call: ServerUnaryCall<EchoRequest, EchoReply>, callback: sendUnaryData<EchoReply>) => {
        this.#count('Unary');
        const failed = failure(call.request);
        if (failed) callback(failed);
        else callback(null, { message: call.request.message ?? '', pod: this.#identity(), seq: 0, authority: call.getHost() });
      },
      ServerStream: (call: ServerWritableStream<StreamRequest, EchoReply>) => {
        this.#count('ServerStream');
        const { message = '', count = 0 } = call.request;
        for (let seq = 0; seq < count; seq++) call.write({ message, pod: this.#identity(), seq, authority: call.getHost() });
        call.end();
      },
      ClientStream: (call: ServerReadableStream<EchoRequest, EchoReply>, callback: sendUnaryData<EchoReply>) => {
        this.#count('ClientStream');
        const messages: string[] = [];
        call.on('data', (request: EchoRequest) => messages.push(request.message ?? ''));
        call.on('error', () => {});
        call.on('end', () => callback(null, { message: messages.join(' '), pod: this.#identity(), seq: messages.length, authority: call.getHost() }));
      },
      Bidi: (call: ServerDuplexStream<EchoRequest, EchoReply>) => {
        this.#count('Bidi');
        let seq = 0;
        call.on('data', (request: EchoRequest) => {
          const failed = failure(request);
          if (failed) call.emit('error', failed);
          else call.write({ message: request.message ?? '', pod: this.#identity(), seq: seq++, authority: call.getHost() });
        });
        call.on('error', () => {});
        call.on('end', () => call.end());
      },
      WhoAmI: (_call: ServerUnaryCall<unknown, PodIdentity>, callback: sendUnaryData<PodIdentity>) => {
        this.#count('WhoAmI');
        callback(null, this.#identity());
      },
    };
  }
}

/** Options of {@link startGrpcPods}. */
export interface GrpcPodsOptions {
  /** The last byte of the first pod's address: pods get 127.0.0.<first>, <first + 1>, … Default 11. */
  first?: number;
  tls?: GrpcPodOptions['tls'];
}

/** One Unary call on a pod's client: its reply, or the error it failed with. A string is the message. */
export function unary(client: EchoClient, request: EchoRequest | string): Promise<EchoReply> {
  const message = typeof request === 'string' ? { message: request } : request;
  return new Promise((resolve, reject) => client.unary(message, (error, reply) => (error ? reject(error) : resolve(reply!))));
}

/** Starts `count` pods on 127.0.0.11, 127.0.0.12, … (ports picked by the system). */
export function startGrpcPods(count: number, options: GrpcPodsOptions = {}): Promise<GrpcPod[]> {
  const { first = 11, tls } = options;
  if (first + count > 255) throw new RangeError(`127.0.0.${first} + ${count} pods runs past 127.0.0.254`);
  return Promise.all(
    Array.from({ length: count }, (_, i) => GrpcPod.start({ address: `127.0.0.${first + i}`, ...(tls !== undefined && { tls }) })),
  );
}

/** Kills every pod (tests' `after` hook). */
export async function stopGrpcPods(pods: readonly GrpcPod[]): Promise<void> {
  await Promise.all(pods.map((pod) => pod.kill()));
}

/** The status codes by name, re-exported for tests that make pods fail. */
export { status };

function toBuffer(value: Buffer | string): Buffer {
  return typeof value === 'string' ? Buffer.from(value) : value;
}
