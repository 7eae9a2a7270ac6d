import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import type { MemberStats } from '../../src/pool/member.ts';
import type { Pool, PoolOptions } from '../../src/pool/pool.ts';
import { first } from '../support/first-balancer.ts';
import { flush } from '../support/flush.ts';
import { pod, podKey } from '../support/manual-source.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';
import { mockTimers } from '../support/mock-timers.ts';
import { harness as poolHarness, type Harness } from '../support/pool-harness.ts';

const k1 = podKey(1);
const k2 = podKey(2);

/** The pool harness with a short drain, so a failed test ends soon. */
function harness(t: TestContext, options: Partial<PoolOptions<MemoryClient>> = {}): Harness {
  return poolHarness(t, { drainTimeoutMs: 100, ...options });
}

function statsOf(pool: Pool<MemoryClient>, key: string): MemberStats {
  const stats = pool.stats().members.find((m) => m.endpoint.key === key);
  assert.ok(stats, `no member for ${key}`);
  return stats;
}

/** A promise's state right now (after pending jobs ran). */
async function stateOf(promise: Promise<unknown>): Promise<'pending' | 'fulfilled' | 'rejected'> {
  let state: 'pending' | 'fulfilled' | 'rejected' = 'pending';
  promise.then(
    () => (state = 'fulfilled'),
    () => (state = 'rejected'),
  );
  await flush();
  return state;
}

/** A callback that never ends by itself, honouring its signal or not. */
function hanging(honoursSignal: boolean): {
  fn: (client: MemoryClient, endpoint: unknown, signal: AbortSignal | undefined) => Promise<string>;
  finish: (value: string) => void;
  signals: (AbortSignal | undefined)[];
} {
  const gate = Promise.withResolvers<string>();
  const signals: (AbortSignal | undefined)[] = [];
  return {
    signals,
    finish: gate.resolve,
    fn: (_client, _endpoint, signal) => {
      signals.push(signal);
      if (honoursSignal) signal?.addEventListener('abort', () => gate.reject(signal.reason), { once: true });
      return gate.promise;
    },
  };
}

