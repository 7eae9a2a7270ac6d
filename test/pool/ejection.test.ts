import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import type { MemberState, MemberStats } from '../../src/pool/member.ts';
import { createPool, type Pool, type PoolOptions, type StateChange } from '../../src/pool/pool.ts';
import { first } from '../support/first-balancer.ts';
import { flush } from '../support/flush.ts';
import { ManualSource, pod, podKey } from '../support/manual-source.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';
import { mockTimers } from '../support/mock-timers.ts';

const k1 = podKey(1);
const k2 = podKey(2);
const k3 = podKey(3);

interface Harness {
  source: ManualSource;
  transport: MemoryTransport;
  pool: Pool<MemoryClient>;
  timers: TestContext['mock']['timers'];
  /** Every state change since the pods became ready. */
  changes: StateChange[];
  setNow(ms: number): void;
}

/** Mock timers, an injected clock at 0, the `first()` balancer and 3 failures to eject. */
async function harness(t: TestContext, pods: number, options: Partial<PoolOptions<MemoryClient>> = {}): Promise<Harness> {
  const timers = mockTimers(t);
  let now = 0;
  const source = new ManualSource();
  const transport = (options.transport as MemoryTransport | undefined) ?? new MemoryTransport();
  const pool = createPool({
    balancer: first(),
    clock: () => now,
    ejection: { consecutiveFailures: 3, baseMs: 1_000, maxMs: 60_000, maxPercent: 50 },
    ...options,
    source,
    transport,
  });
  t.after(() => pool.close());
  const changes: StateChange[] = [];
  pool.on('state', (change) => changes.push(change));
  source.set(Array.from({ length: pods }, (_, i) => pod(i + 1)));
  await pool.ready({ minEndpoints: pods });
  changes.length = 0;
  return { source, transport, pool, timers, changes, setNow: (ms) => (now = ms) };
}

function stateOf(pool: Pool<MemoryClient>, key: string): MemberState | undefined {
  return statsOf(pool, key).state;
}

function statsOf(pool: Pool<MemoryClient>, key: string): MemberStats {
  const stats = pool.stats().members.find((m) => m.endpoint.key === key);
  assert.ok(stats, `no member ${key}`);
  return stats;
}

/** Makes `n` calls fail; returns where they went. */
async function fail(pool: Pool<MemoryClient>, n: number, error: () => Error = () => new Error('500 from the pod')): Promise<string[]> {
  const keys: string[] = [];
  for (let i = 0; i < n; i++) {
    await assert.rejects(
      pool.use((_client, endpoint) => {
        keys.push(endpoint.key);
        throw error();
      }),
    );
  }
  return keys;
}

async function succeed(pool: Pool<MemoryClient>): Promise<string> {
  return pool.use((_client, endpoint) => endpoint.key);
}

function ejections(changes: readonly StateChange[]): string[] {
  return changes.filter((c) => c.to === 'ejected').map((c) => c.endpoint.key);
}

