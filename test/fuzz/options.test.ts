/**
 * Fuzzing every public factory and call with options of any shape: each either works or throws
 * (or rejects with) a PodpoolError, and no message ever carries a secret handed in under a name
 * that holds one (headers, TLS material, keys, secrets, tokens). The option names come from the
 * factories themselves (the "unknown option" message lists them), so a new option is fuzzed
 * the day it is added.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import * as grpc from '@grpc/grpc-js';
import * as podpool from '../../src/index.ts';
import { PodpoolError } from '../../src/index.ts';
import { flush } from '../support/flush.ts';
import { MemoryTransport } from '../support/memory-transport.ts';

const SECRET = 'S3CRET-d0-not-print';
// Names whose values may be credentials, at any depth.
const SECRET_NAME = /^(headers?|tls|key|cert|pfx|ca|passphrase|password|secret|token|credentials?|authorization|cookie|kubeConfig)$/i;

/** Numbers at the edges of what options take: timers' 2^31 − 1, ports' 65535, NaN, negatives. */
const edgeNumber = fc.constantFrom(0, -1, 1, 0.5, 2, 100, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 53, 1e9, NaN, Infinity, -Infinity);
const value: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: edgeNumber },
  { weight: 3, arbitrary: fc.anything({ maxDepth: 2, withNullPrototype: true, withBigInt: true, withDate: true, withMap: true, withSet: true, withTypedArray: true, withSparseArray: true, withBoxedValues: true }) },
  // Functions returning what a clock or random source must not: the user's own function that
  // throws is the user's error and passes through as it is, so none here throws.
  { weight: 1, arbitrary: fc.constantFrom(() => 1, () => NaN, () => -1, () => 'x', () => undefined, () => 2 ** 60) },
  { weight: 1, arbitrary: fc.constantFrom('', 'x', '8080', '/path', 'http://host', 'a'.repeat(300)) },
);
/** A value carrying the secret somewhere: as it is, in an object, in an array, as bytes. */
const secretValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(SECRET),
  fc.constant(Buffer.from(SECRET)),
  fc.constant(`-----BEGIN PRIVATE KEY-----\n${SECRET}\n-----END PRIVATE KEY-----`),
  fc.record({ authorization: fc.constant(`Bearer ${SECRET}`), bad: value }),
  fc.record({ key: fc.constant(SECRET), cert: value, ca: value, passphrase: fc.constant(SECRET) }, { requiredKeys: ['key'] }),
  fc.tuple(fc.constant(SECRET), value),
  fc.dictionary(fc.constantFrom('x-api-key', 'cookie', 'Authorization', 'token'), fc.oneof(fc.constant(SECRET), fc.constant(5))),
);

/** The option names a factory takes, read from its own "unknown option" message (thrown, or a rejection). */
async function optionNamesOf(call: (options: Record<string, unknown>) => unknown, prefix = ''): Promise<string[]> {
  let message = '';
  try {
    await call({ __probe__: 1 });
  } catch (error) {
    message = (error as Error).message;
  }
  const match = /the options are (.*)$/.exec(message);
  return match === null ? [] : match[1].split(', ').map((n) => (prefix !== '' && n.startsWith(prefix) ? n.slice(prefix.length) : n));
}

/** Options built from the names a factory takes (plus, now and then, one it doesn't). */
function optionsFor(names: readonly string[], nested: ReadonlyMap<string, readonly string[]>): fc.Arbitrary<unknown> {
  const field = (name: string): fc.Arbitrary<unknown> => {
    const inner = nested.get(name);
    const arbs: fc.Arbitrary<unknown>[] = [value];
    if (SECRET_NAME.test(name)) arbs.push(secretValue, secretValue);
    if (inner !== undefined && inner.length > 0) {
      arbs.push(fc.dictionary(fc.constantFrom(...inner), value, { maxKeys: inner.length }));
    }
    return fc.oneof(...arbs);
  };
  // One to three options at a time, so each is checked (a factory stops at the first bad one).
  const record: fc.Arbitrary<unknown> =
    names.length === 0
      ? fc.constant({})
      : fc
          .uniqueArray(fc.constantFrom(...names), { minLength: 1, maxLength: 3 })
          .chain((keys) => fc.tuple(...keys.map((k) => field(k).map((v) => [k, v] as const))))
          .map((entries) => Object.fromEntries(entries));
  return fc.oneof(
    { weight: 8, arbitrary: record },
    { weight: 1, arbitrary: record.map((o) => ({ ...(o as object), ballancer: 1 })) },
    { weight: 1, arbitrary: value },
  );
}

