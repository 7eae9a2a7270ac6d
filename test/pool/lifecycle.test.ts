import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import type { MemberStats } from '../../src/pool/member.ts';
import type { Pool } from '../../src/pool/pool.ts';
import { first } from '../support/first-balancer.ts';
import { flush } from '../support/flush.ts';
import { pod, podKey } from '../support/manual-source.ts';
import type { MemoryClient } from '../support/memory-transport.ts';
import { mockTimers } from '../support/mock-timers.ts';
import { stateReached } from '../support/pool-events.ts';
import { harness } from '../support/pool-harness.ts';

const k1 = podKey(1);
const k2 = podKey(2);

/** Drains the microtask queue only: nothing that waits for a timer can happen meanwhile. */
async function microtasks(n = 50): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

function statsOf(pool: Pool<MemoryClient>, key: string): MemberStats | undefined {
  return pool.stats().members.find((m) => m.endpoint.key === key);
}

/** Where `n` calls land. */
async function picks(pool: Pool<MemoryClient>, n: number): Promise<string[]> {
  const keys: string[] = [];
  for (let i = 0; i < n; i++) {
    keys.push(
      await pool.use((client, endpoint) => {
        assert.equal(client.key, endpoint.key);
        assert.equal(client.dead, false, `picked ${client.key}'s dead connection ${client.connection}`);
        return endpoint.key;
      }),
    );
  }
  return keys;
}

describe('ready()', () => {
  it('resolves once minEndpoints members are ready, not before', async (t) => {
    const { source, transport, pool } = harness(t);
    transport.hold();
    source.set([pod(1), pod(2), pod(3)]);
    let settled = false;
    const ready = pool.ready({ minEndpoints: 2 }).then(() => {
      settled = true;
    });
    const one = stateReached(pool, k1, 'ready');
    transport.release(k1);
    await one;
    await flush();
    assert.equal(settled, false, 'ready() resolved with one of two members ready');
    transport.release(k2);
    await ready;
    assert.equal(pool.stats().ready, 2);
  });

  it('waits for the first snapshot, and resolves at once when enough are ready', async (t) => {
    const { source, pool } = harness(t);
    let settled = false;
    const ready = pool.ready().then(() => {
      settled = true;
    });
    await flush();
    assert.equal(settled, false);
    source.set([pod(1)]);
    await ready;
    await pool.ready({ minEndpoints: 1 });
  });

  it('fails with PODPOOL_TIMEOUT saying how many are ready', async (t) => {
    const { source, transport, pool } = harness(t);
    transport.hold(k2);
    source.set([pod(1), pod(2)]);
    await pool.ready();
    await assert.rejects(pool.ready({ minEndpoints: 2, timeoutMs: 5 }), (error: PodpoolError) => {
      assert.equal(error.code, ErrorCode.TIMEOUT);
      assert.match(error.message, /1 of 2 endpoint\(s\) ready after 5 ms/);
      assert.match(error.message, /1 ready, 1 connecting/);
      return true;
    });
  });

  it('fails with PODPOOL_ABORTED when its signal aborts, before or while waiting', async (t) => {
    const { pool } = harness(t);
    const reason = new Error('shutting down');
    await assert.rejects(pool.ready({ signal: AbortSignal.abort(reason) }), { code: ErrorCode.ABORTED, cause: reason });
    const controller = new AbortController();
    const waiting = pool.ready({ signal: controller.signal });
    controller.abort(reason);
    await assert.rejects(waiting, { code: ErrorCode.ABORTED, cause: reason });
  });

  it('fails with PODPOOL_CLOSED when the pool closes while it waits, and after', async (t) => {
    const { pool } = harness(t);
    const waiting = pool.ready({ timeoutMs: 60_000 });
    await pool.close();
    await assert.rejects(waiting, { code: ErrorCode.CLOSED });
    await assert.rejects(pool.ready(), { code: ErrorCode.CLOSED });
  });
});