describe('use()', () => {
  it('runs fn with the picked connection and endpoint, and passes its value and its error through', async (t) => {
    const { source, pool } = harness(t);
    source.set([pod(1)]);
    await pool.ready();
    const value = await pool.use((client, endpoint, signal) => {
      assert.equal(client.key, k1);
      assert.equal(endpoint.key, k1);
      assert.ok(signal instanceof AbortSignal);
      assert.equal(signal.aborted, false);
      return 42;
    });
    assert.equal(value, 42);
    const boom = new Error('boom');
    await assert.rejects(
      pool.use(() => {
        throw boom;
      }),
      (error) => error === boom,
    );
    await assert.rejects(
      pool.use(() => Promise.reject(boom)),
      (error) => error === boom,
    );
  });

  it('with timeoutMs: rejects PODPOOL_TIMEOUT at the deadline and counts it then; inFlight stays until fn ends', async (t) => {
    const timers = mockTimers(t);
    let now = 0;
    const { source, pool } = harness(t, { clock: () => now, ejection: false });
    source.set([pod(1)]);
    await pool.ready();
    const call = hanging(false);
    const result = pool.use(call.fn, { timeoutMs: 100 });
    timers.tick(99);
    assert.equal(await stateOf(result), 'pending');
    now = 100;
    timers.tick(1);
    await assert.rejects(result, (error: PodpoolError) => {
      assert.equal(error.code, ErrorCode.TIMEOUT);
      assert.equal(error.message, 'use() on 10.0.0.1:80 did not finish within 100 ms');
      return true;
    });
    const [signal] = call.signals;
    assert.ok(signal instanceof AbortSignal, 'fn got no signal');
    assert.equal(signal.aborted, true);
    assert.equal((signal.reason as PodpoolError).code, ErrorCode.TIMEOUT);

    // fn still runs: the pod still carries it, and the timeout already counts against it.
    let stats = statsOf(pool, k1);
    assert.equal(stats.inFlight, 1);
    assert.equal(stats.requests, 1);
    assert.equal(stats.failures, 1, 'a call that timed out did not count against the pod');
    assert.equal(stats.consecutiveFailures, 1);
    assert.equal((stats.lastError as PodpoolError).code, ErrorCode.TIMEOUT);
    assert.equal(stats.latencyMs, 100, 'a timed-out call must make the pod look slow');

    now = 500;
    call.finish('too late');
    await flush();
    stats = statsOf(pool, k1);
    assert.equal(stats.inFlight, 0);
    assert.equal(stats.failures, 1, 'counted twice');
    assert.equal(stats.consecutiveFailures, 1);
  });

  it('with timeoutMs: a fn that honours the signal rejects at once and the timeout counts once', async (t) => {
    const timers = mockTimers(t);
    const { source, pool } = harness(t, { ejection: false });
    source.set([pod(1)]);
    await pool.ready();
    const call = hanging(true);
    const result = pool.use(call.fn, { timeoutMs: 50 });
    timers.tick(50);
    await assert.rejects(result, { code: ErrorCode.TIMEOUT });
    await flush();
    const stats = statsOf(pool, k1);
    assert.equal(stats.inFlight, 0);
    assert.equal(stats.failures, 1);
  });

  it('with timeoutMs: repeated timeouts eject a pod that never answers', async (t) => {
    const timers = mockTimers(t);
    const { source, pool } = harness(t, { balancer: first(), ejection: { consecutiveFailures: 2 } });
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    const call = hanging(false);
    const results = [pool.use(call.fn, { timeoutMs: 10 }), pool.use(call.fn, { timeoutMs: 10 })];
    timers.tick(10);
    for (const r of results) await assert.rejects(r, { code: ErrorCode.TIMEOUT });
    assert.equal(statsOf(pool, k1).state, 'ejected');
    assert.equal(await pool.use((_c, e) => e.key), k2);
    call.finish('never mind');
    await pool.close();
  });

  it('with a signal: fn gets a signal that aborts with it; PODPOOL_ABORTED; nothing counts against the pod', async (t) => {
    const { source, pool } = harness(t, { ejection: { consecutiveFailures: 1 } });
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    const controller = new AbortController();
    const call = hanging(true);
    const result = pool.use(call.fn, { signal: controller.signal });
    const [signal] = call.signals;
    assert.ok(signal instanceof AbortSignal);
    assert.equal(signal.aborted, false);
    const reason = new Error('client went away');
    controller.abort(reason);
    await assert.rejects(result, { code: ErrorCode.ABORTED, message: /use\(\) on 10\.0\.0\.\d:80 was aborted/, cause: reason });
    assert.equal(signal.aborted, true);
    await flush();
    for (const m of pool.stats().members) {
      assert.equal(m.state, 'ready', 'an aborted call ejected the pod');
      assert.equal(m.failures, 0);
      assert.equal(m.inFlight, 0);
    }
  });

  it('with an aborted signal: rejects PODPOOL_ABORTED without running fn', async (t) => {
    const { source, pool } = harness(t);
    source.set([pod(1)]);
    await pool.ready();
    let ran = false;
    await assert.rejects(
      pool.use(
        () => {
          ran = true;
        },
        { signal: AbortSignal.abort() },
      ),
      { code: ErrorCode.ABORTED },
    );
    assert.equal(ran, false);
    assert.deepEqual([statsOf(pool, k1).requests, statsOf(pool, k1).inFlight], [0, 0]);
  });

  it('with a signal: the call counts in flight until fn ends, even after the caller gave up', async (t) => {
    const { source, pool } = harness(t);
    source.set([pod(1)]);
    await pool.ready();
    const controller = new AbortController();
    const call = hanging(false);
    const result = pool.use(call.fn, { signal: controller.signal });
    controller.abort();
    await assert.rejects(result, { code: ErrorCode.ABORTED });
    assert.equal(statsOf(pool, k1).inFlight, 1);
    call.finish('late');
    await flush();
    assert.equal(statsOf(pool, k1).inFlight, 0);
    assert.equal(statsOf(pool, k1).failures, 0);
  });
});