/** The nested option objects a factory takes: `reconnect` → its names. */
async function nestedOf(call: (options: Record<string, unknown>) => unknown, names: readonly string[]): Promise<Map<string, string[]>> {
  const nested = new Map<string, string[]>();
  for (const name of names) {
    const inner = await optionNamesOf((o) => call({ [name]: o }), `${name}.`);
    if (inner.length > 0) nested.set(name, inner);
  }
  return nested;
}

/** Every message in an error and its causes. */
function messagesOf(error: unknown): string {
  const parts: string[] = [];
  for (let e = error, depth = 0; e !== undefined && e !== null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    parts.push(e instanceof Error ? `${e.message} ${e.stack ?? ''}` : String(e));
  }
  return parts.join('\n');
}

function assertPodpoolError(error: unknown, what: string): void {
  if (!(error instanceof PodpoolError)) {
    assert.fail(`${what} threw a ${(error as Error)?.constructor?.name ?? typeof error}, not a PodpoolError: ${(error as Error)?.stack ?? String(error)}`);
  }
  assert.equal(typeof error.code, 'string');
  assert.ok(!messagesOf(error).includes(SECRET), `${what} printed the secret: ${error.message}`);
}

class EchoClient extends (grpc.makeGenericClientConstructor({}, 'Echo') as unknown as new (address: string, credentials: grpc.ChannelCredentials, options?: object) => grpc.Client) {}

const endpoints = [{ address: '127.0.0.1', port: 1 }, { address: '127.0.0.2', port: 1 }];
const newPool = (options: object = {}) => podpool.createPool({ source: podpool.staticEndpoints(endpoints), transport: new MemoryTransport(), ...options } as never);

/** Factories that return something with nothing running: call, then drop. */
const factories: Record<string, (options: never) => unknown> = {
  httpTransport: (o) => podpool.httpTransport(o),
  webSocketTransport: (o) => podpool.webSocketTransport(o),
  udpTransport: (o) => podpool.udpTransport(o),
  grpcTransport: (o) => podpool.grpcTransport(EchoClient as never, o),
  exclusiveTransport: (o) => podpool.exclusiveTransport({ create: async () => ({}), destroy: async () => {} } as never, o),
  roundRobin: (o) => podpool.roundRobin(o),
  random: (o) => podpool.random(o),
  leastLoaded: (o) => podpool.leastLoaded(o),
  peakEwma: (o) => podpool.peakEwma(o),
  ringHash: (o) => podpool.ringHash(o),
  staticEndpoints: (o) => podpool.staticEndpoints(endpoints, o),
  dnsEndpoints: (o) => podpool.dnsEndpoints(o),
  kubernetesEndpoints: (o) => podpool.kubernetesEndpoints(o),
  dedupFilter: (o) => podpool.dedupFilter(o),
  datagramReceiver: (o) => podpool.datagramReceiver(o),
  signMessage: (o) => podpool.signMessage({ id: 'm1', body: 'b' }, o),
  verifyMessage: (o) => podpool.verifyMessage({ id: 'm1', body: 'b', timestamp: Date.now(), signature: 'x'.repeat(43) }, o),
};

describe('fuzz: options of every factory', () => {
  for (const [name, factory] of Object.entries(factories)) {
    it(`${name}: works or throws a PodpoolError, never printing a secret`, async () => {
      const names = await optionNamesOf(factory as never);
      assert.ok(names.length > 0 || name === 'roundRobin' || name === 'random', `${name} lists its options when given an unknown one`);
      const nested = await nestedOf(factory as never, names);
      fc.assert(
        fc.property(optionsFor(names, nested), (options) => {
          try {
            factory(options as never);
          } catch (error) {
            assertPodpoolError(error, `${name}(${fc.stringify(options)})`);
          }
        }),
        { numRuns: 300 },
      );
    });
  }
});

