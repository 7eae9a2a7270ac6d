import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { Client } from '@grpc/grpc-js';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { createPool, type Pool, type PoolOptions } from '../../src/pool/pool.ts';
import {
  datagramReceiver,
  dedupFilter,
  dnsEndpoints,
  exclusiveTransport,
  grpcChannel,
  grpcTransport,
  httpDispatcher,
  httpTransport,
  kubernetesEndpoints,
  leastLoaded,
  peakEwma,
  random,
  ringHash,
  roundRobin,
  signMessage,
  udpTransport,
  webSocketTransport,
} from '../../src/index.ts';
import { ManualSource, pod } from '../support/manual-source.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';

/** Any grpc-js client class will do: the factories only check that it is one. */
class EchoClient extends Client {}

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
    ['ejection.baseMs', { ejection: { baseMs: 2 ** 32 } }, '4294967296'],
    ['ejection.maxMs', { ejection: { maxMs: 2 ** 31 } }, '2147483648'],
    ['drainTimeoutMs', { drainTimeoutMs: 2 ** 31 }, '2147483648'],
    ['reconnect.minMs', { reconnect: { minMs: 2 ** 31, maxMs: 2 ** 32 } }, '2147483648'],
    ['reconnect.maxMs', { reconnect: { maxMs: 2 ** 31 } }, '2147483648'],
    ['callTimeoutMs', { callTimeoutMs: 2 ** 31 }, '2147483648'],
    ['retry.maxDelayMs', { retry: { maxDelayMs: 2 ** 31 } }, '2147483648'],
    ['hedge.delayMs', { hedge: { delayMs: 2 ** 31 } }, '2147483648'],
    ['slowStart.windowMs', { slowStart: { windowMs: 2 ** 31 } }, '2147483648'],
    ['retryBudget', { retryBudget: null }, 'null'],
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
      // The longest delays a timer holds.
      createPool({ ...base(), drainTimeoutMs: 2 ** 31 - 1, reconnect: { maxMs: 2 ** 31 - 1 }, ejection: { baseMs: 2 ** 31 - 1, maxMs: 2 ** 31 - 1 } }),
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

  it('use() refuses what is not a function, and a signal, key or waitForReady of the wrong kind, before any pick', async (t) => {
    const pool = readyPool(t);
    await pool.ready();
    for (const fn of [null, undefined, 'fn', {}]) {
      await assert.rejects(pool.use(fn as never), { name: 'InvalidArgumentError', code: ErrorCode.INVALID_ARGUMENT, message: /^argument fn must be a function/ });
    }
    // Each of these used to fail later, from a timer or a listener: a TypeError nobody could catch.
    await assert.rejects(pool.use(() => 1, { signal: 'x' } as never), invalid('signal', '"x"'));
    await assert.rejects(pool.use(() => 1, { signal: {} } as never), invalid('signal', '{}'));
    await assert.rejects(pool.use(() => 1, { signal: new AbortController() } as never), invalid('signal', '{}'));
    await assert.rejects(pool.use(() => 1, { key: 5 } as never), invalid('key', '5'));
    await assert.rejects(pool.use(() => 1, { waitForReady: 'no' } as never), invalid('waitForReady', '"no"'));
    await assert.rejects(pool.use(() => 1, null as never), invalid('options', 'null'));
    await assert.rejects(pool.use(() => 1, { timeoutMs: 2 ** 31 }), invalid('timeoutMs', '2147483648'));
    assert.equal(pool.stats().members[0].requests, 0);
    // A real signal, and the longest deadline a timer holds, still work.
    assert.equal(await pool.use(() => 1, { signal: new AbortController().signal, timeoutMs: 2 ** 31 - 1 }), 1);
  });

  it('broadcast() refuses what is not a function, and a signal of the wrong kind, before it delivers anything', async (t) => {
    const pool = readyPool(t);
    await pool.ready();
    let ran = 0;
    await assert.rejects(pool.broadcast(null as never), { code: ErrorCode.INVALID_ARGUMENT, message: /^argument fn must be a function/ });
    await assert.rejects(pool.broadcast(() => ran++, { signal: 'x' } as never), invalid('signal', '"x"'));
    await assert.rejects(pool.broadcast(() => ran++, { timeoutMs: 2 ** 31 }), invalid('timeoutMs', '2147483648'));
    await assert.rejects(pool.broadcast(() => ran++, { retries: 101 }), invalid('retries', '101'));
    await assert.rejects(pool.broadcast(() => ran++, { id: 5 } as never), invalid('id', '5'));
    assert.equal(ran, 0);
  });

  it('ready() refuses a signal of the wrong kind at once, not from its timer', async (t) => {
    const source = new ManualSource();
    const pool = createPool({ source, transport: new MemoryTransport() });
    t.after(() => pool.close());
    await assert.rejects(pool.ready({ signal: 'x', timeoutMs: 10 } as never), invalid('signal', '"x"'));
    await assert.rejects(pool.ready({ timeoutMs: 2 ** 31 }), invalid('timeoutMs', '2147483648'));
    await assert.rejects(pool.ready(null as never), invalid('options', 'null'));
    // Infinity waits as long as no timeoutMs does.
    const ready = pool.ready({ timeoutMs: Infinity });
    source.set([pod(1)]);
    await ready;
  });

  it('beginWhenReady() refuses a bad signal, timeoutMs or key before it waits', async (t) => {
    const pool = readyPool(t);
    await assert.rejects(pool.beginWhenReady({ signal: 'x' } as never), invalid('signal', '"x"'));
    await assert.rejects(pool.beginWhenReady({ timeoutMs: 2 ** 31 }), invalid('timeoutMs', '2147483648'));
    await assert.rejects(pool.beginWhenReady({ key: 1 } as never), invalid('key', '1'));
    await assert.rejects(pool.beginWhenReady({ failFast: 'yes' } as never), invalid('failFast', '"yes"'));
  });

  it('broadcast() checks its options before it looks for pods', async (t) => {
    const pool = createPool({ source: new ManualSource(), transport: new MemoryTransport() });
    t.after(() => pool.close());
    await assert.rejects(pool.broadcast(() => 1, { concurrency: 0 }), invalid('concurrency', '0'));
  });
});

