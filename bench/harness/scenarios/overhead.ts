/**
 * `overhead`: what podpool costs per request. Pods answer at once with no capacity limit, so the
 * client's CPU is the bottleneck; podpool's transports are compared with the plain client over the
 * same connections (the same number per pod, pods picked round-robin by hand).
 */
import * as grpc from '@grpc/grpc-js';
import { Pool } from 'undici';
import { Cluster, type BenchCluster } from '../cluster.ts';
import { createRequire } from 'node:module';
import { podpoolMetrics } from '../../../src/index.ts';
import { onePerPod, podpoolMode, staticSource, type Mode, type PodpoolModeOptions } from '../client-modes.ts';
import { round } from '../load.ts';
import { measure, type ModeResult } from '../measure.ts';
import { EchoClient, POD_PORTS, type EchoClientInstance } from '../pods.ts';
import { formatTable, throughputChart, reportHead, type ScenarioReport } from '../report.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';

const EMPTY = Buffer.alloc(0);

const require = createRequire(import.meta.url);

/** prom-client is an optional peer dependency of podpool: where it is not installed, the metrics row is left out. */
function promClientInstalled(): boolean {
  try {
    require.resolve('prom-client');
    return true;
  } catch {
    return false;
  }
}

/** podpoolMetrics() on the pool, in a registry of its own: every call observed, as a scraped service's would be. */
const withMetrics: PodpoolModeOptions['attach'] = (pool) => {
  const { Registry } = require('prom-client') as typeof import('prom-client');
  const metrics = podpoolMetrics(pool, { registry: new Registry() });
  return () => metrics.close();
};

/** Plain undici: per pod a `Pool` of as many connections as podpool's transport keeps, round-robin by hand. */
function httpPlain(perPod: number): Mode {
  return {
  client: 'plain undici',
  wire: 'http',
  kind: 'client-side',
  connections: (pods) => ({ perClient: perPod * pods, text: `${perPod} per pod (${perPod * pods})` }),
  async open(cluster) {
    const clients = cluster.readyPods().map((p) => new Pool(`http://${p.address}:${POD_PORTS.http}`, { connections: perPod }));
    let next = 0;
    return {
      async call() {
        const client = clients[next++ % clients.length]!;
        const res = await client.request({ path: '/', method: 'GET' });
        return res.body.text();
      },
      close: async () => {
        await Promise.all(clients.map((c) => c.close()));
      },
    };
  },
  };
}

/** Plain grpc-js: one client per pod, round-robin by hand. */
const grpcPlain: Mode = {
  client: 'plain grpc-js',
  wire: 'grpc',
  kind: 'client-side',
  connections: onePerPod,
  async open(cluster) {
    const clients = cluster.readyPods().map(
      (p) =>
        new EchoClient(`${p.address}:${POD_PORTS.grpc}`, grpc.credentials.createInsecure(), {
          'grpc.primary_user_agent': `bench-${Math.random()}`,
        }) as EchoClientInstance,
    );
    await Promise.all(
      clients.map((c) => new Promise<void>((resolve, reject) => c.waitForReady(Date.now() + 10_000, (e) => (e ? reject(e) : resolve())))),
    );
    let next = 0;
    return {
      call: () =>
        new Promise<string>((resolve, reject) => {
          clients[next++ % clients.length]!.call(EMPTY, (error, reply) => (error ? reject(error) : resolve(String(reply))));
        }),
      close: async () => {
        for (const c of clients) c.close();
      },
    };
  },
};

export async function overhead(options: ScenarioOptions, cluster?: BenchCluster): Promise<ScenarioOutput> {
  const own = cluster === undefined;
  // Unbounded, instant pods: only the client's work is left to measure.
  cluster ??= await Cluster.start({ pods: options.pods, protocols: ['http', 'grpc'], concurrency: options.concurrency, serviceMs: options.serviceMs });
  const wires = (options.wires ?? ['http', 'grpc']).filter((w) => w !== 'ws');
  try {
    const results: ModeResult[] = [];
    for (const wire of wires) {
      // HTTP: as many sockets to each pod as the client has requests in flight, for both.
      const agent = options.inflight * cluster.readyPods().length;
      const podpool = (label?: string, attach?: PodpoolModeOptions['attach']): Mode =>
        podpoolMode(wire, 'round-robin', { source: staticSource, ...(wire === 'http' && { agent }), ...(label !== undefined && { label, attach }) });
      // The plain client, podpool, and podpool with its Prometheus metrics on (a registry per client's pool).
      const pair: Mode[] = [wire === 'http' ? httpPlain(options.inflight) : grpcPlain, podpool(), ...(promClientInstalled() ? [podpool('metrics', withMetrics)] : [])];
      const rows: ModeResult[] = [];
      // Warm both up first (JIT, connections, the pods process): the first run would pay for it.
      for (const mode of pair) {
        await measure(cluster, mode, {
          clients: options.clients,
          inflight: options.inflight,
          durationMs: Math.min(1_000, options.durationS * 500),
          label: `overhead · ${wire} · ${mode.client} (warm-up)`,
        });
      }
      for (const mode of pair) {
        const { row } = await measure(cluster, mode, {
          clients: options.clients,
          inflight: options.inflight,
          durationMs: options.durationS * 1000,
          label: `overhead · ${wire} · ${mode.client}`,
        });
        rows.push(row);
      }
      const base = rows[0]!;
      for (const row of rows) {
        row.throughputRatio = base.throughput === 0 ? 0 : round(row.throughput / base.throughput, 3);
        row.addedP50Ms = round(row.p50Ms - base.p50Ms, 3);
        row.addedUsPerRequest = base.throughput === 0 || row.throughput === 0 ? 0 : round((1 / row.throughput - 1 / base.throughput) * 1e6, 1);
        results.push(row);
      }
    }
    const report: ScenarioReport = {
      ...reportHead('overhead', cluster, options),
      results,
      notes: [
        options.serviceMs === 0 && options.concurrency >= 1_000_000
          ? 'pods answer at once with no capacity limit: the client process is the bottleneck.'
          : `pods serve ${options.concurrency} at a time × ${options.serviceMs} ms (as told): the pods may be the bottleneck, not the client.`,
        '"µs/req added" is the difference in client time per request at full load (1/throughput).',
      ],
    };
    return {
      report,
      chart: throughputChart(report, 'Throughput: podpool vs the plain client'),
      table: formatTable(report, [
        ['× plain', (r) => (r.throughputRatio as number).toFixed(2)],
        ['p50 added ms', (r) => (r.addedP50Ms as number).toFixed(2)],
        ['µs/req added', (r) => (r.addedUsPerRequest as number).toFixed(1)],
      ]),
    };
  } finally {
    if (own) await cluster.close();
  }
}
