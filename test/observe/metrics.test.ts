/**
 * podpoolMetrics(): a known sequence of calls through a pool over the in-memory transport, then
 * the registry's text exposition parsed by a real Prometheus parser, with exact values; 10,000
 * pods churned through the pool leave no series behind; bad options fail at the door; close()
 * leaves nothing registered or subscribed.
 */
import { strict as assert } from 'node:assert';
import { hasSubscribers } from 'node:diagnostics_channel';
import { createRequire } from 'node:module';
import { describe, test, type TestContext } from 'node:test';
import { Registry } from 'prom-client';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { CHANNEL_NAMES } from '../../src/channels.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { podpoolMetrics } from '../../src/observe/metrics.ts';
import type { Pool } from '../../src/pool/pool.ts';
import { first } from '../support/first-balancer.ts';
import { flush } from '../support/flush.ts';
import { mockTimers } from '../support/mock-timers.ts';
import { pod, podKey } from '../support/manual-source.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';
import { harness } from '../support/pool-harness.ts';

/** What parse-prometheus-text-format returns (it ships no types). */
interface ParsedFamily {
  name: string;
  type: string;
  metrics: { value?: string; labels?: Record<string, string>; buckets?: Record<string, string>; count?: string; sum?: string }[];
}
const parsePrometheus = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => ParsedFamily[];

/**
 * The registry's exposition, parsed. The parser folds a histogram's samples into one unlabelled
 * series (it keeps no labels but `le`), so histogram TYPE lines are dropped first: their
 * `_bucket`, `_sum` and `_count` samples then come out as plain samples with all their labels.
 */
