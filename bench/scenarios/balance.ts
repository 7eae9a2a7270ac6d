/**
 * `balance`: C clients, each one application instance with long-lived connections, over N pods.
 * kube-proxy pins each client's one connection to one pod, so at most C pods ever work; podpool
 * and the client-side peers spread requests over all N.
 */
import { Cluster } from '../cluster.ts';
import { BALANCERS, grpcKubeProxy, grpcRoundRobin, httpBalancedPool, httpKubeProxy, httpPodpool, wsKubeProxy, type Mode, type Wire } from '../clients.ts';
import { measure, type ModeResult } from '../measure.ts';
import { grpcPodpool, wsPodpool } from '../transports.ts';
import { formatTable, perPodChart, reportHead, type ScenarioReport } from '../report.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

/** The modes `balance` compares on one wire protocol. */
export function balanceModes(wire: Wire, balancers: readonly string[] = ['round-robin', 'least-loaded']): Mode[] {
  switch (wire) {
    case 'http':
      return [httpKubeProxy, ...balancers.map((b) => httpPodpool(b)), httpBalancedPool];
    case 'grpc':
      return [grpcKubeProxy, ...balancers.map((b) => grpcPodpool(b)), grpcRoundRobin];
    case 'ws':
      return [wsKubeProxy, ...balancers.map((b) => wsPodpool(b))];
  }
}

export async function balance(options: ScenarioOptions, cluster?: Cluster): Promise<ScenarioOutput> {
  const wires = options.wires ?? ['http', 'grpc', 'ws'];
  const balancers = options.balancers ?? Object.keys(BALANCERS).filter((b) => b !== 'peak-ewma');
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, concurrency: options.concurrency, serviceMs: options.serviceMs });
  try {
    const results: ModeResult[] = [];
    for (const wire of wires) {
      for (const mode of balanceModes(wire, balancers)) {
        const { row } = await measure(cluster, mode, {
          clients: options.clients,
          inflight: options.inflight,
          durationMs: options.durationS * 1000,
          label: `balance · ${wire} · ${mode.client}`,
        });
        results.push(row);
      }
    }
    const report: ScenarioReport = {
      ...reportHead('balance', cluster, options),
      results,
      notes: [
        `kube-proxy can use at most ${Math.min(options.clients, options.pods)} of ${options.pods} pods: one connection per client, pinned where iptables sent it.`,
      ],
    };
    const chart = perPodChart(report, 'Requests served per pod');
    return { report, chart, table: formatTable(report) };
  } finally {
    if (own) await cluster.close();
  }
}
