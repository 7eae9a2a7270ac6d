// Cache invalidation by broadcast: three pods cache a database row in memory; after each update
// the writer broadcasts a signed invalidation to every pod, and prints how long the stale window
// lasted (from the database write until the last pod dropped its cached copy).
//   npm run example:cache-invalidation
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { request } from 'undici';
import { createPool, httpTransport, signMessage, staticEndpoints } from 'podpool';
import { HEADERS, startPod, type Row } from './pod.ts';

// In a cluster: a Kubernetes Secret mounted into the writer and every pod. Anyone in the cluster
// can reach a pod's port; only holders of the secret can make it drop its cache.
const secret = process.env.INVALIDATION_SECRET ?? randomBytes(32).toString('base64url');

const database = new Map<string, Row>([['price:42', { value: '9.99', version: 1 }]]);
const pods = [
  await startPod('127.0.0.31', { secret, database }),
  await startPod('127.0.0.32', { secret, database }),
  // This one loses its first answer (after applying it): the broadcast retries, the pod sees the
  // same message id again and answers "duplicate" without applying it twice.
  await startPod('127.0.0.33', { secret, database, loseFirstAnswer: true }),
];

// In a cluster: dnsEndpoints({ host: 'catalog.default.svc.cluster.local', port: 8080 }) or kubernetesEndpoints(…).
const pool = createPool({ source: staticEndpoints(pods), transport: httpTransport() });
await pool.ready({ minEndpoints: pods.length, timeoutMs: 5_000 });

async function read(key: string): Promise<{ value: string; from: string }[]> {
  return pool.broadcast(async (client) => (await client.request({ method: 'GET', path: `/items/${key}` })).body.json() as Promise<{ value: string; from: string }>).then((r) =>
    r.delivered.map((d) => d.value),
  );
}

/** Sends a signed invalidation of `key` to every pod; retries a pod up to twice. */
function invalidate(key: string) {
  const body = JSON.stringify({ key });
  return pool.broadcast(
    async (client, endpoint, delivery) => {
      // Signed per attempt (a fresh timestamp), always under the broadcast's id: a retry that
      // reaches a pod which already applied the message is recognised as a duplicate.
      const signed = signMessage({ id: delivery.id, body }, { secret });
      const res = await client.request({
        method: 'POST',
        path: '/invalidate',
        headers: {
          'content-type': 'application/json',
          [HEADERS.id]: signed.id,
          [HEADERS.timestamp]: String(signed.timestamp),
          [HEADERS.signature]: signed.signature,
        },
        body,
      });
      const answer = (await res.body.json()) as { status?: string };
      if (res.statusCode >= 400) throw new Error(`${endpoint.key} answered ${res.statusCode}: ${JSON.stringify(answer)}`);
      return answer.status;
    },
    { retries: 2, timeoutMs: 2_000 },
  );
}

console.log('warm the caches:', (await read('price:42')).map((r) => `${r.value} (${r.from})`).join(', '));

for (const value of ['10.49', '10.99', '11.49']) {
  const before = database.get('price:42')!;
  database.set('price:42', { value, version: before.version + 1 });
  const written = performance.now();
  const result = await invalidate('price:42');

  const windows = pods.map((pod) => (pod.applied.get(result.id) ?? NaN) - written);
  console.log(`\nupdate price:42 ${before.value} → ${value}; invalidation ${result.id}`);
  console.table(
    pods.map((pod, i) => {
      const delivered = result.delivered.find((d) => d.endpoint.key === pod.key);
      return {
        pod: pod.key,
        answer: delivered?.value ?? 'failed',
        attempts: delivered?.attempts ?? result.failed.find((f) => f.endpoint.key === pod.key)?.attempts,
        'stale for (ms)': Number(windows[i].toFixed(3)),
      };
    }),
  );
  console.log(
    `stale window: ${Math.max(...windows).toFixed(3)} ms (the last pod dropped the old value that long after the write); ` +
      `the broadcast took ${result.durationMs.toFixed(1)} ms, retries included`,
  );
  const reads = await read('price:42');
  if (reads.some((r) => r.value !== value)) throw new Error(`a pod still serves a stale value: ${JSON.stringify(reads)}`);
}

// What someone else in the cluster can and can't do with the pods' invalidation endpoint.
const target = pods[0];
const url = `http://${target.address}:${target.port}/invalidate`;
const body = JSON.stringify({ key: 'price:42' });
const post = async (headers: Record<string, string>, payload = body) => {
  const res = await request(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: payload });
  return `${res.statusCode} ${await res.body.text()}`;
};
const signed = signMessage({ id: 'captured-1', body }, { secret });
const signedHeaders = { [HEADERS.id]: signed.id, [HEADERS.timestamp]: String(signed.timestamp), [HEADERS.signature]: signed.signature };
const old = signMessage({ id: 'old-1', body }, { secret, clock: () => Date.now() - 120_000 });

console.log('\nthe invalidation endpoint, called by others:');
console.log('  unsigned          →', await post({}));
console.log('  wrong secret      →', await post({ ...signedHeaders, [HEADERS.signature]: signMessage({ id: 'captured-1', body }, { secret: 'a guess at the secret, 32 chars.' }).signature }));
console.log('  signed (genuine)  →', await post(signedHeaders));
console.log('  replayed capture  →', await post(signedHeaders));
console.log('  body swapped      →', await post(signedHeaders, JSON.stringify({ key: 'everything' })));
console.log('  two minutes old   →', await post({ [HEADERS.id]: old.id, [HEADERS.timestamp]: String(old.timestamp), [HEADERS.signature]: old.signature }));
console.log('refused by', target.key, Object.fromEntries(target.rejected));

await pool.close();
await Promise.all(pods.map((p) => p.close()));
