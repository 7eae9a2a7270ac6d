import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { describe, it } from 'node:test';
import type { Dispatcher } from 'undici';
import { ErrorCode, createPool, httpTransport, staticEndpoints, type Pool, type StateChange } from '../../src/index.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { stateReached } from '../support/pool-events.ts';
import { burst } from '../support/burst.ts';
import { startHttpPods, stopPods, type HttpPod } from '../../testkit/http-pods.ts';

// A pod with no socket open can take no request until the next one is: the pool does not pick
// it meanwhile. A pod that closes its connections because it is terminating is then out of the
// picks before its port refuses the next one; one that recycles them is back as soon as the
// replacement is open.

const quickReconnect = { minMs: 5, maxMs: 20, factor: 2 };
/** Every wait below is on an event; this only turns a broken feature's endless wait into a failure. */
const events = { timeout: 20_000 };

function endpointsOf(pods: readonly HttpPod[]) {
  return pods.map((p) => ({ address: p.address, port: p.port }));
}

async function get(client: Dispatcher, path = '/'): Promise<string> {
  const res = await client.request({ method: 'GET', path });
  return res.body.text();
}

function memberOf(pool: Pool<unknown>, key: string) {
  return pool.stats().members.find((m) => m.endpoint.key === key)!;
}

function recordStates(pool: Pool<unknown>): StateChange[] {
  const changes: StateChange[] = [];
  pool.on('state', (change) => changes.push(change));
  return changes;
}

/** Every change is a member leaving the picks between two sockets and coming back, per pod in turn. */
function assertOnlyBetweenSockets(changes: readonly StateChange[]): void {
  const byPod = Map.groupBy(changes, (c) => c.endpoint.key);
  for (const [key, own] of byPod) {
    assert.deepEqual(
      own.map((c) => [c.from, c.to, c.error?.code]),
      own.map((_, i) => (i % 2 === 0 ? ['ready', 'connecting', ErrorCode.NOT_CONNECTED] : ['connecting', 'ready', undefined])),
      `${key} only left the picks between two sockets`,
    );
  }
}

/**
 * A pod that terminates as Node servers do on SIGTERM: `server.close()` stops listening, closes
 * idle keep-alive connections at once and the others after the response in flight.
 */
async function startTerminatingPod(address: string) {
  let requests = 0;
  const server = createServer((req, res) => {
    requests++;
    req.resume();
    res.end(key);
  });
  server.listen(0, address);
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const key = `${address}:${port}`;
  return {
    address,
    port,
    key,
    get requests() {
      return requests;
    },
    async terminate() {
      server.close();
      await once(server, 'close');
    },
  };
}

