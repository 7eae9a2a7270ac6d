/**
 * How long one message takes to reach every pod and be acknowledged, for 5 and 50 pods on
 * loopback addresses (127.0.0.11, …):
 *
 *   websocket  pool.broadcast over webSocketTransport: one request/ack per pod on open sockets
 *   http       pool.broadcast over httpTransport: one POST per pod on keep-alive connections
 *   loop       what people write today: for each pod in turn, a new HTTP connection and a POST
 *   loop-all   the same, all pods at once (Promise.all over new connections)
 *
 * Each run sends one message per method, the methods taking turns so that drift on the machine
 * spreads evenly; the report gives the median (and min, max) over the runs. Every run checks
 * that every pod acknowledged. Pods run in this process, so their work is in the figures.
 *
 *   npm run bench:broadcast [-- --runs 25]
 */
import { request as httpRequest } from 'node:http';
import { cpus } from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import type { Dispatcher } from 'undici';
import { staticEndpoints } from '../../src/discovery/static.ts';
import { createPool, type Pool } from '../../src/pool/pool.ts';
import { httpTransport } from '../../src/transport/http.ts';
import { webSocketTransport, type WebSocketClient } from '../../src/transport/websocket.ts';
import { closePods, startPods, type WsPod } from '../../testkit/ws-pods.ts';
import { startHttpPods, stopPods, type HttpPod, type PodHandler } from '../../testkit/http-pods.ts';

const POD_COUNTS = [5, 50] as const;
const WARMUP_RUNS = 3;
const MAX_RUNS = 200;
/** The whole bench stops starting runs after this, and reports what it measured. */
const BUDGET_MS = 120_000;
/** One broadcast (or loop) that takes longer than this fails the run. */
const RUN_TIMEOUT_MS = 10_000;

const MESSAGE = { type: 'invalidate', key: 'user:42' };
const BODY = JSON.stringify(MESSAGE);

interface Method {
  readonly name: string;
  /** Sends one message to every pod and resolves once each acknowledged; throws otherwise. */
  run(id: string): Promise<void>;
}

interface Row {
  readonly pods: number;
  readonly method: string;
  readonly runs: number;
  readonly medianMs: number;
  readonly minMs: number;
  readonly maxMs: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '25' } } });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > MAX_RUNS) throw new RangeError(`--runs must be an integer from 1 to ${MAX_RUNS}, got ${values.runs}`);
  const deadline = performance.now() + BUDGET_MS;
  const rows: Row[] = [];
  for (const n of POD_COUNTS) rows.push(...(await benchPods(n, runs, deadline)));

  console.log(`broadcast to N loopback pods and wait for every acknowledgement; median of ${runs} runs (after ${WARMUP_RUNS} warm-up)`);
  console.log(`node ${process.version}, ${cpus().length} CPUs, pods in this process\n`);
  console.log(table(rows));
}

async function benchPods(n: number, runs: number, deadline: number): Promise<Row[]> {
  const wsPods = await startPods(n, { record: false });
  const httpPods = await startHttpPods(n, { handler: acknowledge, keepAliveTimeoutMs: 60_000 });
  const wsPool = createPool({ source: staticEndpoints(wsPods.map((p) => p.endpoint)), transport: webSocketTransport() });
  const httpPool = createPool({ source: staticEndpoints(httpPods.map((p) => ({ address: p.address, port: p.port }))), transport: httpTransport() });
  try {
    await wsPool.ready({ minEndpoints: n, timeoutMs: RUN_TIMEOUT_MS });
    await httpPool.ready({ minEndpoints: n, timeoutMs: RUN_TIMEOUT_MS });
    const methods: Method[] = [webSocketBroadcast(wsPool, n), httpBroadcast(httpPool, n), loop(httpPods, false), loop(httpPods, true)];
    const times = new Map<string, number[]>(methods.map((m) => [m.name, []]));
    let run = 0;
    for (; run < WARMUP_RUNS + runs && performance.now() < deadline; run++) {
      for (const method of methods) {
        const started = performance.now();
        await method.run(`${n}-${run}`);
        const elapsed = performance.now() - started;
        if (run >= WARMUP_RUNS) times.get(method.name)!.push(elapsed);
      }
    }
    check(wsPods, httpPods, run);
    return methods.map((m) => summarise(n, m.name, times.get(m.name)!));
  } finally {
    await Promise.all([wsPool.close(), httpPool.close()]);
    await Promise.all([closePods(wsPods), stopPods(httpPods)]);
  }
}

