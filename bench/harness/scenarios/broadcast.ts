/**
 * `broadcast`: one message to every pod, at N = 5, 50 and 200. podpool already holds a connection
 * to each pod and fans out over them (WebSocket, HTTP, UDP); the loop people write today lists the
 * pods, then opens one new HTTP connection per pod in turn.
 */
import { Resolver } from 'node:dns/promises';
import { request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { createPool, httpTransport, type Pool } from '../../../src/index.ts';
import { udpTransport, type UdpClient } from '../../../src/transport/udp.ts';
import { webSocketTransport, type WebSocketClient } from '../../../src/transport/websocket.ts';
import { Cluster, type BenchCluster } from '../cluster.ts';
import { dnsSource } from '../client-modes.ts';
import { coefficientOfVariation, round } from '../load.ts';
import type { ModeResult } from '../measure.ts';
import { POD_PORTS, type PodCounts } from '../pods.ts';
import { progress } from '../progress.ts';
import { formatTable, ranOn, type ChartSpec, type ScenarioReport } from '../report.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

export const SIZES = [5, 50, 200];
/** Broadcasts per mode and size. */
const REPEATS = 5;
/** How long pods may take to count a datagram or a message after the sender is done. */
const SETTLE_MS = 1_000;

type CountKey = 'httpBroadcasts' | 'wsBroadcasts' | 'udp';

interface Broadcaster {
  /** Sends one message to every pod; resolves with the pods the sender knows failed. */
  broadcast(seq: number): Promise<{ failed: number }>;
  close(): Promise<void>;
}

interface BroadcastMode {
  client: string;
  transport: string;
  counts: CountKey;
  open(cluster: BenchCluster): Promise<Broadcaster>;
}

async function readyPool<C>(pool: Pool<C>, n: number): Promise<Pool<C>> {
  try {
    await pool.ready({ minEndpoints: n, timeoutMs: 20_000 });
  } catch (error) {
    await pool.close();
    throw error;
  }
  return pool;
}

const podpoolWs: BroadcastMode = {
  client: 'podpool broadcast',
  transport: 'ws',
  counts: 'wsBroadcasts',
  async open(cluster) {
    const pool = await readyPool(
      createPool<WebSocketClient>({ source: await dnsSource(cluster, POD_PORTS.ws), transport: webSocketTransport() }),
      cluster.readyPods().length,
    );
    return {
      async broadcast(seq) {
        const result = await pool.broadcast((ws, _endpoint, { signal }) => ws.request({ kind: 'broadcast', seq }, { signal }));
        return { failed: result.failed.length };
      },
      close: () => pool.close(),
    };
  },
};

const podpoolHttp: BroadcastMode = {
  client: 'podpool broadcast',
  transport: 'http',
  counts: 'httpBroadcasts',
  async open(cluster) {
    const pool = await readyPool(
      createPool({ source: await dnsSource(cluster, POD_PORTS.http), transport: httpTransport() }),
      cluster.readyPods().length,
    );
    return {
      async broadcast(seq) {
        const result = await pool.broadcast(async (client) => {
          const res = await client.request({ path: '/broadcast', method: 'POST', body: JSON.stringify({ seq }) });
          return res.body.text();
        });
        return { failed: result.failed.length };
      },
      close: () => pool.close(),
    };
  },
};

const podpoolUdp: BroadcastMode = {
  client: 'podpool broadcast',
  transport: 'udp',
  counts: 'udp',
  async open(cluster) {
    const pool = await readyPool(
      createPool<UdpClient>({ source: await dnsSource(cluster, POD_PORTS.udp), transport: udpTransport() }),
      cluster.readyPods().length,
    );
    return {
      async broadcast(seq) {
        const result = await pool.broadcast((client, _endpoint, delivery) => client.send(JSON.stringify({ seq }), delivery));
        return { failed: result.failed.length };
      },
      close: () => pool.close(),
    };
  },
};

/** Today's loop: ask DNS for the pods, then POST to each over a new connection, one after another. */
const loop: BroadcastMode = {
  client: 'list + loop',
  transport: 'http',
  counts: 'httpBroadcasts',
  async open(cluster) {
    const resolver = new Resolver({ timeout: 2_000, tries: 2 });
    // The stand-in's DNS server; in a real cluster, the pod's own resolver.
    if (cluster.dnsServer !== undefined) resolver.setServers([cluster.dnsServer]);
    return {
      async broadcast(seq) {
        const addresses = await resolver.resolve4(cluster.headlessName);
        let failed = 0;
        for (const host of addresses) {
          try {
            await post(host, POD_PORTS.http, JSON.stringify({ seq }));
          } catch {
            failed++;
          }
        }
        return { failed };
      },
      close: async () => resolver.cancel(),
    };
  },
};

function post(host: string, port: number, body: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path: '/broadcast', method: 'POST', agent: false, timeout: 5_000 }, (res) => {
      res.resume();
      res.once('end', resolve);
      res.once('error', reject);
    });
    req.once('timeout', () => req.destroy(new Error('timed out')));
    req.once('error', reject);
    req.end(body);
  });
}

