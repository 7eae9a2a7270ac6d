// The pool's own work at thousands of endpoints (issue 12): a hand-driven source and an in-memory
// transport whose connects succeed at once, so nothing but podpool is measured. For each balancer:
//   N ready     from the snapshot of N new endpoints to ready({ minEndpoints: N }) and one pick;
//   replaced    one pod among 5,000 swapped for a new one in a snapshot, until the new one is
//               ready and picked from (median and max of --rounds);
//   close       close() of a pool of 10,000 ready members.
// Each row also gives the longest event-loop block seen while it ran (monitorEventLoopDelay,
// 1 ms resolution). Each balancer runs in its own process (a pick call site sees one picker
// class, as in a real program), and each row with a fresh pool.
//
//   node --conditions=podpool-source bench/micro/scale.ts [--balancers round-robin,ring-hash]
//        [--sizes 1000,5000,20000] [--ring-sizes 1000,5000,20000] [--rounds 50] [--steps ready,replaced,close] [--cold]
//
// Before the rows, a pool of 1,200 is made ready, has a pod replaced and is closed, so the rows
// measure code the JIT has compiled (what each step costs a running program); --cold skips that,
// and the first row then also pays for compiling the pool's code (a program's first pool).
//
// Uses only the package's exports, so the same file measures an older commit as well.
import { execFileSync } from 'node:child_process';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createPool, EndpointSet, ringHash, roundRobin, type Balancer, type Endpoint, type EndpointSource, type Pool, type SourceSink, type Transport } from '../../src/index.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    balancers: { type: 'string', default: 'round-robin,ring-hash' },
    sizes: { type: 'string', default: '1000,5000,20000' },
    'ring-sizes': { type: 'string', default: '1000,5000,20000' },
    rounds: { type: 'string', default: '50' },
    steps: { type: 'string', default: 'ready,replaced,close' },
    cold: { type: 'boolean', default: false },
  },
});
const ROUNDS = Math.max(1, Math.min(500, Number(values.rounds)));
const REPLACED_AMONG = 5_000;
const CLOSED = 10_000;
const balancers: Record<string, () => Balancer> = { 'round-robin': roundRobin, 'ring-hash': ringHash };

/** A source the bench drives: `set()` reports a snapshot at once, as a source's event would. */
class BenchSource implements EndpointSource {
  readonly kind = 'bench';
  #sink: SourceSink | undefined;

  watch(sink: SourceSink) {
    this.#sink = sink;
    return { close: () => Promise.resolve() };
  }

  set(endpoints: EndpointSet): void {
    this.#sink!.snapshot(endpoints);
  }
}

/** Connects that succeed at once and carry nothing. */
const transport: Transport<object> = {
  name: 'memory',
  connect() {
    return Promise.resolve({ client: {}, close: () => Promise.resolve() });
  },
};