/** An HTTP pod's answer to a message: read the body, as a pod acting on it would, then acknowledge. */
const acknowledge: PodHandler = (_pod, req, res) => {
  req.resume();
  req.once('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'));
};

function webSocketBroadcast(pool: Pool<WebSocketClient>, n: number): Method {
  return {
    name: 'websocket (pool.broadcast, request/ack)',
    async run(id) {
      const result = await pool.broadcast((ws, _endpoint, delivery) => ws.request({ ...MESSAGE, id: delivery.id }, { signal: delivery.signal }), {
        id,
        timeoutMs: RUN_TIMEOUT_MS,
      });
      expectAll(result.delivered.length, n, result.failed);
    },
  };
}

function httpBroadcast(pool: Pool<Dispatcher>, n: number): Method {
  return {
    name: 'http keep-alive (pool.broadcast, POST)',
    async run(id) {
      const result = await pool.broadcast(
        async (client, _endpoint, delivery) => {
          const response = await client.request({
            path: '/invalidate',
            method: 'POST',
            headers: { 'content-type': 'application/json', 'x-message-id': delivery.id },
            body: BODY,
            signal: delivery.signal,
          });
          await response.body.text();
          if (response.statusCode !== 200) throw new Error(`HTTP ${response.statusCode}`);
        },
        { id, timeoutMs: RUN_TIMEOUT_MS },
      );
      expectAll(result.delivered.length, n, result.failed);
    },
  };
}

/** The loop people write today: a new connection per pod (no agent, so no keep-alive). */
function loop(pods: readonly HttpPod[], allAtOnce: boolean): Method {
  return {
    name: allAtOnce ? 'new HTTP connection per pod, all at once' : 'new HTTP connection per pod, in turn',
    async run() {
      const signal = AbortSignal.timeout(RUN_TIMEOUT_MS);
      if (allAtOnce) {
        await Promise.all(pods.map((p) => postOnce(p, signal)));
        return;
      }
      for (const pod of pods) await postOnce(pod, signal);
    },
  };
}

function postOnce(pod: HttpPod, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: pod.address,
        port: pod.port,
        path: '/invalidate',
        method: 'POST',
        agent: false,
        signal,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(BODY) },
      },
      (res) => {
        res.resume();
        res.once('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode} from ${pod.address}`))));
        res.once('error', reject);
      },
    );
    req.once('error', reject);
    req.end(BODY);
  });
}

function expectAll(delivered: number, n: number, failed: readonly { endpoint: { key: string }; error: unknown }[]): void {
  if (delivered === n && failed.length === 0) return;
  const first = failed[0];
  throw new Error(`broadcast reached ${delivered} of ${n} pods${first ? `; ${first.endpoint.key}: ${String(first.error)}` : ''}`);
}

/** Every pod got exactly one message per run of each method that talks to it. */
function check(wsPods: readonly WsPod[], httpPods: readonly HttpPod[], runs: number): void {
  const wsRequests = new Set(wsPods.map((p) => p.requests));
  const httpRequests = new Set(httpPods.map((p) => p.requests));
  if (wsRequests.size !== 1 || !wsRequests.has(runs)) throw new Error(`WebSocket pods received ${[...wsRequests]} messages, expected ${runs} each`);
  // Three HTTP methods per run: the pool's broadcast, and the two loops.
  if (httpRequests.size !== 1 || !httpRequests.has(3 * runs)) throw new Error(`HTTP pods received ${[...httpRequests]} requests, expected ${3 * runs} each`);
}

function summarise(pods: number, method: string, samples: readonly number[]): Row {
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const medianMs = sorted.length === 0 ? Number.NaN : sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { pods, method, runs: sorted.length, medianMs, minMs: sorted[0] ?? Number.NaN, maxMs: sorted.at(-1) ?? Number.NaN };
}

function table(rows: readonly Row[]): string {
  const header = ['pods', 'method', 'median ms', 'min ms', 'max ms', 'runs'];
  const body = rows.map((r) => [String(r.pods), r.method, r.medianMs.toFixed(2), r.minMs.toFixed(2), r.maxMs.toFixed(2), String(r.runs)]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: readonly string[]): string => `| ${cells.map((c, i) => (i === 1 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [line(header), `|${widths.map((w, i) => (i === 1 ? ':' + '-'.repeat(w + 1) : '-'.repeat(w + 1) + ':')).join('|')}|`, ...body.map(line)].join('\n');
}

await main();
