import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { Endpoint } from '../../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { roundRobin } from '../../src/balance/round-robin.ts';
import { createPool, type Pool } from '../../src/pool/pool.ts';
import { flush } from '../support/flush.ts';
import { ManualSource, pod, podKey } from '../support/manual-source.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';
import { mockTimers } from '../support/mock-timers.ts';

const podArb = fc.integer({ min: 1, max: 5 });

type Op =
  | { kind: 'set'; pods: { n: number; ready: boolean; terminating: boolean }[] }
  | { kind: 'lose'; n: number }
  | { kind: 'blink'; n: number }
  | { kind: 'connects'; n: number; behaviour: 'accept' | 'refuse' | 'hold' }
  | { kind: 'release'; n: number }
  | { kind: 'use'; outcome: 'ok' | 'fail' | 'hang' }
  | { kind: 'finish'; index: number }
  | { kind: 'tick'; ms: number }
  | { kind: 'flush' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant('set' as const),
      pods: fc.uniqueArray(fc.record({ n: podArb, ready: fc.boolean(), terminating: fc.boolean() }), {
        selector: (p) => p.n,
        maxLength: 5,
      }),
    }),
    weight: 3,
  },
  { arbitrary: fc.record({ kind: fc.constant('lose' as const), n: podArb }), weight: 2 },
  // A connection out of the picks and back before anything else happens (the picker is built once after both).
  { arbitrary: fc.record({ kind: fc.constant('blink' as const), n: podArb }), weight: 2 },
  {
    arbitrary: fc.record({
      kind: fc.constant('connects' as const),
      n: podArb,
      behaviour: fc.constantFrom('accept' as const, 'refuse' as const, 'hold' as const),
    }),
    weight: 2,
  },
  { arbitrary: fc.record({ kind: fc.constant('release' as const), n: podArb }), weight: 2 },
  {
    arbitrary: fc.record({ kind: fc.constant('use' as const), outcome: fc.constantFrom('ok' as const, 'fail' as const, 'hang' as const) }),
    weight: 6,
  },
  { arbitrary: fc.record({ kind: fc.constant('finish' as const), index: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 300 }) }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'flush' as const }), weight: 2 },
);

/** A pick is right only onto a ready member, over a live connection, of a ready endpoint in the snapshot. */
function checkPick(pool: Pool<MemoryClient>, client: MemoryClient, endpoint: Endpoint): void {
  const member = pool.stats().members.find((m) => m.endpoint.key === endpoint.key);
  assert.equal(member?.state, 'ready', `picked ${endpoint.key} in state ${member?.state}`);
  const current = pool.endpoints.get(endpoint.key);
  assert.ok(current !== undefined, `picked ${endpoint.key}, which is not in the snapshot`);
  assert.ok(current.ready && !current.terminating, `picked ${endpoint.key}, which is not ready`);
  assert.equal(client.key, endpoint.key);
  assert.equal(client.dead, false, `picked ${endpoint.key} over a dead connection`);
}

/** Between operations: members and connections agree with the snapshot, and nothing leaks. */
function checkState(pool: Pool<MemoryClient>, transport: MemoryTransport): void {
  const stats = pool.stats();
  const members = new Map(stats.members.map((m) => [m.endpoint.key, m]));
  assert.equal(stats.ready, stats.members.filter((m) => m.state === 'ready').length);
  for (const m of stats.members) {
    assert.ok(m.inFlight >= 0);
    if (m.state !== 'ready' && m.state !== 'ejected' && m.state !== 'connecting') continue;
    const e = pool.endpoints.get(m.endpoint.key);
    assert.ok(e !== undefined && e.ready && !e.terminating, `${m.endpoint.key} is ${m.state} but its endpoint is not wanted`);
  }
  // Reconcile looks only at what each snapshot changed: that holds only while every endpoint in
  // service has a member taking it up, whatever happened to it between snapshots.
  for (const e of pool.endpoints) {
    if (!e.ready || e.terminating) continue;
    const m = members.get(e.key);
    assert.ok(m !== undefined && m.state !== 'draining' && m.state !== 'closed', `${e.key} is in service but its member is ${m?.state ?? 'missing'}`);
  }
  const live = new Map<string, number>();
  for (const c of transport.connections) {
    if (c.closed) continue;
    const member = members.get(c.key);
    assert.ok(member !== undefined, `connection ${c.connection} to ${c.key} outlived its member`);
    assert.notEqual(member.state, 'connecting', `connection ${c.connection} to connecting ${c.key} left open`);
    live.set(c.key, (live.get(c.key) ?? 0) + 1);
  }
  for (const [key, n] of live) assert.equal(n, 1, `${n} open connections to ${key}`);
}

