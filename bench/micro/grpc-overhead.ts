/**
 * What one unary gRPC call through podpool costs next to the same call on a plain grpc-js client,
 * measured in one run against one real grpc-js server on loopback:
 *
 * - `plain grpc-js client`: a generated client dialled straight at the pod;
 * - `pool.use()`: the pool picks the pod's client and records the call's latency and outcome;
 * - `grpcChannel stub`: one generated stub whose calls the pool routes (`channelOverride`).
 *
 * Every client has its own HTTP/2 connection to the same pod. Calls run one at a time, so the
 * numbers are latencies; the clients take turns every `--block` calls, so drift (CPU frequency,
 * GC, other load on the machine) falls on all of them alike. Bounded in calls and in time:
 *
 *   node bench/micro/grpc-overhead.ts [--calls 20000] [--max-seconds 30] [--block 50]
 */
import { parseArgs } from 'node:util';
import { credentials, type ClientOptions } from '@grpc/grpc-js';
import { createPool } from '../../src/pool/pool.ts';
import { staticEndpoints } from '../../src/discovery/static.ts';
import { grpcChannel } from '../../src/adapter/grpc-channel.ts';
import { grpcTransport } from '../../src/transport/grpc.ts';
import { EchoClient, GrpcPod, type EchoReply } from '../../testkit/grpc-pods.ts';

const { values } = parseArgs({
  options: {
    calls: { type: 'string', default: '20000' },
    'max-seconds': { type: 'string', default: '30' },
    block: { type: 'string', default: '50' },
  },
});
const CALLS = positive('calls', values.calls);
const MAX_MS = positive('max-seconds', values['max-seconds']) * 1_000;
const BLOCK = positive('block', values.block);
const WARMUP = Math.min(2_000, CALLS);

function positive(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${value}`);
  return n;
}

type Call = () => Promise<unknown>;
const request = { message: 'ping' };

function unary(client: EchoClient): Promise<EchoReply> {
  return new Promise((resolve, reject) => client.unary(request, (error, reply) => (error ? reject(error) : resolve(reply!))));
}

const pod = await GrpcPod.start({ address: '127.0.0.11' });
// A connection of its own, as the pool's members have; otherwise grpc-js would share one.
const own: ClientOptions = { 'grpc.use_local_subchannel_pool': 1 };
const plain = new EchoClient(`ipv4:${pod.key}`, credentials.createInsecure(), own);
await new Promise<void>((resolve, reject) => plain.waitForReady(Date.now() + 5_000, (e) => (e ? reject(e) : resolve())));
const pool = createPool({ source: staticEndpoints([pod.endpoint]), transport: grpcTransport(EchoClient) });
await pool.ready({ timeoutMs: 5_000 });
const stub = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: grpcChannel(pool) });

const clients: { name: string; call: Call }[] = [
  { name: 'plain grpc-js client', call: () => unary(plain) },
  { name: 'pool.use()', call: () => pool.use(unary) },
  { name: 'grpcChannel stub', call: () => unary(stub) },
];

// Warm-up: JIT, connections, buffers.
for (const { call } of clients) for (let i = 0; i < WARMUP; i++) await call();

const samples = clients.map(() => new Float64Array(CALLS));
const counts = clients.map(() => 0);
const deadline = performance.now() + MAX_MS;
let timedOut = false;
while (counts[0] < CALLS && !timedOut) {
  for (let c = 0; c < clients.length; c++) {
    const { call } = clients[c];
    const into = samples[c];
    const end = Math.min(CALLS, counts[c] + BLOCK);
    for (let i = counts[c]; i < end; i++) {
      const started = process.hrtime.bigint();
      await call();
      into[i] = Number(process.hrtime.bigint() - started) / 1_000;
    }
    counts[c] = end;
  }
  timedOut = performance.now() > deadline;
}

// The pool's own bookkeeping, no network: pick + count in flight + record, per call.
const BOOKKEEPING = 200_000;
let bookkeepingNs = 0;
{
  const started = process.hrtime.bigint();
  for (let i = 0; i < BOOKKEEPING; i++) pool.begin().end();
  bookkeepingNs = Number(process.hrtime.bigint() - started) / BOOKKEEPING;
}

interface Summary {
  calls: number;
  perSecond: number;
  mean: number;
  p50: number;
  p99: number;
}

function summarize(all: Float64Array, n: number): Summary {
  const sorted = all.slice(0, n).sort();
  let total = 0;
  for (const v of sorted) total += v;
  const at = (q: number) => sorted[Math.min(n - 1, Math.floor(q * n))];
  return { calls: n, perSecond: 1e6 / (total / n), mean: total / n, p50: at(0.5), p99: at(0.99) };
}

const summaries = clients.map((_, c) => summarize(samples[c], counts[c]));
const base = summaries[0];
const { version } = (await import('@grpc/grpc-js/package.json', { with: { type: 'json' } })).default as { version: string };
console.log(
  `grpc-overhead: unary Echo to one grpc-js pod on ${pod.key}, one call at a time; ` +
    `${WARMUP} warm-up calls each, then up to ${CALLS} per client, taking turns every ${BLOCK}` +
    `${timedOut && counts[0] < CALLS ? ` (stopped at the ${MAX_MS / 1_000} s bound)` : ''}. node ${process.version}, grpc-js ${version}.`,
);
console.table(
  Object.fromEntries(
    clients.map(({ name }, c) => {
      const s = summaries[c];
      return [
        name,
        {
          calls: s.calls,
          'calls/s': Math.round(s.perSecond),
          'mean µs': round(s.mean),
          'p50 µs': round(s.p50),
          'p99 µs': round(s.p99),
          '× plain (mean)': round(s.mean / base.mean, 3),
          '× plain (p50)': round(s.p50 / base.p50, 3),
          '+ µs (mean)': round(s.mean - base.mean),
        },
      ];
    }),
  ),
);
console.log(`pool bookkeeping alone (begin + end, no network): ${round(bookkeepingNs / 1_000, 3)} µs per call`);

function round(value: number, digits = 1): number {
  return Number(value.toFixed(digits));
}

stub.close();
await pool.close();
plain.close();
await pod.kill();
if (summaries.some((s) => s.calls === 0)) process.exitCode = 1;
