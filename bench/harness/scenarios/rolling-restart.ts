/**
 * `rolling-restart`: every pod is replaced, one at a time, under load: a new pod becomes ready,
 * then an old one turns terminating (out of DNS, the ClusterIP and the EndpointSlice's ready set),
 * finishes its in-flight work within a grace period, and is gone. Failed requests and p99 per mode.
 */
import { Cluster, type BenchCluster } from '../cluster.ts';
import { DISCOVERY_SOURCES, DNS_REFRESH_MS, grpcKubeProxy, grpcRoundRobin, httpBalancedPool, httpKubeProxy, podpoolMode, type Mode } from '../client-modes.ts';
import { round } from '../load.ts';
import { measure, type ModeResult } from '../measure.ts';
import { formatTable, reportHead, type ScenarioReport } from '../report.ts';
import { agentSockets } from './balance.ts';
import { IDEMPOTENT } from './killed-pod.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

/** How long a terminating pod may finish in-flight work (terminationGracePeriodSeconds, scaled down). */
export const GRACE_MS = 300;
/** The pods' `preStop` sleep: endpoints change first, the pod stops accepting this much later. */
export const PRE_STOP_MS = 100;

/**
 * kube-proxy first. HTTP rows hold an agent of the same sockets per client (one request on a
 * socket at a time: requests pipelined behind one on a closing socket would be lost to the
 * pipelining, not to the restart); gRPC rows one connection per destination.
 */
export function rollingRestartModes(options: { pods: number; inflight: number }): Mode[] {
  const named = (mode: Mode, source: string): Mode => ({ ...mode, client: `${mode.client} (${source})` });
  const agent = agentSockets(options.pods, options.inflight);
  // The bench's GET and Echo are idempotent, and podpool is told so: a call the old pod may have
  // taken and not answered is sent again on another pod.
  const pool = { retry: { idempotent: true } };
  const label = IDEMPOTENT;
  return [
    httpKubeProxy(agent),
    ...Object.entries(DISCOVERY_SOURCES).map(([name, source]) => named(podpoolMode('http', 'round-robin', { source, agent, pool, label }), name)),
    httpBalancedPool(agent),
    grpcKubeProxy,
    ...Object.entries(DISCOVERY_SOURCES).map(([name, source]) => named(podpoolMode('grpc', 'round-robin', { source, pool, label }), name)),
    grpcRoundRobin,
  ];
}

export async function rollingRestart(options: ScenarioOptions, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, concurrency: options.concurrency, serviceMs: options.serviceMs });
  const durationMs = options.durationS * 1000;
  try {
    const results: ModeResult[] = [];
    for (const mode of rollingRestartModes(options)) {
      const { row } = await measure(cluster, mode, {
        clients: options.clients,
        inflight: options.inflight,
        durationMs,
        label: `rolling-restart · ${mode.wire} · ${mode.client}`,
        holdForDuring: true,
        during: ({ signal }) => cluster!.rollingRestart({ signal, durationMs, graceMs: GRACE_MS, preStopMs: PRE_STOP_MS }),
      });
      // Requests, not pods, are what a restart must not lose.
      row.errorRate = row.requests + row.errors === 0 ? 0 : round(row.errors / (row.requests + row.errors), 4);
      results.push(row);
      // Each mode replaced every pod; the next starts on the new ones, which are as fresh.
    }
    const report: ScenarioReport = {
      ...reportHead('rolling-restart', cluster, options),
      graceMs: GRACE_MS,
      preStopMs: PRE_STOP_MS,
      results,
      notes: [
        cluster.standIn === 'kubernetes'
          ? 'every pod replaced once per mode by the Deployment\'s rolling update (kubectl rollout restart; maxSurge 1, maxUnavailable 0); a pod told to stop turns unready at once, serves its preStop time, then finishes in-flight work within its grace; "replaced": pods replaced while the load ran (the next row starts once the rollout is over).'
          : `every pod replaced once per mode: new pod ready, old pod terminating (out of endpoints), ${PRE_STOP_MS} ms preStop sleep, then stops accepting and is gone after ≤ ${GRACE_MS} ms of grace.`,
        `podpool's DNS source polls every ${DNS_REFRESH_MS} ms, so it may still pick a pod that stopped accepting.`,
        `podpool's rows ("${IDEMPOTENT}") set retry: { idempotent: true }, since the bench's GET / Echo call is idempotent: a call sent to a pod that went away unanswered is sent again on another; kube-proxy and the peers have no such setting and run as they are.`,
        'undici BalancedPool lists the pods once at start: once they are all replaced, it has nowhere to send.',
      ],
    };
    return {
      report,
      table: formatTable(report, [
        ['replaced', (r) => String(r.replaced ?? '')],
        ['error rate', (r) => `${(((r.errorRate as number) ?? 0) * 100).toFixed(2)}%`],
        ['retries', (r) => (r.retries === undefined ? '-' : String(r.retries))],
      ]),
    };
  } finally {
    if (own) await cluster.close();
  }
}