const inner = roundRobin();

describe('the pool under any sequence of events', () => {
  it('picks only ready members of ready endpoints in the current snapshot, over live connections', async (t) => {
    const timers = mockTimers(t);

    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 40 }), async (ops) => {
        let now = 0;
        const source = new ManualSource();
        const transport = new MemoryTransport();
        const built: string[][] = [];
        const pool = createPool({
          source,
          transport,
          balancer: {
            name: 'recording',
            picker(members, context, previous) {
              built.push(members.map((m) => m.endpoint.key));
              return inner.picker(members, context, previous);
            },
          },
          clock: () => now,
          random: () => 0.5,
          drainTimeoutMs: 500,
          reconnect: { minMs: 10, maxMs: 80 },
          ejection: { consecutiveFailures: 2, baseMs: 100, maxMs: 400, maxPercent: 50 },
        });
        const hanging: PromiseWithResolvers<void>[] = [];
        const calls: Promise<void>[] = [];
        try {
          for (const op of ops) {
            switch (op.kind) {
              case 'set':
                source.set(op.pods.map((p) => pod(p.n, { ready: p.ready, terminating: p.terminating })));
                break;
              case 'lose':
                transport.lose(podKey(op.n));
                break;
              case 'blink':
                transport.unavailable(podKey(op.n));
                transport.available(podKey(op.n));
                break;
              case 'connects':
                if (op.behaviour === 'accept') transport.accept(podKey(op.n));
                else if (op.behaviour === 'refuse') transport.refuse(podKey(op.n));
                else transport.hold(podKey(op.n));
                break;
              case 'release':
                transport.release(podKey(op.n));
                break;
              case 'use': {
                const ready = pool.stats().ready;
                const call = pool.use(
                  (client, endpoint) => {
                    checkPick(pool, client, endpoint);
                    if (op.outcome === 'fail') throw new Error('500');
                    if (op.outcome === 'hang') {
                      const gate = Promise.withResolvers<void>();
                      hanging.push(gate);
                      return gate.promise;
                    }
                    return undefined;
                  },
                  // The property is about picks made now; waiting is use.test.ts's.
                  { waitForReady: false },
                );
                calls.push(
                  call.catch((error: unknown) => {
                    if (error instanceof PodpoolError && error.code === ErrorCode.NO_ENDPOINTS) {
                      assert.equal(ready, 0, `NO_ENDPOINTS with ${ready} ready member(s)`);
                    } else if (!(error instanceof Error && error.message === '500')) {
                      throw error;
                    }
                  }),
                );
                break;
              }
              case 'finish':
                if (hanging.length > 0) hanging.splice(op.index % hanging.length, 1)[0].resolve();
                break;
              case 'tick':
                now += op.ms;
                timers.tick(op.ms);
                break;
              case 'flush':
                await flush();
                break;
            }
            await flush();
            checkState(pool, transport);
            // The picker is built over exactly the ready members, each once, in key order.
            const ready = pool.stats().members.filter((m) => m.state === 'ready').map((m) => m.endpoint.key);
            assert.deepEqual(built.at(-1), ready, 'the last picker was not built over the ready members');
          }
          for (const gate of hanging) gate.resolve();
          await Promise.all(calls);
        } finally {
          for (const gate of hanging) gate.resolve();
          await pool.close();
        }
        assert.equal(transport.open(), 0, 'close() left connections open');
      }),
      { numRuns: 150 },
    );
  });
});
