/**
 * The pool's own per-call path, where bench:pick measures a stand-in member: ns and bytes
 * allocated per call for
 * - pick + `Member.startCall()` + `Member.endCall()`: the accounting every use(), broadcast
 *   delivery and adapter call shares, on the pool's real `Member` (load, latency EWMA, drain check);
 * - `pool.begin()` + `end()`: what a grpc-js Channel or undici Dispatcher over the pool pays per
 *   request, on a real pool over a transport that connects in memory (no sockets);
 * - `await pool.use(fn)`: the whole call, with the pool's default deadline (calls share a
 *   cohort's timer and signal) and with `callTimeoutMs: Infinity` (no deadline), and with a
 *   per-call `timeoutMs` (a timer and a controller of its own);
 * - the diagnostics channels (`podpool:call:start`/`end`/`error`): the rows above run with nobody
 *   subscribed (one `hasSubscribers` check per publication, nothing built); `begin+end` and
 *   `use()` again with a no-op subscriber on the three, which builds and publishes the messages.
 * Each balancer runs in its own process, as in bench:pick, so its call sites stay monomorphic.
 */
import { execFileSync } from 'node:child_process';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { CHANNEL_NAMES } from '../../src/channels.ts';
import type { Balancer, PickerContext } from '../../src/balance/balancer.ts';
import { leastLoaded } from '../../src/balance/least-loaded.ts';
import { peakEwma } from '../../src/balance/peak-ewma.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { staticEndpoints } from '../../src/discovery/static.ts';
import { createEndpoint } from '../../src/endpoint.ts';
import { Member, type MemberEvents } from '../../src/pool/member.ts';
import { createPool, type Pool } from '../../src/pool/pool.ts';
import { podpoolMetrics } from '../../src/observe/metrics.ts';
import { Registry } from 'prom-client';
import type { Transport } from '../../src/transport/transport.ts';
import { bytesAllocated } from '../../testkit/allocation.ts';

const strategies: Record<string, () => Balancer> = { 'round-robin': roundRobin, 'least-loaded': leastLoaded, 'peak-ewma': peakEwma };
const PODS = 10;
const ROUNDS = 15;
const ROUND_CALLS = 200_000;
const WARMUP_CALLS = 400_000;

/** ns per call (median of rounds) and bytes allocated per call over one measured round. */
interface Row {
  ns: number;
  bytes: number;
}

function measure(run: (calls: number) => void): Row {
  run(WARMUP_CALLS); // optimized code is heap too: compile it before counting bytes
  const rounds: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const start = performance.now();
    run(ROUND_CALLS);
    rounds.push(((performance.now() - start) * 1e6) / ROUND_CALLS);
  }
  const bytes = bytesAllocated(() => run(ROUND_CALLS));
  rounds.sort((a, b) => a - b);
  return { ns: rounds[rounds.length >> 1], bytes: Math.max(0, bytes) / ROUND_CALLS };
}

/** pick + startCall + endCall on the pool's Member, as `Calls` runs them. */
function memberPath(balancer: Balancer): Row {
  const events: MemberEvents = { transition: () => {}, failed: () => {}, drained: () => {} };
  const members = Array.from({ length: PODS }, (_, i) => new Member<object>(createEndpoint({ address: `10.0.0.${i + 1}`, port: 80 }), 10_000, events));
  const context: PickerContext = { clock: () => performance.now(), random: Math.random };
  const picker = balancer.picker(members, context);
  return measure((calls) => {
    for (let i = 0; i < calls; i++) {
      const m = picker.pick(undefined)!;
      m.startCall();
      const started = context.clock();
      const now = context.clock();
      m.endCall('answered', now - started, now);
    }
  });
}

/** pool.begin() + end() on a real pool whose transport connects in memory. */
async function beginPath(balancer: Balancer): Promise<Row> {
  const transport: Transport<object> = { name: 'memory', connect: async () => ({ client: {}, close: async () => {} }) };
  const endpoints = Array.from({ length: PODS }, (_, i) => ({ address: `10.0.0.${i + 1}`, port: 80 }));
  const pool = createPool({ source: staticEndpoints(endpoints), transport, balancer, ejection: false });
  try {
    await pool.ready({ minEndpoints: PODS });
    return measure((calls) => {
      for (let i = 0; i < calls; i++) pool.begin().end();
    });
  } finally {
    await pool.close();
  }
}

