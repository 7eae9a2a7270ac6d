import assert from 'node:assert/strict';
import { once } from 'node:events';
import { request } from 'node:http';
import { connect } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { podpoolDebugServer, PodpoolError, ErrorCode, roundRobin } from '../../src/index.ts';
import type { DebugView } from '../../src/observe/debug-server.ts';
import { harness } from '../support/pool-harness.ts';
import { pod, podKey } from '../support/manual-source.ts';
import { activeResources, assertNothingLeft } from '../support/resources.ts';

async function started(t: TestContext, options: Parameters<typeof podpoolDebugServer>[0]) {
  const server = await podpoolDebugServer(options);
  t.after(() => server.close());
  return server;
}

async function get(url: string, method = 'GET'): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject).end();
  });
}

describe('podpoolDebugServer', () => {
  it('answers GET /podpool with each pool’s members, their numbers, connectivity and endpoint count', async (t) => {
    // A clock that stands still, so the latency the JSON shows is the one stats() gives after it;
    // a short drain, so a failing assertion (which leaves a call held) does not hold the pool's close.
    const { source, transport, pool } = harness(t, { balancer: roundRobin(), clock: () => 1_000, drainTimeoutMs: 100 });
    transport.refuse(podKey(3));
    source.set([pod(1, { podName: 'backend-0', zone: 'a' }), pod(2, { podName: 'backend-1' }), pod(3, { podName: 'backend-2' })]);
    await pool.ready({ minEndpoints: 2 });
    await transport.untilAttempts(podKey(3), 1);
    // Six answered calls over the two ready pods, and one that fails on its pod.
    for (let i = 0; i < 6; i++) await pool.use((client) => client.key);
    const failure = new Error('the pod said no');
    await assert.rejects(pool.use(() => Promise.reject(failure)), failure);
    let inFlight!: () => void;
    const held = pool.use(() => new Promise<void>((resolve) => (inFlight = resolve)));

    const other = harness(t).pool;
    const server = await started(t, { pools: { backend: pool, empty: other } });
    assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+\/podpool$/);

    const before = Date.now();
    const response = await get(server.url);
    assert.equal(response.status, 200);
    assert.match(String(response.headers['content-type']), /^application\/json/);
    assert.equal(response.headers['cache-control'], 'no-store');
    const view = JSON.parse(response.body) as DebugView;
    assert.ok(Date.parse(view.time) >= before - 1000 && Number.isFinite(Date.parse(view.time)), view.time);
    assert.deepEqual(Object.keys(view.pools), ['backend', 'empty']);

    const backend = view.pools.backend!;
    assert.equal(backend.connectivity, 'ready');
    assert.equal(backend.endpoints, 3);
    assert.equal(backend.ready, 2);
    assert.equal(backend.balancer, 'round-robin');
    assert.equal(backend.source, source.kind);
    assert.deepEqual(
      backend.members.map((m) => [m.key, m.podName, m.state]),
      [
        [podKey(1), 'backend-0', 'ready'],
        [podKey(2), 'backend-1', 'ready'],
        [podKey(3), 'backend-2', backend.members[2]!.state],
      ],
    );
    assert.notEqual(backend.members[2]!.state, 'ready');
    assert.equal(backend.members[0]!.zone, 'a');
    // The numbers stats() has: 8 calls started, one failed, one still running.
    assert.equal(backend.members.reduce((sum, m) => sum + m.requests, 0), 8);
    assert.equal(backend.members.reduce((sum, m) => sum + m.failures, 0), 1);
    assert.equal(backend.members.reduce((sum, m) => sum + m.inFlight, 0), 1);
    assert.deepEqual(backend.members.map((m) => m.ejections), [0, 0, 0]);
    // Everything stats() reports reaches the JSON (latency's percentiles among it), whatever fields it grows.
    const { members, ...poolStats } = pool.stats();
    const json = (value: unknown): unknown => JSON.parse(JSON.stringify(value));
    for (const [field, value] of Object.entries(poolStats)) assert.deepEqual((backend as unknown as Record<string, unknown>)[field], json(value), field);
    for (const [i, { endpoint, lastError, ...member }] of members.entries()) {
      assert.equal(backend.members[i]!.key, endpoint.key);
      for (const [field, value] of Object.entries(member)) assert.deepEqual((backend.members[i] as unknown as Record<string, unknown>)[field], json(value), field);
    }
    // An error's message, which its plain JSON would lose.
    const failed = backend.members.find((m) => m.failures === 1)!;
    assert.deepEqual(failed.lastError, { name: 'Error', message: 'the pod said no' });
    const refused = backend.members[2]!.lastError!;
    assert.equal(refused.code, ErrorCode.CONNECT_FAILED);
    assert.ok(refused.message.length > 0);

    const empty = view.pools.empty!;
    assert.equal(empty.endpoints, 0);
    assert.deepEqual(empty.members, []);
    assert.notEqual(empty.connectivity, 'ready');

    // Read at each request: the held call ended, so the next answer shows it.
    inFlight();
    await held;
    const after = JSON.parse((await get(server.url.replace('/podpool', '/debug/podpool'))).body) as DebugView;
    assert.equal(after.pools.backend!.members.reduce((sum, m) => sum + m.inFlight, 0), 0);
  });

  it('answers other paths with 404 and other methods with 405', async (t) => {
    const server = await started(t, { pools: { p: harness(t).pool } });
    assert.equal((await get(server.url.replace('/podpool', '/metrics'))).status, 404);
    const post = await get(server.url, 'POST');
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
    const head = await get(server.url, 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
  });

  it('listens on ::1 when asked', async (t) => {
    const server = await started(t, { pools: { p: harness(t).pool }, host: '::1' });
    assert.match(server.url, /^http:\/\/\[::1\]:\d+\/podpool$/);
    assert.equal((await get(server.url)).status, 200);
  });

  it('refuses a host outside loopback unless allowRemote, and bad options, with PODPOOL_INVALID_OPTION', async (t) => {
    const pool = harness(t).pool;
    const refused = async (options: unknown, pattern: RegExp) => {
      await assert.rejects(podpoolDebugServer(options as Parameters<typeof podpoolDebugServer>[0]), (error: unknown) => {
        assert.ok(error instanceof PodpoolError);
        assert.equal(error.code, ErrorCode.INVALID_OPTION);
        assert.match(error.message, pattern);
        return true;
      });
    };
    await refused({ pools: { pool }, host: '0.0.0.0' }, /host must be a loopback address.*allowRemote/);
    await refused({ pools: { pool }, host: '10.0.0.1' }, /host must be a loopback address/);
    await refused({ pools: { pool }, host: 'example.com' }, /host must be an IP address/);
    await refused({ pools: {} }, /pools must be an object of at least one pool/);
    await refused({ pools: { pool: {} } }, /pools\.pool must be a pool/);
    await refused({ pools: { pool }, port: 70_000 }, /port must be an integer/);
    await refused({ pools: { pool }, allowRemote: 'yes' }, /allowRemote must be a boolean/);
    await refused({ pools: { pool }, prot: 1 }, /unknown option prot \(did you mean port\?\)/);
    await refused(undefined, /options must be an object/);
  });

  it('close() stops listening, ends kept-alive connections and leaves nothing behind', async (t) => {
    const pool = harness(t).pool;
    const before = activeResources();
    const server = await podpoolDebugServer({ pools: { p: pool } });
    // A client that keeps its connection open after an answer, as a polling `podpool top` does.
    const socket = connect(server.port, '127.0.0.1');
    socket.write('GET /podpool HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n');
    const [first] = (await once(socket, 'data')) as [Buffer];
    assert.match(first.toString(), /^HTTP\/1\.1 200 /);
    const ended = once(socket, 'close');
    await server.close();
    await server.close(); // twice is fine
    // The server ended the kept-alive connection rather than wait for the client to.
    await ended;
    assertNothingLeft(before);
    await assert.rejects(get(server.url), { code: 'ECONNREFUSED' });
  });
});
