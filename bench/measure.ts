/**
 * Runs one mode against the cluster and turns what the pods served and the clients saw into one
 * row of a report.
 */
import type { Cluster } from './cluster.ts';
import type { Mode } from './clients.ts';
import { coefficientOfVariation, percentileMs, round, runLoad, type Caller, type LoadResult } from './load.ts';
import type { PodCounts } from './pods.ts';
import { progress } from './progress.ts';

/** One client's figures in a scenario: the rows of the table and of `results` in the JSON. */
export interface ModeResult {
  client: string;
  transport: string;
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
  [figure: string]: unknown;
}

export interface MeasureOptions {
  clients: number;
  inflight: number;
  durationMs: number;
  /** Per client; default enough for 20 000 requests a second. */
  maxRequests?: number;
  /** Runs while the load runs (adds a pod, slows one down); the load waits for it. */
  during?: (load: { signal: AbortSignal; startedAt: number }) => Promise<Record<string, unknown> | void>;
  keepAnswers?: boolean;
  /** Keep loading until `during` is done (bounded by 3 × `durationMs`), not only for `durationMs`. */
  holdForDuring?: boolean;
  label: string;
}

export interface Measured {
  row: ModeResult;
  load: LoadResult;
  extra: Record<string, unknown>;
}

/** Opens `clients` instances of the mode, loads them, closes them and reports. */
export async function measure(cluster: Cluster, mode: Mode, options: MeasureOptions): Promise<Measured> {
  const { clients, inflight, durationMs } = options;
  const maxRequests = options.maxRequests ?? Math.ceil((durationMs / 1000) * 20_000);
  const callers: Caller[] = [];
  let measured: Measured | undefined;
  try {
    for (let i = 0; i < clients; i++) callers.push(await mode.open(cluster, { inflight }));
    const goneBefore = new Set(cluster.pods.filter((p) => p.gone).map((p) => p.name));
    const before = await cluster.counts();
    const stop = new AbortController();
    const startedAt = performance.now();
    const during = options.during?.({ signal: stop.signal, startedAt });
    const load = await runLoad(callers, {
      inflight,
      durationMs,
      maxRequests,
      keepAnswers: options.keepAnswers,
      ...(options.holdForDuring && during && { holdUntil: during.catch(() => {}) }),
      onTick: (f) => progress(options.label, f),
    });
    stop.abort();
    const extra = (await during) ?? {};
    const after = await cluster.counts();
    const perPod = servedBetween(before, after, mode.wire, cluster.pods.filter((p) => !goneBefore.has(p.name)).map((p) => p.name));
    const values = Object.values(perPod);
    const row: ModeResult = {
      client: mode.client,
      transport: mode.wire,
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

/** Requests each named pod served between two readings, for one wire protocol. */
export function servedBetween(before: PodCounts, after: PodCounts, wire: 'http' | 'grpc' | 'ws', names: readonly string[]): Record<string, number> {
  const perPod: Record<string, number> = {};
  for (const name of names) perPod[name] = (after[name]?.[wire] ?? 0) - (before[name]?.[wire] ?? 0);
  return perPod;
}
