/**
 * Honest `stats()` (issue 13): what recent calls took (mean, percentiles from an HDR histogram,
 * forgotten as its windows turn) beside the balancer's peak EWMA; errors that serialise with
 * their message; discovery's last snapshot and last error with their times.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { RecentLatency, toMicros } from '../../src/pool/latency.ts';
import { Load, RECENT_WINDOW_MS } from '../../src/pool/load.ts';
import type { MemberStats } from '../../src/pool/member.ts';
import type { Pool } from '../../src/pool/pool.ts';
import { pod, podKey } from '../support/manual-source.ts';
import type { MemoryClient } from '../support/memory-transport.ts';
import { harness } from '../support/pool-harness.ts';

const k1 = podKey(1);

/** Within the histogram's precision: 2 significant digits, so 1%. */
function near(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= expected * 0.01, `${what}: ${actual}, expected ${expected} within 1%`);
}

function statsOf(pool: Pool<MemoryClient>): MemberStats {
  const stats = pool.stats().members.find((m) => m.endpoint.key === k1);
  assert.ok(stats, `no member for ${k1}`);
  return stats;
}

/** A one-pod pool on a clock the test moves; `call(ms)` makes a call the pod answers in `ms`. */
async function onePod(t: TestContext) {
  const clock = { now: 1_000 };
  const { source, pool } = harness(t, { clock: () => clock.now, ejection: false });
  source.set([pod(1)]);
  await pool.ready();
  const call = (ms: number) =>
    pool.use(() => {
      clock.now += ms;
      return 'ok';
    });
  return { clock, pool, source, call };
}

describe('stats().members[].latency', () => {
  it('reports the mean and percentiles of a known sequence of calls, within 1%', async (t) => {
    const { pool, call } = await onePod(t);
    assert.deepEqual(statsOf(pool).latency, { peakEwmaMs: 0, meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, maxMs: 0, samples: 0, windowMs: RECENT_WINDOW_MS });
    // 1, 2, …, 100 ms: the pod answered each. The clock moves 5,050 ms in all, within one window.
    for (let ms = 1; ms <= 100; ms++) await call(ms);
    const { latency } = statsOf(pool);
    assert.equal(latency.samples, 100);
    near(latency.meanMs, 50.5, 'mean');
    near(latency.p50Ms, 50, 'p50');
    near(latency.p90Ms, 90, 'p90');
    near(latency.p99Ms, 99, 'p99');
    near(latency.maxMs, 100, 'max');
  });

  it('says what sub-millisecond calls took where the peak EWMA still remembers one slow call', async (t) => {
    const { pool, call } = await onePod(t);
    await call(20);
    for (let i = 0; i < 99; i++) await call(0.25);
    const stats = statsOf(pool);
    // 250 µs is exact in the histogram; the EWMA the balancer weighs has barely moved from 20 ms.
    assert.equal(stats.latency.p50Ms, 0.25);
    assert.equal(stats.latency.p90Ms, 0.25);
    near(stats.latency.meanMs, (20 + 99 * 0.25) / 100, 'mean');
    near(stats.latency.maxMs, 20, 'max');
    assert.ok(stats.latency.peakEwmaMs > 1, `peakEwmaMs ${stats.latency.peakEwmaMs}: the balancer's estimate is not what calls took`);
    assert.equal(stats.latencyMs, stats.latency.peakEwmaMs, 'the deprecated latencyMs is the peak EWMA');
  });

  it('counts only calls the pod answered: a failed call is a failure, not a latency', async (t) => {
    const { pool, call } = await onePod(t);
    await call(10);
    await assert.rejects(
      pool.use(() => {
        throw new Error('boom');
      }),
    );
    const stats = statsOf(pool);
    assert.equal(stats.failures, 1);
    assert.equal(stats.latency.samples, 1);
    near(stats.latency.p99Ms, 10, 'p99');
  });

  it('forgets calls older than two windows, and keeps the previous window beside the current one', async (t) => {
    const { clock, pool, call } = await onePod(t);
    for (let i = 0; i < 10; i++) await call(100); // window 1: ten 100 ms calls
    clock.now += RECENT_WINDOW_MS; // into window 2: window 1 is the previous one, still reported
    for (let i = 0; i < 10; i++) await call(1);
    let { latency } = statsOf(pool);
    assert.equal(latency.samples, 20);
    near(latency.maxMs, 100, 'max over both windows');
    near(latency.p50Ms, 1, 'p50 over both windows');
    near(latency.meanMs, 50.5, 'mean over both windows');

    clock.now += RECENT_WINDOW_MS; // into window 3: window 1 is gone, window 2 is the previous
    ({ latency } = statsOf(pool));
    assert.equal(latency.samples, 10);
    near(latency.maxMs, 1, 'max once the 100 ms calls are forgotten');

    clock.now += 2 * RECENT_WINDOW_MS; // nothing for two windows: nothing recent
    ({ latency } = statsOf(pool));
    assert.deepEqual({ ...latency, peakEwmaMs: 0 }, { peakEwmaMs: 0, meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, maxMs: 0, samples: 0, windowMs: RECENT_WINDOW_MS });

    await call(3);
    ({ latency } = statsOf(pool));
    assert.equal(latency.samples, 1);
    near(latency.p50Ms, 3, 'p50 of the one new call');
  });
});

