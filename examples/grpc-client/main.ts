// Balance gRPC calls over one HTTP/2 connection per pod: with pool.use(), with one generated stub
// whose every call the pool routes, and by broadcast. Then a pod dies and comes back.
// Runs on its own: it starts three stand-in pods (grpc-js servers) on 127.0.0.11-13 first.
//   npm run example:grpc
import { fileURLToPath } from 'node:url';
import {
  Server,
  ServerCredentials,
  credentials,
  loadPackageDefinition,
  type ChannelCredentials,
  type Client,
  type ClientOptions,
  type ClientReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type requestCallback,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { createPool, grpcChannel, grpcTransport, staticEndpoints, type StateChange } from 'podpool';

// ---- the service, loaded from protos/echo.proto ----------------------------------------------

interface Pod {
  name: string;
  address: string;
}
interface EchoReply {
  message: string;
  pod: Pod;
  seq: number;
}
interface EchoClient extends Client {
  unary(request: { message: string }, callback: requestCallback<EchoReply>): void;
  serverStream(request: { message: string; count: number }): ClientReadableStream<EchoReply>;
  whoAmI(request: object, callback: requestCallback<Pod>): void;
}
type EchoClientConstructor = (new (address: string, creds: ChannelCredentials, options?: ClientOptions) => EchoClient) & {
  service: ServiceDefinition;
};

const proto = fileURLToPath(new URL('../../protos/echo.proto', import.meta.url));
const definition = loadSync(proto, { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true });
const EchoClient = (loadPackageDefinition(definition).podpool as any).echo.v1.Echo as EchoClientConstructor;

const call = <T>(start: (callback: requestCallback<T>) => void): Promise<T> =>
  new Promise((resolve, reject) => start((error, value) => (error ? reject(error) : resolve(value!))));

// ---- three stand-in pods -------------------------------------------------------------------
// In a cluster these are your pods, and the source is
// dnsEndpoints({ host: 'echo.default.svc.cluster.local', port: 50051 }) or
// kubernetesEndpoints({ service: 'echo', namespace: 'default', port: 'grpc' }).

async function startPod(address: string, port = 0): Promise<{ server: Server; port: number }> {
  const server = new Server();
  const pod = (): Pod => ({ name: `pod-${address.split('.').at(-1)}`, address: `${address}:${port}` });
  server.addService(EchoClient.service, {
    Unary: (c: ServerUnaryCall<{ message: string }, EchoReply>, done: sendUnaryData<EchoReply>) =>
      done(null, { message: c.request.message, pod: pod(), seq: 0 }),
    ServerStream: (c: ServerWritableStream<{ message: string; count: number }, EchoReply>) => {
      for (let seq = 0; seq < c.request.count; seq++) c.write({ message: c.request.message, pod: pod(), seq });
      c.end();
    },
    WhoAmI: (_c: unknown, done: sendUnaryData<Pod>) => done(null, pod()),
  });
  port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${address}:${port}`, ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  return { server, port };
}

const addresses = ['127.0.0.11', '127.0.0.12', '127.0.0.13'];
const pods = await Promise.all(addresses.map((address) => startPod(address)));

// ---- the pool ----------------------------------------------------------------------------------

const pool = createPool({
  source: staticEndpoints(pods.map(({ port }, i) => ({ address: addresses[i], port }))),
  // One client per pod, dialled by IP. For TLS whose certificate names the Service:
  // grpcTransport(EchoClient, { credentials: credentials.createSsl(ca), serverName: 'echo.default.svc.cluster.local' })
  transport: grpcTransport(EchoClient),
  reconnect: { minMs: 50, maxMs: 1_000 },
});
await pool.ready({ minEndpoints: 3, timeoutMs: 5_000 });

// 1. pool.use: you get the pod's own generated client; the pool records latency and outcome.
const viaUse: string[] = [];
for (let i = 0; i < 6; i++) {
  const reply = await pool.use((client) => call<EchoReply>((cb) => client.unary({ message: `use ${i}` }, cb)));
  viaUse.push(reply.pod.name);
}
console.log('pool.use, 6 calls:       ', viaUse.join(' '));

// 2. One stub over the pool: every call picks a pod; a stream stays on its pod to the end.
const stub = new EchoClient('echo', credentials.createInsecure(), { channelOverride: grpcChannel(pool) });
const viaStub: string[] = [];
for (let i = 0; i < 6; i++) viaStub.push((await call<EchoReply>((cb) => stub.unary({ message: `stub ${i}` }, cb))).pod.name);
console.log('one stub, 6 calls:       ', viaStub.join(' '));
const streamed: string[] = [];
for await (const reply of stub.serverStream({ message: 'tick', count: 4 }) as AsyncIterable<EchoReply>) streamed.push(reply.pod.name);
console.log('one server stream:       ', streamed.join(' '));

// 3. Broadcast: one call per pod, with a per-pod result.
const everyone = await pool.broadcast((client) => call<Pod>((cb) => client.whoAmI({}, cb)));
console.log('broadcast WhoAmI:        ', everyone.delivered.map((d) => d.value.name).join(' '), `(${everyone.failed.length} failed)`);

// 4. A pod dies: the pool stops picking it at once, and takes it back when it returns.
const stateOf = (key: string, to: StateChange['to']) =>
  new Promise<void>((resolve) => {
    const listener = (change: StateChange) => {
      if (change.endpoint.key === key && change.to === to) {
        pool.off('state', listener);
        resolve();
      }
    };
    pool.on('state', listener);
  });
const victim = `${addresses[1]}:${pods[1].port}`;
const down = stateOf(victim, 'connecting');
pods[1].server.forceShutdown();
await down;
const whileDown: string[] = [];
for (let i = 0; i < 6; i++) whileDown.push((await call<EchoReply>((cb) => stub.unary({ message: 'x' }, cb))).pod.name);
console.log('pod-12 down, 6 calls:    ', whileDown.join(' '));
const up = stateOf(victim, 'ready');
pods[1] = await startPod(addresses[1], pods[1].port);
await up;
const afterRestart: string[] = [];
for (let i = 0; i < 6; i++) afterRestart.push((await call<EchoReply>((cb) => stub.unary({ message: 'x' }, cb))).pod.name);
console.log('pod-12 back, 6 calls:    ', afterRestart.join(' '));

console.table(
  pool.stats().members.map((m) => ({
    pod: m.endpoint.key,
    state: m.state,
    calls: m.requests,
    failures: m.failures,
    connections: m.connects,
    'p50 ms': Number(m.latency.p50Ms.toFixed(2)),
    'p99 ms': Number(m.latency.p99Ms.toFixed(2)),
  })),
);

stub.close();
await pool.close();
for (const { server } of pods) server.forceShutdown();
