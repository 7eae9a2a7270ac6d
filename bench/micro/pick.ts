/**
 * ns per pick + record for each balancer at 10, 100 and 1,000 endpoints, as the pool will run
 * it: pick, inFlight++, observe a latency into the member's LatencyEwma, inFlight--. Also the time
 * to build a picker, paid on every membership or readiness change.
 *
 * Each strategy runs in its own process: the pool's `pick()` call site only ever sees one picker
 * class, and sharing one process would make it megamorphic and slow the later strategies.
 */
import { execFileSync } from 'node:child_process';
import type { Balancer, Pickable, PickerContext } from '../../src/balance/balancer.ts';
import { leastLoaded } from '../../src/balance/least-loaded.ts';
import { peakEwma } from '../../src/balance/peak-ewma.ts';
import { random } from '../../src/balance/random.ts';
import { ringHash } from '../../src/balance/ring-hash.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { createEndpoint, type Endpoint } from '../../src/endpoint.ts';
import { LatencyEwma } from '../../src/pool/latency.ts';

const strategies: Record<string, () => Balancer> = {
  'round-robin': roundRobin,
  random,
  'least-loaded': leastLoaded,
  'peak-ewma': peakEwma,
  'ring-hash': ringHash,
};
const SIZES = [10, 100, 1_000];
const ROUNDS = 15;
const ROUND_MS = 20;
const WARMUP_MS = 150;
const BUILD_MS = 50;
const BASELINE = 'record only';

class BenchMember implements Pickable {
  readonly endpoint: Endpoint;
  readonly ewma = new LatencyEwma(10_000);
  inFlight = 0;

  constructor(i: number) {
    this.endpoint = createEndpoint({ address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, port: 8080 });
  }

  get samples(): number {
    return this.ewma.samples;
  }

  latencyMs(now: number): number {
    return this.ewma.at(now);
  }
}

// Precomputed so the loop measures the balancer, not building keys or drawing latencies.
const KEY_MASK = 4_095;
const keys = Array.from({ length: KEY_MASK + 1 }, (_, i) => `user-${i * 7_919}`);
const latencies = Float64Array.from({ length: KEY_MASK + 1 }, (_, i) => 2 + ((i * 37) % 50));

function loop(pick: (key: string) => BenchMember | undefined, clock: () => number, ops: number): void {
  for (let i = 0; i < ops; i++) {
    const member = pick(keys[i & KEY_MASK]) as BenchMember;
    member.inFlight++;
    member.ewma.observe(latencies[i & KEY_MASK], clock());
    member.inFlight--;
  }
}

/** ns per pick + record, and µs per picker build (null for the baseline, which builds none). */
interface Result {
  pickNs: number;
  buildUs: number | null;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[sorted.length >> 1];
}

/** One balancer at every size: rounds alternate between sizes so all see the same machine. */
function measure(name: string): Result[] {
  const context: PickerContext = { clock: () => performance.now(), random: Math.random };
  const balancer = name === BASELINE ? undefined : strategies[name]();
  const setups = SIZES.map((size) => {
    const members = Array.from({ length: size }, (_, i) => new BenchMember(i));
    const picker = balancer?.picker(members, context);
    // The baseline records on one member without picking: what every row pays besides the pick.
    const pick = picker === undefined ? () => members[0] : (key: string) => picker.pick(key);
    let ops = 10_000;
    let perOpMs = 0;
    const warmupEnd = performance.now() + WARMUP_MS;
    while (performance.now() < warmupEnd) {
      const start = performance.now();
      loop(pick, context.clock, ops);
      perOpMs = (performance.now() - start) / ops;
    }
    ops = Math.max(10_000, Math.round(ROUND_MS / perOpMs));
    return { members, pick, ops, rounds: [] as number[] };
  });
  for (let r = 0; r < ROUNDS; r++) {
    for (const setup of setups) {
      const start = performance.now();
      loop(setup.pick, context.clock, setup.ops);
      setup.rounds.push(((performance.now() - start) * 1e6) / setup.ops);
    }
  }
  return setups.map(({ members, rounds }) => {
    const builds: number[] = [];
    if (balancer !== undefined) {
      const buildEnd = performance.now() + BUILD_MS;
      while (builds.length < 20 || performance.now() < buildEnd) {
        const start = performance.now();
        balancer.picker(members, context);
        builds.push((performance.now() - start) * 1_000);
      }
    }
    // The first builds run cold code; the steady state is what a long-lived pool pays.
    return { pickNs: median(rounds), buildUs: builds.length === 0 ? null : median(builds.slice(builds.length >> 1)) };
  });
}

const only = process.argv[2];
if (only !== undefined) {
  process.stdout.write(JSON.stringify(measure(only)));
} else {
  const started = performance.now();
  const rows: string[][] = [['strategy', ...SIZES.map((n) => `${n} ns/pick`), ...SIZES.map((n) => `${n} build µs`)]];
  for (const name of [BASELINE, ...Object.keys(strategies)]) {
    const out = execFileSync(process.execPath, [...process.execArgv, import.meta.filename, name], { encoding: 'utf8' });
    const results = JSON.parse(out) as Result[];
    rows.push([
      name,
      ...results.map((r) => r.pickNs.toFixed(1)),
      ...results.map((r) => (r.buildUs === null ? '-' : r.buildUs.toFixed(r.buildUs < 10 ? 2 : 0))),
    ]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const line = (row: string[]) =>
    row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ');
  console.log(`podpool bench:pick (node ${process.version})`);
  console.log('ns per pick + inFlight++ + LatencyEwma.observe(latency, clock()) + inFlight--');
  console.log(`median of ${ROUNDS} rounds of ~${ROUND_MS} ms after ${WARMUP_MS} ms warm-up`);
  console.log('build: median time to construct a warm picker over the same members');
  console.log(`"${BASELINE}" records on one member without picking: what each row pays besides the pick`);
  console.log('each row runs in its own process: compare sizes along a row; between rows expect run-to-run noise\n');
  console.log(line(rows[0]));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of rows.slice(1)) console.log(line(row));
  console.log(`\n${((performance.now() - started) / 1_000).toFixed(1)} s`);
}
