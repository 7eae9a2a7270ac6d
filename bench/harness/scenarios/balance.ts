/**
 * `balance`: C clients, each one application instance with long-lived connections, over N pods.
 * kube-proxy pins each client's connection to one pod, so at most C pods ever work; podpool and
 * the client-side peers spread requests over all N.
 *
 * Rows are compared in groups that hold every client's connections alike: (a) one long-lived
 * connection per destination, on every wire (gRPC's default, and the seed's case); (b) for HTTP,
 * an agent with the same number of sockets per client in every row, where kube-proxy spreads
 * some, since the ClusterIP DNATs each socket on its own.
 */
import { Cluster, type BenchCluster } from '../cluster.ts';
import { BALANCERS, grpcKubeProxy, grpcRoundRobin, httpBalancedPool, httpKubeProxy, podpoolMode, wsKubeProxy, type HttpAgent, type Mode, type Wire } from '../client-modes.ts';
import { measure, type ModeResult } from '../measure.ts';
import { balanceChart, formatTable, reportHead, type ScenarioReport } from '../report.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

/** One comparison: rows whose clients hold the same connections. */
export interface BalanceGroup {
  readonly name: string;
  readonly wire: Wire;
  readonly modes: readonly Mode[];
}

/**
 * Sockets per client of the HTTP agent in (b): at least one per request in flight (a socket
 * carries one at a time), and a multiple of N so that each pod gets the same share.
 */
export function agentSockets(pods: number, inflight: number): number {
  return pods * Math.ceil(inflight / pods);
}

/** The groups `balance` compares on one wire protocol; kube-proxy first in each. */
export function balanceGroups(wire: Wire, options: { pods: number; inflight: number }, balancers: readonly string[] = ['round-robin', 'least-loaded']): BalanceGroup[] {
  const http = (agent: HttpAgent): Mode[] => [httpKubeProxy(agent), ...balancers.map((b) => podpoolMode('http', b, { agent })), httpBalancedPool(agent)];
  switch (wire) {
    case 'http': {
      const sockets = agentSockets(options.pods, options.inflight);
      return [
        { name: 'http · 1 connection', wire, modes: http(undefined) },
        { name: `http · ${sockets} sockets`, wire, modes: http(sockets) },
      ];
    }
    case 'grpc':
      return [{ name: 'grpc · 1 connection', wire, modes: [grpcKubeProxy, ...balancers.map((b) => podpoolMode('grpc', b)), grpcRoundRobin] }];
    case 'ws':
      return [{ name: 'ws · 1 connection', wire, modes: [wsKubeProxy, ...balancers.map((b) => podpoolMode('ws', b))] }];
  }
}

/** Pods that C clients with S sockets each are expected to reach through the ClusterIP. */
export function expectedPodsReached(pods: number, sockets: number): number {
  return pods * (1 - (1 - 1 / pods) ** sockets);
}

export async function balance(options: ScenarioOptions, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const wires = options.wires ?? ['http', 'grpc', 'ws'];
  const balancers = options.balancers ?? Object.keys(BALANCERS).filter((b) => b !== 'peak-ewma');
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, concurrency: options.concurrency, serviceMs: options.serviceMs });
  try {
    const results: ModeResult[] = [];
    for (const wire of wires) {
      for (const group of balanceGroups(wire, options, balancers)) {
        for (const mode of group.modes) {
          const { row } = await measure(cluster, mode, {
            clients: options.clients,
            inflight: options.inflight,
            durationMs: options.durationS * 1000,
            group: group.name,
            label: `balance · ${group.name} · ${mode.client}`,
          });
          results.push(row);
        }
      }
    }
    const notes = [
      `every row of a group holds the same connections per client ("conns/client"; "sockets seen" is what the pods accepted, per client); the clients run ${options.inflight} requests in flight each.`,
      `1 connection: kube-proxy can use at most ${Math.min(options.clients, options.pods)} of ${options.pods} pods, one connection per client, pinned where the ClusterIP sent it; requests are pipelined on each connection.`,
    ];
    const agent = results.find((r) => r.kind === 'kube-proxy' && r.transport === 'http' && r.connections !== '1');
    if (agent) {
      const opened = Math.round((agent.socketsSeen ?? 0) * options.clients);
      notes.push(
        `${agent.group}: kube-proxy's ${opened} sockets were DNAT'd one by one and reached ${agent.podsUsed} of ${options.pods} pods (${expectedPodsReached(options.pods, opened).toFixed(1)} expected); podpool and BalancedPool put ${agent.connections} sockets per client evenly on the pods.`,
      );
    }
    const report: ScenarioReport = { ...reportHead('balance', cluster, options), results, notes };
    return { report, chart: balanceChart(report, 'Requests served per pod, and throughput'), table: formatTable(report) };
  } finally {
    if (own) await cluster.close();
  }
}
