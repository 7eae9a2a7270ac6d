/**
 * `subset`: C clients over N pods, each client connected to every pod (full mesh, C × N
 * connections), to a random k of them (each client its own draw, the same on every run), or to
 * the k that podpool's deterministic subsetting gives it (`subset: { size: k, clientId: i,
 * clientCount: C }`). Default 20 clients × 50 pods, k = ⌈N / 5⌉ (10).
 *
 * Every row has the same clients, pods, load (requests in flight per client, duration, bound)
 * and luck (client i's round-robin starts at the same place in every row), with podpool's
 * round-robin inside whatever the client holds: only which pods a client holds differs, which is
 * the comparison. Per row: clients per pod (read from each pool's own members), connections in
 * all, and the per-pod load's cv as the pods counted it.
 */
import { createHash } from 'node:crypto';
import { subsetPolicy } from '../../../src/balance/subset.ts';
import { createEndpoint, EndpointSet, staticEndpoints } from '../../../src/index.ts';
import { Cluster, type BenchCluster, type PodInfo } from '../cluster.ts';
import { podpoolMode, staticSource, type Connections, type Mode, type PodpoolModeOptions, type Wire } from '../client-modes.ts';
import { round } from '../load.ts';
import { measure, type ModeResult } from '../measure.ts';
import { POD_PORTS } from '../pods.ts';
import { balanceChart, formatTable, reportHead, type ScenarioReport } from '../report.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

/** Pods each client holds in the subset rows: a fifth, as the 10 of 50. */
export function subsetSize(pods: number): number {
  return Math.ceil(pods / 5);
}

/** Where client i's round-robin starts, the same in every row (a golden-ratio spread of 0..1). */
function startOf(client: number): () => number {
  const at = (client * 0.6180339887498949) % 1;
  return () => at;
}

/** Client i's random k pods: the k with the lowest SHA-256 of (i, name), a seeded uniform draw. */
export function randomSubset(pods: readonly PodInfo[], size: number, client: number): PodInfo[] {
  const score = (p: PodInfo): string => createHash('sha256').update(`subset-bench/${client}/${p.name}`).digest('hex');
  return [...pods].sort((a, b) => (score(a) < score(b) ? -1 : 1)).slice(0, size);
}

/** A mode whose client i is built by `build(i)`: every row's pool is podpool round-robin. */
function perClient(wire: Wire, label: string, connections: (pods: number) => Connections, build: (client: number) => PodpoolModeOptions): Mode {
  return {
    client: `podpool round-robin, ${label}`,
    wire,
    kind: 'podpool',
    connections,
    open(cluster, options) {
      const client = options.client ?? 0;
      const { pool, ...rest } = build(client);
      return podpoolMode(wire, 'round-robin', { source: staticSource, ...rest, pool: { random: startOf(client), ...pool } }).open(cluster, options);
    },
  };
}

/** The three rows: full mesh, random subsets, deterministic subsets. */
export function subsetModes(wire: Wire, options: { pods: number; clients: number }): Mode[] {
  const size = subsetSize(options.pods);
  const subsetOf = (pods: number): Connections => ({ perClient: Math.min(size, pods), text: `${Math.min(size, pods)} of ${pods}` });
  return [
    perClient(wire, 'full mesh', (pods) => ({ perClient: pods, text: `1 per pod (${pods})` }), () => ({})),
    perClient(wire, `random subsets of ${size}`, subsetOf, (client) => ({
      source: (cluster, port) => staticEndpoints(randomSubset(cluster.readyPods(), size, client).map((p) => ({ address: p.address, port, podName: p.name }))),
      ready: size,
    })),
    perClient(wire, `deterministic subsets of ${size}`, subsetOf, (client) => ({
      pool: { subset: { size, clientId: client, clientCount: options.clients } },
      ready: Math.min(size, options.pods),
    })),
  ];
}

/**
 * Connections that move, over all clients, when one pod joins: the mean over `places` pods added
 * at random places in the ring (computed with the policy, nothing dialled), and the most any one
 * client moved.
 */
