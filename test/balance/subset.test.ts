/**
 * Deterministic subsetting as properties over client counts, pod counts and subset sizes: every
 * pod gets ⌊C·k/N⌋ or ⌈C·k/N⌉ clients, every client min(k, N) pods, the same answer whatever the
 * order or history of the snapshots, and at most 2 of a client's pods move when one pod comes or
 * goes (1 when one changes readiness).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { statefulSetOrdinal, subsetPolicy, type SubsetPolicy } from '../../src/balance/subset.ts';
import { createEndpoint, EndpointSet, type Endpoint } from '../../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';

/** Pod `id`'s endpoint; `ready: false` for one failing its probe, `terminating` for one going away. */
function pod(id: number, conditions: { ready?: boolean; terminating?: boolean } = {}): Endpoint {
  return createEndpoint({ address: `10.${(id >> 16) & 255}.${(id >> 8) & 255}.${id & 255}`, port: 8080, ...conditions });
}

function podsOf(ids: Iterable<number>, notReady: ReadonlySet<number> = new Set()): EndpointSet {
  return new EndpointSet([...ids].map((id) => pod(id, notReady.has(id) ? { ready: false } : {})));
}

function policies(size: number, clientCount: number): SubsetPolicy[] {
  return Array.from({ length: clientCount }, (_, clientId) => subsetPolicy({ size, clientId, clientCount })!);
}

/** Each client's selection of `endpoints`. */
function selections(all: readonly SubsetPolicy[], endpoints: EndpointSet): Set<string>[] {
  return all.map((p) => new Set(p.select(endpoints)));
}

/** Clients per pod key, pods no client took included. */
function clientsPerPod(endpoints: EndpointSet, chosen: readonly ReadonlySet<string>[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const e of endpoints) counts.set(e.key, 0);
  for (const keys of chosen) for (const key of keys) counts.set(key, counts.get(key)! + 1);
  return counts;
}

/** How many of `before`'s keys `after` lost, and how many it gained. */
function moved(before: ReadonlySet<string>, after: ReadonlySet<string>): { lost: number; gained: number } {
  let lost = 0;
  let gained = 0;
  for (const key of before) if (!after.has(key)) lost++;
  for (const key of after) if (!before.has(key)) gained++;
  return { lost, gained };
}

/** Distinct pod ids, in no particular order. */
const podIds = (min: number, max: number) => fc.uniqueArray(fc.integer({ min: 1, max: 1 << 20 }), { minLength: min, maxLength: max });

