// One WebSocket per pod: balance request/response traffic, push fire-and-forget messages, and
// broadcast a cache invalidation that waits for every pod's acknowledgement, even with a pod down.
// Runs on its own: it starts five stand-in pods on 127.0.0.11-15 first.
//   npm run example:websocket
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { answerRequests, createPool, staticEndpoints, webSocketTransport, type StateChange } from 'podpool';

// ---- the pods: a ws server each, answering podpool's framing with answerRequests ----------------
// On the wire: {"id":1,"data":…} asks, {"id":1,"reply":…} answers, {"data":…} expects no answer.

interface Pod {
  readonly address: string;
  readonly server: WebSocketServer;
  readonly cache: Map<string, string>;
  config: unknown;
}

async function startPod(address: string): Promise<Pod> {
  const server = new WebSocketServer({ host: address, port: 0, perMessageDeflate: false });
  await once(server, 'listening');
  const pod: Pod = { address, server, cache: new Map([['user:42', 'Ada']]), config: undefined };
  answerRequests(server, (data) => {
    const message = data as { type: string; key?: string; config?: unknown };
    switch (message.type) {
      case 'get':
        return { pod: address, value: pod.cache.get(message.key!) ?? null };
      case 'invalidate':
        pod.cache.delete(message.key!);
        return { pod: address, invalidated: message.key };
      case 'config':
        pod.config = message.config; // sent with send(): nothing goes back
        return undefined;
      default:
        throw Object.assign(new Error(`unknown message type ${message.type}`), { code: 'E_TYPE' });
    }
  });
  return pod;
}

/** A crash: every socket cut, the port closed. */
async function killPod(pod: Pod): Promise<void> {
  for (const socket of pod.server.clients) socket.terminate();
  const closed = once(pod.server, 'close');
  pod.server.close();
  await closed;
}

const pods = await Promise.all(['127.0.0.11', '127.0.0.12', '127.0.0.13', '127.0.0.14', '127.0.0.15'].map(startPod));

// ---- the client ------------------------------------------------------------------------------
// In a cluster: dnsEndpoints({ host: 'backend.default.svc.cluster.local', port: 8081 })
// or kubernetesEndpoints({ service: 'backend', namespace: 'default', port: 'ws' }).
const pool = createPool({
  source: staticEndpoints(pods.map((p) => p.server.address() as AddressInfo)),
  transport: webSocketTransport({ path: '/', heartbeatMs: 10_000 }),
});
await pool.ready({ minEndpoints: pods.length, timeoutMs: 5_000 });

// 1. Request/response, balanced per request (round-robin) over the five open sockets.
const answeredBy = new Map<string, number>();
for (let i = 0; i < 10; i++) {
  const reply = await pool.use((ws) => ws.request<{ pod: string; value: string }>({ type: 'get', key: 'user:42' }, { timeoutMs: 2_000 }));
  answeredBy.set(reply.pod, (answeredBy.get(reply.pod) ?? 0) + 1);
}
console.log('1. ten requests, answered by:', Object.fromEntries(answeredBy));

// 2. Fire-and-forget to every pod: send() returns once the frame is written (or throws
//    PODPOOL_BACKPRESSURE when a pod is not reading), so "delivered" means "written", not "acted on".
const pushed = await pool.broadcast((ws) => ws.send({ type: 'config', config: { featureX: true } }));
console.log(`2. config pushed to ${pushed.delivered.length} pods (no acknowledgement asked)`);

// 3. Broadcast with acknowledgement: every pod answers, or the result says which did not and why.
const invalidate = (key: string) =>
  pool.broadcast((ws, _endpoint, delivery) => ws.request({ type: 'invalidate', key, id: delivery.id }, { signal: delivery.signal }), {
    timeoutMs: 2_000,
  });
const first = await invalidate('user:42');
console.log(`3. invalidated on ${first.delivered.length} pods, failed on ${first.failed.length}, in ${first.durationMs.toFixed(1)} ms`);

// 4. A pod dies: the pool notices (socket closed), stops picking it, and the next broadcast reports it.
const victim = pods[2];
const down = new Promise<StateChange>((resolve) => {
  const onState = (change: StateChange): void => {
    if (change.endpoint.address !== victim.address || change.to !== 'connecting') return;
    pool.off('state', onState);
    resolve(change);
  };
  pool.on('state', onState);
});
await killPod(victim);
const change = await down;
console.log(`4. ${change.endpoint.key} went ${change.from} → ${change.to}: ${change.error?.message}`);
const second = await invalidate('user:7');
console.log(`   invalidated on ${second.delivered.map((d) => d.endpoint.address).join(', ')}`);
for (const f of second.failed) console.log(`   not on ${f.endpoint.key}: ${(f.error as Error).message}`);

console.table(
  pool.stats().members.map((m) => ({
    pod: m.endpoint.key,
    state: m.state,
    requests: m.requests,
    failures: m.failures,
    connections: m.connects,
  })),
);

await pool.close();
await Promise.all(pods.filter((p) => p !== victim).map(killPod));