function pods(from: number, to: number): Endpoint[] {
  const out: Endpoint[] = [];
  for (let i = from; i < to; i++) out.push({ key: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:8080`, address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, port: 8080, ready: true, serving: true, terminating: false });
  return out.map((e) => Object.freeze(e));
}

interface Row {
  what: string;
  ms: number;
  maxMs?: number;
  blockedMs: number;
}

/** Runs `step` with the event-loop delay histogram on; the block of the last turn is seen by one more timer tick. */
async function timed(step: () => Promise<number | undefined>): Promise<{ ms: number; blockedMs: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  // The histogram's first timer is armed on the next turn: give it that turn.
  await new Promise((resolve) => setTimeout(resolve, 2));
  const started = performance.now();
  const ended = (await step()) ?? performance.now();
  await new Promise((resolve) => setTimeout(resolve, 2));
  h.disable();
  return { ms: ended - started, blockedMs: h.max / 1e6 };
}

function start(name: string): { pool: Pool<object>; source: BenchSource } {
  const source = new BenchSource();
  const pool = createPool({ source, transport, balancer: balancers[name]() });
  return { pool, source };
}

/** One pick, with a key (ring-hash needs one): the picker over every member is built by then. */
function pickOnce(pool: Pool<object>): Promise<unknown> {
  return pool.use(() => undefined, { key: 'k' });
}

async function ready(name: string, n: number): Promise<Row> {
  const { pool, source } = start(name);
  const set = new EndpointSet(pods(0, n));
  const figure = await timed(async () => {
    source.set(set);
    await pool.ready({ minEndpoints: n });
    await pickOnce(pool);
    return undefined;
  });
  await pool.close();
  return { what: `${n.toLocaleString('en')} ready`, ...figure };
}

async function replaced(name: string): Promise<Row> {
  const { pool, source } = start(name);
  let current = pods(0, REPLACED_AMONG);
  source.set(new EndpointSet(current));
  await pool.ready({ minEndpoints: REPLACED_AMONG });
  const times: number[] = [];
  let blockedMs = 0;
  for (let r = 0; r < ROUNDS; r++) {
    // Pod r leaves, pod 5,000 + r comes.
    const next = [...current.slice(1), ...pods(REPLACED_AMONG + r, REPLACED_AMONG + r + 1)];
    const set = new EndpointSet(next);
    current = next;
    const figure = await timed(async () => {
      source.set(set);
      await pool.ready({ minEndpoints: REPLACED_AMONG });
      await pickOnce(pool);
      return undefined;
    });
    times.push(figure.ms);
    blockedMs = Math.max(blockedMs, figure.blockedMs);
  }
  await pool.close();
  times.sort((a, b) => a - b);
  return { what: `1 replaced among ${REPLACED_AMONG.toLocaleString('en')}`, ms: times[times.length >> 1], maxMs: times[times.length - 1], blockedMs };
}

async function closed(name: string): Promise<Row> {
  const { pool, source } = start(name);
  source.set(new EndpointSet(pods(0, CLOSED)));
  await pool.ready({ minEndpoints: CLOSED });
  const figure = await timed(async () => {
    await pool.close();
    return undefined;
  });
  return { what: `close() of ${CLOSED.toLocaleString('en')}`, ...figure };
}

function list(text: string): number[] {
  return text === '' ? [] : text.split(',').map(Number);
}

if (positionals.length > 0) {
  const [name] = positionals;
  const steps = new Set(values.steps.split(','));
  if (!values.cold) {
    const { pool, source } = start(name);
    source.set(new EndpointSet(pods(100_000, 101_200)));
    await pool.ready({ minEndpoints: 1_200 });
    source.set(new EndpointSet(pods(100_001, 101_201)));
    await pool.ready({ minEndpoints: 1_200 });
    await pickOnce(pool);
    await pool.close();
  }
  // A line a row, as each ends: a step that takes minutes (an old commit) still leaves the others.
  if (steps.has('ready')) for (const n of list(name === 'ring-hash' ? values['ring-sizes'] : values.sizes)) console.log(JSON.stringify(await ready(name, n)));
  if (steps.has('replaced')) console.log(JSON.stringify(await replaced(name)));
  if (steps.has('close')) console.log(JSON.stringify(await closed(name)));
} else {
  console.log(`pool at scale, in-memory transport (node ${process.version}, ${values.cold ? 'cold' : 'warmed up'}); max block: longest event-loop delay during the row`);
  console.log(`${'balancer'.padEnd(12)} ${'step'.padEnd(26)} ${'ms'.padStart(10)} ${'max ms'.padStart(9)} ${'max block ms'.padStart(13)}`);
  for (const name of values.balancers.split(',')) {
    const args = [...process.execArgv, import.meta.filename, name, '--sizes', values.sizes, '--ring-sizes', values['ring-sizes'], '--rounds', String(ROUNDS), '--steps', values.steps, ...(values.cold ? ['--cold'] : [])];
    const out = execFileSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 20 });
    for (const row of out.trim().split('\n').map((line) => JSON.parse(line) as Row)) {
      console.log(`${name.padEnd(12)} ${row.what.padEnd(26)} ${row.ms.toFixed(2).padStart(10)} ${(row.maxMs?.toFixed(2) ?? '').padStart(9)} ${row.blockedMs.toFixed(1).padStart(13)}`);
    }
  }
}