describe('Load: the recent latency windows', () => {
  it('turns its windows on the clock of the samples, also when read only', () => {
    const load = new Load(10_000);
    const recent = new RecentLatency(1_000);
    // The load's own histogram has the pool's window; this one a 1 s window, fed as the load feeds its own.
    const answered = (ms: number, now: number) => {
      load.answered(ms, now);
      if (now >= recent.turnsAt) recent.turn(now);
      recent.record(toMicros(ms));
    };
    answered(5, 0);
    answered(7, 999);
    assert.equal(recent.read(999).samples, 2);
    answered(9, 1_000); // a new window; the first is the previous one
    assert.equal(recent.read(1_500).samples, 3);
    assert.equal(recent.read(2_000).samples, 1, 'the first window is forgotten once the third opens');
    assert.equal(recent.read(3_000).samples, 0);
    // Far past: both windows go at once, and the next sample opens a window of its own.
    answered(11, 10_500);
    const reading = recent.read(10_600);
    assert.equal(reading.samples, 1);
    assert.equal(reading.maxMs, 11);
    assert.equal(load.recent.read(10_600).samples, 4, 'within one window of the load: every sample');
  });

  it('takes more samples than it buffers, and clamps what it cannot hold: below 0 and above 30 minutes', () => {
    const load = new Load(10_000);
    for (let i = 0; i < 1_000; i++) load.answered(1, i);
    load.answered(-1, 1_000);
    load.answered(3_600_000, 1_000);
    const reading = load.recent.read(1_000);
    assert.equal(reading.samples, 1_002);
    near(reading.maxMs, 1_800_000, 'max');
    near(reading.p50Ms, 1, 'p50');
  });
});

describe('stats() JSON', () => {
  it("a member's lastError serialises as { name, code, message }", async (t) => {
    const { source, transport, pool } = harness(t, { ejection: false });
    source.set([pod(1)]);
    await pool.ready();
    assert.equal(transport.lose(k1), 1);
    const { lastError } = statsOf(pool);
    assert.ok(lastError instanceof PodpoolError, `lastError: ${String(lastError)}`);
    assert.equal(lastError.code, ErrorCode.CONNECTION_LOST);
    assert.match(lastError.message, /reset the connection/);
    const json = JSON.parse(JSON.stringify(pool.stats())) as { members: { lastError: unknown }[] };
    assert.deepEqual(json.members[0]!.lastError, { name: lastError.name, code: ErrorCode.CONNECTION_LOST, message: lastError.message });
  });
});

describe('stats().discovery', () => {
  it('reports the last snapshot and the last error with their wall-clock times', async (t) => {
    t.mock.timers.enable({ apis: ['Date'], now: 1_700_000_000_000 });
    const { source, pool } = harness(t);
    assert.deepEqual(pool.stats().discovery, {}, 'nothing before discovery spoke');

    source.set([pod(1)]);
    assert.deepEqual(pool.stats().discovery, { lastSnapshotAt: 1_700_000_000_000 });

    t.mock.timers.setTime(1_700_000_005_000);
    const failure = source.fail('dns: SERVFAIL');
    let discovery = pool.stats().discovery;
    assert.equal(discovery.lastSnapshotAt, 1_700_000_000_000, 'the last good snapshot stays');
    assert.equal(discovery.lastErrorAt, 1_700_000_005_000);
    assert.equal(discovery.lastError, failure);
    assert.deepEqual(JSON.parse(JSON.stringify(discovery)), {
      lastSnapshotAt: 1_700_000_000_000,
      lastErrorAt: 1_700_000_005_000,
      lastError: { name: 'PodpoolError', code: ErrorCode.DISCOVERY_FAILED, message: 'dns: SERVFAIL' },
    });

    t.mock.timers.setTime(1_700_000_009_000);
    source.set([pod(1), pod(2)]);
    discovery = pool.stats().discovery;
    assert.equal(discovery.lastSnapshotAt, 1_700_000_009_000, 'a newer snapshot than the error: discovery recovered');
    assert.equal(discovery.lastErrorAt, 1_700_000_005_000);
  });
});