export function churnOnePodAdded(pods: readonly PodInfo[], port: number, size: number, clients: number, places = 50): { mean: number; maxPerClient: number } {
  const base = pods.map((p) => createEndpoint({ address: p.address, port }));
  const before = new EndpointSet(base);
  let moved = 0;
  let maxPerClient = 0;
  for (let place = 0; place < places; place++) {
    // A documentation address (RFC 5737): a key for the ring, never dialled.
    const after = new EndpointSet([...base, createEndpoint({ address: `192.0.2.${1 + (place % 254)}`, port: 1024 + place })]);
    for (let clientId = 0; clientId < clients; clientId++) {
      const policy = subsetPolicy({ size, clientId, clientCount: clients })!;
      const was = policy.select(before);
      const is = policy.select(after);
      let lost = 0;
      for (const key of was) if (!is.has(key)) lost++;
      moved += lost;
      maxPerClient = Math.max(maxPerClient, lost);
    }
  }
  return { mean: round(moved / places, 1), maxPerClient };
}

export async function subset(options: ScenarioOptions, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const wire = options.wires?.[0] ?? 'ws';
  const size = subsetSize(options.pods);
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: options.pods, protocols: [wire], concurrency: options.concurrency, serviceMs: options.serviceMs });
  try {
    const results: ModeResult[] = [];
    for (const mode of subsetModes(wire, options)) {
      const { row } = await measure(cluster, mode, {
        clients: options.clients,
        inflight: options.inflight,
        durationMs: options.durationS * 1000,
        group: `${wire} · ${options.clients} clients × ${options.pods} pods`,
        label: `subset · ${mode.client}`,
        // What each pool holds as the load starts: its members, by pod.
        during: async ({ callers }) => {
          const perPod = new Map<string, number>(cluster!.readyPods().map((p) => [p.name, 0]));
          for (const caller of callers) {
            for (const m of caller.stats?.().members ?? []) {
              const name = m.endpoint.podName ?? m.endpoint.key;
              perPod.set(name, (perPod.get(name) ?? 0) + 1);
            }
          }
          const counts = [...perPod.values()];
          return {
            connectionsTotal: counts.reduce((a, b) => a + b, 0),
            clientsPerPod: { min: Math.min(...counts), max: Math.max(...counts) },
            clientsPerPodByPod: Object.fromEntries(perPod),
          };
        },
      });
      results.push(row);
    }
    const k = Math.min(size, options.pods);
    const low = Math.floor((options.clients * k) / options.pods);
    const high = Math.ceil((options.clients * k) / options.pods);
    const churn = churnOnePodAdded(cluster.readyPods(), POD_PORTS[wire], size, options.clients);
    const notes = [
      `every row: ${options.clients} clients, ${options.inflight} requests in flight each, podpool round-robin over what the client holds; "clients/pod" is read from the pools' members, "cv" is the per-pod load the pods counted (0 is even).`,
      `deterministic subsetting gives every pod ⌊C·k/N⌋..⌈C·k/N⌉ = ${low}..${high} clients; random subsets of the same size give what the draw gives.`,
      `one pod added (${50} places in the ring, computed with the same policy, nothing dialled): ${churn.mean} of ${options.clients * k} connections move on average, at most ${churn.maxPerClient} of a client's ${k}.`,
    ];
    const report: ScenarioReport = { ...reportHead('subset', cluster, options), subsetSize: k, results, churnOnePodAdded: churn, notes };
    const table = formatTable(report, [
      ['clients/pod', (r) => {
        const c = r.clientsPerPod as { min: number; max: number } | undefined;
        return c === undefined ? '-' : `${c.min}..${c.max}`;
      }],
      ['connections', (r) => String(r.connectionsTotal ?? '-')],
    ]);
    return { report, chart: balanceChart(report, 'Requests served per pod: full mesh, random and deterministic subsets'), table };
  } finally {
    if (own) await cluster.close();
  }
}
