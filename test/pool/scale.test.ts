/**
 * The pool at scale (issue 12 §1), as behaviour: the picker is built once per burst of changes,
 * a stale picker never hands out a member that left `ready`, a big snapshot gets its members a
 * few hundred a turn, and close() of many members closes every connection.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Balancer, Pickable, Picker, PickerContext } from '../../src/balance/balancer.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import type { EndpointInit } from '../../src/endpoint.ts';
import type { Pool, StateChange } from '../../src/pool/pool.ts';
import { first } from '../support/first-balancer.ts';
import { flush } from '../support/flush.ts';
import { pod, podKey } from '../support/manual-source.ts';
import type { MemoryClient } from '../support/memory-transport.ts';
import { harness } from '../support/pool-harness.ts';

/** A balancer that counts the pickers it builds, and how many members each was built over. */
function counting(inner: Balancer): Balancer & { readonly builds: number[] } {
  const builds: number[] = [];
  return {
    name: inner.name,
    builds,
    picker<M extends Pickable>(members: readonly M[], context: PickerContext, previous?: Picker<M>): Picker<M> {
      builds.push(members.length);
      return inner.picker(members, context, previous);
    },
  };
}

/** Pod `n` of many: 10.1.x.y:80. */
function many(from: number, to: number, conditions: Omit<EndpointInit, 'address' | 'port'> = {}): EndpointInit[] {
  return Array.from({ length: to - from }, (_, i) => ({ address: `10.1.${((from + i) >> 8) & 255}.${(from + i) & 255}`, port: 80, ...conditions }));
}

function keyOf(n: number): string {
  return `10.1.${(n >> 8) & 255}.${n & 255}:80`;
}

/** The key of the pod each of `n` calls lands on, picked now (each call begun and ended at once). */
function pickNow(pool: Pool<MemoryClient>, n: number): string[] {
  const keys: string[] = [];
  for (let i = 0; i < n; i++) {
    const call = pool.begin();
    keys.push(call.endpoint.key);
    call.end();
  }
  return keys;
}

describe('the picker at scale', () => {
  it('is built once for a snapshot of 300 new pods, not once per pod that became ready', async (t) => {
    const balancer = counting(roundRobin());
    const { source, pool } = harness(t, { balancer });
    assert.deepEqual(balancer.builds, [0], 'the pool starts with a picker over nothing');
    source.set(many(0, 300));
    await pool.ready({ minEndpoints: 300 });
    assert.deepEqual(balancer.builds, [0, 300]);
    assert.equal(pool.stats().ready, 300);
  });

  it('is built once when several members leave ready together, and never hands one of them out after', async (t) => {
    const balancer = counting(roundRobin());
    const { source, transport, pool } = harness(t, { balancer, reconnect: { minMs: 60_000, maxMs: 60_000 } });
    source.set(many(0, 20));
    await pool.ready({ minEndpoints: 20 });
    const before = balancer.builds.length;
    const lost = [0, 3, 7, 11].map(keyOf);
    for (const key of lost) transport.lose(key);
    // Picked in the same turn as the losses, before any queued build could run.
    const picked = pickNow(pool, 40);
    for (const key of lost) assert.ok(!picked.includes(key), `${key} was picked after it left ready`);
    assert.equal(new Set(picked).size, 16, 'every member still ready takes calls');
    await flush();
    assert.equal(balancer.builds.length - before, 1, 'one build for the four losses');
    assert.deepEqual(balancer.builds.at(-1), 16);
  });

  it('never picks a member from inside its own transition out of ready', async (t) => {
    const { source, transport, pool } = harness(t, { reconnect: { minMs: 60_000, maxMs: 60_000 } });
    source.set([pod(1), pod(2), pod(3)]);
    await pool.ready({ minEndpoints: 3 });
    const seen: string[][] = [];
    const listener = ({ endpoint, from }: StateChange): void => {
      if (from === 'ready') seen.push([endpoint.key, ...pickNow(pool, 6)]);
    };
    pool.on('state', listener);
    transport.lose(podKey(2));
    source.set([pod(1), pod(3)]);
    transport.lose(podKey(3));
    pool.off('state', listener);
    assert.deepEqual(
      seen.map(([key, ...picked]) => [key, picked.includes(key)]),
      [
        [podKey(2), false],
        [podKey(3), false],
      ],
    );
    assert.deepEqual(pickNow(pool, 3), [podKey(1), podKey(1), podKey(1)]);
  });

  it('counts a member that leaves ready and comes back before the next build once', async (t) => {
    const balancer = counting(roundRobin());
    const { source, transport, pool } = harness(t, { balancer });
    source.set([pod(1), pod(2), pod(3)]);
    await pool.ready({ minEndpoints: 3 });
    // Out of the picks and back in one turn, as a transport may say of a connection.
    transport.unavailable(podKey(2));
    transport.available(podKey(2));
    const picked = pickNow(pool, 6);
    assert.deepEqual(balancer.builds.at(-1), 3);
    assert.deepEqual([...picked].sort(), [podKey(1), podKey(1), podKey(2), podKey(2), podKey(3), podKey(3)]);
  });

  it('picks a member that just became ready at once, from inside its transition', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    transport.hold(podKey(1));
    source.set([pod(1), pod(2)]);
    await pool.ready({ minEndpoints: 1 });
    assert.deepEqual(pickNow(pool, 1), [podKey(2)]);
    const picked = new Promise<string[]>((resolve) => {
      pool.on('state', ({ endpoint, to }) => {
        if (endpoint.key === podKey(1) && to === 'ready') resolve(pickNow(pool, 1));
      });
    });
    transport.release(podKey(1));
    // first() picks the first member by key: pod 1, the moment it is ready.
    assert.deepEqual(await picked, [podKey(1)]);
  });
});

