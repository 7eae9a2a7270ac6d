import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { Balancer, Pickable } from '../../src/balance/balancer.ts';
import { leastLoaded } from '../../src/balance/least-loaded.ts';
import { peakEwma } from '../../src/balance/peak-ewma.ts';
import { random } from '../../src/balance/random.ts';
import { ringHash } from '../../src/balance/ring-hash.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { createEndpoint } from '../../src/endpoint.ts';
import { ErrorCode } from '../../src/errors.ts';
import { LatencyEwma } from '../../src/pool/latency.ts';
import { bytesAllocated } from '../../testkit/allocation.ts';

const balancers: [string, () => Balancer][] = [
  ['round-robin', () => roundRobin()],
  ['random', () => random()],
  ['least-loaded', () => leastLoaded()],
  ['least-loaded (choices 3)', () => leastLoaded({ choices: 3 })],
  ['least-loaded (scan)', () => leastLoaded({ choices: Infinity })],
  ['peak-ewma', () => peakEwma()],
  ['ring-hash', () => ringHash({ replicas: 8 })],
];

const memberArb = fc.record({
  id: fc.integer({ min: 0, max: 0xffff }),
  inFlight: fc.nat({ max: 10 }),
  latencies: fc.array(fc.double({ min: 0, max: 1_000, noNaN: true }), { maxLength: 2 }),
});

function membersOf(specs: { id: number; inFlight: number; latencies: number[] }[]): Pickable[] {
  return specs.map(({ id, inFlight, latencies }) => {
    const ewma = new LatencyEwma(10_000);
    for (const latency of latencies) ewma.observe(latency, 0);
    return {
      endpoint: createEndpoint({ address: `10.1.${id >> 8}.${id & 255}`, port: 443 }),
      inFlight,
      samples: ewma.samples,
      latencyMs: (now: number) => ewma.at(now),
    };
  });
}

describe('every balancer', () => {
  for (const [name, make] of balancers) {
    it(`${name}: picks only members of the array it was built over, undefined only when empty`, () => {
      fc.assert(
        fc.property(
          fc.uniqueArray(memberArb, { selector: (m) => m.id, maxLength: 30 }),
          fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 32 }),
          fc.double({ min: 0, max: 1e6, noNaN: true }),
          fc.array(fc.string({ maxLength: 12 }), { minLength: 1, maxLength: 20 }),
          (specs, draws, now, keys) => {
            // Frozen: a picker that reordered or trimmed the array it keeps would throw here.
            const members = Object.freeze(membersOf(specs));
            let i = 0;
            const picker = make().picker(members, { clock: () => now, random: () => draws[i++ % draws.length] });
            for (const key of keys) {
              const picked = picker.pick(key);
              if (members.length === 0) assert.equal(picked, undefined);
              else assert.ok(picked !== undefined && members.includes(picked), `picked ${String(picked)}`);
            }
          },
        ),
      );
    });
  }

  for (const [name, make] of balancers) {
    it(`${name}: pick allocates no object, array, closure or string`, () => {
      // Integer loads and latencies, a draw of 0 and an integer clock: V8 boxes a fractional
      // number returned from a call it did not inline, which would hide what this looks for.
      const members: Pickable[] = Array.from({ length: 100 }, (_, id) => ({
        endpoint: createEndpoint({ address: `10.2.0.${id}`, port: 80 }),
        inFlight: id % 7,
        samples: 1,
        latencyMs: () => 7,
      }));
      const keys = Array.from({ length: 64 }, (_, i) => `key-${i}`);
      const picker = make().picker(members, { clock: () => 5_000, random: () => 0 });
      const run = (picks: number) => {
        for (let i = 0; i < picks; i++) picker.pick(keys[i & 63]);
      };
      run(100_000); // optimized code is heap too: compile it before measuring
      const picks = 200_000;
      const grown = bytesAllocated(() => run(picks));
      // The smallest heap object is 12 bytes, so allocating per pick costs >= 2.4 MB; the
      // allowance covers a re-optimization (code is heap too, a few hundred KB).
      assert.ok(grown < picks * 8, `${grown} bytes allocated over ${picks} picks`);
    });
  }

  it('is named as the pool and stats report it, and only peak-ewma asks for a latency decay', () => {
    assert.deepEqual(
      [roundRobin(), random(), leastLoaded(), peakEwma(), ringHash()].map((b) => [b.name, b.latencyDecayMs]),
      [
        ['round-robin', undefined],
        ['random', undefined],
        ['least-loaded', undefined],
        ['peak-ewma', 10_000],
        ['ring-hash', undefined],
      ],
    );
  });

  it('rejects options that are not an object', () => {
    for (const make of [leastLoaded, peakEwma, ringHash]) {
      for (const options of [null, 3, 'x', true]) {
        assert.throws(() => make(options as never), { code: ErrorCode.INVALID_OPTION });
      }
    }
  });
});