describe('subset: balance', () => {
  it('every pod gets ⌊C·k/N⌋ or ⌈C·k/N⌉ clients, and every client min(k, N) pods', () => {
    fc.assert(
      fc.property(podIds(1, 80), fc.integer({ min: 1, max: 60 }), fc.integer({ min: 1, max: 90 }), (ids, clients, size) => {
        const endpoints = podsOf(ids);
        const n = endpoints.size;
        const chosen = selections(policies(size, clients), endpoints);
        const k = Math.min(size, n);
        for (const keys of chosen) {
          assert.equal(keys.size, k);
          for (const key of keys) assert.ok(endpoints.has(key), `${key} is not a pod`);
        }
        const low = Math.floor((clients * k) / n);
        const high = Math.ceil((clients * k) / n);
        for (const [key, count] of clientsPerPod(endpoints, chosen)) {
          assert.ok(count >= low && count <= high, `${key}: ${count} clients, not within ${low}..${high} (C=${clients}, N=${n}, k=${k})`);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('the issue\'s shape: 20 clients × 50 pods, subsets of 10 — every pod exactly 4 clients, 200 connections instead of 1,000', () => {
    const endpoints = podsOf(Array.from({ length: 50 }, (_, i) => i + 1));
    const chosen = selections(policies(10, 20), endpoints);
    assert.deepEqual(new Set(clientsPerPod(endpoints, chosen).values()), new Set([4]));
    assert.equal(chosen.reduce((sum, keys) => sum + keys.size, 0), 200);
  });

  it('with size ≥ N every client takes every ready pod', () => {
    const endpoints = podsOf([1, 2, 3], new Set([2]));
    for (const p of policies(3, 4)) assert.deepEqual([...p.select(endpoints)].sort(), [pod(1).key, pod(3).key].sort());
    assert.equal(subsetPolicy({ size: 1, clientId: 0, clientCount: 1 })!.select(EndpointSet.empty).size, 0);
  });
});

describe('subset: determinism', () => {
  it('the same snapshot gives the same subset whatever its order and whatever snapshots came before', () => {
    fc.assert(
      fc.property(
        fc.array(podIds(0, 40), { minLength: 1, maxLength: 6 }),
        fc.integer({ min: 1, max: 30 }),
        fc.integer({ min: 1, max: 12 }),
        fc.nat(),
        (snapshots, clientCount, size, id) => {
          const clientId = id % clientCount;
          // One policy sees every snapshot in turn (its ring is kept and merged), as a pool's does.
          const seasoned = subsetPolicy({ size, clientId, clientCount })!;
          for (const ids of snapshots) {
            const picked = [...seasoned.select(podsOf(ids))].sort();
            const fresh = [...subsetPolicy({ size, clientId, clientCount })!.select(podsOf([...ids].reverse()))].sort();
            assert.deepEqual(picked, fresh);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('clients with other ids take other windows: two clients of 2 over 10 pods share none', () => {
    const endpoints = podsOf(Array.from({ length: 10 }, (_, i) => i + 1));
    const [a, b] = selections(policies(5, 2), endpoints) as [Set<string>, Set<string>];
    assert.equal(a.size + b.size, 10);
    assert.equal(new Set([...a, ...b]).size, 10);
  });
});

describe('subset: stability', () => {
  it('one pod added or removed, ready or not, moves at most 2 of a client\'s pods', () => {
    fc.assert(
      fc.property(
        podIds(1, 60),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 20 }),
        fc.boolean(),
        fc.nat(),
        fc.uniqueArray(fc.nat({ max: 59 }), { maxLength: 5 }),
        (ids, clients, size, add, which, unready) => {
          const notReady = new Set(unready.map((i) => ids[i % ids.length]!));
          const before = podsOf(ids, notReady);
          let after: EndpointSet;
          if (add) {
            // A new pod, ready or not, lands anywhere in the ring.
            const added = (1 << 20) + 1 + which;
            after = podsOf([...ids, added], which % 2 === 0 ? notReady : new Set([...notReady, added]));
          } else {
            if (ids.length === 1) return;
            after = podsOf(ids.filter((_, i) => i !== which % ids.length), notReady);
          }
          const all = policies(size, clients);
          const was = selections(all, before);
          const is = selections(all, after);
          for (let i = 0; i < clients; i++) {
            const { lost, gained } = moved(was[i]!, is[i]!);
            assert.ok(lost <= 2 && gained <= 2, `client ${i} of ${clients}: lost ${lost}, gained ${gained} (k=${size}, N ${before.size} → ${after.size})`);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('one pod failing its probe, or terminating, moves one pod of each client that had it, and no other client\'s', () => {
    fc.assert(
      fc.property(podIds(2, 60), fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: 20 }), fc.nat(), fc.boolean(), (ids, clients, size, which, terminating) => {
        const failing = ids[which % ids.length]!;
        const before = podsOf(ids);
        const after = new EndpointSet(ids.map((id) => (id === failing ? pod(id, terminating ? { terminating: true } : { ready: false }) : pod(id))));
        const all = policies(size, clients);
        const was = selections(all, before);
        const is = selections(all, after);
        const key = pod(failing).key;
        for (let i = 0; i < clients; i++) {
          const { lost, gained } = moved(was[i]!, is[i]!);
          if (!was[i]!.has(key)) {
            assert.deepEqual({ lost, gained }, { lost: 0, gained: 0 }, `client ${i} did not have the pod`);
            continue;
          }
          assert.ok(!is[i]!.has(key), `client ${i} still connects to a pod out of service`);
          assert.equal(lost, 1, `client ${i}`);
          // A replacement when there is one to take: every client keeps min(k, ready) pods.
          assert.equal(is[i]!.size, Math.min(size, ids.length - 1), `client ${i}`);
        }
        // And back: the same subsets as before the probe failed.
        assert.deepEqual(selections(all, before), was);
      }),
      { numRuns: 300 },
    );
  });

  it('moves about C/2 connections in all per pod added at 300 × 300 × 10, where the SRE book\'s shuffled rounds move ~1,600', () => {
    // Not a bound the scheme promises (that is the 2 per client above): the figure the README
    // quotes, checked so it stays true. One insertion place in ten is tried (31 of 301).
    const ids = Array.from({ length: 300 }, (_, i) => 2 * (i + 1));
    const all = policies(10, 300);
    const was = selections(all, podsOf(ids));
    let total = 0;
    let places = 0;
    for (const extra of [1, ...ids.filter((_, i) => i % 10 === 0).map((id) => id + 1)]) {
      const is = selections(all, podsOf([...ids, extra]));
      for (let i = 0; i < 300; i++) total += moved(was[i]!, is[i]!).lost;
      places++;
    }
    const mean = total / places;
    assert.ok(mean > 100 && mean < 200, `${mean} connections moved per pod added`);
  });
});

describe('subset: options', () => {
  const refuses = (options: unknown, message: RegExp) =>
    assert.throws(() => subsetPolicy(options as never), (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_OPTION && message.test(e.message));

  it('refuses what is not a subset, naming the option', () => {
    refuses({ size: 0, clientId: 0, clientCount: 1 }, /subset\.size must be an integer >= 1, got 0/);
    refuses({ size: 1.5, clientId: 0, clientCount: 1 }, /subset\.size/);
    refuses({ size: 2, clientId: 3, clientCount: 3 }, /subset\.clientId must be an integer from 0 to clientCount - 1 \(2\), got 3/);
    refuses({ size: 2, clientId: -1, clientCount: 3 }, /subset\.clientId/);
    refuses({ size: 2, clientId: 0, clientCount: 1_000_001 }, /subset\.clientCount must be an integer from 1 to 1000000/);
    refuses({ size: 2, clientId: 0 }, /subset\.clientCount/);
    refuses({ size: 2, clientId: 0, clientCount: 2, clientID: 1 }, /unknown option subset\.clientID \(did you mean subset\.clientId\?\)/);
    refuses(5, /option subset must be an object/);
    assert.equal(subsetPolicy(undefined), undefined);
  });
});

describe('statefulSetOrdinal', () => {
  it('reads the ordinal at the end of a StatefulSet pod name', () => {
    assert.equal(statefulSetOrdinal('backend-3'), 3);
    assert.equal(statefulSetOrdinal('web-0'), 0);
    assert.equal(statefulSetOrdinal('my-app-v2-17'), 17);
    assert.equal(statefulSetOrdinal('shard.eu-120'), 120);
  });

  it('refuses a name without one with PODPOOL_INVALID_ARGUMENT', () => {
    for (const name of ['backend', 'backend-', 'backend-03', '-3', 'Backend-3', 'backend-3\n', 'backend-1234567890', `${'a'.repeat(252)}-1`, 3, undefined]) {
      assert.throws(
        () => statefulSetOrdinal(name as string),
        (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_ARGUMENT && /StatefulSet pod name ending in -<ordinal>/.test(e.message),
        JSON.stringify(name),
      );
    }
  });
});
