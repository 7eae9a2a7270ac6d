import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ClosedError, ErrorCode } from '../../src/errors.ts';
import { first } from '../support/first-balancer.ts';
import { flush } from '../support/flush.ts';
import { pod, podKey } from '../support/manual-source.ts';
import { mockTimers } from '../support/mock-timers.ts';
import { stateReached } from '../support/pool-events.ts';
import { harness } from '../support/pool-harness.ts';

const [k1, k2, k3, k4] = [podKey(1), podKey(2), podKey(3), podKey(4)];

async function isPending(promise: Promise<unknown>): Promise<boolean> {
  let pending = true;
  promise.then(
    () => (pending = false),
    () => (pending = false),
  );
  await flush();
  return pending;
}

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

describe('close()', () => {
  it('waits for in-flight calls, then closes every connection', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    const gate = Promise.withResolvers<string>();
    const call = pool.use(() => gate.promise); // on pod 1
    const closed: string[] = [];
    pool.on('state', (c) => c.to === 'closed' && closed.push(c.endpoint.key));

    const closing = pool.close();
    assert.equal(await isPending(closing), true, 'close() did not wait for the call');
    assert.deepEqual([transport.closes(k1), transport.closes(k2)], [0, 1]);
    gate.resolve('finished');
    assert.equal(await call, 'finished');
    await closing;
    assert.deepEqual(closed, [k2, k1]);
    assert.equal(transport.closes(), 2);
    assert.equal(transport.open(), 0);
    assert.deepEqual(pool.stats().members, []);
  });

  it('gives up on a call that never ends after drainTimeoutMs', async (t) => {
    mockTimers(t);
    const { source, transport, pool } = harness(t, { drainTimeoutMs: 5_000 });
    source.set([pod(1)]);
    await pool.ready();
    const gate = Promise.withResolvers<void>();
    const call = pool.use(() => gate.promise);
    const closing = pool.close();
    t.mock.timers.tick(4_999);
    assert.equal(await isPending(closing), true);
    t.mock.timers.tick(1);
    await closing;
    assert.equal(transport.open(), 0);
    gate.resolve();
    await call;
  });

  it('leaves no timer, connection or watch behind, whatever the members were doing', async (t) => {
    const before = timers();
    let now = 0;
    const { source, transport, pool } = harness(t, {
      balancer: first(),
      clock: () => now,
      reconnect: { minMs: 60_000, maxMs: 60_000 },
      ejection: { consecutiveFailures: 1, baseMs: 60_000, maxPercent: 50 },
    });
    transport.refuse(k4);
    const refused = new Promise<void>((resolve) => pool.once('connectError', () => resolve()));
    source.set([pod(1), pod(2), pod(3), pod(4)]);
    await pool.ready({ minEndpoints: 3 });
    await refused; // pod 4: p-retry waits a minute before the next attempt
    await assert.rejects(
      pool.use(() => {
        throw new Error('500');
      }),
    ); // pod 1: ejected for a minute
    now = 10;
    transport.lose(k2); // pod 2 died young: a minute before it reconnects
    assert.equal(await pool.use(() => 'ok', { timeoutMs: 60_000 }), 'ok'); // pod 3, its timer cleared
    const waiting = pool.ready({ minEndpoints: 4, timeoutMs: 60_000 });
    assert.deepEqual(
      pool.stats().members.map((m) => m.state),
      ['ejected', 'connecting', 'ready', 'connecting'],
    );
    assert.ok(timers() > before, 'the scenario holds no timer; the test proves nothing');

    await pool.close();
    await assert.rejects(waiting, { code: ErrorCode.CLOSED });
    assert.ok(timers() <= before, `timers left: ${process.getActiveResourcesInfo().join(', ')}`);
    assert.equal(transport.open(), 0);
    assert.equal(source.open, 0);
  });

  it('aborts a connect in progress, and closes a connection that opens in the same tick', async (t) => {
    const { source, transport, pool } = harness(t);
    transport.hold();
    source.set([pod(1), pod(2)]);
    transport.release(k2); // resolves as the pool closes: p-retry sees the abort after it
    await pool.close();
    assert.equal(transport.held(k1), 0, 'the held connect was not aborted');
    assert.equal(transport.connects(k2), 1);
    assert.equal(transport.open(), 0, 'close() left a connection open');
  });

  it('rejects later use(), broadcast(), begin() and ready() with PODPOOL_CLOSED, and stops discovery', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set([pod(1)]);
    await pool.ready();
    const closing = pool.close();
    assert.equal(pool.close(), closing, 'a second close() is a new close');
    await closing;
    await assert.rejects(pool.use(() => 1), { code: ErrorCode.CLOSED, message: /use\(\): the pool is closed/ });
    await assert.rejects(pool.broadcast(() => 1), { code: ErrorCode.CLOSED, message: /broadcast\(\)/ });
    assert.throws(() => pool.begin(), { code: ErrorCode.CLOSED, message: /begin\(\)/ });
    await assert.rejects(pool.ready(), { code: ErrorCode.CLOSED });
    // The subclass says the same as the code (undici's pattern).
    await assert.rejects(pool.use(() => 1), ClosedError);
    assert.throws(() => pool.begin(), ClosedError);
    assert.deepEqual([source.watches, source.closes, source.open], [1, 1, 0]);
    source.set([pod(1), pod(3)]);
    assert.equal(transport.attempts(k3), 0);
    assert.equal(transport.attempts(k1), 1);
  });

  it('is closed already for what its own drains set off: a state listener calling use() or begin() hears PODPOOL_CLOSED', async (t) => {
    const { source, pool } = harness(t);
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 2 });
    const heard: unknown[] = [];
    pool.on('state', ({ to }) => {
      if (to !== 'draining') return;
      heard.push(pool.connectivity);
      heard.push(pool.use(() => 'picked').catch((error: ClosedError) => error.code));
      try {
        pool.begin();
      } catch (error) {
        heard.push((error as ClosedError).code);
      }
    });
    await pool.close();
    assert.deepEqual(await Promise.all(heard), ['closed', ErrorCode.CLOSED, ErrorCode.CLOSED, 'closed', ErrorCode.CLOSED, ErrorCode.CLOSED]);
  });

  it('fails a pending ready() with PODPOOL_CLOSED', async (t) => {
    const { source, transport, pool } = harness(t);
    transport.hold();
    source.set([pod(1)]);
    const waiting = pool.ready();
    const closed = stateReached(pool, k1, 'closed');
    await pool.close();
    await closed;
    await assert.rejects(waiting, { code: ErrorCode.CLOSED });
  });
});