describe('unknown options', () => {
  /** Asserts `PODPOOL_INVALID_OPTION` for an unknown key, with the exact message. */
  const refuses = (make: () => unknown, message: string) =>
    assert.throws(make, (error: unknown) => {
      assert.ok(error instanceof PodpoolError, `expected a PodpoolError, got ${String(error)}`);
      assert.equal(error.code, ErrorCode.INVALID_OPTION);
      assert.equal(error.message, message);
      return true;
    });
  const base = (): PoolOptions<MemoryClient> => ({ source: new ManualSource(), transport: new MemoryTransport() });

  it('createPool refuses a misspelled option, naming the one meant, without starting discovery', () => {
    const options = base();
    refuses(
      () => createPool({ ...options, ballancer: roundRobin() } as never),
      'unknown option ballancer (did you mean balancer?); the options are source, transport, balancer, drainTimeoutMs, reconnect, ejection, callTimeoutMs, retry, retryBudget, hedge, slowStart, subset, zone, clock, random',
    );
    assert.equal((options.source as ManualSource).watches, 0);
    refuses(() => createPool({ ...base(), reconnect: { maxMS: 10 } } as never), 'unknown option reconnect.maxMS (did you mean reconnect.maxMs?); the options are reconnect.minMs, reconnect.maxMs, reconnect.factor');
    refuses(
      () => createPool({ ...base(), ejection: { failures: 3 } } as never),
      'unknown option ejection.failures; the options are ejection.consecutiveFailures, ejection.baseMs, ejection.maxMs, ejection.maxPercent',
    );
    refuses(
      () => createPool({ ...base(), drainTimeout: 5 } as never),
      'unknown option drainTimeout (did you mean drainTimeoutMs?); the options are source, transport, balancer, drainTimeoutMs, reconnect, ejection, callTimeoutMs, retry, retryBudget, hedge, slowStart, subset, zone, clock, random',
    );
  });

  it('every factory refuses a key it does not know', async (t) => {
    const receive = { onMessage() {} };
    const httpPool = createPool({ source: new ManualSource(), transport: httpTransport() });
    const grpcPool = createPool({ source: new ManualSource(), transport: grpcTransport(EchoClient) });
    t.after(() => Promise.all([httpPool.close(), grpcPool.close()]));
    const cases: [string, () => unknown, RegExp][] = [
      ['dnsEndpoints', () => dnsEndpoints({ host: 'backend.default.svc.cluster.local', port: 80, refreshMS: 5 } as never), /^unknown option refreshMS \(did you mean refreshMs\?\)/],
      ['kubernetesEndpoints', () => kubernetesEndpoints({ service: 'backend', namespace: 'default', port: 80, namepsace: 'x' } as never), /^unknown option namepsace \(did you mean namespace\?\)/],
      ['kubernetesEndpoints backoff', () => kubernetesEndpoints({ service: 'backend', namespace: 'default', port: 80, backoff: { initial: 5 } } as never), /^unknown option backoff\.initial \(did you mean backoff\.initialMs\?\)/],
      ['webSocketTransport', () => webSocketTransport({ header: { authorization: 'Bearer s3cret' } } as never), /^unknown option header \(did you mean headers\?\)/],
      ['exclusiveTransport', () => exclusiveTransport({ create: async () => ({}), destroy() {} }, { perPod: 2 } as never), /^unknown option perPod; the options are perEndpoint, acquireTimeoutMs$/],
      ['udpTransport', () => udpTransport({ repeats: 2 } as never), /^unknown option repeats \(did you mean repeat\?\)/],
      ['httpTransport', () => httpTransport({ connection: 4 } as never), /^unknown option connection \(did you mean connections\?\)/],
      ['httpDispatcher', () => httpDispatcher(httpPool, { waitForready: false } as never), /^unknown option waitForready \(did you mean waitForReady\?\)/],
      ['grpcTransport', () => grpcTransport(EchoClient, { servername: 'echo' } as never), /^unknown option servername \(did you mean serverName\?\)/],
      ['grpcChannel', () => grpcChannel(grpcPool, { keys: () => 'a' } as never), /^unknown option keys \(did you mean key\?\)/],
      ['leastLoaded', () => leastLoaded({ choice: 3 } as never), /^unknown option choice \(did you mean choices\?\)/],
      ['peakEwma', () => peakEwma({ decay: 5 } as never), /^unknown option decay \(did you mean decayMs\?\)/],
      ['ringHash', () => ringHash({ replica: 5 } as never), /^unknown option replica \(did you mean replicas\?\)/],
      ['roundRobin', () => roundRobin({ choices: 2 } as never), /^unknown option choices; it takes no options$/],
      ['random', () => random({ seed: 2 } as never), /^unknown option seed; it takes no options$/],
      ['dedupFilter', () => dedupFilter({ ttl: 5 } as never), /^unknown option ttl \(did you mean ttlMs\?\)/],
      ['datagramReceiver', () => datagramReceiver({ ...receive, onGaps() {} } as never), /^unknown option onGaps \(did you mean onGap\?\)/],
      ['signMessage', () => signMessage({ id: 'a', body: 'b' }, { secret: 's'.repeat(16), Clock: Date.now } as never), /^unknown option Clock \(did you mean clock\?\)/],
    ];
    for (const [name, make, message] of cases) {
      assert.throws(make, (error: unknown) => {
        assert.ok(error instanceof PodpoolError, `${name}: expected a PodpoolError, got ${String(error)}`);
        assert.equal(error.code, ErrorCode.INVALID_OPTION, name);
        assert.match(error.message, message, name);
        assert.ok(!error.message.includes('s3cret'), `${name} printed a value`);
        return true;
      });
    }
  });

  it('per-call options refuse a key they do not know, naming the one meant', async (t) => {
    const pool = readyPool(t);
    await pool.ready();
    const cases: [() => Promise<unknown>, string][] = [
      [() => pool.use(() => 1, { timeout: 5 } as never), 'unknown option timeout (did you mean timeoutMs?); the options are key, signal, timeoutMs, waitForReady, failedResult, retry, hedge'],
      [() => pool.use(() => 1, { hedge: { delay: 5 } } as never), 'unknown option hedge.delay (did you mean hedge.delayMs?); the options are hedge.delayMs, hedge.percentile'],
      [() => pool.broadcast(() => 1, { retry: 2 } as never), 'unknown option retry (did you mean retries?); the options are concurrency, timeoutMs, retries, signal, id'],
      [() => pool.ready({ minEndpoint: 2 } as never), 'unknown option minEndpoint (did you mean minEndpoints?); the options are minEndpoints, signal, timeoutMs'],
      [() => pool.beginWhenReady({ failfast: true } as never), 'unknown option failfast (did you mean failFast?); the options are key, signal, timeoutMs, failFast, avoid'],
    ];
    for (const [call, message] of cases) await assert.rejects(call(), { code: ErrorCode.INVALID_OPTION, message });
    assert.equal(pool.stats().members[0].requests, 0);
  });

  it('nested pool options refuse a key they do not know, naming the one meant', () => {
    refuses(() => createPool({ ...base(), retry: { retry: 2 } } as never), 'unknown option retry.retry (did you mean retry.retries?); the options are retry.retries, retry.idempotent, retry.minDelayMs, retry.maxDelayMs');
    refuses(() => createPool({ ...base(), retryBudget: { ratioo: 1 } } as never), 'unknown option retryBudget.ratioo (did you mean retryBudget.ratio?); the options are retryBudget.ratio, retryBudget.minPerSecond, retryBudget.windowMs');
    refuses(() => createPool({ ...base(), slowStart: { window: 5 } } as never), 'unknown option slowStart.window (did you mean slowStart.windowMs?); the options are slowStart.windowMs, slowStart.aggression, slowStart.minWeight');
  });

  it('suggests only what is a slip away', () => {
    refuses(() => leastLoaded({ strategy: 'p2c' } as never), 'unknown option strategy; the options are choices');
    refuses(() => udpTransport({ Port: 9 } as never), 'unknown option Port (did you mean port?); the options are port, repeat, senderId, secret');
  });

  it('never prints the value of an option that may be a secret', () => {
    refuses(() => webSocketTransport({ headers: 'Bearer s3cret' } as never), 'option headers must be an object of string header values, got a string of 13 bytes');
    refuses(
      () => webSocketTransport({ headers: { authorization: ['Bearer s3cret'] } } as never),
      'option headers["authorization"] must be a string, got an array of 1',
    );
  });
});