describe('outlier ejection', () => {
  it('ejects after N failures in a row, stops picking the member, and takes it back after baseMs', async (t) => {
    const { pool, timers, changes } = await harness(t, 2);
    assert.deepEqual(await fail(pool, 2), [k1, k1]);
    assert.equal(stateOf(pool, k1), 'ready');
    await fail(pool, 1);
    assert.equal(stateOf(pool, k1), 'ejected');
    const [ejected] = changes;
    assert.deepEqual([ejected.endpoint.key, ejected.from, ejected.to], [k1, 'ready', 'ejected']);
    assert.equal((ejected.error as PodpoolError).code, ErrorCode.EJECTED);
    assert.equal(ejected.error!.message, '3 failures in a row; ejected for 1000 ms');
    assert.equal((ejected.error!.cause as Error).message, '500 from the pod');
    assert.equal(statsOf(pool, k1).ejections, 1);

    assert.deepEqual([await succeed(pool), await succeed(pool)], [k2, k2]);
    timers.tick(999);
    assert.equal(stateOf(pool, k1), 'ejected');
    timers.tick(1);
    assert.equal(stateOf(pool, k1), 'ready');
    assert.deepEqual(
      changes.map((c) => `${c.endpoint.key} ${c.from}→${c.to}`),
      [`${k1} ready→ejected`, `${k1} ejected→ready`],
    );
    assert.equal(statsOf(pool, k1).consecutiveFailures, 0);
    assert.equal(await succeed(pool), k1);
  });

  it('ejects for longer each time in a row, and from baseMs again after a healthy maxMs', async (t) => {
    const { pool, timers, changes, setNow } = await harness(t, 2);
    for (const [n, duration] of [
      [1, 1_000],
      [2, 2_000],
      [3, 3_000],
    ] as const) {
      await fail(pool, 3);
      assert.equal(stateOf(pool, k1), 'ejected');
      assert.equal(changes.at(-1)!.error!.message, `3 failures in a row; ejected for ${duration} ms`);
      assert.equal(statsOf(pool, k1).ejections, n);
      timers.tick(duration - 1);
      assert.equal(stateOf(pool, k1), 'ejected', `ejection ${n} ended before ${duration} ms`);
      timers.tick(1);
      assert.equal(stateOf(pool, k1), 'ready', `ejection ${n} did not end at ${duration} ms`);
    }
    setNow(60_000);
    await fail(pool, 3);
    assert.equal(changes.at(-1)!.error!.message, '3 failures in a row; ejected for 1000 ms');
    assert.equal(statsOf(pool, k1).ejections, 4, 'stats count every ejection, not just the streak');
  });

  it('never ejects more than maxPercent of the members: with 2 at 50 %, the last one stays', async (t) => {
    const { pool, changes } = await harness(t, 2);
    await fail(pool, 3);
    assert.equal(stateOf(pool, k1), 'ejected');
    assert.deepEqual(await fail(pool, 6), [k2, k2, k2, k2, k2, k2]);
    assert.equal(stateOf(pool, k2), 'ready');
    assert.equal(statsOf(pool, k2).consecutiveFailures, 6);
    assert.deepEqual(ejections(changes), [k1]);
  });

  it('never ejects more than maxPercent: 1 of 3 at 50 %', async (t) => {
    const { pool, changes } = await harness(t, 3);
    await fail(pool, 3);
    await fail(pool, 6);
    assert.deepEqual(ejections(changes), [k1]);
    assert.deepEqual([stateOf(pool, k2), stateOf(pool, k3)], ['ready', 'ready']);
  });

  it('never ejects the only member at 50 %', async (t) => {
    const { pool, changes } = await harness(t, 1);
    await fail(pool, 10);
    assert.deepEqual(ejections(changes), []);
    assert.equal(stateOf(pool, k1), 'ready');
  });

  it("does not count errors the transport's isPodFailure calls the request's fault", async (t) => {
    class NotFound extends Error {}
    const transport = new MemoryTransport({ isPodFailure: (error) => !(error instanceof NotFound) });
    const { pool, changes } = await harness(t, 2, { transport });
    await fail(pool, 5, () => new NotFound('404'));
    assert.equal(stateOf(pool, k1), 'ready');
    assert.deepEqual([statsOf(pool, k1).failures, statsOf(pool, k1).consecutiveFailures], [0, 0]);
    // A request error also breaks a run of pod failures: the pod answered.
    await fail(pool, 2);
    await fail(pool, 1, () => new NotFound('404'));
    await fail(pool, 2);
    assert.equal(stateOf(pool, k1), 'ready');
    await fail(pool, 1);
    assert.deepEqual(ejections(changes), [k1]);
    assert.equal(statsOf(pool, k1).failures, 5);
  });

  it("counts the pool's own TIMEOUT and CONNECTION_LOST against the pod, whatever the transport's isPodFailure says", async (t) => {
    // A transport that calls nothing a pod failure: only the pool's rule can count these.
    const transport = new MemoryTransport({ isPodFailure: () => false });
    const { pool, changes } = await harness(t, 2, { transport });
    await fail(pool, 1, () => new PodpoolError(ErrorCode.TIMEOUT, 'slow'));
    await fail(pool, 1, () => new PodpoolError(ErrorCode.CONNECTION_LOST, 'gone'));
    assert.deepEqual([statsOf(pool, k1).failures, statsOf(pool, k1).consecutiveFailures], [2, 2]);
    await fail(pool, 1, () => new PodpoolError(ErrorCode.TIMEOUT, 'slow'));
    assert.deepEqual(ejections(changes), [k1]);
    // Anything else is the transport's call.
    await fail(pool, 3, () => new Error('500 from the pod'));
    assert.equal(statsOf(pool, k2).failures, 0);
  });

  it('keeps the run of failures across a reconnect: a pod that fails, drops and comes back is still ejected', async (t) => {
    const { pool, transport, changes, setNow } = await harness(t, 2);
    await fail(pool, 2);
    setNow(5_000); // the connection lived long: it reconnects at once, with no flap backoff
    transport.lose(k1);
    await transport.untilConnects(k1, 2);
    await pool.ready({ minEndpoints: 2 });
    assert.deepEqual([statsOf(pool, k1).connects, statsOf(pool, k1).consecutiveFailures], [2, 2]);
    assert.deepEqual(ejections(changes), []);
    await fail(pool, 1);
    assert.deepEqual(ejections(changes), [k1]);
  });

  it('resets the run of failures on a success', async (t) => {
    const { pool, changes } = await harness(t, 2);
    await fail(pool, 2);
    assert.equal(await succeed(pool), k1);
    assert.equal(statsOf(pool, k1).consecutiveFailures, 0);
    await fail(pool, 2);
    assert.equal(stateOf(pool, k1), 'ready');
    assert.deepEqual(ejections(changes), []);
    await fail(pool, 1);
    assert.deepEqual(ejections(changes), [k1]);
  });

  it('is off with ejection: false', async (t) => {
    const { pool, changes } = await harness(t, 2, { ejection: false });
    await fail(pool, 20);
    assert.deepEqual(ejections(changes), []);
    assert.equal(statsOf(pool, k1).failures, 20);
  });

  it('gives way to a lost connection: the member reconnects to ready and the old ejection timer is gone', async (t) => {
    const { pool, transport, timers, changes } = await harness(t, 2, { reconnect: { minMs: 1, maxMs: 1 } });
    await fail(pool, 3);
    assert.equal(stateOf(pool, k1), 'ejected');
    transport.lose(k1);
    assert.equal(stateOf(pool, k1), 'connecting');
    timers.tick(2); // the young connection's reconnect backoff
    await flush();
    assert.equal(stateOf(pool, k1), 'ready');
    changes.length = 0;
    timers.tick(60_000);
    assert.deepEqual(changes, [], 'a stale ejection timer fired');
  });
});
