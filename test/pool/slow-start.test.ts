/**
 * Slow start over a pool with an injected clock and random source: a pod that connects while
 * others are warm gets a growing share of the calls over the window, then its full share; pods
 * that start together are not held back; a call with a key is never moved.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ringHash } from '../../src/balance/ring-hash.ts';
import type { MemoryClient } from '../support/memory-transport.ts';
import { harness } from '../support/pool-harness.ts';

const pods = ['10.0.0.1', '10.0.0.2', '10.0.0.3'].map((address) => ({ address, port: 80 }));
const NEW = '10.0.0.3:80';

/** A pool whose clock the test moves, with a seeded random source. */
function setUp(t: Parameters<typeof harness>[0], extra: Parameters<typeof harness>[1] = {}) {
  const time = { now: 0 };
  let seed = 42;
  const random = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const h = harness(t, { clock: () => time.now, random, slowStart: { windowMs: 10_000 }, ejection: false, ...extra });
  return { ...h, time };
}

async function share(pool: { use: (fn: (c: MemoryClient) => string, o?: { key?: string }) => Promise<string> }, calls: number, key?: string): Promise<number> {
  let onNew = 0;
  for (let i = 0; i < calls; i++) if ((await pool.use((c) => c.key, key === undefined ? undefined : { key: `${key}${i}` })) === NEW) onNew++;
  return onNew / calls;
}

test('a pod that connects while the others are warm takes a share that grows over the window', async (t) => {
  const { source, pool, time } = setUp(t);
  source.set(pods.slice(0, 2));
  await pool.ready({ minEndpoints: 2 });
  time.now = 60_000;
  source.set(pods);
  await pool.ready({ minEndpoints: 3 });
  // Round-robin's full share is a third; at age 0 it is held to a tenth of that.
  const cold = await share(pool, 3_000);
  assert.ok(cold > 0, 'a warming pod still takes calls');
  assert.ok(cold < 0.1, `share at the start of the window: ${cold}`);
  time.now = 65_000;
  const half = await share(pool, 3_000);
  assert.ok(half > cold && half < 1 / 3, `share half way: ${half}`);
  time.now = 70_000;
  assert.equal(await share(pool, 3_000), 1 / 3, 'after the window, its full share');
});

test('pods that connect together are not held back, and without slowStart nothing is', async (t) => {
  const { source, pool } = setUp(t);
  source.set(pods);
  await pool.ready({ minEndpoints: 3 });
  assert.equal(await share(pool, 3_000), 1 / 3);
  const plain = setUp(t, { slowStart: undefined });
  plain.source.set(pods.slice(0, 2));
  await plain.pool.ready({ minEndpoints: 2 });
  plain.time.now = 60_000;
  plain.source.set(pods);
  await plain.pool.ready({ minEndpoints: 3 });
  assert.equal(await share(plain.pool, 3_000), 1 / 3);
});

test('a call with an affinity key goes to its pod, warming or not', async (t) => {
  const keyed = setUp(t, { balancer: ringHash() });
  keyed.source.set(pods.slice(0, 2));
  await keyed.pool.ready({ minEndpoints: 2 });
  keyed.time.now = 60_000;
  keyed.source.set(pods);
  await keyed.pool.ready({ minEndpoints: 3 });
  const warming = await share(keyed.pool, 2_000, 'k');
  keyed.time.now = 70_000;
  assert.equal(await share(keyed.pool, 2_000, 'k'), warming, 'the same keys land on the new pod during and after the window');
  assert.ok(warming > 0);
});

test('slowStart options are checked at the door', (t) => {
  assert.throws(() => setUp(t, { slowStart: { windowMs: 0 } }), /slowStart\.windowMs/);
  assert.throws(() => setUp(t, { slowStart: { windowMs: 1_000, minWeight: 2 } }), /slowStart\.minWeight/);
  assert.throws(() => setUp(t, { slowStart: { windowMs: 1_000, agression: 2 } as never }), /did you mean slowStart\.aggression/);
});