describe("use(): fn's signal follows its connection", () => {
  it('without options: aborts with PODPOOL_CONNECTION_LOST when the connection is lost under the call', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1)]);
    await pool.ready();
    const call = hanging(true);
    const result = pool.use(call.fn);
    const [signal] = call.signals;
    assert.equal(signal?.aborted, false);
    transport.lose(k1);
    await assert.rejects(result, { code: ErrorCode.CONNECTION_LOST });
    assert.equal(signal?.aborted, true);
    assert.equal((signal?.reason as PodpoolError).code, ErrorCode.CONNECTION_LOST);
  });

  it('without options: aborts with PODPOOL_CLOSED when the drain timeout closes the connection under the call', async (t) => {
    const timers = mockTimers(t);
    const { source, pool } = harness(t, { balancer: first(), drainTimeoutMs: 1_000 });
    source.set([pod(1)]);
    await pool.ready();
    const call = hanging(true);
    const result = pool.use(call.fn);
    source.set([]);
    timers.tick(999);
    assert.equal(call.signals[0]?.aborted, false, 'aborted before the drain timeout');
    timers.tick(1);
    await assert.rejects(result, { code: ErrorCode.CLOSED, message: /closed its connection to 10\.0\.0\.1:80 after 1000 ms of draining/ });
  });

  it('with timeoutMs: the signal fn gets also aborts when the connection is lost', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1)]);
    await pool.ready();
    const call = hanging(true);
    const result = pool.use(call.fn, { timeoutMs: 60_000 });
    transport.lose(k1);
    await assert.rejects(result, { code: ErrorCode.CONNECTION_LOST });
  });

  it('a call on a new connection gets a fresh signal, not the aborted one of the connection before', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1)]);
    await pool.ready();
    const before = await pool.use((_client, _endpoint, signal) => signal);
    transport.lose(k1);
    await transport.untilConnects(k1, 2);
    await pool.ready();
    const after = await pool.use((_client, _endpoint, signal) => signal);
    assert.equal(before.aborted, true);
    assert.equal(after.aborted, false);
  });
});

describe('use() with a lending transport', () => {
  it('acquires a client per call and releases it after, saying whether the call failed', async (t) => {
    const transport = new MemoryTransport({ lend: true });
    const { source, pool } = harness(t, { transport });
    source.set([pod(1)]);
    await pool.ready();
    assert.equal(
      await pool.use((client) => {
        assert.equal(transport.lent, 1);
        return client.key;
      }),
      k1,
    );
    assert.equal(transport.lent, 0);
    await assert.rejects(
      pool.use(() => {
        throw new Error('bad');
      }),
      /bad/,
    );
    assert.equal(transport.lent, 0);
    assert.deepEqual(transport.releases, [
      { key: k1, connection: 1, failed: false },
      { key: k1, connection: 1, failed: true },
    ]);
  });

  it('gives a timed-out client back only when fn ends, as failed', async (t) => {
    const timers = mockTimers(t);
    const transport = new MemoryTransport({ lend: true });
    const { source, pool } = harness(t, { transport });
    source.set([pod(1)]);
    await pool.ready();
    const call = hanging(false);
    const result = pool.use(call.fn, { timeoutMs: 5 });
    await flush();
    timers.tick(5);
    await assert.rejects(result, { code: ErrorCode.TIMEOUT });
    assert.equal(transport.lent, 1, 'released a client fn still holds');
    call.finish('late');
    await flush();
    assert.equal(transport.lent, 0);
    assert.deepEqual(transport.releases, [{ key: k1, connection: 1, failed: true }]);
  });

  it('refuses begin(), which cannot lend', async (t) => {
    const { source, pool } = harness(t, { transport: new MemoryTransport({ lend: true }) });
    source.set([pod(1)]);
    await pool.ready();
    assert.throws(() => pool.begin(), { code: ErrorCode.NOT_SUPPORTED, message: /use pool\.use\(\) instead of begin\(\)/ });
    assert.equal(statsOf(pool, k1).inFlight, 0);
  });
});

describe('begin()', () => {
  it('counts a call in flight until end(), and records its outcome once', async (t) => {
    let now = 0;
    const { source, pool } = harness(t, { clock: () => now });
    source.set([pod(1)]);
    await pool.ready();
    const call = pool.begin();
    assert.equal(call.endpoint.key, k1);
    assert.equal(call.client.key, k1);
    assert.deepEqual([statsOf(pool, k1).inFlight, statsOf(pool, k1).requests], [1, 1]);
    now = 40;
    call.end();
    call.end(new Error('late'));
    let stats = statsOf(pool, k1);
    assert.deepEqual([stats.inFlight, stats.failures, stats.latencyMs], [0, 0, 40]);

    const failing = pool.begin();
    failing.end(new Error('first'));
    failing.end(new Error('second'));
    failing.end();
    stats = statsOf(pool, k1);
    assert.deepEqual([stats.inFlight, stats.requests, stats.failures, stats.consecutiveFailures], [0, 2, 1, 1]);
    assert.equal(stats.lastError?.message, 'first');
  });

  it('throws PODPOOL_NO_ENDPOINTS at once when nothing is ready', (t) => {
    const { pool } = harness(t);
    assert.throws(() => pool.begin(), { code: ErrorCode.NO_ENDPOINTS });
  });

  it('holds a draining member open until end()', async (t) => {
    const { source, transport, pool } = harness(t, { drainTimeoutMs: 30_000 });
    source.set([pod(1)]);
    await pool.ready();
    const call = pool.begin();
    source.set([]);
    assert.equal(statsOf(pool, k1).state, 'draining');
    await flush();
    assert.equal(transport.closes(k1), 0);
    call.end();
    assert.equal(pool.stats().members.length, 0);
    await transport.untilCloses(k1, 1);
  });
});

