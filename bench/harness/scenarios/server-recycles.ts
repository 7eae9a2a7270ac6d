/**
 * `server-recycles`: the pods' HTTP servers close keep-alive connections as production servers
 * do, after a short idle time and after a number of requests. That is normal, not a pod failure:
 * a client must replace the connection and lose nothing. Each HTTP row runs twice in one run,
 * recycling off then on, with the same connections and load, and reports errors, pods used and
 * the throughput ratio on / off.
 */
import { Cluster, type BenchCluster } from '../cluster.ts';
import { httpBalancedPool, httpKubeProxy, podpoolMode, type Mode } from '../client-modes.ts';
import { round } from '../load.ts';
import { measure, type ModeResult } from '../measure.ts';
import type { Recycling } from '../pods.ts';
import { formatTable, reportHead, type ScenarioReport } from '../report.ts';
import { agentSockets } from './balance.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

/**
 * What the pods do with recycling on: Node's `keepAliveTimeout` of 2 s (undici then drops its
 * socket after every response, since 2 s is within its 2 s threshold) and
 * `maxRequestsPerSocket` 100 (nginx's `keepalive_requests` at a tenth of its default).
 */
export const RECYCLING: Recycling = { keepAliveTimeoutMs: 2_000, maxRequestsPerSocket: 100 };

/**
 * kube-proxy first, then podpool (DNS source) and undici BalancedPool, each with an agent of the
 * same sockets per client: one request on a socket at a time, as a server that closes a socket
 * after a response expects (a request pipelined behind that response would be lost to pipelining).
 */
export function serverRecyclesModes(options: { pods: number; inflight: number }): Mode[] {
  const agent = agentSockets(options.pods, options.inflight);
  return [httpKubeProxy(agent), podpoolMode('http', 'round-robin', { agent }), httpBalancedPool(agent)];
}

export async function serverRecycles(options: ScenarioOptions, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, protocols: ['http'], concurrency: options.concurrency, serviceMs: options.serviceMs });
  try {
    const results: ModeResult[] = [];
    for (const mode of serverRecyclesModes(options)) {
      let off: ModeResult | undefined;
      for (const recycling of [undefined, RECYCLING]) {
        await cluster.setRecycling(recycling);
        try {
          const { row } = await measure(cluster, mode, {
            clients: options.clients,
            inflight: options.inflight,
            durationMs: options.durationS * 1000,
            label: `server-recycles · ${mode.client} · recycling ${recycling ? 'on' : 'off'}`,
          });
          row.recycling = recycling !== undefined;
          if (recycling === undefined) off = row;
          else if (off !== undefined) row.throughputRatio = off.throughput === 0 ? 0 : round(row.throughput / off.throughput, 3);
          results.push(row);
        } finally {
          await cluster.setRecycling(undefined);
        }
      }
    }
    const ratio = results.find((r) => r.kind === 'podpool' && r.recycling)?.throughputRatio;
    const report: ScenarioReport = {
      ...reportHead('server-recycles', cluster, options),
      recycling: RECYCLING,
      results,
      notes: [
        `recycling on: the pods' HTTP servers set keepAliveTimeout ${RECYCLING.keepAliveTimeoutMs} ms and maxRequestsPerSocket ${RECYCLING.maxRequestsPerSocket}; off: 2 min idle, any number of requests.`,
        'each client runs twice in this run, recycling off then on, with the same connections per client, load and pods: only the servers\' setting differs. podpool and BalancedPool place their sockets evenly either way; kube-proxy\'s are placed by the ClusterIP at random, and with recycling on each reconnect is placed again, which evens its spread (cv).',
        `undici marks a socket for closing after a response when the server announces a keep-alive within its 2 s threshold: "sockets seen" (connections the pods accepted, per client) says how often each client reconnected. podpool's throughput on / off: ${ratio ?? '?'}.`,
      ],
    };
    return {
      report,
      table: formatTable(report, [
        ['recycling', (r) => (r.recycling ? 'on' : 'off')],
        ['on / off', (r) => (typeof r.throughputRatio === 'number' ? r.throughputRatio.toFixed(3) : '')],
      ]),
    };
  } finally {
    if (own) await cluster.close();
  }
}