describe('use() with nothing to pick', () => {
  it('before any snapshot: PODPOOL_NO_ENDPOINTS telling to wait, or the source error', async (t) => {
    const { source, pool } = harness(t);
    await assert.rejects(pool.use(() => 1, { waitForReady: false }), (error: PodpoolError) => {
      assert.equal(error.code, ErrorCode.NO_ENDPOINTS);
      assert.match(error.message, /manual discovery has not answered yet \(the pool is starting\): wait with await pool\.ready\(\)/);
      return true;
    });
    const reported: PodpoolError[] = [];
    pool.on('sourceError', (error) => reported.push(error));
    const failure = source.fail('lookup of backend timed out');
    assert.deepEqual(reported, [failure]);
    await assert.rejects(pool.use(() => 1, { waitForReady: false }), {
      code: ErrorCode.NO_ENDPOINTS,
      message: /manual discovery has not reported any endpoint yet; discovery's last error: lookup of backend timed out$/,
    });
  });

  it('when every member is down: PODPOOL_NO_ENDPOINTS naming the states and the last error', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    transport.hold();
    transport.lose(k1, new Error('pod crashed'));
    transport.lose(k2, new Error('pod crashed'));
    await assert.rejects(pool.use(() => 1), (error: PodpoolError) => {
      assert.equal(error.code, ErrorCode.NO_ENDPOINTS);
      assert.match(error.message, /2 endpoint\(s\) discovered, 2 connecting; last error: lost the connection to 10\.0\.0\.\d:80: pod crashed/);
      return true;
    });
  });

  it('with only unready endpoints: no member, no connect, and the error says so', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set([pod(1, { ready: false }), pod(2, { ready: false, serving: true, terminating: true })]);
    assert.equal(transport.attempts(), 0);
    assert.deepEqual(pool.stats().members, []);
    await assert.rejects(pool.use(() => 1), { code: ErrorCode.NO_ENDPOINTS, message: /2 endpoint\(s\) discovered, no members$/ });
  });
});

describe('connecting', () => {
  it('retries a failing connect, never picks the member meanwhile, and takes it up once it connects', async (t) => {
    const { source, transport, pool } = harness(t);
    transport.refuse(k1);
    const errors: PodpoolError[] = [];
    pool.on('connectError', (endpoint, error) => {
      if (endpoint.key === k1) errors.push(error);
    });
    source.set([pod(1), pod(2)]);
    await transport.untilAttempts(k1, 4);
    assert.ok(errors.length >= 3, `${errors.length} connectError events for 4 attempts`);
    for (const error of errors) {
      assert.equal(error.code, ErrorCode.CONNECT_FAILED);
      assert.match(error.message, /could not connect to 10\.0\.0\.1:80 \(memory\): 10\.0\.0\.1:80 refused the connection/);
      assert.ok(error.cause instanceof Error);
    }
    assert.equal(statsOf(pool, k1)?.state, 'connecting');
    assert.equal(statsOf(pool, k1)?.lastError, errors.at(-1));
    await pool.ready();
    assert.deepEqual(new Set(await picks(pool, 6)), new Set([k2]));

    const up = stateReached(pool, k1, 'ready');
    transport.accept(k1);
    assert.equal((await up).from, 'connecting');
    assert.equal(statsOf(pool, k1)?.connects, 1);
    assert.deepEqual(new Set(await picks(pool, 6)), new Set([k1, k2]));
  });

  it('waits longer between failed connects each time (one backoff, jittered up to 2×)', async (t) => {
    const timers = mockTimers(t);
    const { source, transport, pool } = harness(t, { reconnect: { minMs: 100, maxMs: 10_000, factor: 2 } });
    transport.refuse(k1);
    source.set([pod(1)]);
    await flush();
    assert.equal(transport.attempts(k1), 1);
    // The n-th retry waits between minMs·2^(n-1) and twice that.
    for (const [n, wait] of [
      [2, 100],
      [3, 200],
      [4, 400],
    ] as const) {
      timers.tick(wait - 1);
      await flush();
      assert.equal(transport.attempts(k1), n - 1, `attempt ${n} came before ${wait} ms`);
      timers.tick(wait + 1);
      await flush();
      assert.equal(transport.attempts(k1), n, `attempt ${n} did not come within ${2 * wait} ms`);
    }
    await pool.close();
  });
});