/** `await pool.use(fn)` on a real pool over an in-memory transport, with `extra` pool options and `options` per call. */
async function usePath(balancer: Balancer, extra: object, options?: { timeoutMs: number }, attach?: (pool: Pool<object>) => () => void): Promise<Row> {
  const transport: Transport<object> = { name: 'memory', connect: async () => ({ client: {}, close: async () => {} }) };
  const endpoints = Array.from({ length: PODS }, (_, i) => ({ address: `10.0.0.${i + 1}`, port: 80 }));
  const pool = createPool({ source: staticEndpoints(endpoints), transport, balancer, ejection: false, ...extra });
  const fn = (client: object) => client;
  const detach = attach?.(pool);
  try {
    await pool.ready({ minEndpoints: PODS });
    const calls = async (n: number) => {
      for (let i = 0; i < n; i++) await pool.use(fn, options);
    };
    // Async calls: measured as bench:pick does, but awaiting each (bytes then include the promises).
    await calls(WARMUP_CALLS / 4);
    const rounds: number[] = [];
    for (let r = 0; r < 5; r++) {
      const start = performance.now();
      await calls(ROUND_CALLS / 4);
      rounds.push(((performance.now() - start) * 1e6) / (ROUND_CALLS / 4));
    }
    rounds.sort((a, b) => a - b);
    return { ns: rounds[rounds.length >> 1], bytes: NaN };
  } finally {
    detach?.();
    await pool.close();
  }
}

/** Runs `measure` with a no-op subscriber on the call channels, as a tracer or metrics would be. */
async function subscribed(measure: () => Promise<Row>): Promise<Row> {
  const noop = (): void => {};
  const names = [CHANNEL_NAMES.callStart, CHANNEL_NAMES.callEnd, CHANNEL_NAMES.callError];
  for (const name of names) subscribe(name, noop);
  try {
    return await measure();
  } finally {
    for (const name of names) unsubscribe(name, noop);
  }
}

const only = process.argv[2];
if (only !== undefined) {
  const balancer = strategies[only];
  process.stdout.write(
    JSON.stringify([
      memberPath(balancer()),
      await beginPath(balancer()),
      await usePath(balancer(), {}),
      await usePath(balancer(), { callTimeoutMs: Infinity }),
      await usePath(balancer(), {}, { timeoutMs: 10_000 }),
      await subscribed(() => beginPath(balancer())),
      await subscribed(() => usePath(balancer(), {})),
      await usePath(balancer(), {}, undefined, (pool) => {
        const metrics = podpoolMetrics(pool, { registry: new Registry() });
        return () => metrics.close();
      }),
    ]),
  );
} else {
  const started = performance.now();
  const rows: string[][] = [
    ['strategy', 'member ns/call', 'member B/call', 'begin+end ns/call', 'begin+end B/call', 'use() ns', 'use() no deadline ns', 'use() own timeoutMs ns', 'begin+end subscribed ns', 'begin+end subscribed B', 'use() subscribed ns', 'use() metrics ns'],
  ];
  for (const name of Object.keys(strategies)) {
    const out = execFileSync(process.execPath, [...process.execArgv, import.meta.filename, name], { encoding: 'utf8' });
    const [member, begin, use, useNoDeadline, useTimeout, beginSubscribed, useSubscribed, useMetrics] = JSON.parse(out) as Row[];
    rows.push([
      name,
      member.ns.toFixed(1),
      member.bytes.toFixed(1),
      begin.ns.toFixed(1),
      begin.bytes.toFixed(1),
      use.ns.toFixed(0),
      useNoDeadline.ns.toFixed(0),
      useTimeout.ns.toFixed(0),
      beginSubscribed.ns.toFixed(1),
      beginSubscribed.bytes.toFixed(1),
      useSubscribed.ns.toFixed(0),
      useMetrics.ns.toFixed(0),
    ]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const line = (row: string[]) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ');
  console.log(`podpool bench:call-path (node ${process.version}), ${PODS} pods`);
  console.log('member: pick + Member.startCall() + Member.endCall(answered, latency, clock())');
  console.log('begin+end: pool.begin() + end() on a real pool over an in-memory transport (the adapters\' path)');
  console.log('use(): await pool.use(fn) on the same pool: default deadline (shared cohorts), callTimeoutMs Infinity, and a per-call timeoutMs');
  console.log('subscribed: the same with a no-op subscriber on podpool:call:start/end/error (without: nobody subscribed, as in every other column)');
  console.log('metrics: use() with podpoolMetrics() on the pool (a registry of its own): every call counted and observed');
  console.log(`median of ${ROUNDS} rounds of ${ROUND_CALLS} calls after ${WARMUP_CALLS} warm-up; B/call: heap allocated per call over one more round\n`);
  console.log(line(rows[0]));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of rows.slice(1)) console.log(line(row));
  console.log(`\n${((performance.now() - started) / 1_000).toFixed(1)} s`);
}