describe('httpTransport drains a pod that closes its connections', () => {
  it('a server answering Connection: close on every 10th response: 0 failed requests, never lost', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(3, {
      first: 201,
      handler: (pod, req, res) => {
        req.resume();
        if (pod.requests % 10 === 0) res.setHeader('connection', 'close');
        res.end(pod.key);
      },
    });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), reconnect: quickReconnect });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });
    const states = recordStates(pool);

    const served = new Map<string, number>();
    const { ok, failed } = await burst(900, 8, async () => {
      const key = await pool.use((client) => get(client));
      served.set(key, (served.get(key) ?? 0) + 1);
    });
    assert.deepEqual(failed, []);
    assert.equal(ok, 900);
    assert.deepEqual([...served.keys()].sort(), pods.map((p) => p.key).sort(), 'every pod served');
    assert.ok(pods.every((p) => p.connections >= Math.floor(p.requests / 10)), 'each pod closed a connection every 10 responses');
    assertOnlyBetweenSockets(states);
    assert.ok(states.length > 0, 'a pod whose last socket closed was out of the picks until the next one opened');
    await pool.ready({ minEndpoints: 3 });
    assert.deepEqual(
      pool.stats().members.map((m) => [m.state, m.failures, m.connects]),
      pods.map(() => ['ready', 0, 1]),
    );
  });

  it('with connections: 2, a pod stays in the picks while one of its sockets is still open', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const held: (() => void)[] = [];
    const [pod] = await startHttpPods(1, {
      first: 205,
      keepAliveTimeoutMs: 60_000,
      handler: (p, req, res) => {
        req.resume();
        if (req.url === '/hold') held.push(() => res.end(p.key));
        else res.end(p.key);
      },
    });
    const pool = createPool({ source: staticEndpoints(endpointsOf([pod])), transport: httpTransport({ connections: 2 }), reconnect: quickReconnect });
    cleanup.push(() => stopPods([pod]), () => pool.close());
    await pool.ready();
    const states = recordStates(pool);

    // Two requests at once: one per connection.
    let bothHeld!: () => void;
    const holding = new Promise<void>((resolve) => (bothHeld = resolve));
    pod.onRequest = () => held.length === 1 && bothHeld();
    const first = pool.use((client) => get(client, '/hold'));
    const second = pool.use((client) => get(client, '/hold'));
    await holding;
    assert.equal(pod.open, 2);
    held.shift()!();
    assert.equal(await Promise.race([first, second]), pod.key);
    // The pod closes the idle one; the other still carries a request.
    const replaced = new Promise<void>((resolve) => (pod.onConnection = resolve));
    pod.closeIdleConnections();
    await replaced;
    assert.deepEqual(states, [], 'one socket open: still pickable');
    assert.equal(await pool.use((client) => get(client)), pod.key);
    held.shift()!();
    await Promise.all([first, second]);

    // Both idle and both closed: no socket open until the next one is.
    const left = stateReached(pool, memberOf(pool, `${pod.address}:${pod.port}`).endpoint.key, 'connecting');
    const back = stateReached(pool, `${pod.address}:${pod.port}`, 'ready');
    pod.closeIdleConnections();
    assert.equal((await left).error?.code, ErrorCode.NOT_CONNECTED);
    await back;
    assert.equal(await pool.use((client) => get(client)), pod.key);
    assert.deepEqual([memberOf(pool, pod.key).failures, memberOf(pool, pod.key).connects], [0, 1]);
  });

  it('a terminating pod (closes its sockets, stops listening) leaves ready before its port refuses the next connection', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(2, { first: 207 });
    const [other, victim] = pods;
    // No retries: every call picked for a pod that can't take it would fail here.
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), reconnect: quickReconnect, retry: false });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 2 });
    // Both pods answered on their socket: the victim's close is a recycle, not a fresh socket dropped.
    for (let i = 0; i < 2; i++) await pool.use((client) => get(client));

    let connectErrors = 0;
    pool.on('connectError', () => connectErrors++);
    const left = stateReached(pool, victim.key, 'connecting', () => ({ connectErrors, lastError: memberOf(pool, victim.key).lastError }));
    const refused = new Promise<Error>((resolve) => pool.once('connectError', (_endpoint, error) => resolve(error)));
    const stopped = victim.kill();
    const change = await left;
    assert.equal(change.from, 'ready');
    assert.equal(change.error?.code, ErrorCode.NOT_CONNECTED, 'out of the picks as its socket closed');
    assert.deepEqual(change.snapshot, { connectErrors: 0, lastError: undefined }, 'before the replacement was refused');

    const before = other.requests;
    for (let i = 0; i < 20; i++) assert.equal(await pool.use((client) => get(client)), other.key);
    assert.equal(other.requests - before, 20);
    await stopped;
    assert.match((await refused).message, /ECONNREFUSED/, 'then the replacement is refused: the pod is lost');
    assert.deepEqual(
      [memberOf(pool, victim.key).state, memberOf(pool, victim.key).failures, memberOf(pool, other.key).failures],
      ['connecting', 0, 0],
    );
  });

  it('under load, a pod terminating gracefully costs no idempotent request', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(2, { first: 209 });
    const victim = await startTerminatingPod('127.0.0.211');
    const pool = createPool({ source: staticEndpoints([...endpointsOf(pods), victim]), transport: httpTransport(), reconnect: quickReconnect });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });

    let served = 0;
    let stopping: Promise<void> | undefined;
    const { ok, failed } = await burst(600, 6, async () => {
      // Idempotent: a request written as the server closed its idle connection may have reached
      // it (HTTP/1.1 can't tell); requests that never left are sent again whatever their kind.
      await pool.use((client) => get(client), { retry: { idempotent: true } });
      // A third of the way in, the victim terminates while requests are on their way to it.
      if (++served === 200) stopping = victim.terminate();
    });
    await stopping;
    assert.deepEqual(failed, []);
    assert.equal(ok, 600);
    assert.ok(victim.requests > 0 && victim.requests < 300, `the victim served until it stopped (${victim.requests})`);
    assert.equal(memberOf(pool, victim.key).state, 'connecting');
  });
});