describe('a lost connection', () => {
  it('takes the member to connecting, out of the picks, until it reconnects', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    transport.hold(k1);
    const down = stateReached(pool, k1, 'connecting');
    transport.lose(k1, new Error('connection reset'));
    const change = await down;
    assert.equal(change.from, 'ready');
    assert.equal((change.error as PodpoolError).code, ErrorCode.CONNECTION_LOST);
    assert.match(change.error!.message, /lost the connection to 10\.0\.0\.1:80: connection reset/);
    assert.equal(transport.closes(k1), 1, 'the lost connection was not closed');
    await transport.untilAttempts(k1, 2);
    assert.deepEqual(new Set(await picks(pool, 6)), new Set([k2]));

    const up = stateReached(pool, k1, 'ready');
    transport.release(k1);
    await up;
    assert.equal(statsOf(pool, k1)?.connects, 2);
    assert.deepEqual(new Set(await picks(pool, 6)), new Set([k1, k2]));
  });

  /** One ready pod, mocked timers, a clock the test moves, no jitter, backoff 100 ms × 2ⁿ. */
  async function onePodWithBackoff(t: TestContext) {
    const timers = mockTimers(t);
    const clock = { now: 0 };
    const { source, transport, pool } = harness(t, {
      clock: () => clock.now,
      random: () => 0,
      reconnect: { minMs: 100, maxMs: 10_000, factor: 2 },
    });
    source.set([pod(1)]);
    await pool.ready();
    return { timers, clock, transport, pool };
  }

  it('that died young is reconnected only after a backoff that grows; one that lived long, at once', async (t) => {
    const { timers, clock, transport, pool } = await onePodWithBackoff(t);
    assert.equal(transport.attempts(k1), 1);

    // Each young death doubles the wait before the next connect (random 0: no jitter).
    let attempts = 1;
    for (const wait of [100, 200, 400]) {
      clock.now += 10;
      transport.lose(k1);
      await flush();
      assert.equal(transport.attempts(k1), attempts, 'reconnected at once after a young death');
      timers.tick(wait - 1);
      await flush();
      assert.equal(transport.attempts(k1), attempts, `reconnected before ${wait} ms`);
      const up = stateReached(pool, k1, 'ready');
      timers.tick(1);
      await up;
      attempts++;
      assert.equal(transport.attempts(k1), attempts);
    }

    // A connection that lived past a second was healthy: reconnect at once, without a timer.
    clock.now += 5_000;
    const up = stateReached(pool, k1, 'ready');
    transport.lose(k1);
    await microtasks();
    assert.equal(transport.attempts(k1), attempts + 1);
    await up;
    // …and the next young death starts again from minMs.
    clock.now += 10;
    transport.lose(k1);
    timers.tick(99);
    await flush();
    assert.equal(transport.attempts(k1), attempts + 1);
    timers.tick(1);
    await flush();
    assert.equal(transport.attempts(k1), attempts + 2);
    await pool.close();
  });

  it('that died young and then fails to reconnect keeps backing off: a young death counts as a failed connect', async (t) => {
    const { timers, clock, transport, pool } = await onePodWithBackoff(t);
    clock.now += 10;
    transport.refuse(k1);
    transport.lose(k1);
    await flush();
    // The young death is the first failure (100 ms); the refused connect after it the second (200 ms).
    for (const [attempts, wait] of [
      [2, 100],
      [3, 200],
    ] as const) {
      timers.tick(wait - 1);
      await flush();
      assert.equal(transport.attempts(k1), attempts - 1, `connect ${attempts} came before ${wait} ms`);
      timers.tick(1);
      await flush();
      assert.equal(transport.attempts(k1), attempts);
    }
    await pool.close();
  });

  it('is never missed, whenever after connect resolves the transport reports it', async (t) => {
    // The transport may call lost() on any microtask after connect resolved; the pool must not
    // keep a dead connection as its ready member's.
    for (let delay = 0; delay < 12; delay++) {
      const { source, transport, pool } = harness(t);
      transport.hold(k1);
      source.set([pod(1)]);
      transport.release(k1);
      await microtasks(delay);
      assert.equal(transport.lose(k1), 1);
      transport.accept(k1);
      await flush();
      if (statsOf(pool, k1)?.state !== 'ready') await stateReached(pool, k1, 'ready');
      const client = await pool.use((c) => c);
      assert.equal(client.dead, false, `lost() ${delay} microtask(s) after connect: the member kept its dead connection`);
      await pool.close();
    }
  });
});

