// Memory per pod connection (issue 12 §1): N loopback pods (127.0.x.y, one address each) for HTTP,
// gRPC and WebSocket, and a client process that opens one connection to each and uses it once,
// either through podpool (a pool over staticEndpoints and the protocol's transport) or with the
// bare client podpool wraps (an undici Client, a grpc-js client, a ws WebSocket per pod).
// Reported per connection: the growth of the V8 heap, of `external` (buffers, wasm memory) and of
// the process's RSS, each after full GCs, from before the first connection to after the last use.
// The pods run in their own process so only the client's memory is counted; every client runs in
// a fresh process.
//
//   node --conditions=podpool-source bench/micro/memory.ts [--pods 1000] [--protocols http,grpc,ws]
//
// Loopback only. Needs about 2 file descriptors a pod in the pods' process and 1 in the client's.
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { isIP } from 'node:net';
import { setImmediate as turn } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { credentials } from '@grpc/grpc-js';
import { Client } from 'undici';
import { WebSocket } from 'ws';
import { createPool, grpcTransport, httpTransport, staticEndpoints, webSocketTransport, type Transport } from '../../src/index.ts';
import { EchoClient, GrpcPod, unary } from '../../testkit/grpc-pods.ts';
import { WsPod } from '../../testkit/ws-pods.ts';

type Protocol = 'http' | 'grpc' | 'ws';
type Mode = 'bare' | 'podpool';
interface Pod {
  address: string;
  port: number;
}
interface Figure {
  heap: number;
  external: number;
  rss: number;
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    pods: { type: 'string', default: '1000' },
    protocols: { type: 'string', default: 'http,grpc,ws' },
  },
});
const COUNT = Math.max(1, Math.min(60_000, Number(values.pods)));

/** Pod `i`'s address: 127.1.x.y (y from 1 to 250), on `lo` like all of 127/8. */
function addressOf(i: number): string {
  const address = `127.1.${Math.floor(i / 250)}.${(i % 250) + 1}`;
  // Never a name: listen() would ask the machine's resolver about it.
  if (isIP(address) !== 4 || i >= 250 * 256) throw new RangeError(`no loopback address for pod ${i}`);
  return address;
}

/** The pods' process: starts them, prints where they listen, and stops when its stdin closes. */
async function servePods(protocol: Protocol, count: number): Promise<void> {
  const pods: Pod[] = [];
  const stops: (() => Promise<unknown>)[] = [];
  for (let i = 0; i < count; i++) {
    const address = addressOf(i);
    if (protocol === 'http') {
      // A plain node:http server answering its address, as testkit's HTTP pods do (their helper
      // only places pods on 127.0.0.x, which holds 244 of them).
      const server = createServer((req, res) => {
        req.resume();
        res.end(address);
      });
      server.listen(0, address);
      await once(server, 'listening');
      pods.push({ address, port: (server.address() as { port: number }).port });
      stops.push(() => {
        server.closeAllConnections();
        return new Promise((resolve) => server.close(resolve));
      });
    } else if (protocol === 'grpc') {
      const pod = await GrpcPod.start({ address });
      pods.push({ address, port: pod.port });
      stops.push(() => pod.kill());
    } else {
      const pod = await WsPod.start({ address, record: false });
      pods.push({ address, port: pod.port });
      stops.push(() => pod.close());
    }
  }
  process.stdout.write(`${JSON.stringify(pods)}\n`);
  process.stdin.resume();
  await once(process.stdin, 'end');
  await Promise.all(stops.map((stop) => stop()));
}

async function settled(): Promise<NodeJS.MemoryUsage> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  for (let i = 0; i < 4; i++) {
    gc();
    await turn();
  }
  return process.memoryUsage();
}

/** The client's process: connects to every pod, uses each connection once, and reports the growth. */
async function measure(protocol: Protocol, mode: Mode, pods: Pod[]): Promise<Figure> {
  // Everything either mode uses is loaded and warm before the first reading.
  const warm = await open(protocol, mode, pods.slice(0, 1));
  await warm.close();
  const before = await settled();
  const opened = await open(protocol, mode, pods);
  const after = await settled();
  await opened.close();
  const n = pods.length;
  return {
    heap: (after.heapUsed - before.heapUsed) / n,
    external: (after.external - before.external) / n,
    rss: (after.rss - before.rss) / n,
  };
}