describe('stats()', () => {
  it('reports the pool and each member: state, requests, failures, inFlight, latency, connects', async (t) => {
    let now = 1_000;
    const { source, transport, pool } = harness(t, { clock: () => now, ejection: false });
    source.set([pod(2), pod(1), pod(3, { ready: false })]);
    await pool.ready({ minEndpoints: 2 });
    let stats = pool.stats();
    assert.deepEqual(
      { source: stats.source, balancer: stats.balancer, transport: stats.transport, endpoints: stats.endpoints, ready: stats.ready },
      { source: 'manual', balancer: 'round-robin', transport: 'memory', endpoints: 3, ready: 2 },
    );
    assert.deepEqual(
      stats.members.map((m) => [m.endpoint.key, m.state, m.connects, m.requests, m.inFlight, m.latencyMs]),
      [
        [k1, 'ready', 1, 0, 0, 0],
        [k2, 'ready', 1, 0, 0, 0],
      ],
    );

    const slow = pool.begin();
    const fast = pool.begin();
    assert.equal(pool.stats().members.reduce((n, m) => n + m.inFlight, 0), 2);
    now += 30;
    fast.end(new Error('refused'));
    now += 50;
    slow.end();
    const byKey = new Map(pool.stats().members.map((m) => [m.endpoint.key, m]));
    const [failedKey, okKey] = [fast.endpoint.key, slow.endpoint.key];
    assert.notEqual(failedKey, okKey);
    assert.deepEqual(
      [byKey.get(failedKey)!.requests, byKey.get(failedKey)!.failures, byKey.get(failedKey)!.inFlight, byKey.get(failedKey)!.latencyMs],
      // Read 50 ms after its sample: decayed by the EWMA's 10 s time constant.
      [1, 1, 0, 30 * Math.exp(-50 / 10_000)],
    );
    assert.equal(byKey.get(failedKey)!.lastError?.message, 'refused');
    assert.deepEqual(
      [byKey.get(okKey)!.requests, byKey.get(okKey)!.failures, byKey.get(okKey)!.latencyMs],
      [1, 0, 80],
    );

    const down = new Promise<void>((resolve) => pool.once('state', () => resolve()));
    transport.lose(k1);
    await down;
    stats = pool.stats();
    assert.equal(stats.ready, 1);
    assert.equal(statsOf(pool, k1).state, 'connecting');
    await pool.ready({ minEndpoints: 2 });
    assert.equal(statsOf(pool, k1).connects, 2);
    assert.equal(statsOf(pool, k2).connects, 1);
  });
});