describe('fuzz: a pool, its calls and its adapters', () => {
  const pools: podpool.Pool<unknown>[] = [];
  after(() => Promise.all(pools.map((p) => p.close())));

  it('createPool: works or throws a PodpoolError; a pool it makes closes', async () => {
    const names = (await optionNamesOf((o) => newPool(o))).filter((n) => n !== 'source' && n !== 'transport');
    const nested = await nestedOf((o) => newPool(o), names);
    await fc.assert(
      fc.asyncProperty(optionsFor(names, nested), async (options) => {
        let pool: podpool.Pool<unknown> | undefined;
        try {
          pool = newPool(options as object);
        } catch (error) {
          assertPodpoolError(error, `createPool(${fc.stringify(options)})`);
          return;
        }
        await pool.close();
      }),
      { numRuns: 200 },
    );
  });

  it('use, broadcast, ready and the adapters: a bad option or callback is a PodpoolError, thrown or rejected, and the pool goes on', async () => {
    const pool = newPool();
    pools.push(pool);
    await pool.ready({ minEndpoints: 2 });
    const calls: Record<string, (fn: unknown, options: unknown) => unknown> = {
      use: (fn, o) => pool.use(fn as never, o as never),
      broadcast: (fn, o) => pool.broadcast(fn as never, o as never),
      ready: (_fn, o) => pool.ready(o as never),
      httpDispatcher: (_fn, o) => podpool.httpDispatcher(pool as never, o as never),
      grpcChannel: (_fn, o) => podpool.grpcChannel(pool as never, o as never),
      podpoolMetrics: (_fn, o) => podpool.podpoolMetrics(pool as never, o as never),
      podpoolDebugServer: (_fn, o) => podpool.podpoolDebugServer(o as never),
    };
    /** Calls still waiting (a far deadline, more pods than there are): closing the pool ends them. */
    const pending: { what: string; outcome: Promise<unknown> }[] = [];
    const callbacks = fc.oneof(fc.constant(() => 'ok'), fc.constant(async () => 'ok'), value);
    for (const [name, call] of Object.entries(calls)) {
      const names = await optionNamesOf((o) => call(() => 1, o));
      assert.ok(names.length > 0, `${name} lists its options when given an unknown one`);
      const nested = await nestedOf((o) => call(() => 1, o), names);
      await fc.assert(
        fc.asyncProperty(callbacks, optionsFor(names, nested), async (fn, options) => {
          const what = `${name}(${fc.stringify(fn)}, ${fc.stringify(options)})`;
          let outcome: unknown;
          try {
            outcome = call(fn, options);
          } catch (error) {
            assertPodpoolError(error, what);
            return;
          }
          if (outcome instanceof Promise) {
            // What resolves to something that runs (a debug server listening) is closed at once.
            const running = (outcome as Promise<unknown>).then(async (value: unknown) => {
              if (value !== null && typeof value === 'object' && typeof (value as { close?: unknown }).close === 'function') await (value as { close(): Promise<void> }).close();
              return value;
            });
            // A call asked to wait long (a far deadline, more pods than there are) is cut short
            // below by closing a pool of its own; here the pool is shared, so only short waits.
            const settled = await Promise.race([running.then(() => 'done', (error: unknown) => error), flush().then(flush).then(() => 'pending')]);
            if (settled !== 'done' && settled !== 'pending') assertPodpoolError(settled, what);
            if (settled === 'pending') pending.push({ what, outcome: running });
          } else if (outcome !== null && typeof outcome === 'object' && 'close' in outcome) {
            await (outcome as { close(): Promise<void> | void }).close();
          }
        }),
        { numRuns: 150 },
      );
    }
    // The pool took all that and still serves; closing it settles every call still waiting.
    assert.equal(await pool.use(() => 'still serving'), 'still serving');
    await pool.close();
    for (const { what, outcome } of pending) {
      await outcome.then(
        () => {},
        (error: unknown) => assertPodpoolError(error, what),
      );
    }
  });
});
