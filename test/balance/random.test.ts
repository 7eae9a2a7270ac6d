import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { Pickable } from '../../src/balance/balancer.ts';
import { random } from '../../src/balance/random.ts';
import { createEndpoint } from '../../src/endpoint.ts';

function membersOf(n: number): Pickable[] {
  return Array.from({ length: n }, (_, id) => ({
    endpoint: createEndpoint({ address: `10.0.${id >> 8}.${id & 255}`, port: 80 }),
    inFlight: 0,
    samples: 0,
    latencyMs: () => 0,
  }));
}

describe('random', () => {
  it('is named random and has no latency decay', () => {
    assert.equal(random().name, 'random');
    assert.equal(random().latencyDecayMs, undefined);
  });

  it('picks the member at floor(draw × n), one draw per pick', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 200 }),
        fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 20 }),
        (n, draws) => {
          const members = membersOf(n);
          let next = 0;
          const picker = random().picker(members, { clock: () => 0, random: () => draws[next++] });
          for (const draw of draws) assert.equal(picker.pick(), members[Math.min(n - 1, Math.floor(draw * n))]);
          assert.equal(next, draws.length);
        },
      ),
    );
  });

  it('gives every member the same share of evenly spread draws', () => {
    const members = membersOf(7);
    const k = 7 * 1_000;
    let i = 0;
    const picker = random().picker(members, { clock: () => 0, random: () => (i++ + 0.5) / k });
    const counts = new Map<Pickable, number>();
    for (let j = 0; j < k; j++) {
      const m = picker.pick() as Pickable;
      counts.set(m, (counts.get(m) ?? 0) + 1);
    }
    assert.deepEqual([...counts.values()], Array(7).fill(1_000));
  });

  it('returns undefined over no members', () => {
    assert.equal(random().picker([], { clock: () => 0, random: () => 0.5 }).pick(), undefined);
  });
});