/** One connection per pod, each used once (a request, a call, a round trip), kept open. */
async function open(protocol: Protocol, mode: Mode, pods: Pod[]): Promise<{ close(): Promise<unknown> }> {
  if (mode === 'podpool') {
    const transport = (protocol === 'http' ? httpTransport() : protocol === 'grpc' ? grpcTransport(EchoClient) : webSocketTransport()) as Transport<unknown>;
    const pool = createPool({ source: staticEndpoints(pods), transport });
    await pool.ready({ minEndpoints: pods.length, timeoutMs: 120_000 });
    const result = await pool.broadcast((client) => {
      if (protocol === 'http') return (client as Client).request({ path: '/', method: 'GET' }).then((r) => r.body.text());
      if (protocol === 'grpc') return unary(client as EchoClient, 'x');
      return (client as { request(data: unknown): Promise<unknown> }).request('x');
    });
    if (result.failed.length > 0) throw new Error(`${result.failed.length} deliveries failed: ${String(result.failed[0].error)}`);
    return pool;
  }
  if (protocol === 'http') {
    const clients = pods.map((p) => new Client(`http://${p.address}:${p.port}`));
    await Promise.all(clients.map((c) => c.request({ path: '/', method: 'GET' }).then((r) => r.body.text())));
    return { close: () => Promise.all(clients.map((c) => c.close())) };
  }
  if (protocol === 'grpc') {
    const clients = pods.map((p) => new EchoClient(`${p.address}:${p.port}`, credentials.createInsecure()));
    await Promise.all(clients.map((c) => unary(c, 'x')));
    return { close: async () => clients.forEach((c) => c.close()) };
  }
  const sockets = await Promise.all(
    pods.map(async (p) => {
      const ws = new WebSocket(`ws://${p.address}:${p.port}/`);
      await once(ws, 'open');
      ws.ping();
      await once(ws, 'pong');
      return ws;
    }),
  );
  return {
    close: () =>
      Promise.all(
        sockets.map((ws) => {
          ws.close();
          return once(ws, 'close');
        }),
      ),
  };
}

const [role, protocol, mode] = positionals as ['pods' | 'client' | undefined, Protocol, Mode];
if (role === 'pods') {
  await servePods(protocol, COUNT);
} else if (role === 'client') {
  const pods = JSON.parse(process.env.PODPOOL_BENCH_PODS!) as Pod[];
  console.log(JSON.stringify(await measure(protocol, mode, pods)));
  process.exit(0);
} else {
  const kib = (bytes: number) => `${(bytes / 1024).toFixed(1)}`.padStart(9);
  console.log(`memory per connection at ${COUNT} loopback pods, KiB (node ${process.version}); after full GCs, client process only`);
  console.log(`${'protocol'.padEnd(9)} ${'client'.padEnd(22)} ${'heap'.padStart(9)} ${'external'.padStart(9)} ${'rss'.padStart(9)}`);
  for (const p of values.protocols.split(',') as Protocol[]) {
    const server = spawn(process.execPath, [...process.execArgv, import.meta.filename, 'pods', p, '--pods', String(COUNT)], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const [line] = (await once(server.stdout!.setEncoding('utf8'), 'data')) as [string];
      const names = { http: 'undici Client', grpc: 'grpc-js client', ws: 'ws WebSocket' } as const;
      for (const m of ['bare', 'podpool'] as Mode[]) {
        const out = execFileSync(process.execPath, [...process.execArgv, '--expose-gc', import.meta.filename, 'client', p, m], {
          encoding: 'utf8',
          env: { ...process.env, PODPOOL_BENCH_PODS: line.trim() },
          maxBuffer: 1 << 20,
        });
        const figure = JSON.parse(out.trim().split('\n').at(-1)!) as Figure;
        console.log(`${p.padEnd(9)} ${(m === 'bare' ? names[p] : 'podpool').padEnd(22)} ${kib(figure.heap)} ${kib(figure.external)} ${kib(figure.rss)}`);
      }
    } finally {
      server.stdin!.end();
      await once(server, 'exit');
    }
  }
}