describe('use() when no pod is ready', () => {
  it('waits for a pod, without polling, and runs fn once one is ready', async (t) => {
    const { source, transport, pool } = harness(t);
    transport.hold(k1);
    const call = pool.use((client) => client.key);
    source.set([pod(1)]);
    assert.equal(await stateOf(call), 'pending', 'the member is still connecting');
    assert.equal(pool.connectivity, 'connecting');
    transport.release(k1);
    assert.equal(await call, k1);
    assert.deepEqual([statsOf(pool, k1).requests, statsOf(pool, k1).inFlight], [1, 0]);
  });

  it('with waitForReady false: fails at once with PODPOOL_NO_ENDPOINTS', async (t) => {
    const { source, transport, pool } = harness(t);
    transport.hold(k1);
    source.set([pod(1)]);
    let ran = false;
    await assert.rejects(pool.use(() => (ran = true), { waitForReady: false }), { code: ErrorCode.NO_ENDPOINTS });
    assert.equal(ran, false);
  });

  it('with timeoutMs: fails with PODPOOL_NO_ENDPOINTS when the wait uses it up, and the rest of it bounds fn', async (t) => {
    const timers = mockTimers(t);
    let now = 0;
    const { source, transport, pool } = harness(t, { clock: () => now });
    transport.hold(k1);
    source.set([pod(1)]);
    const starved = pool.use(() => 'never', { timeoutMs: 500 });
    timers.tick(499);
    assert.equal(await stateOf(starved), 'pending');
    timers.tick(1);
    await assert.rejects(starved, { code: ErrorCode.NO_ENDPOINTS, message: /use\(\): no endpoint became ready within 500 ms/ });

    // The call that waited 300 ms of its 500 has 200 left for fn.
    const call = hanging(true);
    const late = pool.use(call.fn, { timeoutMs: 500 });
    now = 300;
    timers.tick(300);
    transport.release(k1);
    await pool.ready();
    await flush();
    assert.equal(call.signals.length, 1, 'fn runs once the member is ready');
    timers.tick(199);
    assert.equal(await stateOf(late), 'pending');
    timers.tick(1);
    await assert.rejects(late, { code: ErrorCode.TIMEOUT });
  });

  it('without timeoutMs: the wait ends after the default 10 s', async (t) => {
    const timers = mockTimers(t);
    const { pool } = harness(t);
    const starved = pool.use(() => 'never');
    timers.tick(9_999);
    assert.equal(await stateOf(starved), 'pending');
    timers.tick(1);
    await assert.rejects(starved, { code: ErrorCode.NO_ENDPOINTS, message: /within 10000 ms/ });
  });

  it('with a signal: the wait ends PODPOOL_ABORTED when it aborts, and fn never runs', async (t) => {
    const { pool } = harness(t);
    const controller = new AbortController();
    let ran = false;
    const waiting = pool.use(() => (ran = true), { signal: controller.signal });
    await flush();
    controller.abort();
    await assert.rejects(waiting, { code: ErrorCode.ABORTED });
    assert.equal(ran, false);
  });

  it('fails the wait with PODPOOL_CLOSED when the pool closes', async (t) => {
    const { pool } = harness(t);
    const waiting = pool.use(() => 1);
    await pool.close();
    await assert.rejects(waiting, { code: ErrorCode.CLOSED });
  });

  it('waits while every pod reconnects after losing its connection', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set([pod(1)]);
    await pool.ready();
    transport.hold(k1);
    transport.lose(k1, new Error('pod restarted'));
    const call = pool.use((client) => client.connection);
    assert.equal(await stateOf(call), 'pending');
    // The reconnect comes after a backoff: release the attempt once it is made, not before.
    await transport.untilAttempts(k1, 2);
    assert.equal(await stateOf(call), 'pending', 'still waiting while the reconnect is held');
    assert.equal(transport.release(k1), 1);
    assert.equal(await call, 2, 'ran on the new connection');
  });
});

describe('beginWhenReady() and connectivity', () => {
  it('connecting while discovery has not answered or a first connect runs; failing once every connect failed; ready; closed', async (t) => {
    const { source, transport, pool } = harness(t, { reconnect: { minMs: 60_000, maxMs: 60_000 } });
    assert.equal(pool.connectivity, 'connecting');
    transport.refuse(k1);
    const attempted = new Promise((resolve) => pool.once('connectError', resolve));
    source.set([pod(1)]);
    assert.equal(pool.connectivity, 'connecting');
    await attempted;
    assert.equal(pool.connectivity, 'failing');
    source.set([]);
    assert.equal(pool.connectivity, 'failing', 'no endpoint at all');
    source.set([pod(2)]);
    await pool.ready();
    assert.equal(pool.connectivity, 'ready');
    await pool.close();
    assert.equal(pool.connectivity, 'closed');
  });

  it('with failFast: waits while connecting, fails PODPOOL_NO_ENDPOINTS once the pool is failing (and at once then)', async (t) => {
    const { source, transport, pool } = harness(t, { reconnect: { minMs: 60_000, maxMs: 60_000 } });
    transport.refuse(k1);
    const waiting = pool.beginWhenReady({ failFast: true });
    assert.equal(await stateOf(waiting), 'pending');
    source.set([pod(1)]);
    await assert.rejects(waiting, { code: ErrorCode.NO_ENDPOINTS });
    await assert.rejects(pool.beginWhenReady({ failFast: true }), { code: ErrorCode.NO_ENDPOINTS });
    // Without failFast it waits through the failure.
    const patient = pool.beginWhenReady();
    assert.equal(await stateOf(patient), 'pending');
    source.set([pod(2)]);
    const call = await patient;
    assert.equal(call.endpoint.key, k2);
    assert.equal(statsOf(pool, k2).inFlight, 1, 'the call is begun');
    call.end();
    assert.equal(statsOf(pool, k2).inFlight, 0);
  });
});
