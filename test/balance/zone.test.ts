import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { Pickable, PickerContext } from '../../src/balance/balancer.ts';
import { ringHash } from '../../src/balance/ring-hash.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { zonePicker, zonePlan, zonePolicy, type ZoneCounts, type ZonePlan, type ZonePolicy } from '../../src/balance/zone.ts';
import { EndpointSet, type Endpoint, type EndpointInit } from '../../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';

interface Member extends Pickable {
  readonly name: string;
}

/** Pod `name` is `<zone>-<n>`; its address follows from the zone's letter and `n`. */
function pod(name: string, init: Partial<EndpointInit> = {}): EndpointInit {
  const [zone, n] = name.split('-');
  return { address: `10.0.${zone.charCodeAt(0)}.${Number(n)}`, port: 80, zone, ...init };
}

/** `a-0 a-1 a-2 b-0 …`: `perZone` pods in each of `zones`. */
function pods(zones: string[], perZone: number, init: (name: string) => Partial<EndpointInit> = () => ({})): EndpointInit[] {
  return zones.flatMap((z) => Array.from({ length: perZone }, (_, i) => pod(`${z}-${i}`, init(`${z}-${i}`))));
}

/** The snapshot, and a member for each endpoint named in `up` (the pickable ones), in key order. */
function world(endpoints: EndpointInit[], up: (name: string) => boolean = () => true): { set: EndpointSet; members: Member[] } {
  const set = new EndpointSet(endpoints);
  const members: Member[] = [];
  for (const init of endpoints) {
    const endpoint = set.get(`${init.address}:80`)!;
    const name = nameOf(endpoint);
    if (up(name)) members.push({ name, endpoint, inFlight: 0, samples: 0, latencyMs: () => 0 });
  }
  members.sort((x, y) => (x.endpoint.key < y.endpoint.key ? -1 : 1));
  return { set, members };
}

function nameOf(e: Endpoint): string {
  const [, , z, n] = e.address.split('.');
  return `${String.fromCharCode(Number(z))}-${n}`;
}

function names(members: readonly Member[]): string[] {
  return members.map((m) => m.name).sort();
}

/** The plan, with members as names, for readable assertions. */
function summary(plan: ZonePlan<Member>): unknown {
  return {
    mode: plan.mode,
    by: plan.by,
    localShare: plan.localShare,
    local: names(plan.local),
    spill: plan.spill.map((s) => ({ zone: s.zone, share: s.share, members: names(s.members) })),
  };
}

const A = zonePolicy({ zone: 'a' })!;
const ABC = ['a', 'b', 'c'];

function counts(): ZoneCounts {
  return { local: 0, remote: 0, mode: 'all', localShare: 0 };
}

