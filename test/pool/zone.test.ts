/**
 * Zone-aware routing end to end: EndpointSlices spanning three zones, served by the fake API
 * server and read by the Kubernetes source, feed a pool with the `zone` option over the in-memory
 * transport. Pods fail in the client's zone (unready in the slice, or refusing connections) and
 * recover; the test counts where the calls went and what `stats().zone` says.
 *
 * Each routing draw is exact: while the test makes its calls, the pool's random source returns
 * n evenly spaced draws ((k + 0.5) / n), so a share of 3/4 sends exactly 3/4 of n calls local.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test, type TestContext } from 'node:test';
import { ringHash } from '../../src/balance/ring-hash.ts';
import { kubernetesEndpoints } from '../../src/discovery/kubernetes.ts';
import type { Endpoint } from '../../src/endpoint.ts';
import { createPool, type Pool, type PoolOptions } from '../../src/pool/pool.ts';
import type { SliceEndpointInit } from '../../testkit/fake-apiserver.ts';
import { podIp } from '../../testkit/fake-apiserver.ts';
import { SERVICE, slice, startServer } from '../support/kubernetes-discovery.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';
import { stateReached } from '../support/pool-events.ts';
import { seeded } from '../support/test-member.ts';

const ZONES = ['a', 'b', 'c'];

/** Pod `<zone>-<n>` (n from 0 to 2): its index among the nine. */
function index(name: string): number {
  const [zone, n] = name.split('-');
  return ZONES.indexOf(zone) * 3 + Number(n);
}

function key(name: string): string {
  return `${podIp(index(name))}:8080`;
}

/** The slice of one zone's three pods; `each` adjusts a pod's entry. */
function zoneSlice(zone: string, each: (name: string) => Partial<SliceEndpointInit> = () => ({})): ReturnType<typeof slice> {
  const endpoints = [0, 1, 2].map((n) => {
    const name = `${zone}-${n}`;
    return { ip: podIp(index(name)), pod: `${SERVICE}-${name}`, zone, ...each(name) };
  });
  return slice(`${SERVICE}-${zone}`, endpoints);
}

/** The pool's random source: seeded, except while `evenly()` hands out a grid of draws. */
class Draws {
  readonly #seeded = seeded(12);
  #grid: { n: number; k: number } | undefined = undefined;

  readonly random = (): number => {
    const g = this.#grid;
    if (g === undefined) return this.#seeded();
    return (g.k++ % g.n + 0.5) / g.n;
  };

  /** Runs `fn` with n evenly spaced draws; returns how many draws it took. */
  evenly(n: number, fn: () => void): number {
    this.#grid = { n, k: 0 };
    try {
      fn();
      return this.#grid.k;
    } finally {
      this.#grid = undefined;
    }
  }
}

async function setUp(t: TestContext, slices: ReturnType<typeof slice>[], options: Partial<PoolOptions<MemoryClient>> = {}) {
  const server = await startServer(t);
  await server.apply(...slices);
  const transport = new MemoryTransport();
  const draws = new Draws();
  const pool = createPool({
    source: kubernetesEndpoints({ service: SERVICE, namespace: 'default', port: 'http', kubeConfig: server.kubeConfig(), backoff: { initialMs: 5, maxMs: 40 } }),
    transport,
    zone: { zone: 'a' },
    random: draws.random,
    reconnect: { minMs: 1, maxMs: 4 },
    ejection: false,
    ...options,
  });
  t.after(() => pool.close());
  return { server, transport, pool, draws };
}

/**
 * Makes `n` calls at once, each picked with one of n evenly spaced draws, and counts them by the
 * zone of the pod they ran on and by pod; `draws`: how many draws the picks took.
 */
async function route(pool: Pool<MemoryClient>, draws: Draws, n: number): Promise<{ zones: Record<string, number>; pods: Record<string, number>; draws: number }> {
  const calls: Promise<Endpoint>[] = [];
  const used = draws.evenly(n, () => {
    for (let i = 0; i < n; i++) calls.push(pool.use((_client, endpoint) => endpoint));
  });
  const zones: Record<string, number> = {};
  const pods: Record<string, number> = {};
  for (const e of await Promise.all(calls)) {
    zones[e.zone ?? '?'] = (zones[e.zone ?? '?'] ?? 0) + 1;
    const name = e.podName!.slice(SERVICE.length + 1);
    pods[name] = (pods[name] ?? 0) + 1;
  }
  return { zones, pods, draws: used };
}

test('three zones: all calls local while the zone is whole; a pod unready in its slice spills a share to the others; back to local when it is ready again', async (t) => {
  const { server, pool, draws } = await setUp(t, ZONES.map((z) => zoneSlice(z)));
  await pool.ready({ minEndpoints: 9 });

  // Local: the balancer picks, nothing is drawn for the zone.
  assert.deepEqual(await route(pool, draws, 90), { zones: { a: 90 }, pods: { 'a-0': 30, 'a-1': 30, 'a-2': 30 }, draws: 0 });
  assert.deepEqual(pool.stats().zone, { zone: 'a', mode: 'local', localShare: 1, local: 90, remote: 0 });

  const changed = once(pool, 'change');
  await server.apply(zoneSlice('a', (name) => (name === 'a-2' ? { ready: false } : {})));
  await changed;
  // Zone a has 2 of the 8 ready pods and 3 of the 9 pods: 3/4 of its calls stay, b and c share the rest.
  const spilled = await route(pool, draws, 96);
  assert.deepEqual(spilled.zones, { a: 72, b: 12, c: 12 });
  assert.deepEqual(spilled.pods, { 'a-0': 36, 'a-1': 36, 'b-0': 4, 'b-1': 4, 'b-2': 4, 'c-0': 4, 'c-1': 4, 'c-2': 4 });
  assert.equal(spilled.draws, 96, 'one draw a call');
  assert.deepEqual(pool.stats().zone, { zone: 'a', mode: 'spill', localShare: 0.75, local: 162, remote: 24 });

  const back = stateReached(pool, key('a-2'), 'ready');
  await server.apply(zoneSlice('a'));
  await back;
  assert.deepEqual((await route(pool, draws, 90)).zones, { a: 90 });
  assert.deepEqual(pool.stats().zone, { zone: 'a', mode: 'local', localShare: 1, local: 252, remote: 24 });
});

