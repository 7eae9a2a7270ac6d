import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { createPool, type Pool, type PoolOptions } from '../../src/pool/pool.ts';
import { ManualSource, pod } from '../support/manual-source.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';

/** Asserts a `PODPOOL_INVALID_OPTION` that names `name` and describes the value it got. */
function invalid(name: string, got: string): (error: unknown) => true {
  return (error) => {
    assert.ok(error instanceof PodpoolError, `expected a PodpoolError, got ${String(error)}`);
    assert.equal(error.code, ErrorCode.INVALID_OPTION);
    assert.match(error.message, new RegExp(`^option ${name.replace('.', '\\.')} must be `));
    assert.ok(error.message.endsWith(`got ${got}`), error.message);
    return true;
  };
}

function readyPool(t: TestContext): Pool<MemoryClient> {
  const source = new ManualSource();
  source.set([pod(1)]);
  const pool = createPool({ source, transport: new MemoryTransport() });
  t.after(() => pool.close());
  return pool;
}

describe('createPool options', () => {
  const base = (): PoolOptions<MemoryClient> => ({ source: new ManualSource(), transport: new MemoryTransport() });
  const cases: [string, Record<string, unknown>, string][] = [
    ['options', { options: null }, 'null'],
    ['source', { source: undefined }, 'undefined'],
    ['source', { source: { kind: 'x' } }, '{"kind":"x"}'],
    ['transport', { transport: null }, 'null'],
    ['transport', { transport: { name: 'memory' } }, '{"name":"memory"}'],
    ['balancer', { balancer: 'round-robin' }, '"round-robin"'],
    ['balancer', { balancer: { name: 'x' } }, '{"name":"x"}'],
    ['drainTimeoutMs', { drainTimeoutMs: -1 }, '-1'],
    ['drainTimeoutMs', { drainTimeoutMs: Number.NaN }, 'NaN'],
    ['drainTimeoutMs', { drainTimeoutMs: '5' }, '"5"'],
    ['drainTimeoutMs', { drainTimeoutMs: Infinity }, 'Infinity'],
    ['reconnect', { reconnect: 'fast' }, '"fast"'],
    ['reconnect', { reconnect: null }, 'null'],
    ['reconnect.minMs', { reconnect: { minMs: 0 } }, '0'],
    ['reconnect.maxMs', { reconnect: { minMs: 50, maxMs: 10 } }, '10'],
    ['reconnect.factor', { reconnect: { factor: 0.5 } }, '0.5'],
    ['ejection', { ejection: true }, 'true'],
    ['ejection', { ejection: null }, 'null'],
    ['ejection.consecutiveFailures', { ejection: { consecutiveFailures: 0 } }, '0'],
    ['ejection.consecutiveFailures', { ejection: { consecutiveFailures: 1.5 } }, '1.5'],
    ['ejection.baseMs', { ejection: { baseMs: 0 } }, '0'],
    ['ejection.maxMs', { ejection: { baseMs: 100, maxMs: 99 } }, '99'],
    ['ejection.maxPercent', { ejection: { maxPercent: 101 } }, '101'],
    ['ejection.maxPercent', { ejection: { maxPercent: -1 } }, '-1'],
    ['clock', { clock: 0 }, '0'],
    ['random', { random: 'x' }, '"x"'],
  ];
  for (const [name, patch, got] of cases) {
    it(`rejects ${name} = ${got} without starting discovery`, () => {
      const options = base();
      const source = options.source as ManualSource;
      const bad = 'options' in patch ? patch.options : { ...options, ...patch };
      assert.throws(() => createPool(bad as PoolOptions<MemoryClient>), invalid(name, got));
      assert.equal(source.watches, 0);
    });
  }

  it('accepts the documented defaults and limits', async () => {
    const pools = [
      createPool(base()),
      createPool({ ...base(), drainTimeoutMs: 0, reconnect: { minMs: 1, maxMs: 1, factor: 1 }, ejection: false }),
      createPool({ ...base(), ejection: { consecutiveFailures: 1, baseMs: 1, maxMs: 1, maxPercent: 0 } }),
      createPool({ ...base(), ejection: { maxPercent: 100 } }),
    ];
    await Promise.all(pools.map((p) => p.close()));
  });
});

describe('per-call options', () => {
  it('use() rejects a bad timeoutMs, naming it, even before any endpoint is known', async (t) => {
    const source = new ManualSource();
    const pool = createPool({ source, transport: new MemoryTransport() });
    t.after(() => pool.close());
    // Options are checked at the door: the answer must not depend on whether a pod is ready.
    await assert.rejects(pool.use(() => 1, { timeoutMs: 0 }), invalid('timeoutMs', '0'));
    source.set([pod(1)]);
    await pool.ready();
    await assert.rejects(pool.use(() => 1, { timeoutMs: 0 }), invalid('timeoutMs', '0'));
    await assert.rejects(pool.use(() => 1, { timeoutMs: -5 }), invalid('timeoutMs', '-5'));
    await assert.rejects(pool.use(() => 1, { timeoutMs: Number.NaN }), invalid('timeoutMs', 'NaN'));
    assert.equal(pool.stats().members[0].requests, 0);
  });

  it('ready() rejects a bad minEndpoints or timeoutMs, naming it', async (t) => {
    const pool = readyPool(t);
    await assert.rejects(pool.ready({ minEndpoints: 0 }), invalid('minEndpoints', '0'));
    await assert.rejects(pool.ready({ minEndpoints: 1.5 }), invalid('minEndpoints', '1.5'));
    await assert.rejects(pool.ready({ timeoutMs: -1 }), invalid('timeoutMs', '-1'));
  });

  it('broadcast() rejects bad concurrency, retries, timeoutMs and id, naming them', async (t) => {
    const pool = readyPool(t);
    await pool.ready();
    const fn = (): number => 1;
    await assert.rejects(pool.broadcast(fn, { concurrency: 0 }), invalid('concurrency', '0'));
    await assert.rejects(pool.broadcast(fn, { concurrency: 1.5 }), invalid('concurrency', '1.5'));
    await assert.rejects(pool.broadcast(fn, { retries: -1 }), invalid('retries', '-1'));
    await assert.rejects(pool.broadcast(fn, { retries: 0.5 }), invalid('retries', '0.5'));
    await assert.rejects(pool.broadcast(fn, { retries: Infinity }), invalid('retries', 'Infinity'));
    await assert.rejects(pool.broadcast(fn, { timeoutMs: 0 }), invalid('timeoutMs', '0'));
    await assert.rejects(pool.broadcast(fn, { id: '' }), { code: ErrorCode.INVALID_OPTION, message: /option id/ });
    assert.equal(pool.stats().members[0].requests, 0);
  });

  it('broadcast() checks its options before it looks for pods', async (t) => {
    const pool = createPool({ source: new ManualSource(), transport: new MemoryTransport() });
    t.after(() => pool.close());
    await assert.rejects(pool.broadcast(() => 1, { concurrency: 0 }), invalid('concurrency', '0'));
  });
});