describe('zonePolicy', () => {
  it('checks the options at the door, naming the bad one', () => {
    assert.deepEqual(zonePolicy({ zone: 'eu-west-1a' }), { zone: 'eu-west-1a', hints: true });
    assert.deepEqual(zonePolicy({ zone: 'a', hints: false }), { zone: 'a', hints: false });
    assert.equal(zonePolicy(undefined), undefined);
    const refuses = (options: unknown, message: RegExp) =>
      assert.throws(() => zonePolicy(options as never), (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_OPTION && message.test(e.message));
    refuses({ zone: '' }, /option zone\.zone must be a zone name/);
    refuses({ zone: 7 }, /option zone\.zone must be a zone name/);
    refuses({}, /option zone\.zone must be a zone name/);
    refuses({ zone: 'a', hints: 'yes' }, /option zone\.hints must be true or false/);
    refuses({ zone: 'a', hint: true }, /unknown option zone\.hint \(did you mean zone\.hints\?\)/);
    refuses('a', /option zone must be an object/);
  });
});

describe('zonePlan by the endpoints’ zones', () => {
  it('keeps every call local while each zone has all its pods', () => {
    const { set, members } = world(pods(ABC, 3));
    assert.deepEqual(summary(zonePlan(A, members, set)), { mode: 'local', by: 'zone', localShare: 1, local: ['a-0', 'a-1', 'a-2'], spill: [] });
  });

  it('spills a share when a local pod is down (not connected): healthy share / expected share stays local', () => {
    const { set, members } = world(pods(ABC, 3), (n) => n !== 'a-2');
    // Local: 2 of 8 healthy against 3 of 9 expected: 0.25 / (1/3) = 0.75 stays; b and c have
    // the same surplus (3/8 - 1/3) and split the rest.
    assert.deepEqual(summary(zonePlan(A, members, set)), {
      mode: 'spill',
      by: 'zone',
      localShare: 0.75,
      local: ['a-0', 'a-1'],
      spill: [
        { zone: 'b', share: 0.125, members: ['b-0', 'b-1', 'b-2'] },
        { zone: 'c', share: 0.125, members: ['c-0', 'c-1', 'c-2'] },
      ],
    });
  });

  it('counts a pod failing its readiness probe as capacity its zone is missing', () => {
    const { set, members } = world(pods(ABC, 3, (n) => (n === 'a-2' ? { ready: false } : {})), (n) => n !== 'a-2');
    const plan = zonePlan(A, members, set);
    assert.equal(plan.mode, 'spill');
    assert.equal(plan.localShare, 0.75);
  });

  it('does not count a terminating pod: the zone is scaling down, its other pods are its share', () => {
    const { set, members } = world(pods(ABC, 3, (n) => (n === 'a-2' ? { terminating: true } : {})), (n) => n !== 'a-2');
    assert.deepEqual(summary(zonePlan(A, members, set)), { mode: 'local', by: 'zone', localShare: 1, local: ['a-0', 'a-1'], spill: [] });
  });

  it('stays local when only other zones lose pods', () => {
    const { set, members } = world(pods(ABC, 3), (n) => !n.startsWith('b-'));
    assert.equal(zonePlan(A, members, set).mode, 'local');
  });

  it('sends the spill to the zones with capacity to spare, in proportion to it', () => {
    // a and b each lose one: b has no surplus (2/7 < 1/3), c takes all of a's spill.
    const { set, members } = world(pods(ABC, 3), (n) => n !== 'a-2' && n !== 'b-2');
    const plan = zonePlan(A, members, set);
    assert.equal(plan.mode, 'spill');
    assert.ok(Math.abs(plan.localShare - 6 / 7) < 1e-12);
    assert.deepEqual(plan.spill.map((s) => s.zone), ['c']);
    assert.ok(Math.abs(plan.spill[0].share - 1 / 7) < 1e-12);
  });

  it('spills everything, by surplus, when no local pod is up', () => {
    const { set, members } = world(pods(ABC, 3), (n) => !n.startsWith('a-'));
    assert.deepEqual(summary(zonePlan(A, members, set)), {
      mode: 'spill',
      by: 'zone',
      localShare: 0,
      local: [],
      spill: [
        { zone: 'b', share: 0.5, members: ['b-0', 'b-1', 'b-2'] },
        { zone: 'c', share: 0.5, members: ['c-0', 'c-1', 'c-2'] },
      ],
    });
  });

  it('prefers no zone when the client’s zone has no pods, or no pod has a zone', () => {
    let { set, members } = world(pods(['b', 'c'], 3));
    assert.deepEqual(summary(zonePlan(A, members, set)), { mode: 'all', by: 'zone', localShare: 0, local: names(members), spill: [] });
    ({ set, members } = world(pods(ABC, 2, () => ({ zone: undefined }))));
    assert.equal(zonePlan(A, members, set).mode, 'all');
    ({ set, members } = world([]));
    assert.equal(zonePlan(A, members, set).mode, 'all');
  });

  it('counts only the endpoints of the client’s subset', () => {
    // Subset: a-0, a-1, b-0, c-0. Expected a: 2 of 4. a-1 down: 1 of 3 healthy → 2/3 stays local.
    const { set, members } = world(pods(ABC, 3), (n) => ['a-0', 'b-0', 'c-0'].includes(n));
    const subset = new Set(['a-0', 'a-1', 'b-0', 'c-0'].map((n) => `${pod(n).address}:80`));
    const plan = zonePlan(A, members, set, subset);
    assert.equal(plan.mode, 'spill');
    assert.ok(Math.abs(plan.localShare - 2 / 3) < 1e-12);
    assert.deepEqual(plan.spill.map((s) => [s.zone, names(s.members)]), [['b', ['b-0']], ['c', ['c-0']]]);
  });

  it('keeps every healthy pod equally loaded when every zone’s clients route this way (clients spread like the pods)', () => {
    // Zones with expected pods e ≥ healthy pods h. Clients of zone z are e_z / E of all; each
    // follows its own plan. Envoy's rule gives every healthy pod 1 / H of the load.
    const zoneArb = fc.array(fc.tuple(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 0, max: 12 })), { minLength: 2, maxLength: 5 });
    fc.assert(
      fc.property(zoneArb, (spec) => {
        const zones = spec.map((_, i) => String.fromCharCode(97 + i));
        const endpoints: EndpointInit[] = [];
        const downs = new Set<string>();
        spec.forEach(([expected, healthy], i) => {
          for (let n = 0; n < expected; n++) {
            endpoints.push(pod(`${zones[i]}-${n}`));
            if (n >= healthy) downs.add(`${zones[i]}-${n}`);
          }
        });
        const { set, members } = world(endpoints, (n) => !downs.has(n));
        fc.pre(members.length > 0);
        const load = new Map<string, number>();
        for (const [i, z] of zones.entries()) {
          const clients = spec[i][0] / set.size;
          const plan = zonePlan(zonePolicy({ zone: z })!, members, set);
          assert.notEqual(plan.mode, 'all');
          const share = (list: readonly Member[], s: number) => {
            for (const m of list) load.set(m.name, (load.get(m.name) ?? 0) + (clients * s) / list.length);
          };
          if (plan.localShare > 0) share(plan.local, plan.localShare);
          for (const s of plan.spill) share(s.members, s.share);
          const total = plan.localShare + plan.spill.reduce((sum, s) => sum + s.share, 0);
          assert.ok(Math.abs(total - 1) < 1e-9, `zone ${z}'s shares sum to ${total}`);
        }
        for (const m of members) assert.ok(Math.abs((load.get(m.name) ?? 0) - 1 / members.length) < 1e-9, `${m.name} carries ${load.get(m.name)} of the load, not 1/${members.length}`);
      }),
      { numRuns: 300 },
    );
  });
});