export const BROADCAST_MODES = [podpoolWs, podpoolHttp, podpoolUdp, loop];

function delivered(before: PodCounts, after: PodCounts, key: CountKey, names: readonly string[]): Record<string, number> {
  const perPod: Record<string, number> = {};
  for (const name of names) perPod[name] = (after[name]?.[key] ?? 0) - (before[name]?.[key] ?? 0);
  return perPod;
}

export async function broadcast(options: ScenarioOptions & { sizes?: readonly number[] }, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const sizes = options.sizes ?? SIZES;
  const own = cluster === undefined;
  cluster ??= await Cluster.start({ pods: sizes[0]!, protocols: ['http', 'ws', 'udp'], concurrency: options.concurrency, serviceMs: options.serviceMs });
  try {
    const results: ModeResult[] = [];
    for (const n of sizes) {
      await cluster.scale(n);
      const names = cluster.readyPods().map((p) => p.name);
      for (const mode of BROADCAST_MODES) {
        const label = `broadcast · ${n} pods · ${mode.transport} · ${mode.client}`;
        progress(label, 0);
        const broadcaster = await mode.open(cluster);
        const before = await cluster.counts();
        const times: number[] = [];
        let failed = 0;
        try {
          for (let i = 0; i < REPEATS; i++) {
            const t0 = performance.now();
            const result = await broadcaster.broadcast(i);
            times.push(performance.now() - t0);
            failed += result.failed;
            progress(label, (i + 1) / REPEATS);
            await sleep(20);
          }
        } finally {
          await broadcaster.close();
        }
        // Datagrams and messages are counted by the pods: give them a moment, bounded.
        let perPod = delivered(before, await cluster.counts(), mode.counts, names);
        for (const until = performance.now() + SETTLE_MS; Object.values(perPod).some((v) => v < REPEATS) && performance.now() < until; ) {
          await sleep(20);
          perPod = delivered(before, await cluster.counts(), mode.counts, names);
        }
        times.sort((a, b) => a - b);
        const values = Object.values(perPod);
        const total = times.reduce((a, b) => a + b, 0);
        results.push({
          client: mode.client,
          transport: mode.transport,
          podsUsed: values.filter((v) => v >= REPEATS).length,
          pods: n,
          perPod,
          cv: coefficientOfVariation(values),
          throughput: round((values.reduce((a, b) => a + b, 0) / total) * 1000, 0),
          p50Ms: round(times[Math.floor(times.length / 2)]!, 2),
          p99Ms: round(times.at(-1)!, 2),
          p999Ms: round(times.at(-1)!, 2),
          requests: values.reduce((a, b) => a + b, 0),
          errors: failed,
          n,
          broadcasts: REPEATS,
          reachedAll: values.every((v) => v >= REPEATS),
        });
      }
    }
    const report: ScenarioReport = {
      scenario: 'broadcast',
      standIn: cluster.standIn,
      standInReason: cluster.standInReason,
      pods: sizes.at(-1)!,
      sizes,
      clients: 1,
      durationS: 0,
      podConcurrency: options.concurrency,
      serviceMs: options.serviceMs,
      results,
      notes: [
        `${REPEATS} broadcasts per row; p50/p99 columns are the time of one broadcast (median / slowest); req/s are deliveries per second.`,
        '"pods used" counts pods that got every broadcast. UDP is not acknowledged: its time is the send, its reach is what the pods counted.',
      ],
    };
    return {
      report,
      chart: broadcastChart(report),
      table: formatTable(report, [
        ['N', (r) => String(r.n)],
        ['reached all', (r) => (r.reachedAll ? 'yes' : 'NO')],
      ]),
    };
  } finally {
    if (own) await cluster.close();
  }
}

function broadcastChart(report: ScenarioReport): ChartSpec {
  return {
    title: { text: 'Time to send one message to every pod', subtitle: ranOn(report) },
    data: { values: report.results.map((r) => ({ client: `${r.transport} · ${r.client}`, pods: r.n, ms: Math.max(0.01, r.p50Ms) })) },
    mark: { type: 'line', point: true },
    width: 420,
    height: 220,
    encoding: {
      x: { field: 'pods', type: 'quantitative', scale: { type: 'log' }, title: 'pods' },
      y: { field: 'ms', type: 'quantitative', scale: { type: 'log' }, title: 'ms (median of broadcasts, log scale)' },
      color: { field: 'client', type: 'nominal', title: null },
    },
  };
}
