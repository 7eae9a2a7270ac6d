import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { Pickable, PickerContext } from '../../src/balance/balancer.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { createEndpoint } from '../../src/endpoint.ts';

function membersOf(ids: readonly number[]): Pickable[] {
  return ids.map((id) => ({
    endpoint: createEndpoint({ address: `10.0.${id >> 8}.${id & 255}`, port: 80 }),
    inFlight: 0,
    samples: 0,
    latencyMs: () => 0,
  }));
}

function contextWith(random: number): PickerContext {
  return { clock: () => 0, random: () => random };
}

const below1 = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });

describe('roundRobin', () => {
  it('is named round-robin and has no latency decay', () => {
    assert.equal(roundRobin().name, 'round-robin');
    assert.equal(roundRobin().latencyDecayMs, undefined);
  });

  it('starts at the member the random draw lands on, then cycles in order', () => {
    const members = membersOf([0, 1, 2, 3]);
    const picker = roundRobin().picker(members, contextWith(0.5));
    const picked = Array.from({ length: 6 }, () => members.indexOf(picker.pick() as Pickable));
    assert.deepEqual(picked, [2, 3, 0, 1, 2, 3]);
  });

  it('starts at the first member for a draw of 0 and at the last for the largest draw below 1', () => {
    const members = membersOf([0, 1, 2]);
    assert.equal(roundRobin().picker(members, contextWith(0)).pick(), members[0]);
    assert.equal(roundRobin().picker(members, contextWith(1 - Number.EPSILON / 2)).pick(), members[2]);
  });

  it('draws its start once per picker, not per pick', () => {
    let draws = 0;
    const picker = roundRobin().picker(membersOf([0, 1, 2]), { clock: () => 0, random: () => (draws++, 0.4) });
    for (let i = 0; i < 10; i++) picker.pick();
    assert.equal(draws, 1);
  });

  it('returns undefined over no members and the only member over one', () => {
    assert.equal(roundRobin().picker([], contextWith(0.3)).pick(), undefined);
    const one = membersOf([9]);
    const picker = roundRobin().picker(one, contextWith(0.99));
    for (let i = 0; i < 3; i++) assert.equal(picker.pick(), one[0]);
  });

  it('between rebuilds on changing membership, picks each member floor(k/n) or ceil(k/n) times', () => {
    const universe = membersOf(Array.from({ length: 24 }, (_, i) => i));
    const epoch = fc.record({
      members: fc.subarray(universe, { minLength: 1 }),
      start: below1,
      picks: fc.nat({ max: 120 }),
    });
    fc.assert(
      fc.property(fc.array(epoch, { minLength: 1, maxLength: 8 }), (epochs) => {
        const balancer = roundRobin();
        for (const { members, start, picks } of epochs) {
          const picker = balancer.picker(members, contextWith(start));
          const counts = new Map<Pickable, number>();
          for (let k = 0; k < picks; k++) {
            const m = picker.pick() as Pickable;
            assert.ok(members.includes(m), 'picked a member it was not built over');
            counts.set(m, (counts.get(m) ?? 0) + 1);
          }
          const n = members.length;
          for (const m of members) {
            const c = counts.get(m) ?? 0;
            assert.ok(c === Math.floor(picks / n) || c === Math.ceil(picks / n), `${c} picks of ${picks} over ${n}`);
          }
        }
      }),
    );
  });
});
