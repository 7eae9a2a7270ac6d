/**
 * Runs one mode against the cluster and turns what the pods served and the clients saw into one
 * row of a report.
 */
import type { BenchCluster } from './cluster.ts';
import type { Kind, Mode } from './client-modes.ts';
import { Gate, coefficientOfVariation, percentileMs, round, runLoad, type Caller, type LoadResult } from './load.ts';
import type { PodCounts } from './pods.ts';
import { progress } from './progress.ts';

/** One client's figures in a scenario: the rows of the table and of `results` in the JSON. */
export interface ModeResult {
  client: string;
  transport: string;
  /** Who balances: kube-proxy, podpool or another client-side balancer (the chart's colour). */
  kind?: Kind;
  /** Connections one client keeps, as configured: `1`, `1 per pod (5)`, `20`, … */
  connections?: string;
  /** TCP connections the pods accepted during the row, per client (HTTP and WebSocket). */
  socketsSeen?: number;
  /** The comparison this row belongs to: rows of one group had the same connections per client. */
  group?: string;
  /** Pods that served at least one request. */
  podsUsed: number;
  /** Pods that could have served. */
  pods: number;
  /** Requests each pod served, as the pods counted them. */
  perPod: Record<string, number>;
  /** σ / mean of `perPod` (idle pods count as 0): 0 is perfectly even. */
  cv: number;
  /** Answered requests per second. */
  throughput: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  requests: number;
  errors: number;
  errorSamples?: string[];
  /** podpool's calls sent again (`pool.stats().retries`), summed over clients, when the pool counts them. */
  retries?: number;
  /** podpool's hedges sent (`pool.stats().hedges`), summed over clients. */
  hedges?: number;
  [figure: string]: unknown;
}

export interface MeasureOptions {
  clients: number;
  inflight: number;
  durationMs: number;
  /** Per client; default enough for 20 000 requests a second. */
  maxRequests?: number;
  /**
   * Runs while the load runs (adds a pod, slows one down, kills one); the load waits for it. It
   * sees the clients, to read a podpool pool's stats at a moment of its choosing.
   */
  during?: (load: { signal: AbortSignal; startedAt: number; callers: readonly Caller[]; gate: Gate }) => Promise<Record<string, unknown> | void>;
  keepAnswers?: boolean;
  /**
   * Places client i's connection: after one request, a client whose pod fails `place(i, pod)` is
   * closed and opened again (a connection draw conditioned on where it landed; one-connection
   * modes only).
   */
  place?: (client: number, pod: string) => boolean;
  /** The row's comparison group (see {@link ModeResult.group}). */
  group?: string;
  /** Keep loading until `during` is done (bounded by 3 × `durationMs`), not only for `durationMs`. */
  holdForDuring?: boolean;
  /** With `holdForDuring`: the load's bound instead of 3 × `durationMs`. */
  holdAtMostMs?: number;
  label: string;
}

export interface Measured {
  row: ModeResult;
  load: LoadResult;
  extra: Record<string, unknown>;
}

