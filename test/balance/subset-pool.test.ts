/**
 * Subsetting through real pools over real WebSocket pods on loopback: four clients of eight pods
 * with subsets of three connect only to their own pods (the pods count the sockets), balance
 * inside them, and re-subset when discovery changes: a pod added, a pod failing its probe.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { subsetPolicy } from '../../src/balance/subset.ts';
import { createEndpoint, type Endpoint } from '../../src/endpoint.ts';
import { createPool, type Pool } from '../../src/pool/pool.ts';
import { webSocketTransport, type WebSocketClient } from '../../src/transport/websocket.ts';
import { activeResources, assertNothingLeft } from '../support/resources.ts';
import { ManualSource } from '../support/manual-source.ts';
import { closePods, startPods, type WsPod } from '../../testkit/ws-pods.ts';

const CLIENTS = 4;
const SIZE = 3;

/** Resolves once `done()` holds, checked at every socket a pod accepts or loses. */
function whenPods(pods: readonly WsPod[], done: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const check = (): void => {
      if (!done()) return;
      for (const p of pods) {
        p.off('connection', check);
        p.off('disconnect', check);
      }
      resolve();
    };
    for (const p of pods) {
      p.on('connection', check);
      p.on('disconnect', check);
    }
    check();
  });
}

function memberKeys(pool: Pool<WebSocketClient>): string[] {
  return pool.stats().members.map((m) => m.endpoint.key).sort();
}

const connected = (pods: readonly WsPod[]): number => pods.reduce((sum, p) => sum + p.connections, 0);

describe('subset through a pool', () => {
  it('each client connects only to its subset, balances within it, and re-subsets on a snapshot change', { timeout: 30_000 }, async () => {
    const pods = await startPods(9, { first: 161, record: false });
    // What the pools open, they close: measured with the pods still up.
    const before = activeResources();
    const source = new ManualSource();
    const pools: Pool<WebSocketClient>[] = [];
    try {
      const eight = pods.slice(0, 8);
      let snapshot = source.set(eight.map((p) => p.endpoint));
      for (let clientId = 0; clientId < CLIENTS; clientId++) {
        pools.push(
          createPool({
            source,
            transport: webSocketTransport(),
            subset: { size: SIZE, clientId, clientCount: CLIENTS },
            random: () => 0,
            reconnect: { minMs: 5, maxMs: 20 },
          }),
        );
      }
      await Promise.all(pools.map((pool) => pool.ready({ minEndpoints: SIZE, timeoutMs: 10_000 })));

      // 4 × 3 = 12 sockets, and no pod was ever dialled that is not in a subset: ⌊12/8⌋..⌈12/8⌉ each.
      assert.equal(connected(eight), CLIENTS * SIZE);
      assert.equal(eight.reduce((sum, p) => sum + p.accepted, 0), CLIENTS * SIZE);
      for (const p of eight) assert.ok(p.connections >= 1 && p.connections <= 2, `${p.key}: ${p.connections} clients`);
      const was = pools.map(memberKeys);
      for (const [i, keys] of was.entries()) {
        assert.equal(keys.length, SIZE, `client ${i}`);
        assert.deepEqual(keys, [...subsetPolicy({ size: SIZE, clientId: i, clientCount: CLIENTS })!.select(snapshot)].sort(), `client ${i} holds its own subset`);
      }

      // The balancer works inside the subset: round-robin gives each of the three a third.
      for (const [i, pool] of pools.entries()) {
        const answers = new Map<string, number>();
        for (let call = 0; call < 3 * SIZE; call++) {
          const { pod } = await pool.use((ws) => ws.request<{ pod: string }>('hello'));
          answers.set(pod, (answers.get(pod) ?? 0) + 1);
        }
        assert.deepEqual([...answers.keys()].sort(), was[i], `client ${i} answered by its subset only`);
        assert.deepEqual([...answers.values()], [3, 3, 3], `client ${i}`);
      }

      // A ninth pod: the windows shift, at most 2 of each client's pods change, the balance holds.
      snapshot = source.set(pods.map((p) => p.endpoint));
      await Promise.all(pools.map((pool) => pool.ready({ minEndpoints: SIZE, timeoutMs: 10_000 })));
      await whenPods(pods, () => connected(pods) === CLIENTS * SIZE);
      for (const p of pods) assert.ok(p.connections >= 1 && p.connections <= 2, `${p.key}: ${p.connections} clients of 9 pods`);
      const is = pools.map(memberKeys);
      for (const [i, keys] of is.entries()) {
        assert.deepEqual(keys, [...subsetPolicy({ size: SIZE, clientId: i, clientCount: CLIENTS })!.select(snapshot)].sort(), `client ${i} re-subset`);
        const lost = was[i]!.filter((k) => !keys.includes(k)).length;
        assert.ok(lost <= 2, `client ${i} moved ${lost} connections`);
      }

      // A pod fails its probe: the clients that had it take their next pod; it is left with none.
      const failing = pods.find((p) => p.connections > 0)!;
      const holders = is.filter((keys) => keys.includes(failing.key)).length;
      assert.ok(holders > 0);
      const notReady: Endpoint = createEndpoint({ address: failing.address, port: failing.endpoint.port, ready: false });
      source.set(pods.map((p) => (p === failing ? notReady : p.endpoint)));
      await whenPods(pods, () => failing.connections === 0 && connected(pods) === CLIENTS * SIZE);
      await Promise.all(pools.map((pool) => pool.ready({ minEndpoints: SIZE, timeoutMs: 10_000 })));
      for (const [i, pool] of pools.entries()) {
        const keys = memberKeys(pool);
        assert.equal(keys.length, SIZE, `client ${i}`);
        assert.ok(!keys.includes(failing.key), `client ${i} still holds the failing pod`);
        // Only the clients that held it moved, one connection each.
        const changed = is[i]!.filter((k) => !keys.includes(k)).length;
        assert.equal(changed, is[i]!.includes(failing.key) ? 1 : 0, `client ${i}`);
      }
      await Promise.all(pools.map((pool) => pool.close()));
      await whenPods(pods, () => connected(pods) === 0);
      assertNothingLeft(before);
    } finally {
      await Promise.all(pools.map((pool) => pool.close()));
      await closePods(pods);
    }
  });
});