async function scrape(registry: Registry): Promise<ParsedFamily[]> {
  const text = await registry.metrics();
  return parsePrometheus(text.replace(/^# TYPE \S+ histogram\n/gm, ''));
}

/** The value of the one sample of `name` whose labels are exactly `labels`; undefined if there is none. */
function value(families: ParsedFamily[], name: string, labels: Record<string, string>): number | undefined {
  // A histogram's samples come series by series, so one name may head several families.
  const sample = families.filter((f) => f.name === name).flatMap((f) => f.metrics).find((m) => sameLabels(m.labels ?? {}, labels));
  return sample?.value === undefined ? undefined : Number(sample.value);
}

function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

/** Every sample line of the exposition: a histogram series counts its buckets, sum and count. */
function sampleLines(text: string): number {
  return text.split('\n').filter((line) => line !== '' && !line.startsWith('#')).length;
}

class Reset extends Error {}
class BadRequest extends Error {}

function transport(): MemoryTransport {
  return new MemoryTransport({ isPodFailure: (e) => !(e instanceof BadRequest) });
}

/** Resolves when `count` members have closed. */
function membersClosed(pool: Pool<MemoryClient>, count: number): Promise<void> {
  return new Promise((resolve) => {
    let closed = 0;
    const listener = ({ to }: { to: string }): void => {
      if (to === 'closed' && ++closed === count) {
        pool.off('state', listener);
        resolve();
      }
    };
    pool.on('state', listener);
  });
}

const A = { address: '10.0.0.1', port: 80, podName: 'pod-a' };
const B = { address: '10.0.0.2', port: 80 };
const BACKEND = { pool: 'backend' };
const onA = { ...BACKEND, endpoint: 'pod-a' };
const onB = { ...BACKEND, endpoint: podKey(2) };

describe('podpoolMetrics()', () => {
  test('a known sequence of calls shows as exact values in the scraped exposition', async (t) => {
    let now = 1_000;
    // Discovery's times are wall-clock times: Date is mocked (timers are not).
    t.mock.timers.enable({ apis: ['Date'], now: 1_700_000_000_000 });
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), clock: () => now });
    const registry = new Registry();
    const metrics = podpoolMetrics(pool, { registry, labels: BACKEND });
    assert.equal(value(await scrape(registry), 'podpool_discovery_staleness_seconds', BACKEND), undefined, 'no staleness before a snapshot');
    t.after(() => metrics.close());
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });

    // Answered on A in 2 ms.
    await pool.use(async () => {
      now += 2;
      return 'ok';
    });
    // Failed on A in 30 ms, not retried (not idempotent).
    await assert.rejects(
      pool.use(async () => {
        now += 30;
        throw new Reset('reset');
      }),
      Reset,
    );
    // An error the pod answered with (not its failure): answered, in 1 ms.
    await assert.rejects(
      pool.use(async () => {
        now += 1;
        throw new BadRequest('no');
      }),
      BadRequest,
    );
    // Failed on A in 4 ms, retried on B, answered there in 0 ms.
    const reply = await pool.use(
      async (client: MemoryClient) => {
        if (client.key === podKey(1)) {
          now += 4;
          throw new Reset('reset');
        }
        return client.key;
      },
      { retry: { idempotent: true } },
    );
    assert.equal(reply, podKey(2));
    // A broadcast: A delivers, B fails.
    const result = await pool.broadcast(async (client: MemoryClient) => {
      if (client.key === podKey(2)) throw new Reset('reset');
      return 'ok';
    });
    assert.deepEqual([result.delivered.length, result.failed.length], [1, 1]);
    source.fail('the API server is away');
    t.mock.timers.tick(5_037);

    const families = await scrape(registry);
    const requests = 'podpool_requests_total';
    assert.deepEqual(
      families.find((f) => f.name === requests)!.metrics.map((m) => [m.labels!.endpoint, m.labels!.outcome, Number(m.value)]).sort(),
      [
        [podKey(2), 'answered', 1],
        [podKey(2), 'failed', 1],
        ['pod-a', 'answered', 3],
        ['pod-a', 'failed', 2],
      ],
    );
    assert.equal(families.find((f) => f.name === requests)!.type, 'COUNTER');
    assert.match(await registry.metrics(), /^# TYPE podpool_request_duration_seconds histogram$/m);
    const seconds = 'podpool_request_duration_seconds';
    assert.equal(value(families, `${seconds}_count`, onA), 5);
    assert.equal(value(families, `${seconds}_sum`, onA), 0.002 + 0.03 + 0.001 + 0.004 + 0);
    // 0 ms, then 1, 2 and 4 ms are under 5 ms; 30 ms is over 25 ms.
    const bucketsA = ['0.0001', '0.0025', '0.005', '0.025', '0.05', '10', '+Inf'].map((le) => value(families, `${seconds}_bucket`, { ...onA, le }));
    assert.deepEqual(bucketsA, [1, 3, 4, 4, 5, 5, 5]);
    assert.equal(value(families, `${seconds}_count`, onB), 2);
    assert.equal(value(families, `${seconds}_sum`, onB), 0);
    assert.equal(value(families, 'podpool_retries_total', BACKEND), 1);
    assert.equal(value(families, 'podpool_hedges_total', BACKEND), 0);
    assert.equal(value(families, 'podpool_broadcast_deliveries_total', BACKEND), 1);
    assert.equal(value(families, 'podpool_broadcast_failures_total', BACKEND), 1);
    assert.equal(value(families, 'podpool_discovery_snapshots_total', BACKEND), 1);
    assert.equal(value(families, 'podpool_discovery_errors_total', { ...BACKEND, code: ErrorCode.DISCOVERY_FAILED }), 1);
    // The scrape comes 5,037 ms after the snapshot.
    assert.equal(value(families, 'podpool_discovery_staleness_seconds', BACKEND), 5.037);
    assert.equal(value(families, 'podpool_endpoints', BACKEND), 2);
    assert.equal(value(families, 'podpool_ready_members', BACKEND), 2);
    for (const labels of [onA, onB]) {
      assert.equal(value(families, 'podpool_in_flight', labels), 0);
      assert.equal(value(families, 'podpool_ejections_total', labels), 0);
      assert.equal(value(families, 'podpool_reconnects_total', labels), 0);
      assert.equal(value(families, 'podpool_member_state', { ...labels, state: 'ready' }), 1);
      assert.equal(value(families, 'podpool_member_state', { ...labels, state: 'connecting' }), 0);
    }
  });

  test('in-flight calls, reconnects and connect errors per endpoint', async (t) => {
    // Reconnects wait a minute: each connect error the test causes is the only one.
    const timers = mockTimers(t);
    const { source, transport, pool } = harness(t, { transport: new MemoryTransport(), balancer: first(), reconnect: { minMs: 60_000, maxMs: 60_000 } });
    const registry = new Registry();
    const metrics = podpoolMetrics(pool, { registry });
    t.after(() => metrics.close());
    transport.refuse(podKey(2));
    const refused = new Promise((resolve) => pool.once('connectError', resolve));
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 1 });
    await refused;
    const { promise: held, resolve: release } = Promise.withResolvers<void>();
    const call = pool.use(() => held);
    let families = await scrape(registry);
    assert.equal(value(families, 'podpool_in_flight', { endpoint: podKey(1) }), 1);
    assert.equal(value(families, 'podpool_connect_errors_total', { endpoint: podKey(2) }), 1);
    assert.equal(value(families, 'podpool_member_state', { endpoint: podKey(2), state: 'connecting' }), 1);
    assert.equal(value(families, 'podpool_member_state', { endpoint: podKey(2), state: 'ready' }), 0);
    release();
    await call;
    // A lost connection is opened again: one reconnect.
    let back = false;
    pool.on('state', (c) => (back ||= c.to === 'ready' && c.endpoint.key === podKey(1)));
    transport.lose(podKey(1));
    for (let i = 0; !back; i++) {
      assert.ok(i < 10, 'the pod never came back');
      await flush();
      timers.tick(60_000);
    }
    families = await scrape(registry);
    assert.equal(value(families, 'podpool_in_flight', { endpoint: podKey(1) }), 0);
    assert.equal(value(families, 'podpool_reconnects_total', { endpoint: podKey(1) }), 1);
  });

  test('10,000 pods churned through the pool leave no series behind', async (t) => {
    const { source, pool } = harness(t, { transport: new MemoryTransport(), balancer: roundRobin() });
    const registry = new Registry();
    const metrics = podpoolMetrics(pool, { registry, labels: BACKEND });
    t.after(() => metrics.close());
    const steady = [pod(1), pod(2)];
    source.set(steady);
    await pool.ready({ minEndpoints: 2 });
    for (let i = 0; i < 4; i++) await pool.use(() => 'ok');
    const baseline = sampleLines(await registry.metrics());

    const perRound = 1_000;
    let peak = 0;
    for (let round = 0; round < 10; round++) {
      // Half the pods have a name (the label), half are known by address.
      const pods = Array.from({ length: perRound }, (_, i) => {
        const n = round * perRound + i;
        return { address: `10.1.${n >> 8}.${n & 255}`, port: 80, ...(n % 2 === 0 && { podName: `worker-${n}` }) };
      });
      const closed = round === 0 ? Promise.resolve() : membersClosed(pool, perRound);
      source.set([...steady, ...pods]);
      await closed;
      await pool.ready({ minEndpoints: perRound + 2 });
      // Round-robin over every member: each pod gets a call, so each has series.
      await Promise.all(Array.from({ length: perRound + 2 }, () => pool.use(() => 'ok')));
      peak = Math.max(peak, sampleLines(await registry.metrics()));
    }
    assert.ok(peak > baseline + perRound * 20, `the pods had series (${peak} samples at the peak, ${baseline} at the start)`);
    const gone = membersClosed(pool, perRound);
    source.set(steady);
    await gone;
    const after = await registry.metrics();
    assert.equal(sampleLines(after), baseline, 'as many samples as before the churn');
    assert.doesNotMatch(after, /worker-|10\.1\./);
  });

  test('close() removes the pool\'s series, its metrics once no pool uses them, and its listeners', async (t) => {
    const one = harness(t, { transport: new MemoryTransport() });
    const two = harness(t, { transport: new MemoryTransport() });
    const registry = new Registry();
    const listeners = (pool: Pool<MemoryClient>): number[] => (['change', 'state', 'sourceError', 'connectError'] as const).map((e) => pool.listenerCount(e));
    const before = listeners(one.pool);
    const m1 = podpoolMetrics(one.pool, { registry, labels: { pool: 'one' } });
    const m2 = podpoolMetrics(two.pool, { registry, labels: { pool: 'two' } });
    for (const { source, pool } of [one, two]) {
      source.set([pod(1)]);
      await pool.ready();
      await pool.use(() => 'ok');
    }
    assert.equal(value(await scrape(registry), 'podpool_requests_total', { pool: 'one', endpoint: podKey(1), outcome: 'answered' }), 1);
    m1.close();
    m1.close();
    const families = await scrape(registry);
    assert.equal(value(families, 'podpool_requests_total', { pool: 'two', endpoint: podKey(1), outcome: 'answered' }), 1);
    assert.doesNotMatch(await registry.metrics(), /pool="one"/);
    assert.deepEqual(listeners(one.pool), before);
    // The pool's calls after close() count nowhere.
    await one.pool.use(() => 'ok');
    assert.doesNotMatch(await registry.metrics(), /pool="one"/);
    m2.close();
    assert.deepEqual(registry.getMetricsAsArray(), []);
    assert.equal(hasSubscribers(CHANNEL_NAMES.callEnd), false);
    assert.equal(hasSubscribers(CHANNEL_NAMES.callError), false);
    // The names are free again.
    podpoolMetrics(one.pool, { registry }).close();
  });

  test('bad options fail at the door with PODPOOL_INVALID_OPTION, and leave the registry as it was', (t: TestContext) => {
    const { pool } = harness(t);
    const registry = new Registry();
    const invalid = (options: object, message: RegExp): void => {
      assert.throws(() => podpoolMetrics(pool, { registry, ...options }), (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_OPTION && message.test(e.message));
    };
    invalid({ prefx: 'x_' }, /unknown option prefx \(did you mean prefix\?\)/);
    invalid({ prefix: 'my-pool' }, /option prefix must be a metric name prefix/);
    invalid({ labels: { endpoint: 'x' } }, /option labels\.endpoint must be a label name other than endpoint/);
    invalid({ labels: { pool: 7 } }, /option labels\.pool must be a string, got 7/);
    invalid({ labels: { 'bad-name': 'x' } }, /option labels\.bad-name must be a label name/);
    invalid({ labels: 'backend' }, /option labels must be an object/);
    invalid({ registry: {} }, /option registry must be a prom-client Registry/);
    assert.throws(() => podpoolMetrics({} as Pool<unknown>), (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_ARGUMENT);

    // A name another library registered: nothing of ours is left behind.
    const clash = new Registry();
    const { Counter } = createRequire(import.meta.url)('prom-client') as typeof import('prom-client');
    new Counter({ name: 'podpool_retries_total', help: 'theirs', registers: [clash] });
    assert.throws(() => podpoolMetrics(pool, { registry: clash }), (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_OPTION && /already has a metric named podpool_retries_total/.test(e.message));
    assert.deepEqual(clash.getMetricsAsArray().map((m) => (m as unknown as { name: string }).name), ['podpool_retries_total']);

    // Two pools in one registry must be told apart, by the same label names.
    const m = podpoolMetrics(pool, { registry, labels: { pool: 'a' } });
    t.after(() => m.close());
    invalid({ labels: { pool: 'a' } }, /labels that tell this pool apart/);
    invalid({ labels: { service: 'a' } }, /the label names \[pool\]/);
    invalid({}, /the label names \[pool\]/);
  });
});
