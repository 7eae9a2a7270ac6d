/**
 * `slow-pod`: one pod of N turns 10× slower. Round-robin keeps sending it its share, so its queue
 * sets the tail; least-loaded and peak-EWMA see its in-flight count or latency climb and send less.
 *
 * kube-proxy's row depends on luck: each client's one connection lands on the slow pod with
 * probability 1/N, so with 2 clients and 5 pods 64 % of runs never meet it. The scenario does not
 * draw and hope: it runs one draw per k = 0…C (exactly k clients' connections on the slow pod,
 * the rest anywhere else; a connection is reopened until it lands as the draw says), and weighs
 * each by its binomial probability: the row is the expected value over connection luck, and the
 * draws are kept. Every row runs the same draws with the same weights, the same connections
 * (one per destination) and the same load; podpool's rows connect to every pod, so their draws
 * differ only by noise.
 */
import type { PoolOptions } from '../../../src/index.ts';
import { Cluster, type BenchCluster } from '../cluster.ts';
import { grpcKubeProxy, grpcRoundRobin, podpoolMode, type Mode } from '../client-modes.ts';
import { round } from '../load.ts';
import { measure, sentAgain, type ModeResult } from '../measure.ts';
import { formatTable, reportHead, slowPodChart, type ScenarioReport } from '../report.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

export const SLOW_FACTOR = 10;

/**
 * The modes compared, kube-proxy first: gRPC, one long-lived connection per destination for all
 * (its default). Over HTTP/1.1 one connection would queue requests behind the slow one on the same
 * socket, and the row would measure pipelining rather than balancing.
 */
export function slowPodModes(): Mode[] {
  return [
    grpcKubeProxy,
    podpoolMode('grpc', 'round-robin'),
    podpoolMode('grpc', 'least-loaded'),
    podpoolMode('grpc', 'peak-ewma'),
    podpoolMode('grpc', 'peak-ewma', { pool: HEDGED, label: HEDGED_LABEL }),
    grpcRoundRobin,
  ];
}

/**
 * The hedged row's pool options: a second copy of a call goes to another pod once the call has
 * outlived the pool's p95, for the idempotent Echo call; the first answer wins, the loser is
 * cancelled, and every hedge is taken from the retry budget.
 */
export const HEDGED: Partial<PoolOptions<unknown>> = { retry: { idempotent: true }, hedge: { percentile: 95 } };
export const HEDGED_LABEL = 'hedged at p95';

/** One draw of a row: k clients' connections on the slow pod, and what the clients saw. */
export interface Draw {
  k: number;
  probability: number;
  throughput: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  slowPodShare: number;
  podsUsed: number;
  requests: number;
  errors: number;
}

/** P(exactly k of C connections land on one given pod of N): binomial(C, 1/N). */
export function drawProbability(clients: number, pods: number, k: number): number {
  let choose = 1;
  for (let i = 1; i <= k; i++) choose = (choose * (clients - k + i)) / i;
  return choose * (1 / pods) ** k * (1 - 1 / pods) ** (clients - k);
}

const FIGURES = ['throughput', 'p50Ms', 'p99Ms', 'p999Ms', 'slowPodShare'] as const;

