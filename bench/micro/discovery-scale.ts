// The Kubernetes source at 10,000 endpoints (100 EndpointSlices × 100, as the EndpointSlice
// controller cuts them), against the fake API server on loopback:
//   first set   from watch() to the first snapshot (list of 100 slices, parse, merge);
//   one slice   an event that changes one endpoint of one slice, until the snapshot shows it;
//   replace     every slice changed at once to 100 other pods (a whole fleet replaced: 100
//               MODIFIED events in one burst), until the snapshot is the new pods only;
//   swap        one new slice of 10,000 other pods, then the 100 old slices deleted, until the
//               snapshot is the new pods only. The API server refuses a slice of more than 1,000
//               endpoints, so no real cluster sends this: it measures one 10,000-endpoint event.
// The client module (@kubernetes/client-node) is imported before the first round: loading it
// compiles for about 200 ms in slices of up to ~15 ms, once per process, and would otherwise be
// the first round's longest block (`--cold` keeps it in).
// Each figure is the median of --rounds, with the median and the longest of the event-loop blocks
// seen (the longest block during each run: the first round's first set runs cold code); "after
// write" is the median from the server's last write to the snapshot. The fake server runs on a
// worker thread (bench/micro/apiserver-thread.ts), so its own work of cloning and serialising the
// slices is in neither figure: the blocks are the source's (and with --pool, the pool's) alone.
// `--pool` runs the same with a pool over an in-memory transport (every connect succeeds at
// once), timed to the pool's `change` event (the pool's reconcile included); "to picker" is then
// until the pool picks a pod of the new set (the changed pod's member out of the picks, the
// swapped-in pods' members connected and picked).
//
//   node --conditions=podpool-source bench/micro/discovery-scale.ts [--rounds 5] [--events 20] [--pool] [--cold]
//
// Loopback only; bounded by the round and event counts.
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createPool, kubernetesEndpoints, type EndpointSet, type EndpointSource, type Pool, type Transport } from '../../src/index.ts';
import type { PodpoolError } from '../../src/errors.ts';
import { podIp } from '../../testkit/fake-apiserver.ts';
import { ApiServerThread } from './apiserver-thread.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    events: { type: 'string', default: '20' },
    pool: { type: 'boolean', default: false },
    cold: { type: 'boolean', default: false },
  },
});
const rounds = Math.max(1, Math.min(20, Number(values.rounds)));
const events = Math.max(1, Math.min(200, Number(values.events)));
const SIZE = 10_000;
const SERVICE = 'bench';

/** Snapshots as they come, wherever they come from (a sink, or a pool's `change` event). */
class Snapshots {
  last: EndpointSet | undefined;
  readonly errors: PodpoolError[] = [];
  #waiters: { match: (s: EndpointSet) => boolean; resolve: (at: number) => void }[] = [];

  seen(set: EndpointSet): void {
    const at = performance.now();
    this.last = set;
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.match(set)) return true;
      w.resolve(at);
      return false;
    });
  }

  /** When the first snapshot `match` accepts arrives (from now on). */
  next(match: (s: EndpointSet) => boolean): Promise<number> {
    return new Promise((resolve) => this.#waiters.push({ match, resolve }));
  }
}

/** A connection per endpoint that opens at once and carries nothing: the pool's own cost only. */
const memoryTransport: Transport<object> = {
  name: 'memory',
  async connect() {
    return { client: {}, async close() {} };
  },
};

/** With --pool, the pool of the round. */
let pool: Pool<object> | undefined;

/**
 * With --pool: when the pool, once it has the snapshot, has `ready` members and picks one (the
 * picker built over them). Undefined without a pool.
 */
async function picked(ready: number): Promise<number | undefined> {
  if (pool === undefined) return undefined;
  await pool.ready({ minEndpoints: ready });
  await pool.use(() => undefined);
  return performance.now();
}

function start(source: EndpointSource, snapshots: Snapshots): () => Promise<void> {
  if (values.pool) {
    const created = createPool({ source, transport: memoryTransport });
    pool = created;
    created.on('change', (set) => snapshots.seen(set));
    created.on('sourceError', (e) => snapshots.errors.push(e));
    return () => created.close();
  }
  const watch = source.watch({ snapshot: (s) => snapshots.seen(s), error: (e) => snapshots.errors.push(e) });
  return () => watch.close();
}

interface Figure {
  ms: number;
  /** From the moment the server handed the last event to the socket: the client's share. */
  afterWriteMs: number;
  /** With --pool: from that moment to a pick from a picker over the new set's members. */
  pickedMs: number | undefined;
  blockedMs: number;
}

/**
 * Runs `step` with an event-loop delay histogram around it; `step` resolves with when the
 * snapshot came and (for events) when the server wrote the last one.
 */
async function timed(step: () => Promise<{ seen: number; written?: number; picked?: number }>): Promise<Figure> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  // The histogram's timer starts on the next turn, and sees the last block only on the turn after it.
  await new Promise((resolve) => setTimeout(resolve, 2));
  const started = performance.now();
  const { seen, written = started, picked } = await step();
  await new Promise((resolve) => setTimeout(resolve, 2));
  h.disable();
  return { ms: seen - started, afterWriteMs: seen - written, pickedMs: picked === undefined ? undefined : picked - written, blockedMs: h.max / 1e6 };
}

