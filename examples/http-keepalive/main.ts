// Balance HTTP requests over one keep-alive connection per pod, then broadcast to every pod.
// Runs on its own: it starts three stand-in pods on 127.0.0.11-13 first.
//   npm run example:http
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { createPool, httpDispatcher, httpTransport, leastLoaded, staticEndpoints } from 'podpool';

// In a cluster the source would be dnsEndpoints({ host: 'backend.default.svc.cluster.local', port: 8080 })
// or kubernetesEndpoints({ service: 'backend', namespace: 'default', port: 'http' }).
const pods: Server[] = [];
const served = new Map<string, number>();
for (const address of ['127.0.0.11', '127.0.0.12', '127.0.0.13']) {
  const server = createServer((req, res) => {
    served.set(address, (served.get(address) ?? 0) + 1);
    req.resume();
    res.end(JSON.stringify({ pod: address, path: req.url }));
  });
  server.listen(0, address);
  await once(server, 'listening');
  pods.push(server);
}

const pool = createPool({
  source: staticEndpoints(pods.map((s) => s.address() as AddressInfo)),
  transport: httpTransport(),
  balancer: leastLoaded(),
});
await pool.ready({ minEndpoints: 3, timeoutMs: 5_000 });

// 1. pool.use: you get the pod's undici Client; the pool records latency and outcome.
for (let i = 0; i < 30; i++) {
  await pool.use(async (client) => (await client.request({ method: 'GET', path: '/items/1' })).body.json());
}

// 2. A Dispatcher: plain undici request()/fetch() calls, balanced per request.
const dispatcher = httpDispatcher(pool);
await Promise.all(
  Array.from({ length: 30 }, async () => (await request('http://backend.default.svc:8080/items/2', { dispatcher })).body.json()),
);

// 3. Broadcast: one call per pod, with a per-pod result.
const result = await pool.broadcast(async (client, _endpoint, delivery) => {
  const res = await client.request({ method: 'POST', path: `/invalidate?id=${delivery.id}` });
  await res.body.dump();
  return res.statusCode;
});

console.log('requests served per pod:', Object.fromEntries(served));
console.log(`broadcast ${result.id}: delivered to ${result.delivered.length} pods, failed on ${result.failed.length}, in ${result.durationMs.toFixed(1)} ms`);
console.table(
  pool.stats().members.map((m) => ({
    pod: m.endpoint.key,
    state: m.state,
    requests: m.requests,
    failures: m.failures,
    connections: m.connects,
    'p50 ms': Number(m.latency.p50Ms.toFixed(2)),
    'p99 ms': Number(m.latency.p99Ms.toFixed(2)),
  })),
);

await pool.close();
for (const server of pods) server.close();