describe('a big snapshot', () => {
  it('gets its members 500 a turn, each connected as it comes', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set(many(0, 1_200));
    assert.equal(transport.attempts(), 500, 'the first 500 in the turn of the snapshot');
    assert.equal(pool.connectivity, 'connecting');
    await flush();
    assert.equal(transport.attempts(), 1_000);
    await flush();
    assert.equal(transport.attempts(), 1_200);
    await pool.ready({ minEndpoints: 1_200 });
    assert.equal(pool.stats().members.length, 1_200);
  });

  it('gives no member to an endpoint that left the snapshot or stopped being ready while it waited', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set(many(0, 1_200));
    // Before the next turn: 1,000-1,099 gone, 1,100-1,149 not ready, 1,150-1,199 still wanted.
    source.set([...many(0, 1_000), ...many(1_100, 1_150, { ready: false }), ...many(1_150, 1_200)]);
    await flush();
    await flush();
    for (let n = 1_000; n < 1_150; n++) assert.equal(transport.attempts(keyOf(n)), 0, `${keyOf(n)} was dialled`);
    await pool.ready({ minEndpoints: 1_050 });
    assert.equal(pool.stats().members.length, 1_050);
    // One that waited and comes back ready later gets its member then.
    source.set([...many(0, 1_000), ...many(1_100, 1_200)]);
    await pool.ready({ minEndpoints: 1_100 });
    assert.equal(transport.attempts(keyOf(1_120)), 1);
  });

  it('close() while endpoints wait for a member dials none of them, and closes every connection', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set(many(0, 1_200));
    await pool.close();
    await flush();
    assert.equal(transport.attempts(), 500);
    assert.equal(transport.open(), 0);
  });

  it('close() of 2,500 ready members closes every connection and resolves once they are closed', async (t) => {
    const { source, transport, pool } = harness(t);
    source.set(many(0, 2_500));
    await pool.ready({ minEndpoints: 2_500 });
    const states = new Map<string, number>();
    pool.on('state', ({ to }) => states.set(to, (states.get(to) ?? 0) + 1));
    await pool.close();
    assert.equal(transport.closes(), 2_500);
    assert.equal(transport.open(), 0);
    assert.deepEqual(Object.fromEntries(states), { draining: 2_500, closed: 2_500 });
  });
});