if (!values.cold) await import('@kubernetes/client-node');
const figures: Record<'first' | 'slice' | 'replace' | 'swap', Figure[]> = { first: [], slice: [], replace: [], swap: [] };
for (let round = 0; round < rounds; round++) {
  const api = await ApiServerThread.start('bench-token');
  const snapshots = new Snapshots();
  let close: (() => Promise<void>) | undefined;
  try {
    await api.apply({ service: SERVICE, from: 0, to: SIZE });
    const source = kubernetesEndpoints({
      service: SERVICE,
      namespace: 'default',
      port: 'http',
      kubeConfig: api.kubeConfig(),
    });
    figures.first.push(
      await timed(async () => {
        const first = snapshots.next((s) => s.size === SIZE);
        close = start(source, snapshots);
        const seen = await first;
        return { seen, picked: await picked(SIZE) };
      }),
    );
    // Wait for the watch to be open, so events are events and not part of a relist.
    while ((await api.openWatches()) === 0) await new Promise((resolve) => setImmediate(resolve));
    for (let e = 0; e < events; e++) {
      // Pod e·7 in slice e turns not ready (each event a different slice).
      const s = e % 100;
      const target = s * 100 + ((e * 7) % 100);
      const key = `${podIp(target)}:8080`;
      figures.slice.push(
        await timed(async () => {
          const seen = snapshots.next((x) => x.get(key)?.ready === false);
          const { writtenAt } = await api.apply({ service: SERVICE, from: s * 100, to: s * 100 + 100, firstSlice: s, notReady: target });
          const at = await seen;
          // Each event leaves one more pod not ready.
          return { seen: at, written: writtenAt, picked: await picked(SIZE - e - 1) };
        }),
      );
    }
    const replacement = `${podIp(2 * SIZE)}:8080`;
    figures.replace.push(
      await timed(async () => {
        const replaced = snapshots.next((x) => x.size === SIZE && x.has(replacement) && !x.has(`${podIp(0)}:8080`));
        const { writtenAt } = await api.apply({ service: SERVICE, from: 2 * SIZE, to: 3 * SIZE });
        const at = await replaced;
        return { seen: at, written: writtenAt, picked: await picked(SIZE) };
      }),
    );
    const first = `${podIp(SIZE)}:8080`;
    figures.swap.push(
      await timed(async () => {
        const swapped = snapshots.next((x) => x.size === SIZE && x.has(first) && !x.has(replacement));
        await api.apply({ service: SERVICE, from: SIZE, to: 2 * SIZE, name: `${SERVICE}-all` });
        const { writtenAt } = await api.remove(Array.from({ length: 100 }, (_, i) => `${SERVICE}-${i}`));
        const at = await swapped;
        return { seen: at, written: writtenAt, picked: await picked(SIZE) };
      }),
    );
    if (snapshots.errors.length > 0) console.error(`round ${round}: ${snapshots.errors.length} errors, first: ${snapshots.errors[0].message}`);
  } finally {
    await close?.();
    await api.close();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

console.log(
  `kubernetesEndpoints at ${SIZE} endpoints (100 slices × 100), ${values.pool ? 'pool over an in-memory transport' : 'source only'} (node ${process.version})`,
);
console.log(
  `${'step'.padEnd(44)} ${'runs'.padStart(5)} ${'median ms'.padStart(10)} ${'max ms'.padStart(9)} ${'after write'.padStart(12)}${values.pool ? ` ${'to picker'.padStart(10)} ${'max'.padStart(8)}` : ''} ${'block ms median/max'.padStart(20)}`,
);
const names = {
  first: 'first set (list 100 slices)',
  slice: 'one event changing one slice',
  replace: 'every slice changed to other pods at once',
  swap: 'swap to one slice of 10,000 other pods',
};
for (const [step, list] of Object.entries(figures) as [keyof typeof figures, Figure[]][]) {
  const ms = list.map((f) => f.ms);
  const after = step === 'first' ? '' : median(list.map((f) => f.afterWriteMs)).toFixed(1);
  // The first set has no write to count from: its "to picker" counts from watch().
  const toPicker = list.map((f) => (f.pickedMs ?? 0) + (step === 'first' ? f.ms - f.afterWriteMs : 0));
  const picker = values.pool ? ` ${median(toPicker).toFixed(1).padStart(10)} ${Math.max(...toPicker).toFixed(1).padStart(8)}` : '';
  console.log(
    `${names[step].padEnd(44)} ${String(list.length).padStart(5)} ${median(ms).toFixed(1).padStart(10)} ${Math.max(...ms).toFixed(1).padStart(9)} ${after.padStart(12)}${picker} ${`${median(list.map((f) => f.blockedMs)).toFixed(1)} / ${Math.max(...list.map((f) => f.blockedMs)).toFixed(1)}`.padStart(20)}`,
  );
}
