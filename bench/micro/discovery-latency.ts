// How long from a change in discovery to the pool's picker including the new pod:
// an EndpointSlice event on the (fake) API server, and a DNS record change at the DNS source's
// default refresh. Each event adds one more live HTTP pod on loopback; the time is taken from
// the moment the change is written (watch stream / DNS server) to the pool's `state` event that
// makes the new member `ready` (the picker is rebuilt before that event is emitted).
//
//   node --conditions=podpool-source bench/micro/discovery-latency.ts [--k8s-events 40] [--dns-events 8]
//
// Loopback only; bounded by the event counts (the DNS part takes about 1.5 × refresh × events).
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { createPool, dnsEndpoints, httpTransport, kubernetesEndpoints, type EndpointSource, type StateChange } from '../../src/index.ts';
import { DnsServer } from '../../testkit/dns-server.ts';
import { FakeApiServer, endpointSlice } from '../../testkit/fake-apiserver.ts';

const { values } = parseArgs({
  options: { 'k8s-events': { type: 'string', default: '40' }, 'dns-events': { type: 'string', default: '8' } },
});
const k8sEvents = Math.min(200, Number(values['k8s-events']));
const dnsEvents = Math.min(30, Number(values['dns-events']));

/** HTTP pods on 127.0.1.1, 127.0.1.2, … all on one port, as pods of a Service are. */
async function startPods(count: number): Promise<{ addresses: string[]; port: number; close(): Promise<void> }> {
  const servers: Server[] = [];
  let port = 0;
  for (let i = 0; i < count; i++) {
    const server = createServer((_req, res) => res.end());
    server.listen(port, `127.0.1.${i + 1}`);
    await once(server, 'listening');
    port = (server.address() as { port: number }).port;
    servers.push(server);
  }
  return {
    addresses: servers.map((_, i) => `127.0.1.${i + 1}`),
    port,
    async close() {
      for (const s of servers) {
        s.closeAllConnections();
        s.close();
      }
    },
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function summary(name: string, ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  return `${name.padEnd(34)} ${String(ms.length).padStart(6)} ${median(ms).toFixed(1).padStart(10)} ${s[0].toFixed(1).padStart(8)} ${s[s.length - 1].toFixed(1).padStart(8)}`;
}

/**
 * Runs `events` additions: `change(i)` makes pod i (after the `base` first ones) discoverable
 * and resolves with the time it was written; the figure is until that pod's member is ready.
 */
async function measure(
  source: EndpointSource,
  base: number,
  events: number,
  change: (i: number) => Promise<number>,
  keyOf: (i: number) => string,
  arrivalSpreadMs = 0,
): Promise<number[]> {
  const pool = createPool({ source, transport: httpTransport() });
  try {
    await pool.ready({ minEndpoints: base, timeoutMs: 30_000 });
    const times: number[] = [];
    for (let i = base; i < base + events; i++) {
      const key = keyOf(i);
      const ready = new Promise<number>((resolve) => {
        const listener = (c: StateChange): void => {
          if (c.endpoint.key === key && c.to === 'ready') {
            pool.off('state', listener);
            resolve(performance.now());
          }
        };
        pool.on('state', listener);
      });
      // Changes arrive at random moments, not in step with the source's polls: right after the
      // last pod turned ready is right after a poll, which would measure a whole period each time.
      if (arrivalSpreadMs > 0) await sleep(Math.random() * arrivalSpreadMs);
      const writtenAt = await change(i);
      times.push((await ready) - writtenAt);
    }
    return times;
  } finally {
    await pool.close();
  }
}

const base = 3;
const pods = await startPods(base + Math.max(k8sEvents, dnsEvents));
const keyOf = (i: number): string => `${pods.addresses[i]}:${pods.port}`;
const rows: string[] = [];

// Kubernetes: the Service's one slice grows by a pod per event.
const api = await FakeApiServer.start({ token: 'bench-token' });
try {
  const sliceWith = (n: number) =>
    endpointSlice({
      name: 'bench-0',
      service: 'bench',
      ports: [{ name: 'http', port: pods.port }],
      endpoints: pods.addresses.slice(0, n).map((ip, i) => ({ ip, pod: `bench-${i}` })),
    });
  await api.apply(sliceWith(base));
  const source = kubernetesEndpoints({ service: 'bench', namespace: 'default', port: 'http', kubeConfig: api.kubeConfig(), allowAddresses: ['loopback'] });
  const times = await measure(source, base, k8sEvents, async (i) => (await api.apply(sliceWith(i + 1))).writtenAt, keyOf);
  rows.push(summary('kubernetes (EndpointSlice watch)', times));
} finally {
  await api.close();
}

// DNS at the default refresh (5 s): the A record set grows by a pod per event.
const dns = await DnsServer.start();
try {
  const host = 'bench.default.svc.cluster.local';
  dns.set(host, { A: pods.addresses.slice(0, base) });
  // The pods are on 127.0.1.x, which dnsEndpoints refuses unless told.
  const source = dnsEndpoints({ host, port: pods.port, servers: [`127.0.0.1:${dns.port}`], allowAddresses: ['loopback'] });
  const times = await measure(
    source,
    base,
    dnsEvents,
    async (i) => {
      dns.set(host, { A: pods.addresses.slice(0, i + 1) });
      return performance.now();
    },
    keyOf,
    5_000,
  );
  rows.push(summary('dns (refreshMs 5000, the default)', times));
} finally {
  await dns.close();
}
await pods.close();

console.log(`time from a discovery change to the pool's picker including the new pod (node ${process.version})`);
console.log(`${'source'.padEnd(34)} ${'events'.padStart(6)} ${'median ms'.padStart(10)} ${'min ms'.padStart(8)} ${'max ms'.padStart(8)}`);
for (const row of rows) console.log(row);