describe('a connection that can take no new calls for now', () => {
  it('takes the member out of the picks, keeping its connection: calls in flight finish, broadcasts reach it, and it is back when it can', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    const gate = Promise.withResolvers<string>();
    const call = pool.use((client) => (assert.equal(client.key, k1), gate.promise));

    const left = stateReached(pool, k1, 'connecting', () => pool.connectivity);
    assert.equal(transport.unavailable(k1, new Error('its channel left READY (IDLE)')), 1);
    const change = await left;
    assert.equal(change.from, 'ready');
    assert.equal((change.error as PodpoolError).code, ErrorCode.NOT_CONNECTED);
    assert.match(change.error!.message, /10\.0\.0\.1:80 takes no new calls .*left READY/);
    assert.equal(change.snapshot, 'ready', 'another pod is pickable');
    assert.deepEqual(await picks(pool, 3), [k2, k2, k2]);
    const result = await pool.broadcast((client) => client.connection);
    assert.deepEqual(
      result.delivered.map((d) => [d.endpoint.key, d.value]),
      [
        [k1, 1],
        [k2, 2],
      ],
      'a broadcast still reaches it, on its connection',
    );
    gate.resolve('done');
    assert.equal(await call, 'done');
    assert.deepEqual(
      [statsOf(pool, k1)?.state, statsOf(pool, k1)?.inFlight, statsOf(pool, k1)?.failures, transport.closes(k1)],
      ['connecting', 0, 0, 0],
    );

    const back = stateReached(pool, k1, 'ready');
    transport.available(k1);
    assert.equal((await back).from, 'connecting');
    assert.deepEqual(await picks(pool, 2), [k1, k1]);
    assert.deepEqual([transport.attempts(k1), statsOf(pool, k1)?.connects], [1, 1], 'the same connection throughout');
  });

  it('the only member out of the picks makes the pool connecting: a call waits for it', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set([pod(1)]);
    await pool.ready();
    const connectivity: string[] = [];
    pool.on('connectivity', (c) => connectivity.push(c));
    transport.unavailable(k1);
    assert.equal(pool.connectivity, 'connecting');
    let settled = false;
    const waiting = pool.use((client) => client.connection).finally(() => (settled = true));
    await microtasks();
    assert.equal(settled, false, 'the call waits');
    transport.available(k1);
    assert.equal(await waiting, 1);
    assert.deepEqual(connectivity, ['connecting', 'ready']);
  });

  it('lost while out of the picks: reconnected as any lost connection', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    transport.unavailable(k1);
    transport.hold(k1);
    transport.lose(k1);
    await transport.untilAttempts(k1, 2);
    assert.equal(statsOf(pool, k1)?.state, 'connecting');
    assert.equal((statsOf(pool, k1)?.lastError as PodpoolError).code, ErrorCode.CONNECTION_LOST);
    assert.equal(transport.closes(k1), 1, 'the lost connection is closed');
    const up = stateReached(pool, k1, 'ready');
    transport.release(k1);
    await up;
    assert.equal(statsOf(pool, k1)?.connects, 2);
    assert.deepEqual(new Set(await picks(pool, 4)), new Set([k1, k2]));
  });

  it('an ejected member whose connection can take no calls comes back from its ejection to connecting, and to ready when it can', async (t) => {
    const timers = mockTimers(t);
    const { source, transport, pool } = harness(t, {
      balancer: first(),
      ejection: { consecutiveFailures: 2, baseMs: 1_000, maxMs: 60_000, maxPercent: 50 },
    });
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    const changes: string[] = [];
    pool.on('state', (c) => c.endpoint.key === k1 && changes.push(`${c.from}→${c.to}`));
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        pool.use(() => {
          throw new Error('500');
        }),
      );
    }
    assert.equal(statsOf(pool, k1)?.state, 'ejected');
    transport.unavailable(k1);
    assert.equal(statsOf(pool, k1)?.state, 'ejected', 'still ejected');
    timers.tick(1_000);
    assert.equal(statsOf(pool, k1)?.state, 'connecting', 'its ejection over, it still can take no call');
    transport.available(k1);
    assert.deepEqual(changes, ['ready→ejected', 'ejected→connecting', 'connecting→ready']);
  });

  it('a draining member revived while its connection takes no calls is connecting until it can', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1)]);
    await pool.ready();
    const gate = Promise.withResolvers<void>();
    const call = pool.use(() => gate.promise);
    transport.unavailable(k1);
    source.set([]);
    assert.equal(statsOf(pool, k1)?.state, 'draining');
    source.set([pod(1)]);
    assert.equal(statsOf(pool, k1)?.state, 'connecting');
    transport.available(k1);
    assert.equal(statsOf(pool, k1)?.state, 'ready');
    gate.resolve();
    await call;
    assert.equal(transport.attempts(k1), 1);
  });
});

