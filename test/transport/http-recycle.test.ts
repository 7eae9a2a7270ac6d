import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Dispatcher } from 'undici';
import { createPool, httpDispatcher, httpTransport, staticEndpoints, type Pool, type StateChange } from '../../src/index.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { stateReached } from '../support/pool-events.ts';
import { startHttpPods, stopPods, type HttpPod } from '../../testkit/http-pods.ts';
import { burst } from '../support/burst.ts';

// Servers close keep-alive connections as a matter of course: after an idle timeout, after so
// many requests. None of that is a pod failure: no request fails and no connection is lost; the
// member is only out of the picks while it has no socket open, until the next one is.

const quickReconnect = { minMs: 5, maxMs: 20, factor: 2 };

function endpointsOf(pods: readonly HttpPod[]) {
  return pods.map((p) => ({ address: p.address, port: p.port }));
}

async function get(client: Dispatcher): Promise<string> {
  const res = await client.request({ method: 'GET', path: '/' });
  return res.body.text();
}

/** Every state change the pool makes from now on. */
function recordStates(pool: Pool<unknown>): StateChange[] {
  const changes: StateChange[] = [];
  pool.on('state', (change) => changes.push(change));
  return changes;
}

/**
 * Asserts that every state change was a member leaving the picks while it had no socket open
 * past the grace (`PODPOOL_NOT_CONNECTED`; only on a machine stalled longer than it) and coming
 * back: none lost, ejected or drained.
 */
function assertOnlyBetweenSockets(changes: readonly StateChange[]): void {
  const byPod = new Map<string, StateChange[]>();
  for (const c of changes) byPod.set(c.endpoint.key, [...(byPod.get(c.endpoint.key) ?? []), c]);
  for (const [key, own] of byPod) {
    assert.deepEqual(
      own.map((c) => [c.from, c.to, c.error?.code]),
      own.map((_, i) => (i % 2 === 0 ? ['ready', 'connecting', 'PODPOOL_NOT_CONNECTED'] : ['connecting', 'ready', undefined])),
      `${key} only left the picks between two sockets`,
    );
  }
}

/** Resolves once `pod` accepted its next connection. */
function nextConnection(pod: HttpPod): Promise<void> {
  return new Promise((resolve) => {
    pod.onConnection = () => {
      pod.onConnection = undefined;
      resolve();
    };
  });
}

