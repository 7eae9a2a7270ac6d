import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect as netConnect, createServer as createNetServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import type { Dispatcher } from 'undici';
import { ErrorCode, createPool, httpTransport, staticEndpoints, type Pool, type StateChange } from '../../src/index.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { stateReached } from '../support/pool-events.ts';
import { burst } from '../support/burst.ts';
import { startHttpPods, stopPods, type HttpPod } from '../../testkit/http-pods.ts';
import { makeCertificates } from '../support/certificates.ts';

const SERVICE = 'backend.default.svc.cluster.local';

// A pod whose last socket closed is replaced at once: a server that recycles its connections
// never takes its pod out of the picks (the replacement opens within the 50 ms grace); one that
// terminates is lost as its port refuses the replacement; one whose replacement hangs (a black
// hole) is out of the picks once the grace passes, until a socket is open again.

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
    assert.ok(states.every((c) => c.to !== 'connecting' || c.error?.code === ErrorCode.NOT_CONNECTED), 'never lost: at most out of the picks for a moment, on a stalled machine');
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

    // Both idle and both closed: replaced at once, still never out of the picks.
    const reopened = new Promise<void>((resolve) => (pod.onConnection = resolve));
    pod.closeIdleConnections();
    await reopened;
    assert.equal(await pool.use((client) => get(client)), pod.key);
    assert.deepEqual(states, []);
    assert.deepEqual([memberOf(pool, pod.key).failures, memberOf(pool, pod.key).connects], [0, 1]);
  });

  it('a terminating pod (closes its sockets, stops listening) is lost as its port refuses the replacement, and charged nothing', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(2, { first: 207 });
    const [other, victim] = pods;
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), reconnect: quickReconnect, retry: false });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 2 });
    // Both pods answered on their socket: the victim's close is a recycle, not a fresh socket dropped.
    for (let i = 0; i < 2; i++) await pool.use((client) => get(client));

    const left = stateReached(pool, victim.key, 'connecting');
    await victim.kill();
    const change = await left;
    assert.equal(change.from, 'ready');
    assert.equal(change.error?.code, ErrorCode.CONNECTION_LOST);
    assert.match(change.error!.message, /ECONNREFUSED/, 'lost as the replacement was refused');
    const before = other.requests;
    for (let i = 0; i < 20; i++) assert.equal(await pool.use((client) => get(client)), other.key);
    assert.equal(other.requests - before, 20);
    assert.deepEqual([memberOf(pool, victim.key).failures, memberOf(pool, other.key).failures], [0, 0]);
  });

  it('a pod whose replacement connection hangs (a black hole) is out of the picks once the grace passes, not lost', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const certificates = await makeCertificates(SERVICE);
    // A TLS pod behind a relay that passes its first connection and swallows the next ones (TCP
    // accepted, TLS never answered), as a pod whose network went dark would.
    const pod = createHttpsServer({ key: certificates.key, cert: certificates.cert }, (req, res) => {
      req.resume();
      res.end('victim');
    });
    pod.listen(0, '127.0.0.214');
    await once(pod, 'listening');
    const swallowed: Socket[] = [];
    let passed = 0;
    const relay = createNetServer((socket) => {
      if (passed++ > 0) {
        swallowed.push(socket);
        return;
      }
      const upstream = netConnect((pod.address() as { port: number }).port, '127.0.0.214');
      socket.pipe(upstream).pipe(socket);
      socket.on('error', () => upstream.destroy());
      upstream.on('error', () => socket.destroy());
    });
    relay.listen(0, '127.0.0.214');
    await once(relay, 'listening');
    const victimKey = `127.0.0.214:${(relay.address() as { port: number }).port}`;
    const pool = createPool({
      source: staticEndpoints([{ address: '127.0.0.214', port: (relay.address() as { port: number }).port }]),
      transport: httpTransport({ tls: { ca: certificates.ca, servername: SERVICE }, connectTimeoutMs: 60_000 }),
      reconnect: quickReconnect,
    });
    cleanup.push(
      () => pool.close(),
      async () => {
        for (const s of swallowed) s.destroy();
        relay.close();
        pod.closeAllConnections();
        pod.close();
      },
    );
    await pool.ready();
    // Answered on its socket: the close that follows is a recycle, not a fresh socket dropped.
    assert.equal(await pool.use((client) => get(client)), 'victim');
    const left = stateReached(pool, victimKey, 'connecting');
    pod.closeAllConnections();
    const change = await left;
    assert.equal(change.error?.code, ErrorCode.NOT_CONNECTED, 'out of the picks, not lost: its replacement is still connecting');
    assert.match(change.error!.message, /no new one opened within 50 ms/);
    assert.equal(swallowed.length, 1, 'the replacement is the one the relay swallowed');
    assert.equal(memberOf(pool, victimKey).failures, 0);
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