test('local pods refusing connections (ready in the slice) spill in proportion, down to none local, and calls come back as they reconnect', async (t) => {
  const { transport, pool, draws } = await setUp(t, ZONES.map((z) => zoneSlice(z)));
  await pool.ready({ minEndpoints: 9 });

  for (const name of ['a-1', 'a-2']) {
    const down = stateReached(pool, key(name), 'connecting');
    transport.refuse(key(name));
    transport.lose(key(name));
    await down;
  }
  // 1 of 7 ready pods against 3 of 9: 3/7 of the calls stay local, b and c take 2/7 each.
  const spilled = await route(pool, draws, 70);
  assert.deepEqual(spilled.zones, { a: 30, b: 20, c: 20 });
  assert.equal(spilled.pods['a-0'], 30);
  assert.equal(spilled.draws, 70);
  assert.deepEqual(pool.stats().zone, { zone: 'a', mode: 'spill', localShare: 3 / 7, local: 30, remote: 40 });

  const lastDown = stateReached(pool, key('a-0'), 'connecting');
  transport.refuse(key('a-0'));
  transport.lose(key('a-0'));
  await lastDown;
  assert.deepEqual((await route(pool, draws, 60)).zones, { b: 30, c: 30 });
  assert.deepEqual(pool.stats().zone, { zone: 'a', mode: 'spill', localShare: 0, local: 30, remote: 100 });

  const up = ['a-0', 'a-1', 'a-2'].map((name) => stateReached(pool, key(name), 'ready'));
  for (const name of ['a-0', 'a-1', 'a-2']) transport.accept(key(name));
  await Promise.all(up);
  const recovered = await route(pool, draws, 90);
  assert.deepEqual(recovered.zones, { a: 90 });
  assert.deepEqual(pool.stats().zone, { zone: 'a', mode: 'local', localShare: 1, local: 120, remote: 100 });
});

test('topology hints: the endpoints hinted for the zone are its local set, as kube-proxy reads them; hints naming other zones only prefer none', async (t) => {
  // As topology-mode Auto may: b-2 is hinted for zone a.
  const hinted = (name: string) => ({ hintZones: [name === 'b-2' ? 'a' : name[0]] });
  const { server, pool, draws } = await setUp(t, ZONES.map((z) => zoneSlice(z, hinted)));
  await pool.ready({ minEndpoints: 9 });

  const local = await route(pool, draws, 80);
  assert.deepEqual(local.pods, { 'a-0': 20, 'a-1': 20, 'a-2': 20, 'b-2': 20 });
  // stats() counts by the pod's own zone: b-2 serves zone a, but its calls crossed a zone.
  assert.deepEqual(pool.stats().zone, { zone: 'a', mode: 'local', localShare: 1, local: 60, remote: 20 });

  const changed = once(pool, 'change');
  await server.apply(...ZONES.map((z) => zoneSlice(z, () => ({ hintZones: [z === 'a' ? 'b' : z] }))));
  await changed;
  const spread = await route(pool, draws, 90);
  assert.deepEqual(spread.zones, { a: 30, b: 30, c: 30 });
  assert.equal(pool.stats().zone?.mode, 'all');
});

test('with ring hash, a key stays on one pod while the zone spills, and the ring is the local one while it is local', async (t) => {
  const { transport, pool } = await setUp(t, ZONES.map((z) => zoneSlice(z)), { balancer: ringHash() });
  await pool.ready({ minEndpoints: 9 });
  const keyOf = (i: number) => `user-${i}`;

  const where = async (): Promise<string[]> => {
    const calls: Promise<string>[] = [];
    for (let i = 0; i < 300; i++) calls.push(pool.use((_c, e) => e.key, { key: keyOf(i) }));
    return Promise.all(calls);
  };
  const local = await where();
  assert.ok(local.every((k) => ['a-0', 'a-1', 'a-2'].map(key).includes(k)), 'every key on a pod of zone a');
  assert.equal(new Set(local).size, 3, 'spread over the three of them');

  const down = stateReached(pool, key('a-2'), 'connecting');
  transport.refuse(key('a-2'));
  transport.lose(key('a-2'));
  await down;
  const first = await where();
  assert.deepEqual(await where(), first, 'every key went to the same pod again');
  const out = first.filter((k) => !['a-0', 'a-1'].map(key).includes(k)).length;
  assert.ok(out > 0 && out < 150, `${out} of 300 keys left the zone (a quarter, by their hash)`);
  assert.equal(pool.stats().zone?.mode, 'spill');
});