describe('zonePlan by topology hints', () => {
  it('uses the hints when every ready endpoint has one (PreferClose: each pod hinted for its own zone)', () => {
    const { set, members } = world(pods(ABC, 3, (n) => ({ hintZones: [n[0]] })));
    assert.deepEqual(summary(zonePlan(A, members, set)), { mode: 'local', by: 'hints', localShare: 1, local: ['a-0', 'a-1', 'a-2'], spill: [] });
  });

  it('takes the endpoints hinted for the zone as local, wherever they run (topology-mode Auto)', () => {
    // The controller gave b-2 to zone a (say a has more CPU): a's local set is a-0, a-1, b-2.
    const { set, members } = world(pods(ABC, 3, (n) => ({ hintZones: [n === 'b-2' ? 'a' : n[0]] })));
    assert.deepEqual(summary(zonePlan(A, members, set)), { mode: 'local', by: 'hints', localShare: 1, local: ['a-0', 'a-1', 'a-2', 'b-2'], spill: [] });
  });

  it('ignores unready endpoints without hints, as kube-proxy does, and spills for hinted pods it cannot reach', () => {
    // a-3 is unready without a hint (the controller strips them); a-2 is hinted and ready in the
    // slice, but this client can't connect to it: 2 of 8 healthy against 3 of 9 → 0.75.
    const endpoints = [...pods(ABC, 3, (n) => ({ hintZones: [n[0]] })), pod('a-3', { ready: false })];
    const { set, members } = world(endpoints, (n) => n !== 'a-2' && n !== 'a-3');
    const plan = zonePlan(A, members, set);
    assert.equal(plan.by, 'hints');
    assert.equal(plan.mode, 'spill');
    assert.equal(plan.localShare, 0.75);
  });

  it('prefers no zone when no endpoint is hinted for the client’s zone (kube-proxy’s fallback)', () => {
    const { set, members } = world(pods(ABC, 3, (n) => ({ hintZones: [n[0] === 'a' ? 'b' : n[0]] })));
    assert.deepEqual(summary(zonePlan(A, members, set)), { mode: 'all', by: 'hints', localShare: 0, local: names(members), spill: [] });
  });

  it('falls back to the zones when one ready endpoint has no hint, or when hints are turned off', () => {
    // Every pod hinted for b: by hints, a would prefer no zone; by zone, it stays local.
    const hinted = pods(ABC, 3, () => ({ hintZones: ['b'] }));
    const partly = hinted.map((e, i) => (i === 4 ? { ...e, hintZones: undefined } : e));
    let { set, members } = world(partly);
    assert.deepEqual([zonePlan(A, members, set).by, zonePlan(A, members, set).mode], ['zone', 'local']);
    ({ set, members } = world(hinted));
    assert.deepEqual([zonePlan(A, members, set).by, zonePlan(A, members, set).mode], ['hints', 'all']);
    const noHints = zonePolicy({ zone: 'a', hints: false })!;
    assert.deepEqual([zonePlan(noHints, members, set).by, zonePlan(noHints, members, set).mode], ['zone', 'local']);
  });
});