/** Opens `clients` instances of the mode, loads them, closes them and reports. */
export async function measure(cluster: BenchCluster, mode: Mode, options: MeasureOptions): Promise<Measured> {
  const { clients, inflight, durationMs } = options;
  const maxRequests = options.maxRequests ?? Math.ceil((durationMs / 1000) * 20_000);
  const callers: Caller[] = [];
  let measured: Measured | undefined;
  const opened = await cluster.counts();
  try {
    for (let i = 0; i < clients; i++) callers.push(await openPlaced(cluster, mode, inflight, i, options.place));
    // As the clients opened: a scenario may add pods during the load.
    const connections = mode.connections(cluster.readyPods().length).text;
    const goneBefore = new Set(cluster.pods.filter((p) => p.gone).map((p) => p.name));
    const before = await cluster.counts();
    const stop = new AbortController();
    const startedAt = performance.now();
    const gate = new Gate();
    const during = options.during?.({ signal: stop.signal, startedAt, callers, gate });
    const load = await runLoad(callers, {
      inflight,
      durationMs,
      maxRequests,
      keepAnswers: options.keepAnswers,
      gate,
      ...(options.holdForDuring && during && { holdUntil: during.catch(() => {}), ...(options.holdAtMostMs !== undefined && { maxDurationMs: options.holdAtMostMs }) }),
      onTick: (f) => progress(options.label, f),
    });
    stop.abort();
    const extra = (await during) ?? {};
    const sent = sentAgain(callers.map((c) => c.stats?.()));
    const after = await cluster.counts();
    const names = cluster.pods.filter((p) => !goneBefore.has(p.name)).map((p) => p.name);
    const perPod = servedBetween(before, after, mode.wire, names);
    const values = Object.values(perPod);
    const socketKey = mode.wire === 'http' ? 'httpSockets' : mode.wire === 'ws' ? 'wsSockets' : undefined;
    // Sockets opened before the load (ready() connects, a placement probe) count too: they are the row's.
    const sockets = socketKey && Object.values(servedBetween(opened, after, socketKey, names)).reduce((a, b) => a + b, 0);
    const row: ModeResult = {
      client: mode.client,
      transport: mode.wire,
      kind: mode.kind,
      connections,
      ...(sockets !== undefined && { socketsSeen: round(sockets / clients, 1) }),
      ...(options.group !== undefined && { group: options.group }),
      podsUsed: values.filter((v) => v > 0).length,
      pods: values.length,
      perPod,
      cv: coefficientOfVariation(values),
      throughput: round((load.requests / load.elapsedMs) * 1000, 0),
      p50Ms: percentileMs(load.latency, 50),
      p99Ms: percentileMs(load.latency, 99),
      p999Ms: percentileMs(load.latency, 99.9),
      requests: load.requests,
      errors: load.errors,
      ...(load.errorSamples.length > 0 && { errorSamples: load.errorSamples }),
      ...sent,
      ...extra,
    };
    measured = { row, load, extra };
  } finally {
    const late = await closeWithin(callers, CLOSE_TIMEOUT_MS);
    // podpool's close() must leave nothing behind; when it hangs, the report says so.
    if (late > 0 && measured) measured.row.closeTimedOut = late;
  }
  return measured!;
}

/** What podpool sent beyond the calls made: retries and hedges, from `pool.stats()` or rows. */
export interface SentAgain {
  retries?: number;
  hedges?: number;
}

/**
 * Retries and hedges summed over clients' pools (`pool.stats()`), or over rows; absent where
 * none counts them (kube-proxy, the peers).
 */
export function sentAgain(counts: readonly (SentAgain | undefined)[]): SentAgain {
  const sent: SentAgain = {};
  for (const count of counts) {
    for (const key of ['retries', 'hedges'] as const) {
      const n = count?.[key];
      if (typeof n === 'number') sent[key] = (sent[key] ?? 0) + n;
    }
  }
  return sent;
}

/** A client that takes longer than this to close is left behind (and the report says so). */
const CLOSE_TIMEOUT_MS = 3_000;

/** Closes every client; resolves with how many were still closing after `ms`. */
async function closeWithin(callers: readonly Caller[], ms: number): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Set(callers);
  const all = Promise.all(callers.map((c) => c.close().catch(() => {}).finally(() => late.delete(c))));
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  await Promise.race([all, timeout]);
  clearTimeout(timer);
  return late.size;
}

/** What each named pod counted between two readings, for one counter (requests of a protocol, sockets). */
export function servedBetween(before: PodCounts, after: PodCounts, counter: keyof PodCounts[string], names: readonly string[]): Record<string, number> {
  const perPod: Record<string, number> = {};
  for (const name of names) perPod[name] = (after[name]?.[counter] ?? 0) - (before[name]?.[counter] ?? 0);
  return perPod;
}

/** Tries at placing one client before the draw is called impossible (p = 1/N each try). */
const MAX_PLACE_TRIES = 200;

/** Opens client `index`, again and again until `place` accepts the pod its connection reached. */
async function openPlaced(cluster: BenchCluster, mode: Mode, inflight: number, index: number, place: MeasureOptions['place']): Promise<Caller> {
  for (let tries = 0; tries < MAX_PLACE_TRIES; tries++) {
    const caller = await mode.open(cluster, { inflight, client: index });
    if (!place) return caller;
    let pod: string;
    try {
      pod = await caller.call();
    } catch (error) {
      await caller.close();
      throw error;
    }
    if (place(index, pod)) return caller;
    await caller.close();
  }
  throw new Error(`${mode.client}: no connection of client ${index} landed where the draw needs it in ${MAX_PLACE_TRIES} tries`);
}
