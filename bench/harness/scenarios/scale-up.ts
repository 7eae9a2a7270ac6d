/**
 * `scale-up`: a pod is added a quarter into the run. How long until it serves its first request,
 * and until it serves its fair share? podpool learns of it from discovery and connects; grpc-js's
 * `round_robin` resolves the name again only when a connection fails; kube-proxy sends it new
 * connections only, and long-lived clients open none.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, type BenchCluster } from '../cluster.ts';
import { DISCOVERY_SOURCES, grpcKubeProxy, grpcRoundRobin, httpKubeProxy, podpoolMode, type Mode } from '../client-modes.ts';
import { round } from '../load.ts';
import { measure, type ModeResult } from '../measure.ts';
import { formatTable, ranOn, type ChartSpec, reportHead, type ScenarioReport } from '../report.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

/** Time line resolution, and the window in which "fair share" is judged. */
const BUCKET_MS = 250;
/** How long the added pod may take to be ready before the load gives up on it. */
const POD_START_BOUND_MS = 120_000;
/** A share at least this fraction of 1/N counts as fair. */
const FAIR = 0.8;

export function scaleUpModes(): Mode[] {
  const podpool = Object.entries(DISCOVERY_SOURCES).map(([name, source]) => {
    const mode = podpoolMode('http', 'round-robin', { source });
    return { ...mode, client: `${mode.client} (${name})` };
  });
  // One long-lived connection per destination for every row: what a long-lived client holds.
  return [httpKubeProxy(), grpcKubeProxy, ...podpool, grpcRoundRobin];
}

export async function scaleUp(options: ScenarioOptions, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, concurrency: options.concurrency, serviceMs: options.serviceMs });
  const durationMs = options.durationS * 1000;
  const addAtMs = Math.round(durationMs / 4);
  try {
    const results: ModeResult[] = [];
    const timeline: { client: string; t: number; share: number }[] = [];
    for (const mode of scaleUpModes()) {
      let added = '';
      let addedAt = 0;
      const { row, load } = await measure(cluster, mode, {
        clients: options.clients,
        inflight: options.inflight,
        durationMs,
        keepAnswers: true,
        label: `scale-up · ${mode.wire} · ${mode.client}`,
        // A real pod takes seconds to start (a minute with an image pull): the load goes on until
        // the added pod has had the rest of the run (3/4 of it) to be found, whenever it turned ready.
        holdForDuring: true,
        holdAtMostMs: durationMs + POD_START_BOUND_MS,
        during: async ({ startedAt, signal }) => {
          await sleep(addAtMs);
          const pod = await cluster!.addPod();
          added = pod.name;
          addedAt = performance.now() - startedAt;
          await sleep(durationMs - addAtMs, undefined, { signal }).catch(() => {});
        },
      });
      const n = cluster.readyPods().length;
      const first = load.answers.find(([t, pod]) => pod === added && t >= addedAt);
      let fairAt: number | undefined;
      const name = `${mode.wire} · ${mode.client}`;
      for (let start = 0; start < load.elapsedMs; start += BUCKET_MS) {
        const inBucket = load.answers.filter(([t]) => t >= start && t < start + BUCKET_MS);
        if (inBucket.length === 0) continue;
        const share = inBucket.filter(([, pod]) => pod === added).length / inBucket.length;
        timeline.push({ client: name, t: round((start + BUCKET_MS / 2) / 1000, 3), share: round(share, 3) });
        if (fairAt === undefined && start >= addedAt && share >= FAIR / n) fairAt = start + BUCKET_MS;
      }
      row.addedPod = added;
      row.addedAtMs = round(addedAt, 0);
      row.firstRequestMs = first ? round(first[0] - addedAt, 0) : null;
      row.fairShareMs = fairAt === undefined ? null : round(fairAt - addedAt, 0);
      row.runMs = round(load.elapsedMs - addedAt, 0);
      results.push(row);
      // Back to N pods for the next client.
      await cluster.scale(n - 1);
    }
    const report: ScenarioReport = {
      ...reportHead('scale-up', cluster, options),
      results,
      timeline,
      notes: [
        `one pod added ${addAtMs} ms into each run (asked for then; times count from when it was ready), and the load goes on ${durationMs - addAtMs} ms after; "fair share" = a ${BUCKET_MS} ms window where it served ≥ ${FAIR * 100}% of 1/${options.pods + 1} of the requests.`,
        'kube-proxy and grpc-js round_robin keep their connections: the new pod sees no request ("never").',
      ],
    };
    // A real cluster's pod may take longer to start than the load lasts (at most 3 × --duration).
    const never = (r: ModeResult, key: string): string =>
      r[key] !== null ? `${r[key]} ms` : (r.runMs as number) <= 0 ? 'pod ready after the load' : `never (${r.runMs} ms run)`;
    return {
      report,
      chart: timelineChart(report, addAtMs),
      table: formatTable(report, [
        ['first request', (r) => never(r, 'firstRequestMs')],
        ['fair share', (r) => never(r, 'fairShareMs')],
      ]),
    };
  } finally {
    if (own) await cluster.close();
  }
}

function timelineChart(report: ScenarioReport, addAtMs: number): ChartSpec {
  return {
    title: { text: 'Share of requests served by the pod added mid-run', subtitle: `${report.clients} clients, ${report.pods} + 1 pods, ${ranOn(report)}` },
    width: 480,
    height: 200,
    layer: [
      {
        data: { values: report.timeline },
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 't', type: 'quantitative', title: 'seconds' },
          y: { field: 'share', type: 'quantitative', title: 'share of requests', scale: { domain: [0, 1] } },
          color: { field: 'client', type: 'nominal', title: null },
        },
      },
      {
        data: { values: [{ t: addAtMs / 1000, label: 'pod added' }] },
        mark: { type: 'rule', strokeDash: [4, 4] },
        encoding: { x: { field: 't', type: 'quantitative' } },
      },
    ],
  };
}