describe('draining', () => {
  it('lets an in-flight call finish on a removed endpoint, picks it no more, then closes it', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    const gate = Promise.withResolvers<string>();
    const call = pool.use((client) => {
      assert.equal(client.key, k1);
      return gate.promise;
    });
    const draining = stateReached(pool, k1, 'draining');
    source.set([pod(2)]);
    await draining;
    assert.deepEqual(await picks(pool, 4), [k2, k2, k2, k2]);
    assert.equal(statsOf(pool, k1)?.inFlight, 1);
    await flush();
    assert.equal(transport.closes(k1), 0, 'closed the connection under an in-flight call');

    const closed = stateReached(pool, k1, 'closed');
    gate.resolve('answer');
    assert.equal(await call, 'answer');
    await closed;
    assert.equal(transport.closes(k1), 1);
    assert.equal(statsOf(pool, k1), undefined);
    assert.equal(transport.attempts(k1), 1);
  });

  it('closes an idle removed endpoint at once', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set([pod(1)]);
    await pool.ready();
    const states: string[] = [];
    pool.on('state', (c) => states.push(`${c.from}→${c.to}`));
    source.set([]);
    assert.deepEqual(states, ['ready→draining', 'draining→closed']);
    await transport.untilCloses(k1, 1);
  });

  it('closes the connection at drainTimeoutMs even if the call never ends', async (t) => {
    const timers = mockTimers(t);
    const { source, transport, pool } = harness(t, { drainTimeoutMs: 1_000 });
    source.set([pod(1)]);
    await pool.ready();
    const gate = Promise.withResolvers<void>();
    const call = pool.use(() => gate.promise);
    source.set([]);
    timers.tick(999);
    await flush();
    assert.equal(transport.closes(k1), 0);
    assert.equal(statsOf(pool, k1)?.state, 'draining');
    const closed = stateReached(pool, k1, 'closed');
    timers.tick(1);
    await closed;
    await transport.untilCloses(k1, 1);
    // The call ends later: nothing breaks, nothing reopens.
    gate.resolve();
    await call;
    assert.equal(transport.attempts(k1), 1);
    await pool.close();
  });

  it('gives a terminating endpoint no new picks while its in-flight call finishes', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    const gate = Promise.withResolvers<string>();
    const call = pool.use((client) => (assert.equal(client.key, k1), gate.promise));
    const draining = stateReached(pool, k1, 'draining');
    source.set([pod(1, { ready: false, serving: true, terminating: true }), pod(2)]);
    await draining;
    assert.deepEqual(await picks(pool, 3), [k2, k2, k2]);
    assert.equal(transport.closes(k1), 0);
    gate.resolve('done');
    assert.equal(await call, 'done');
    await transport.untilCloses(k1, 1);
  });

  it('revives a member whose endpoint comes back while it drains: same connection, no connect', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1)]);
    await pool.ready();
    const gate = Promise.withResolvers<void>();
    const call = pool.use((client) => (assert.equal(client.connection, 1), gate.promise));
    source.set([]);
    assert.equal(statsOf(pool, k1)?.state, 'draining');
    const revived = stateReached(pool, k1, 'ready');
    source.set([pod(1)]);
    assert.equal((await revived).from, 'draining');
    const client = await pool.use((c) => c);
    assert.equal(client.connection, 1);
    gate.resolve();
    await call;
    await flush();
    assert.equal(statsOf(pool, k1)?.state, 'ready');
    assert.equal(transport.attempts(k1), 1);
    assert.equal(transport.closes(k1), 0);
  });

  it('aborts a connect in progress for an endpoint that goes away, and never leaks what it opened', async (t) => {
    const { source, transport, pool } = harness(t);
    transport.hold(k1);
    source.set([pod(1)]);
    assert.equal(transport.held(k1), 1);
    source.set([]);
    assert.equal(transport.held(k1), 0, 'the connect was not aborted');
    assert.equal(statsOf(pool, k1), undefined);

    // The connect resolves in the very tick the endpoint goes away.
    source.set([pod(1)]);
    transport.release(k1);
    source.set([]);
    await pool.close();
    assert.equal(transport.connects(k1), 1);
    assert.equal(transport.open(k1), 0, 'a connection opened as its endpoint left was never closed');
  });
});

describe('listeners', () => {
  it('a listener that throws neither stops a connect loop nor is swallowed', async (t) => {
    const caught: unknown[] = [];
    process.setUncaughtExceptionCaptureCallback((error) => caught.push(error));
    t.after(() => process.setUncaughtExceptionCaptureCallback(null));
    const { source, transport, pool } = harness(t);
    transport.refuse(k1);
    pool.on('connectError', () => {
      throw new Error('a bug in a connectError listener');
    });
    const ready = stateReached(pool, k1, 'ready');
    source.set([pod(1)]);
    await transport.untilAttempts(k1, 2);
    transport.accept(k1);
    await ready;
    await flush();
    assert.ok(caught.length >= 1);
    assert.ok(caught.every((e) => e instanceof Error && e.message === 'a bug in a connectError listener'));
    assert.deepEqual(await picks(pool, 1), [k1]);
  });
});