describe('httpTransport when servers close keep-alive connections', () => {
  it('replaces a connection the server closed while idle, without taking the pod out of the picks', async (t) => {
    const cleanup = cleanupAfter(t);
    // undici keeps an idle socket for the server's hint minus 2 s: 60 s, so every close here is the server's.
    const pods = await startHttpPods(3, { first: 141, keepAliveTimeoutMs: 60_000 });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), reconnect: quickReconnect });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });
    const states = recordStates(pool);

    const rounds = 10;
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < 30; i++) await pool.use((client) => get(client));
      // The keep-alive timeout, driven: each pod closes its idle connection; the client opens the next.
      const reconnected = pods.map(nextConnection);
      for (const pod of pods) pod.closeIdleConnections();
      await Promise.all(reconnected);
      // Back in the picks once the client side of each new socket is open.
      await pool.ready({ minEndpoints: 3 });
    }
    for (let i = 0; i < 30; i++) await pool.use((client) => get(client));

    // A replacement opens within the grace, unless the machine stalls: then only brief, well-formed flips.
    assertOnlyBetweenSockets(states);
    assert.deepEqual(
      pool.stats().members.map((m) => [m.state, m.requests, m.failures, m.connects]),
      pods.map(() => ['ready', (rounds + 1) * 10, 0, 1]),
    );
    assert.deepEqual(
      pods.map((p) => [p.requests, p.connections]),
      pods.map(() => [(rounds + 1) * 10, rounds + 1]),
      'one connection per idle period, each reused by every request of its round',
    );
  });

  it('with a keep-alive timeout of 1 s (undici closes after every response), a burst of 600 requests all succeed', async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(3, { first: 145, keepAliveTimeoutMs: 1_000 });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), reconnect: quickReconnect });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });
    const states = recordStates(pool);

    const { ok, failed } = await burst(600, 8, async () => {
      await pool.use((client) => get(client));
    });
    assert.deepEqual(failed, []);
    assert.equal(ok, 600);
    assertOnlyBetweenSockets(states);
    for (const pod of pods) {
      assert.ok(pod.requests > 0, `${pod.key} served`);
      assert.ok(pod.connections >= pod.requests, `${pod.key}: a connection per request (${pod.connections} for ${pod.requests})`);
    }
    // The last response may have closed a socket whose replacement is still opening.
    await pool.ready({ minEndpoints: 3 });
    assert.deepEqual(
      pool.stats().members.map((m) => [m.state, m.failures, m.connects]),
      pods.map(() => ['ready', 0, 1]),
    );
  });

  for (const via of ['pool.use', 'httpDispatcher + fetch'] as const) {
    it(`with maxRequestsPerSocket: 100, 2,000 requests 16 at a time through ${via} all succeed`, async (t) => {
      const cleanup = cleanupAfter(t);
      const pods = await startHttpPods(3, { first: via === 'pool.use' ? 151 : 155, maxRequestsPerSocket: 100 });
      const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), reconnect: quickReconnect });
      cleanup.push(() => stopPods(pods), () => pool.close());
      await pool.ready({ minEndpoints: 3 });
      const states = recordStates(pool);
      const dispatcher = httpDispatcher(pool);

      const served = new Map<string, number>();
      const { ok, failed } = await burst(2_000, 16, async () => {
        const key =
          via === 'pool.use'
            ? await pool.use((client) => get(client))
            : await (await fetch('http://backend.default.svc:8080/', { dispatcher } as RequestInit)).text();
        served.set(key, (served.get(key) ?? 0) + 1);
      });
      assert.deepEqual(failed, []);
      assert.equal(ok, 2_000);
      assertOnlyBetweenSockets(states);
      assert.deepEqual([...served.keys()].sort(), pods.map((p) => p.key).sort(), 'every pod served');
      for (const pod of pods) {
        assert.ok(pod.connections >= Math.floor(pod.requests / 100), `${pod.key} recycled its connections (${pod.connections} for ${pod.requests})`);
      }
      assert.ok(
        pods.some((p) => p.connections > 1),
        'the server closed connections',
      );
      // The last response may have closed a socket whose replacement is still opening.
      await pool.ready({ minEndpoints: 3 });
      assert.deepEqual(
        pool.stats().members.map((m) => [m.state, m.failures, m.connects]),
        pods.map(() => ['ready', 0, 1]),
      );
    });
  }

  it('a reset in the middle of a response fails that call and counts against the pod', async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(1, {
      first: 159,
      handler: (pod, req, res) => {
        req.resume();
        if (req.url === '/reset') {
          res.writeHead(200, { 'content-length': '100' });
          res.write('partial', () => req.socket.destroy());
          return;
        }
        res.end(pod.key);
      },
    });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), reconnect: quickReconnect });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready();

    await assert.rejects(
      pool.use(async (client) => {
        const res = await client.request({ method: 'GET', path: '/reset' });
        return res.body.text();
      }),
      (error: { code?: string }) => error.code === 'UND_ERR_SOCKET',
    );
    assert.deepEqual(
      pool.stats().members.map((m) => [m.requests, m.failures]),
      [[1, 1]],
    );
    assert.equal(await pool.use((client) => get(client)), pods[0].key, 'the next request goes through');
  });

  it('a pod whose replacement connection is refused is lost, and reconnects with backoff once it listens again', async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(1, { first: 161 });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), reconnect: quickReconnect });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready();
    assert.equal(await pool.use((client) => get(client)), pods[0].key);

    const down = stateReached(pool, pods[0].key, 'connecting');
    const refused = new Promise<Error>((resolve) => pool.once('connectError', (_endpoint, error) => resolve(error)));
    await pods[0].kill();
    const change = await down;
    assert.equal(change.from, 'ready');
    // Lost as the replacement was refused.
    assert.equal(change.error?.code, 'PODPOOL_CONNECTION_LOST');
    assert.match((await refused).message, /ECONNREFUSED/, 'the replacement is refused: the pod is lost, and the pool retries the connect');
    assert.equal(pool.stats().members[0].connects, 1);

    const back = stateReached(pool, pods[0].key, 'ready');
    await pods[0].restart();
    await back;
    assert.equal(await pool.use((client) => get(client)), pods[0].key);
  });
});
