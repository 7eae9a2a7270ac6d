import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import type { Dispatcher } from 'undici';
import { fetch, request } from 'undici';
import {
  EndpointSet,
  ErrorCode,
  PodpoolError,
  createPool,
  httpDispatcher,
  httpTransport,
  staticEndpoints,
  type EndpointSource,
  type SourceSink,
} from '../../src/index.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { startHttpPods, stopPods, type HttpPod } from '../../testkit/http-pods.ts';
import { stateReached } from '../support/pool-events.ts';
import { first } from '../support/first-balancer.ts';
import { activeResources, assertNothingLeft } from '../support/resources.ts';

const quickReconnect = { minMs: 5, maxMs: 20, factor: 2 };

function endpointsOf(pods: readonly HttpPod[]) {
  return pods.map((p) => ({ address: p.address, port: p.port }));
}

async function get(client: Dispatcher, path = '/'): Promise<string> {
  const res = await client.request({ method: 'GET', path });
  return res.body.text();
}

describe('httpTransport against real HTTP servers on loopback', () => {

  it('balances requests over exactly one keep-alive connection per pod', async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(3, { first: 11 });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport() });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });

    for (let i = 0; i < 300; i++) {
      await pool.use(async (client, endpoint) => {
        assert.equal(await get(client), endpoint.key, 'the call went to the pod it was given');
      });
    }
    assert.deepEqual(
      pods.map((p) => p.requests),
      [100, 100, 100],
    );
    assert.deepEqual(
      pods.map((p) => p.connections),
      [1, 1, 1],
      'one keep-alive connection per pod, reused by every request',
    );
    const stats = pool.stats();
    assert.deepEqual(
      stats.members.map((m) => [m.state, m.requests, m.failures, m.inFlight]),
      [
        ['ready', 100, 0, 0],
        ['ready', 100, 0, 0],
        ['ready', 100, 0, 0],
      ],
    );
  });

  it('with connections: 3, a pod serves three requests at once over three kept-alive sockets', async (t) => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    let arrived = 0;
    let allArrived!: () => void;
    const three = new Promise<void>((resolve) => {
      allArrived = resolve;
    });
    const pods = await startHttpPods(1, {
      first: 91,
      handler: (pod, req, res) => {
        req.resume();
        if (++arrived === 3) allArrived();
        void released.then(() => res.end(pod.key));
      },
    });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport({ connections: 3 }) });
    t.after(() => pool.close());
    t.after(() => stopPods(pods));
    await pool.ready();
    const calls = Array.from({ length: 3 }, () => pool.use((client) => get(client)));
    await three; // with one connection the second request would wait behind the first
    assert.equal(pods[0].open, 3);
    release();
    assert.deepEqual(await Promise.all(calls), [pods[0].key, pods[0].key, pods[0].key]);
    for (let i = 0; i < 9; i++) await pool.use((client) => get(client));
    assert.equal(pods[0].connections, 3, 'the sockets are kept alive and reused');
  });

  it('httpDispatcher balances fetch() and request() per request', async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(3, { first: 21 });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport() });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });
    const dispatcher = httpDispatcher(pool);

    const served = new Map<string, number>();
    for (let i = 0; i < 30; i++) {
      const viaFetch = await (await fetch('http://backend.default.svc:8080/fetch', { dispatcher })).text();
      const viaRequest = await (await request('http://backend.default.svc:8080/request', { dispatcher })).body.text();
      for (const key of [viaFetch, viaRequest]) served.set(key, (served.get(key) ?? 0) + 1);
    }
    assert.deepEqual(
      [...served.entries()].sort(),
      pods.map((p) => [p.key, 20]),
    );
    assert.deepEqual(
      pods.map((p) => p.connections),
      [1, 1, 1],
    );
  });

  it('httpDispatcher sends the URL host as Host, as through the ClusterIP, unless the request sets one', async (t) => {
    const pods = await startHttpPods(2, {
      first: 95,
      handler: (_pod, req, res) => {
        req.resume();
        res.end(req.headers.host);
      },
    });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport() });
    t.after(() => pool.close());
    t.after(() => stopPods(pods));
    await pool.ready({ minEndpoints: 2 });
    const dispatcher = httpDispatcher(pool);
    const url = 'http://backend.default.svc:8080/';
    assert.equal(await (await fetch(url, { dispatcher })).text(), 'backend.default.svc:8080');
    assert.equal(await (await request(url, { dispatcher })).body.text(), 'backend.default.svc:8080');
    assert.equal(await (await request(url, { dispatcher, headers: { 'x-a': '1' } })).body.text(), 'backend.default.svc:8080');
    assert.equal(await (await request(url, { dispatcher, headers: ['x-a', '1'] })).body.text(), 'backend.default.svc:8080');
    assert.equal(await (await request(url, { dispatcher, headers: { Host: 'other.example' } })).body.text(), 'other.example');
    assert.equal(await (await request(url, { dispatcher, headers: ['host', 'other.example'] })).body.text(), 'other.example');
    // pool.use talks to the pod itself: its address is the Host.
    const [host, key] = await pool.use(async (client, endpoint) => [await get(client), endpoint.key]);
    assert.equal(host, key);
  });

  it('httpDispatcher counts a 5xx against the pod and a 404 not', async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(1, {
      first: 31,
      handler: (_pod, req, res) => {
        req.resume();
        res.statusCode = req.url === '/fail' ? 503 : 404;
        res.end();
      },
    });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), ejection: false });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready();
    const dispatcher = httpDispatcher(pool);

    assert.equal((await request('http://svc/missing', { dispatcher })).statusCode, 404);
    assert.equal(pool.stats().members[0].failures, 0);
    const failed = await request('http://svc/fail', { dispatcher });
    await failed.body.dump();
    assert.equal(failed.statusCode, 503);
    // The dispatcher sent the GET twice more (the pool's 2 retries, on the only pod): each 503 counts.
    assert.equal(pool.stats().members[0].failures, 3);
    assert.equal(pool.stats().members[0].requests, 4);
  });

  it('use() counts a returned 5xx or 429 against the pod, a 404 not, and failedResult decides instead when given', async (t) => {
    const cleanup = cleanupAfter(t);
    const statuses: Record<string, number> = { '/fail': 503, '/busy': 429, '/missing': 404 };
    const pods = await startHttpPods(1, {
      first: 33,
      handler: (_pod, req, res) => {
        req.resume();
        res.statusCode = statuses[req.url ?? ''] ?? 200;
        res.end();
      },
    });
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport(), ejection: false });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready();
    const member = () => pool.stats().members[0];
    const get = (path: string) => (client: Dispatcher) =>
      client.request({ method: 'GET', path }).then(async (res) => {
        await res.body.dump();
        return res;
      });

    // The caller gets the response either way; the pool counts what it says about the pod.
    assert.equal((await pool.use(get('/fail'))).statusCode, 503);
    assert.deepEqual([member().requests, member().failures], [1, 1]);
    assert.match(member().lastError?.message ?? '', /answered HTTP 503/);
    assert.equal((await pool.use(get('/busy'))).statusCode, 429);
    assert.equal((await pool.use(get('/missing'))).statusCode, 404);
    assert.equal((await pool.use(get('/'))).statusCode, 200);
    assert.deepEqual([member().requests, member().failures], [4, 2]);

    // A fetch Response through the pod's dispatcher is read the same way.
    const response = await pool.use(async (client) => {
      const res = await fetch('http://svc/fail', { dispatcher: client });
      await res.arrayBuffer();
      return res;
    });
    assert.equal(response.status, 503);
    assert.deepEqual([member().requests, member().failures], [5, 3]);

    // failedResult replaces the transport's rule for one call: here a 503 is expected, and a
    // returned value the transport knows nothing of counts.
    await pool.use(get('/fail'), { failedResult: () => false });
    await pool.use(async () => 'degraded', { failedResult: (value) => value === 'degraded' });
    assert.deepEqual([member().requests, member().failures], [7, 4]);
    assert.match(member().lastError?.message ?? '', /answered with a result counted as a pod failure/);

    // The dispatcher counts a 429 as it counts a 5xx.
    const busy = await request('http://svc/busy', { dispatcher: httpDispatcher(pool) });
    await busy.body.dump();
    assert.deepEqual([member().requests, member().failures], [8, 5]);
  });

  it('ejects a pod that accepts and never answers, though each timeout costs it its connection', async (t) => {
    const cleanup = cleanupAfter(t);
    // Pod 35 holds every request (a hung process); pod 36 answers.
    const pods = await startHttpPods(2, {
      first: 35,
      handler: (pod, req, res) => {
        req.resume();
        if (pod.address !== '127.0.0.35') res.end(pod.key);
      },
    });
    const pool = createPool({
      source: staticEndpoints(endpointsOf(pods)),
      transport: httpTransport(),
      balancer: first(),
      ejection: { consecutiveFailures: 3, baseMs: 60_000 },
    });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 2 });
    const hung = pods[0].key;
    const ejected = stateReached(pool, hung, 'ejected');
    // As the README advises: the signal goes to undici, so a timeout aborts the request (and
    // with it the socket); the pool replaces the socket and the run of failures goes on.
    for (let i = 0; i < 3; i++) {
      await assert.rejects(
        pool.use((client, _endpoint, signal) => client.request({ method: 'GET', path: '/', signal }), { timeoutMs: 50 }),
        { code: ErrorCode.TIMEOUT },
      );
    }
    await ejected;
    const stats = pool.stats().members.find((m) => m.endpoint.key === hung)!;
    assert.deepEqual([stats.state, stats.failures, stats.ejections], ['ejected', 3, 1]);
    // The calls go to the pod that answers now.
    assert.equal(await pool.use(async (client) => (await client.request({ method: 'GET', path: '/' })).body.text()), pods[1].key);
  });

  it('httpDispatcher reports PODPOOL_NO_ENDPOINTS instead of hanging when nothing is ready', async (t) => {
    const cleanup = cleanupAfter(t);
    const pool = createPool({ source: staticEndpoints([]), transport: httpTransport() });
    cleanup.push(() => pool.close());
    // At once with waitForReady false; after its wait otherwise (fetch-compat runs both with every client).
    await assert.rejects(request('http://svc/', { dispatcher: httpDispatcher(pool, { waitForReady: false }) }), (error: unknown) => {
      assert.ok(error instanceof PodpoolError);
      assert.equal(error.code, ErrorCode.NO_ENDPOINTS);
      return true;
    });
  });

  it('httpDispatcher fails a request waiting for a pod with PODPOOL_CLOSED when the pool closes', async () => {
    const pool = createPool({ source: staticEndpoints([]), transport: httpTransport() });
    const waiting = request('http://svc/', { dispatcher: httpDispatcher(pool) });
    await pool.close();
    await assert.rejects(waiting, { code: ErrorCode.CLOSED });
  });

  it('stops picking a killed pod and takes it back after it restarts', async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(3, { first: 41 });
    const pool = createPool({
      source: staticEndpoints(endpointsOf(pods)),
      transport: httpTransport(),
      reconnect: quickReconnect,
    });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });
    const [a, b, c] = pods;
    // Every pod has answered on its socket, so b's close is not a fresh socket dropped unanswered.
    for (let i = 0; i < 3; i++) await pool.use((client) => get(client));

    const down = stateReached(pool, b.key, 'connecting');
    const refused = new Promise<Error>((resolve) => pool.on('connectError', (endpoint, error) => endpoint.key === b.key && resolve(error)));
    await b.kill();
    const change = await down;
    assert.equal(change.from, 'ready');
    // Lost when the replacement was refused.
    assert.equal((change.error as PodpoolError).code, ErrorCode.CONNECTION_LOST);
    assert.match((await refused).message, /ECONNREFUSED/);

    const before = [a.requests, c.requests];
    for (let i = 0; i < 30; i++) await pool.use((client) => get(client));
    assert.deepEqual([a.requests - before[0], c.requests - before[1]], [15, 15], 'every call went to a live pod');

    const up = stateReached(pool, b.key, 'ready');
    await b.restart();
    await up;
    const bBefore = b.requests;
    for (let i = 0; i < 30; i++) await pool.use((client) => get(client));
    assert.equal(b.requests - bBefore, 10, 'the restarted pod takes its share again');
    assert.equal(pool.stats().members.find((m) => m.endpoint.key === b.key)?.connects, 2);
  });

  it('broadcast reaches every live pod once and reports the one that is down', async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startHttpPods(4, { first: 51 });
    const pool = createPool({
      source: staticEndpoints(endpointsOf(pods)),
      transport: httpTransport(),
      reconnect: { minMs: 60_000, maxMs: 60_000 },
    });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 4 });
    const dead = pods[2];
    const down = stateReached(pool, dead.key, 'connecting');
    await dead.kill();
    await down;

    const before = pods.map((p) => p.requests);
    const result = await pool.broadcast(async (client, endpoint, delivery) => {
      assert.equal(typeof delivery.id, 'string');
      return { endpoint: endpoint.key, body: await get(client, `/invalidate?id=${delivery.id}`) };
    });
    assert.deepEqual(
      result.delivered.map((d) => [d.endpoint.key, d.value.body]),
      pods.filter((p) => p !== dead).map((p) => [p.key, p.key]),
    );
    assert.equal(result.failed.length, 1);
    assert.equal(result.failed[0].endpoint.key, dead.key);
    assert.equal((result.failed[0].error as PodpoolError).code, ErrorCode.NOT_CONNECTED);
    assert.deepEqual(
      pods.map((p, i) => p.requests - before[i]),
      pods.map((p) => (p === dead ? 0 : 1)),
      'exactly one request per live pod',
    );
  });

  it('drains a removed pod: its in-flight request completes, new ones go elsewhere, then its connection closes', async (t) => {
    const cleanup = cleanupAfter(t);
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    let held!: () => void;
    const holding = new Promise<void>((resolve) => {
      held = resolve;
    });
    const pods = await startHttpPods(2, {
      first: 61,
      handler: (pod, req, res) => {
        req.resume();
        if (req.url === '/slow') {
          held();
          void released.then(() => res.end(pod.key));
        } else {
          res.end(pod.key);
        }
      },
    });
    let sink!: SourceSink;
    const source: EndpointSource = {
      kind: 'manual',
      watch(s) {
        sink = s;
        queueMicrotask(() => sink.snapshot(new EndpointSet(endpointsOf(pods))));
        return { close: async () => {} };
      },
    };
    const pool = createPool({ source, transport: httpTransport(), random: () => 0 });
    cleanup.push(() => stopPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 2 });
    const [a, b] = pods;

    // random() = 0 starts round-robin at the first pod (a) for the slow call.
    const slow = pool.use((client) => get(client, '/slow'));
    await holding;
    const draining = stateReached(pool, a.key, 'draining');
    const closed = stateReached(pool, a.key, 'closed');
    sink.snapshot(new EndpointSet(endpointsOf([b])));
    await draining;

    for (let i = 0; i < 10; i++) assert.equal(await pool.use((client) => get(client)), b.key);
    assert.equal(a.open, 1, 'the drained pod keeps its connection while a call is in flight');
    release();
    assert.equal(await slow, a.key, 'the in-flight call completed on its pod');
    await closed;
    await a.idle();
    assert.equal(a.requests, 1);
  });

  it('connects to IPv6 pods', async (t) => {
    const cleanup = cleanupAfter(t);
    const { createServer } = await import('node:http');
    const server = createServer((_req, res) => res.end('v6'));
    server.listen(0, '::1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const pool = createPool({ source: staticEndpoints([{ address: '::1', port }]), transport: httpTransport() });
    cleanup.push(
      async () => {
        server.closeAllConnections();
        server.close();
      },
      () => pool.close(),
    );
    await pool.ready();
    assert.equal(await pool.use((client, endpoint) => (assert.equal(endpoint.key, `[::1]:${port}`), get(client))), 'v6');
  });

  it('close() finishes after a pod died with requests queued on its connection', { timeout: 20_000 }, async (t) => {
    const pods = await startHttpPods(1, {
      first: 81,
      handler: (_pod, req) => {
        req.resume(); // never answers: the first request runs, the others queue behind it
      },
    });
    t.after(() => stopPods(pods));
    const pool = createPool({
      source: staticEndpoints(endpointsOf(pods)),
      transport: httpTransport(),
      reconnect: { minMs: 60_000, maxMs: 60_000 },
    });
    await pool.ready();
    let started!: () => void;
    const running = new Promise<void>((resolve) => {
      started = resolve;
    });
    pods[0].onRequest = started;
    const calls = Array.from({ length: 3 }, () => pool.use((client) => get(client)));
    await running;
    const down = stateReached(pool, pods[0].key, 'connecting');
    await pods[0].kill();
    await down;
    const outcomes = await Promise.allSettled(calls);
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['rejected', 'rejected', 'rejected'],
    );
    // The regression: undici's Client.destroy() never settled when called from inside the
    // socket's own 'close' event, so close() hung here.
    await pool.close();
    assert.equal(pool.stats().members.length, 0);
  });

  it('close() leaves no socket or timer behind', async (t) => {
    const pods = await startHttpPods(3, { first: 71 });
    t.after(() => stopPods(pods));
    const resourcesBefore = activeResources();
    const pool = createPool({ source: staticEndpoints(endpointsOf(pods)), transport: httpTransport() });
    await pool.ready({ minEndpoints: 3 });
    for (let i = 0; i < 9; i++) await pool.use((client) => get(client));
    await pool.broadcast((client) => get(client));
    await pool.close();
    await Promise.all(pods.map((p) => p.idle()));
    assertNothingLeft(resourcesBefore);
    await assert.rejects(pool.use((client) => get(client)), { code: ErrorCode.CLOSED });
  });

  it('rejects bad options at the door, naming the option', () => {
    assert.throws(() => httpTransport({ pipelining: 0 }), /option pipelining must be an integer >= 1, got 0/);
    assert.throws(() => httpTransport({ connectTimeoutMs: -1 }), { code: ErrorCode.INVALID_OPTION });
    assert.throws(() => httpTransport({ connections: 1.5 }), /option connections must be an integer >= 1, got 1.5/);
    assert.throws(() => httpTransport({ http2: true, pipelining: 4 }), /option pipelining must be left out with http2/);
    assert.throws(() => httpTransport({ client: { allowH2: true } as never }), /option client\.allowH2 must be left out: use the http2 option/);
    assert.throws(() => httpDispatcher({} as never), { code: ErrorCode.INVALID_OPTION, message: /option pool must be a pool/ });
  });
});