export async function slowPod(options: ScenarioOptions, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, concurrency: options.concurrency, serviceMs: options.serviceMs });
  try {
    const slow = cluster.readyPods()[0]!;
    const pods = cluster.readyPods().length;
    const draws = Array.from({ length: options.clients + 1 }, (_, k) => ({ k, probability: drawProbability(options.clients, pods, k) }));
    const results: ModeResult[] = [];
    for (const mode of slowPodModes()) {
      const rows: { row: ModeResult; draw: Draw }[] = [];
      // The same client with every pod healthy, connections and load as in the draws: what the
      // slow pod's figures are divided by. Where a connection lands makes no difference here.
      const { row: healthy } = await measure(cluster, mode, {
        clients: options.clients,
        inflight: options.inflight,
        durationMs: options.durationS * 1000,
        label: `slow-pod · ${mode.client} · all pods healthy`,
      });
      await cluster.slowPod(slow.name, SLOW_FACTOR);
      try {
        for (const { k, probability } of draws) {
          const { row } = await measure(cluster, mode, {
            clients: options.clients,
            inflight: options.inflight,
            durationMs: options.durationS * 1000,
            label: `slow-pod · ${mode.client} · draw k=${k}`,
            // Only a connection pinned by the ClusterIP has a draw to condition on.
            ...(mode.kind === 'kube-proxy' && { place: (client: number, pod: string) => (client < k) === (pod === slow.name) }),
          });
          const total = Object.values(row.perPod).reduce((a, b) => a + b, 0);
          const slowPodShare = total === 0 ? 0 : round(row.perPod[slow.name]! / total, 3);
          rows.push({
            row,
            draw: { k, probability: round(probability, 4), throughput: row.throughput, p50Ms: row.p50Ms, p99Ms: row.p99Ms, p999Ms: row.p999Ms, slowPodShare, podsUsed: row.podsUsed, requests: row.requests, errors: row.errors },
          });
        }
      } finally {
        await cluster.slowPod(slow.name, 1);
      }
      const row = expected(rows, draws.map((d) => d.probability));
      row.healthy = { p50Ms: healthy.p50Ms, p99Ms: healthy.p99Ms, p999Ms: healthy.p999Ms, throughput: healthy.throughput, requests: healthy.requests, errors: healthy.errors };
      row.p99Ratio = healthy.p99Ms === 0 ? null : round(row.p99Ms / healthy.p99Ms, 2);
      row.p999Ratio = healthy.p999Ms === 0 ? null : round(row.p999Ms / healthy.p999Ms, 2);
      // Extra requests hedging sent, per call the clients made with the slow pod (every draw).
      if (row.hedges !== undefined) row.hedgeRate = round(row.hedges / Math.max(1, row.requests + row.errors), 4);
      results.push(row);
    }
    const report: ScenarioReport = {
      ...reportHead('slow-pod', cluster, options),
      pods,
      slowPod: slow.name,
      slowFactor: SLOW_FACTOR,
      draws: draws.map((d) => ({ k: d.k, probability: round(d.probability, 4) })),
      results,
      notes: [
        `${slow.name} serves ${SLOW_FACTOR}× slower (${options.serviceMs * SLOW_FACTOR} ms a request) throughout.`,
        `every figure is an expected value over kube-proxy's connection luck: one draw per k = 0…${options.clients} clients pinned to the slow pod, weighted ${draws.map((d) => `${(d.probability * 100).toFixed(1)} %`).join(' / ')}; every row ran the same draws, connections (one per destination) and load.`,
        `kube-proxy's draws, p99: ${kubeDraws(results)}`,
        'slow / healthy: each row\'s expected p99 and p99.9 over the draws, divided by the same client\'s in a run with every pod healthy (same connections and load, in this run).',
        `"${HEDGED_LABEL}": peak-EWMA with hedge: { percentile: 95 } and retry: { idempotent: true } on the pool; "hedges" is the extra requests it sent per call made.`,
      ],
    };
    return {
      report,
      chart: slowPodChart(report, `Latency with one pod ${SLOW_FACTOR}× slower`),
      table: formatTable(report, [
        ['p99.9 ms', (r) => r.p999Ms.toFixed(1)],
        ['slow pod share', (r) => `${((r.slowPodShare as number) * 100).toFixed(1)}%`],
        ['healthy p99 / p99.9', (r) => healthyFigures(r)],
        ['slow/healthy p99', (r) => ratio(r.p99Ratio)],
        ['p99.9', (r) => ratio(r.p999Ratio)],
        ['hedges', (r) => (typeof r.hedgeRate === 'number' ? `${(r.hedgeRate * 100).toFixed(2)}%` : '-')],
      ]),
    };
  } finally {
    if (own) await cluster.close();
  }
}

/** A row whose figures are the draws' weighted mean; requests and errors are summed. */
function expected(rows: readonly { row: ModeResult; draw: Draw }[], weights: readonly number[]): ModeResult {
  const total = weights.reduce((a, b) => a + b, 0);
  const mean = (f: (d: Draw) => number): number => rows.reduce((a, { draw }, i) => a + f(draw) * weights[i]!, 0) / total;
  const first = rows[0]!.row;
  const perPod: Record<string, number> = {};
  for (const name of Object.keys(first.perPod)) perPod[name] = Math.round(rows.reduce((a, { row }, i) => a + (row.perPod[name] ?? 0) * weights[i]!, 0) / total);
  const row: ModeResult = {
    ...first,
    perPod,
    // The most pods one draw used: the expected per-pod counts spread over every draw's pods.
    podsUsed: Math.max(...rows.map(({ draw }) => draw.podsUsed)),
    requests: rows.reduce((a, { row: r }) => a + r.requests, 0),
    errors: rows.reduce((a, { row: r }) => a + r.errors, 0),
    ...sentAgain(rows.map(({ row: r }) => r)),
    draws: rows.map(({ draw }) => draw),
  };
  for (const figure of FIGURES) row[figure] = round(mean((d) => d[figure]), figure === 'throughput' ? 0 : 3);
  const samples = rows.flatMap(({ row: r }) => r.errorSamples ?? []);
  if (samples.length > 0) row.errorSamples = [...new Set(samples)].slice(0, 5);
  else delete row.errorSamples;
  return row;
}

function healthyFigures(r: ModeResult): string {
  const healthy = r.healthy as { p99Ms: number; p999Ms: number } | undefined;
  return healthy ? `${healthy.p99Ms.toFixed(1)} / ${healthy.p999Ms.toFixed(1)}` : '-';
}

function ratio(value: unknown): string {
  return typeof value === 'number' ? `${value.toFixed(2)}×` : '-';
}

function kubeDraws(results: readonly ModeResult[]): string {
  const kube = results.find((r) => r.kind === 'kube-proxy');
  return ((kube?.draws as Draw[] | undefined) ?? [])
    .map((d) => `k=${d.k} (${(d.probability * 100).toFixed(1)} %) ${d.p99Ms.toFixed(0)} ms`)
    .join(', ');
}
