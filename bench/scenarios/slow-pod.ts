/**
 * `slow-pod`: one pod turns 10× slower. Round-robin keeps sending it its share, so its queue sets
 * the tail; least-loaded and peak-EWMA see its in-flight count or latency climb and send less.
 */
import { Cluster } from '../cluster.ts';
import { httpBalancedPool, httpKubeProxy, httpPodpool, type Mode } from '../clients.ts';
import { measure, type ModeResult } from '../measure.ts';
import { formatTable, percentileChart, reportHead, type ScenarioReport } from '../report.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

export const SLOW_FACTOR = 10;

export function slowPodModes(): Mode[] {
  return [httpKubeProxy, httpPodpool('round-robin'), httpPodpool('least-loaded'), httpPodpool('peak-ewma'), httpBalancedPool];
}

export async function slowPod(options: ScenarioOptions, cluster?: Cluster): Promise<ScenarioOutput> {
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, concurrency: options.concurrency, serviceMs: options.serviceMs });
  try {
    const slow = cluster.readyPods()[0]!;
    const results: ModeResult[] = [];
    for (const mode of slowPodModes()) {
      await cluster.slowPod(slow.name, SLOW_FACTOR);
      try {
        const { row } = await measure(cluster, mode, {
          clients: options.clients,
          inflight: options.inflight,
          durationMs: options.durationS * 1000,
          label: `slow-pod · ${mode.wire} · ${mode.client}`,
        });
        const total = Object.values(row.perPod).reduce((a, b) => a + b, 0);
        row.slowPodShare = total === 0 ? 0 : Math.round((row.perPod[slow.name]! / total) * 1000) / 1000;
        results.push(row);
      } finally {
        await cluster.slowPod(slow.name, 1);
      }
    }
    const report: ScenarioReport = {
      ...reportHead('slow-pod', cluster, options),
      pods: cluster.readyPods().length,
      slowPod: slow.name,
      slowFactor: SLOW_FACTOR,
      results,
      notes: [`${slow.name} serves ${SLOW_FACTOR}× slower (${options.serviceMs * SLOW_FACTOR} ms a request) throughout.`],
    };
    return {
      report,
      chart: percentileChart(report, `Latency with one pod ${SLOW_FACTOR}× slower`),
      table: formatTable(report, [
        ['p99.9 ms', (r) => r.p999Ms.toFixed(1)],
        ['slow pod share', (r) => `${((r.slowPodShare as number) * 100).toFixed(1)}%`],
      ]),
    };
  } finally {
    if (own) await cluster.close();
  }
}
