import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { leastLoaded } from '../../src/balance/least-loaded.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { TestMember, seeded } from '../support/test-member.ts';


/** Cycles through fixed draws, so fast-check can shrink them and include 0 and 1 - ε. */
function cycle(draws: readonly number[]): () => number {
  let i = 0;
  return () => draws[i++ % draws.length];
}


const below1 = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
const clock = () => 0;

describe('leastLoaded', () => {
  it('is named least-loaded and has no latency decay', () => {
    assert.equal(leastLoaded().name, 'least-loaded');
    assert.equal(leastLoaded().latencyDecayMs, undefined);
  });

  it('of two members, always picks the one with fewer calls in flight', () => {
    const idle = new TestMember(1, { load: 0 });
    const busy = new TestMember(2, { load: 3 });
    for (const members of [[idle, busy], [busy, idle]]) {
      const picker = leastLoaded().picker(members, { clock, random: seeded(1) });
      for (let i = 0; i < 20; i++) assert.equal(picker.pick(), idle);
    }
  });

  it('never picks the busier of its samples, and samples `choices` distinct members', () => {
    fc.assert(
      fc.property(
        fc.array(fc.nat({ max: 6 }), { minLength: 2, maxLength: 30 }),
        fc.nat(),
        fc.array(below1, { minLength: 1, maxLength: 64 }),
        (loads, seed, draws) => {
          const choices = 1 + (seed % (loads.length - 1));
          const members = loads.map((load, i) => new TestMember(i, { load: load }));
          const picker = leastLoaded({ choices }).picker(members, { clock, random: cycle(draws) });
          for (let k = 0; k < 20; k++) {
            for (const m of members) m.reads = 0;
            const picked = picker.pick() as TestMember;
            const sampled = members.filter((m) => m.reads > 0);
            assert.equal(sampled.length, choices, 'sampled a member twice or too few');
            assert.ok(sampled.includes(picked), 'picked a member it did not sample');
            assert.equal(picked.load, Math.min(...sampled.map((m) => m.load)));
            picked.load++;
          }
        },
      ),
    );
  });

  it('with choices >= n, scans every member and picks one with the fewest in flight', () => {
    fc.assert(
      fc.property(
        fc.array(fc.nat({ max: 6 }), { minLength: 1, maxLength: 30 }),
        fc.oneof(fc.integer({ min: 30, max: 100 }), fc.constant(Infinity)),
        fc.array(below1, { minLength: 1, maxLength: 16 }),
        (loads, choices, draws) => {
          const members = loads.map((load, i) => new TestMember(i, { load: load }));
          const picker = leastLoaded({ choices }).picker(members, { clock, random: cycle(draws) });
          for (let k = 0; k < 10; k++) {
            const picked = picker.pick() as TestMember;
            assert.ok(members.includes(picked));
            assert.equal(picked.load, Math.min(...members.map((m) => m.load)));
            picked.load++;
          }
        },
      ),
    );
  });

  it('samples every member equally often, and splits ties evenly', () => {
    const members = Array.from({ length: 5 }, (_, i) => new TestMember(i));
    const picker = leastLoaded().picker(members, { clock, random: seeded(42) });
    const picked = new Map<TestMember, number>();
    const rounds = 50_000;
    for (let k = 0; k < rounds; k++) {
      const m = picker.pick() as TestMember;
      picked.set(m, (picked.get(m) ?? 0) + 1);
    }
    for (const m of members) {
      const sampledShare = m.reads / rounds;
      const pickedShare = (picked.get(m) ?? 0) / rounds;
      assert.ok(Math.abs(sampledShare - 2 / 5) < 0.01, `sampled in ${sampledShare} of picks`);
      assert.ok(Math.abs(pickedShare - 1 / 5) < 0.01, `picked in ${pickedShare} of picks`);
    }
  });

  it('with choices >= n, splits ties evenly', () => {
    const members = Array.from({ length: 4 }, (_, i) => new TestMember(i));
    let i = 0;
    const picker = leastLoaded({ choices: Infinity }).picker(members, { clock, random: () => (i++ % 4) / 4 + 0.125 });
    assert.deepEqual(
      Array.from({ length: 8 }, () => members.indexOf(picker.pick() as TestMember)),
      [0, 1, 2, 3, 0, 1, 2, 3],
    );
  });

  it('returns undefined over no members and the only member over one, without drawing', () => {
    const random = () => assert.fail('drew a random number');
    assert.equal(leastLoaded().picker([], { clock, random }).pick(), undefined);
    const one = new TestMember(1, { load: 5 });
    assert.equal(leastLoaded().picker([one], { clock, random }).pick(), one);
  });

  it('rejects choices that are not an integer >= 1, and options that are not an object', () => {
    for (const choices of [0, -2, 1.5, Number.NaN, -Infinity, '2']) {
      assert.throws(
        () => leastLoaded({ choices } as never),
        (error: unknown) =>
          error instanceof PodpoolError &&
          error.code === ErrorCode.INVALID_OPTION &&
          error.message.includes('choices') &&
          error.message.includes(typeof choices === 'string' ? JSON.stringify(choices) : String(choices)),
      );
    }
    for (const options of [null, 2, 'fast']) {
      assert.throws(() => leastLoaded(options as never), { code: ErrorCode.INVALID_OPTION });
    }
  });
});