/** Draws spread evenly over [0, 1): the k-th of n draws is (k + 0.5) / n. */
function grid(n: number): { random: () => number; draws: () => number } {
  let k = 0;
  return { random: () => (k++ % n + 0.5) / n, draws: () => k };
}

describe('zonePicker', () => {
  function pickCounts(policy: ZonePolicy, up: (n: string) => boolean, picks: number): { byZone: Record<string, number>; counts: ZoneCounts; draws: number } {
    const { set, members } = world(pods(ABC, 3), up);
    const c = counts();
    let random = () => 0;
    const context: PickerContext = { clock: () => 0, random: () => random() };
    const picker = zonePicker(roundRobin(), members, context, policy, c, set);
    const g = grid(picks);
    random = g.random;
    const byZone: Record<string, number> = {};
    for (let i = 0; i < picks; i++) {
      const m = picker.pick()!;
      byZone[m.endpoint.zone!] = (byZone[m.endpoint.zone!] ?? 0) + 1;
    }
    return { byZone, counts: c, draws: g.draws() };
  }

  it('routes every call to the local zone while it has its share, counting them local', () => {
    const { byZone, counts: c } = pickCounts(A, () => true, 90);
    assert.deepEqual(byZone, { a: 90 });
    assert.deepEqual(c, { local: 90, remote: 0, mode: 'local', localShare: 1 });
  });

  it('spills with one draw a call: 3/4 local, the rest split between the zones with spare capacity', () => {
    const { byZone, counts: c, draws } = pickCounts(A, (n) => n !== 'a-2', 96);
    assert.deepEqual(byZone, { a: 72, b: 12, c: 12 });
    assert.deepEqual(c, { local: 72, remote: 24, mode: 'spill', localShare: 0.75 });
    assert.equal(draws, 96);
  });

  it('spreads the calls over every pod when it prefers no zone, counting the ones in its zone as local', () => {
    const { byZone, counts: c } = pickCounts(zonePolicy({ zone: 'd' })!, () => true, 90);
    assert.deepEqual(byZone, { a: 30, b: 30, c: 30 });
    assert.deepEqual(c, { local: 0, remote: 90, mode: 'all', localShare: 0 });
    // Zone a, with hints all naming b: no preference, but a's own pods count as local.
    const { set, members } = world(pods(ABC, 3, () => ({ hintZones: ['b'] })));
    const ca = counts();
    const picker = zonePicker(roundRobin(), members, { clock: () => 0, random: () => 0 }, A, ca, set);
    for (let i = 0; i < 9; i++) picker.pick();
    assert.deepEqual(ca, { local: 3, remote: 6, mode: 'all', localShare: 0 });
  });

  it('returns undefined when nothing can be picked', () => {
    const { set, members } = world(pods(ABC, 3), () => false);
    const c = counts();
    assert.equal(zonePicker(roundRobin(), members, { clock: () => 0, random: () => 0.5 }, A, c, set).pick(), undefined);
    assert.deepEqual(c, { local: 0, remote: 0, mode: 'all', localShare: 0 });
  });

  describe('with an affinity key (ring hash)', () => {
    const never: PickerContext = { clock: () => assert.fail('read the clock'), random: () => assert.fail('a keyed pick drew a random number') };
    const keys = Array.from({ length: 10_000 }, (_, i) => `session-${i}`);

    it('builds the ring over the local set while local: every key on a local pod, spread over all of them', () => {
      const { set, members } = world(pods(ABC, 3));
      const picker = zonePicker(ringHash(), members, never, A, counts(), set);
      const perPod = new Map<string, number>();
      for (const k of keys) {
        const m = picker.pick(k)!;
        perPod.set(m.name, (perPod.get(m.name) ?? 0) + 1);
      }
      assert.deepEqual([...perPod.keys()].sort(), ['a-0', 'a-1', 'a-2']);
      for (const n of perPod.values()) assert.ok(n > 2_500, `a pod of the local ring got ${n} of 10,000 keys`);
    });

    it('keeps each key on one pod while spilling, and sends about the spill’s share of keys out', () => {
      const { set, members } = world(pods(ABC, 3), (n) => n !== 'a-2');
      const picker = zonePicker(ringHash(), members, never, A, counts(), set);
      let local = 0;
      const localPods = new Set<string>();
      for (const k of keys) {
        const m = picker.pick(k)!;
        for (let again = 0; again < 3; again++) assert.equal(picker.pick(k), m, `key ${k} moved`);
        if (m.endpoint.zone === 'a') {
          local++;
          localPods.add(m.name);
        }
      }
      // The share is drawn from each key's hash: over 10,000 keys, within a point of 3/4; and the
      // keys that stay local still reach both local pods (the draw's hash is not the ring's).
      assert.ok(Math.abs(local / keys.length - 0.75) < 0.01, `${local} of 10,000 keys stayed local`);
      assert.deepEqual([...localPods].sort(), ['a-0', 'a-1']);
    });

    it('routes every key as a fresh build does when it starts from the previous picker, across changes of plan', () => {
      const all = world(pods(ABC, 4));
      const steps = [(n: string) => n !== 'b-3', (n: string) => n !== 'b-3' && n !== 'a-0', (n: string) => n !== 'a-0', () => true];
      let previous = zonePicker(ringHash(), all.members, never, A, counts(), all.set);
      for (const up of steps) {
        const members = all.members.filter((m) => up(m.name));
        const reused = zonePicker(ringHash(), members, never, A, counts(), all.set, undefined, previous);
        const fresh = zonePicker(ringHash(), members, never, A, counts(), all.set);
        for (const k of keys.slice(0, 2_000)) assert.equal(reused.pick(k), fresh.pick(k), k);
        previous = reused;
      }
    });
  });
});
