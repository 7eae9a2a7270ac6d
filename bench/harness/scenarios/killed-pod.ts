/**
 * `killed-pod`: under load, one pod's process dies (every connection reset, its address refuses),
 * and the control plane takes it out of DNS, the EndpointSlice and the ClusterIP a moment later.
 * A call that never reached the pod must be sent again elsewhere; one that may have reached it is
 * sent again only when the caller said it is idempotent. So: idempotent rows lose nothing, and
 * the others lose at most the calls that were in flight on that pod when it died.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, type BenchCluster, type PodInfo } from '../cluster.ts';
import { grpcKubeProxy, httpKubeProxy, podpoolMode, type Mode } from '../client-modes.ts';
import type { Caller } from '../load.ts';
import { measure, servedBetween, type ModeResult } from '../measure.ts';
import { formatTable, reportHead, type ScenarioReport } from '../report.ts';
import { agentSockets } from './balance.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

/** How long after the kill the pod leaves the source (its readiness probe failing, the endpoint controller). */
export const REMOVE_AFTER_MS = 100;
/** The kill comes this far into the run, once the load is steady. */
export const KILL_AT = 1 / 3;

/** podpool's rows with the call idempotent (sent again even when it may have reached the pod). */
export const IDEMPOTENT = 'idempotent retry';

/**
 * kube-proxy first on each wire, then podpool by default (only calls that never reached a pod are
 * sent again) and with `retry: { idempotent: true }`. HTTP rows hold an agent of the same sockets
 * per client (one request on a socket at a time); gRPC rows one connection per destination.
 */
export function killedPodModes(options: { pods: number; inflight: number }): Mode[] {
  const agent = agentSockets(options.pods, options.inflight);
  const idempotent = { retry: { idempotent: true } };
  return [
    httpKubeProxy(agent),
    podpoolMode('http', 'round-robin', { agent }),
    podpoolMode('http', 'round-robin', { agent, pool: idempotent, label: IDEMPOTENT }),
    grpcKubeProxy,
    podpoolMode('grpc', 'round-robin'),
    podpoolMode('grpc', 'round-robin', { pool: idempotent, label: IDEMPOTENT }),
  ];
}

/** A figure of podpool's clients' members on `address` (calls in flight, calls started), summed; undefined for other clients. */
function memberSum(callers: readonly Caller[], address: string, figure: 'inFlight' | 'requests'): number | undefined {
  let sum: number | undefined;
  for (const caller of callers) {
    const stats = caller.stats?.();
    if (stats === undefined) continue;
    for (const m of stats.members) if (m.endpoint.address === address) sum = (sum ?? 0) + m[figure];
  }
  return sum;
}

export async function killedPod(options: ScenarioOptions, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, protocols: ['http', 'grpc'], concurrency: options.concurrency, serviceMs: options.serviceMs });
  const durationMs = options.durationS * 1000;
  try {
    const results: ModeResult[] = [];
    for (const mode of killedPodModes(options)) {
      const { row } = await measure(cluster, mode, {
        clients: options.clients,
        inflight: options.inflight,
        durationMs,
        label: `killed-pod · ${mode.wire} · ${mode.client}`,
        holdForDuring: true,
        during: async ({ callers, gate }) => {
          const before = await cluster!.counts();
          await sleep(durationMs * KILL_AT);
          const served = servedBetween(before, await cluster!.counts(), mode.wire, cluster!.readyPods().map((p) => p.name));
          // The kill is an IPC message away: no new call starts between the reading and the kill,
          // so the calls in flight at the kill are at most those read (fewer if some finish).
          const open = gate.close();
          let victim: PodInfo;
          let inFlightAtKill: number | undefined;
          let startedAtKill: number | undefined;
          let unanswered: number;
          try {
            // The pod with the most calls on it (podpool's count), or that served the most so far
            // (kube-proxy's clients, pinned to a few pods): the kill always catches calls.
            const pods = cluster!.readyPods();
            const inFlight = pods.map((p) => memberSum(callers, p.address, 'inFlight'));
            const load = pods.map((p, i) => inFlight[i] ?? served[p.name] ?? 0);
            const busiest = load.indexOf(Math.max(...load));
            victim = pods[busiest]!;
            inFlightAtKill = inFlight[busiest];
            startedAtKill = memberSum(callers, victim.address, 'requests');
            ({ unanswered } = await cluster!.killPod(victim.name));
          } finally {
            open();
          }
          await sleep(REMOVE_AFTER_MS);
          // Calls the clients sent to the dead pod before they heard its connections reset (a
          // reset is an event away): they too were on the pod when it was found dead.
          const startedAfter = memberSum(callers, victim.address, 'requests');
          await cluster!.removeFromSource(victim.name);
          return {
            killed: victim.name,
            ...(inFlightAtKill !== undefined && { inFlightAtKill }),
            ...(startedAtKill !== undefined && startedAfter !== undefined && { sentToDeadPod: startedAfter - startedAtKill }),
            podUnanswered: unanswered,
          };
        },
      });
      results.push(row);
      // Back to N pods for the next row (a Deployment replaces the deleted pod by itself).
      await cluster.scale(options.pods);
    }
    const report: ScenarioReport = {
      ...reportHead('killed-pod', cluster, options),
      removeAfterMs: REMOVE_AFTER_MS,
      results,
      notes: [
        `one pod killed ${Math.round(KILL_AT * 100)} % into each run (the one with the most calls in flight, for podpool; for kube-proxy, the one that served the most so far): its connections reset, its address refuses (RST, as a crashed container on a live node); ${cluster.standIn === 'kubernetes' ? `its deletion (grace 0) is asked of the API server ${REMOVE_AFTER_MS} ms later, and the Deployment replaces it` : `it leaves DNS, the EndpointSlice and the ClusterIP ${REMOVE_AFTER_MS} ms later`}.`,
        `"${IDEMPOTENT}": the pool's retry: { idempotent: true } (the bench's GET / Echo call is idempotent); other podpool rows keep the default: only calls that never reached a pod are sent again.`,
        '"in flight": podpool\'s pool.stats() inFlight on the killed pod, summed over clients, read just before the kill (the load loops start no call from the reading to the kill, a millisecond or so, so no call reaches the pod uncounted); "sent to dead": calls the clients started on it after the kill, before they heard its connections reset (retries of never-sent calls included); "pod held": requests the pod had received and not answered when it died.',
      ],
    };
    return {
      report,
      table: formatTable(report, [
        ['in flight', (r) => (r.inFlightAtKill === undefined ? '-' : String(r.inFlightAtKill))],
        ['sent to dead', (r) => (r.sentToDeadPod === undefined ? '-' : String(r.sentToDeadPod))],
        ['pod held', (r) => String(r.podUnanswered ?? '')],
        ['retries', (r) => (r.retries === undefined ? '-' : String(r.retries))],
      ]),
    };
  } finally {
    if (own) await cluster.close();
  }
}
