import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { Balancer } from '../../src/balance/balancer.ts';
import { peakEwma } from '../../src/balance/peak-ewma.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { TestMember, seeded } from '../support/test-member.ts';



const below1 = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });

/** Two picks over two members: both are always sampled, so the draws cannot matter. */
function pickTwice(balancer: Balancer, members: TestMember[], now = 0): TestMember[] {
  const picker = balancer.picker(members, { clock: () => now, random: seeded(7) });
  return [picker.pick() as TestMember, picker.pick() as TestMember];
}

describe('peakEwma', () => {
  it('is named peak-ewma and hands its decay to the pool (10 s unless told)', () => {
    assert.equal(peakEwma().name, 'peak-ewma');
    assert.equal(peakEwma().latencyDecayMs, 10_000);
    assert.equal(peakEwma({ decayMs: 2_500 }).latencyDecayMs, 2_500);
  });

  it('picks the member with the lower latency × (in flight + 1)', () => {
    // 10 ms × 1 beats 50 ms × 1; 10 ms × 6 loses to 50 ms × 1.
    const fast = TestMember.with(1, 0, 10);
    const slow = TestMember.with(2, 0, 50);
    assert.deepEqual(pickTwice(peakEwma(), [fast, slow]), [fast, fast]);
    assert.deepEqual(pickTwice(peakEwma(), [slow, fast]), [fast, fast]);
    fast.load = 5;
    assert.deepEqual(pickTwice(peakEwma(), [fast, slow]), [slow, slow]);
  });

  it('costs a member with no answer yet at 30 ms unless told otherwise', () => {
    const fresh = TestMember.with(1, 0);
    // The peer costs 10 × 4 = 40 > 30: the new member is tried.
    assert.deepEqual(pickTwice(peakEwma(), [TestMember.with(2, 3, 10), fresh]), [fresh, fresh]);
    // 10 × 2 = 20 < 30: the proven member keeps the call.
    const peer = TestMember.with(2, 1, 10);
    assert.deepEqual(pickTwice(peakEwma(), [peer, fresh]), [peer, peer]);
    // A new member's in-flight calls count against it too, so it can't be swamped: 30 × 2 > 40.
    fresh.load = 1;
    const busyPeer = TestMember.with(2, 3, 10);
    assert.deepEqual(pickTwice(peakEwma(), [busyPeer, fresh]), [busyPeer, busyPeer]);
    // With defaultLatencyMs 100 a fresh idle member loses to a peer costing 10 × 6 = 60.
    const idle = TestMember.with(1, 0);
    const loaded = TestMember.with(2, 5, 10);
    assert.deepEqual(pickTwice(peakEwma({ defaultLatencyMs: 100 }), [idle, loaded]), [loaded, loaded]);
    assert.deepEqual(pickTwice(peakEwma({ defaultLatencyMs: 50 }), [idle, loaded]), [idle, idle]);
  });

  it('reads latency at the clock time: an old slow answer decays below a recent fast one', () => {
    const old = TestMember.with(1, 0, 100); // observed at t = 0
    const recent = new TestMember(2);
    const t = 10_000 * Math.log(10); // old decays to 10 ms by t
    recent.ewma.observe(20, t);
    assert.deepEqual(pickTwice(peakEwma(), [old, recent], 0), [recent, recent]);
    assert.deepEqual(pickTwice(peakEwma(), [old, recent], t), [old, old]);
  });

  it('reads the clock once per pick', () => {
    let reads = 0;
    const members = [TestMember.with(1, 0, 5), TestMember.with(2, 0, 7), TestMember.with(3, 1, 3)];
    const picker = peakEwma().picker(members, { clock: () => (reads++, 0), random: seeded(3) });
    for (let i = 0; i < 10; i++) picker.pick();
    assert.equal(reads, 10);
  });

  it('samples two distinct members and never picks the costlier', () => {
    const memberArb = fc.record({
      load: fc.nat({ max: 8 }),
      latencies: fc.array(fc.double({ min: 0.1, max: 500, noNaN: true }), { maxLength: 3 }),
    });
    fc.assert(
      fc.property(
        fc.array(memberArb, { minLength: 2, maxLength: 20 }),
        fc.array(below1, { minLength: 2, maxLength: 40 }),
        fc.double({ min: 0, max: 60_000, noNaN: true }),
        fc.double({ min: 1, max: 200, noNaN: true }),
        (specs, draws, now, defaultLatencyMs) => {
          const members = specs.map(({ load, latencies }, id) => {
            const m = new TestMember(id);
            m.load = load;
            latencies.forEach((latency, k) => m.ewma.observe(latency, (k * now) / 3));
            return m;
          });
          const cost = (m: TestMember) => (m.samples === 0 ? defaultLatencyMs : m.ewma.at(now)) * (m.load + 1);
          let i = 0;
          const random = () => draws[i++ % draws.length];
          const picker = peakEwma({ defaultLatencyMs }).picker(members, { clock: () => now, random });
          for (let k = 0; k < 10; k++) {
            for (const m of members) m.reads = 0;
            const picked = picker.pick() as TestMember;
            const sampled = members.filter((m) => m.reads > 0);
            assert.equal(sampled.length, 2);
            assert.ok(sampled.includes(picked));
            assert.ok(cost(picked) <= Math.min(cost(sampled[0]), cost(sampled[1])));
            picked.load++;
          }
        },
      ),
    );
  });

  it('moves traffic off a member that turns slow', () => {
    // A virtual-time run: one call a ms, each answered after its member's latency. From 10 s on
    // member 0 answers in 100 ms instead of 10; round-robin keeps sending it a quarter.
    const run = (balancer: Balancer) => {
      const members = [0, 1, 2, 3].map((id) => new TestMember(id, { decayMs: balancer.latencyDecayMs ?? 10_000 }));
      let now = 0;
      const picker = balancer.picker(members, { clock: () => now, random: seeded(11) });
      const pending: { at: number; member: TestMember; latency: number }[] = [];
      const share = { before: 0, after: 0 };
      for (now = 0; now < 20_000; now++) {
        for (let i = pending.length - 1; i >= 0; i--) {
          const call = pending[i];
          if (call.at > now) continue;
          call.member.ewma.observe(call.latency, now);
          call.member.load--;
          pending.splice(i, 1);
        }
        const member = picker.pick() as TestMember;
        member.load++;
        const latency = member === members[0] && now >= 10_000 ? 100 : 10;
        pending.push({ at: now + latency, member, latency });
        if (member === members[0] && now >= 5_000 && now < 10_000) share.before++;
        if (member === members[0] && now >= 15_000) share.after++;
      }
      return { before: share.before / 5_000, after: share.after / 5_000 };
    };
    const ewma = run(peakEwma());
    assert.ok(ewma.before > 0.2, `the member took ${ewma.before} while as fast as the others`);
    assert.ok(ewma.after < 0.05, `the member took ${ewma.after} while 10× slower`);
    const rr = run(roundRobin());
    assert.equal(rr.after, 0.25);
  });

  it('returns undefined over no members and the only member over one', () => {
    const context = { clock: () => 0, random: () => 0.5 };
    assert.equal(peakEwma().picker([], context).pick(), undefined);
    const one = TestMember.with(1, 9, 900);
    assert.equal(peakEwma().picker([one], context).pick(), one);
  });

  it('rejects a decay or default latency that is not a positive number', () => {
    const cases: [string, unknown][] = [
      ['decayMs', 0],
      ['decayMs', -1],
      ['decayMs', Number.NaN],
      ['decayMs', Infinity],
      ['decayMs', '10s'],
      ['defaultLatencyMs', 0],
      ['defaultLatencyMs', -5],
      ['defaultLatencyMs', Infinity],
      ['defaultLatencyMs', null],
    ];
    for (const [name, value] of cases) {
      assert.throws(
        () => peakEwma({ [name]: value } as never),
        (error: unknown) =>
          error instanceof PodpoolError &&
          error.code === ErrorCode.INVALID_OPTION &&
          error.message.includes(name) &&
          error.message.includes(typeof value === 'string' ? JSON.stringify(value) : String(value)),
        `${name}: ${String(value)}`,
      );
    }
    assert.throws(() => peakEwma(null as never), { code: ErrorCode.INVALID_OPTION });
  });
});
