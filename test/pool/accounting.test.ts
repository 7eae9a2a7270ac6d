import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Balancer } from '../../src/balance/balancer.ts';
import { leastLoaded } from '../../src/balance/least-loaded.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { createEndpoint } from '../../src/endpoint.ts';
import { Member, type MemberEvents } from '../../src/pool/member.ts';
import { bytesAllocated } from '../../testkit/allocation.ts';

// The accounting every use(), broadcast delivery and adapter call shares (pick, startCall,
// endCall) is the per-request path: it must not allocate. bench/micro/call-path.ts times it.
describe('per-call accounting on the pool’s Member', () => {
  const balancers: [string, () => Balancer][] = [
    ['round-robin', roundRobin],
    ['least-loaded', leastLoaded],
  ];
  for (const [name, make] of balancers) {
    it(`${name}: pick + startCall + endCall allocates no object, closure or string`, () => {
      let failures = 0;
      const events: MemberEvents = { transition: () => {}, failed: () => failures++, drained: () => {} };
      const members = Array.from({ length: 10 }, (_, i) => new Member<object>(createEndpoint({ address: `10.3.0.${i}`, port: 80 }), 10_000, events));
      // An integer clock and a draw of 0: V8 boxes a fractional number returned from a call it
      // did not inline, which would hide what this looks for (see test/balance/contract.test.ts).
      let now = 0;
      const picker = make().picker(members, { clock: () => now, random: () => 0 });
      const run = (calls: number) => {
        for (let i = 0; i < calls; i++) {
          const m = picker.pick(undefined)!;
          m.startCall();
          now += 1;
          m.endCall((i & 7) === 0 ? 'failed' : 'answered', 3, now);
        }
      };
      run(100_000); // optimized code is heap too: compile it before measuring
      const calls = 200_000;
      const grown = bytesAllocated(() => run(calls));
      // The smallest heap object is 12 bytes, so allocating per call costs >= 2.4 MB.
      assert.ok(grown < calls * 8, `${grown} bytes allocated over ${calls} calls`);
      // The calls were counted: every member settled, the failures reached ejection's hook.
      assert.deepEqual(members.map((m) => m.inFlight), Array(10).fill(0));
      assert.equal(failures, (100_000 + calls) / 8);
      assert.equal(members.reduce((sum, m) => sum + m.stats(now).requests, 0), 100_000 + calls);
    });
  }
});
