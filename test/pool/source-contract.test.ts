/**
 * A source is user code too (a custom `EndpointSource`): the pool holds it to its contract. A
 * snapshot that is not an `EndpointSet`, an error that is not a `PodpoolError`, a `watch()` that
 * throws or hands back no handle, a handle whose `close()` fails: each is reported as a coded
 * `sourceError`, the last good set stays, and `close()` completes. Nothing is thrown into the
 * source, nor out of the pool as an uncaught exception.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it, type TestContext } from 'node:test';
import type { EndpointSource, SourceSink, SourceWatch } from '../../src/discovery/source.ts';
import { EndpointSet } from '../../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { createPool, type Pool } from '../../src/pool/pool.ts';
import { pod, podKey } from '../support/manual-source.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';

/** A source the test drives through the sink it was given, with whatever `watch()` should return. */
class RawSource implements EndpointSource {
  readonly kind = 'raw';
  sink: SourceSink | undefined;
  readonly #watch: () => unknown;

  constructor(watch: () => unknown = () => ({ close: () => Promise.resolve() })) {
    this.#watch = watch;
  }

  watch(sink: SourceSink): SourceWatch {
    this.sink = sink;
    return this.#watch() as SourceWatch;
  }
}

/** Fails the test on any uncaught exception or unhandled rejection while it runs. */
function noUncaught(t: TestContext): void {
  const fail = (error: unknown): void => assert.fail(`uncaught: ${String(error)}`);
  process.on('uncaughtException', fail);
  process.on('unhandledRejection', fail);
  t.after(() => {
    process.off('uncaughtException', fail);
    process.off('unhandledRejection', fail);
  });
}

function poolOver(t: TestContext, source: EndpointSource): Pool<MemoryClient> {
  const pool = createPool({ source, transport: new MemoryTransport() });
  t.after(() => pool.close());
  return pool;
}

function nextSourceError(pool: Pool<unknown>): Promise<PodpoolError> {
  return once(pool, 'sourceError').then(([error]) => error as PodpoolError);
}

describe('a source that breaks its contract', () => {
  it('a snapshot that is not an EndpointSet is reported as PODPOOL_INVALID_ARGUMENT; the last good set stays', async (t) => {
    noUncaught(t);
    const source = new RawSource();
    const pool = poolOver(t, source);
    source.sink!.snapshot(new EndpointSet([pod(1), pod(2)]));
    await pool.ready({ minEndpoints: 2 });
    for (const bad of [[pod(3)], null, undefined, { size: 0 }, 'x']) {
      const reported = nextSourceError(pool);
      // Never thrown back into the source: its own loop must go on.
      assert.doesNotThrow(() => source.sink!.snapshot(bad as never));
      const error = await reported;
      assert.ok(error instanceof PodpoolError);
      assert.equal(error.code, ErrorCode.INVALID_ARGUMENT);
      assert.match(error.message, /^argument snapshot of the raw source must be an EndpointSet/);
      assert.deepEqual([...pool.endpoints].map((e) => e.key), [podKey(1), podKey(2)]);
      assert.equal(pool.stats().ready, 2);
    }
    assert.equal(await pool.use((client) => typeof client.key), 'string');
  });

  it('an error that is not a PodpoolError is wrapped as PODPOOL_DISCOVERY_FAILED, with it as the cause', async (t) => {
    noUncaught(t);
    const source = new RawSource();
    const pool = poolOver(t, source);
    const plain = new Error('resolver on fire');
    for (const [thrown, message] of [
      [plain, 'the raw source failed: resolver on fire'],
      ['a string', 'the raw source failed: a string'],
      [undefined, 'the raw source failed: undefined'],
    ] as const) {
      const reported = nextSourceError(pool);
      assert.doesNotThrow(() => source.sink!.error(thrown as never));
      const error = await reported;
      assert.equal(error.code, ErrorCode.DISCOVERY_FAILED);
      assert.equal(error.message, message);
      assert.equal(error.cause, thrown);
    }
    // The last error is what a call that finds no pod is told.
    await assert.rejects(pool.use(() => 1, { waitForReady: false }), { code: ErrorCode.NO_ENDPOINTS, message: /the raw source failed: undefined/ });
  });

  for (const [what, watch, message] of [
    ['returns undefined', () => undefined, "the raw source's watch() returned undefined, not a handle to stop it with"],
    ['returns an object without close()', () => ({}), "the raw source's watch() returned an object without close(), not a handle to stop it with"],
    [
      'throws',
      () => {
        throw new Error('no kubeconfig');
      },
      "the raw source's watch() threw: no kubeconfig",
    ],
  ] as const) {
    it(`a watch() that ${what} is reported as PODPOOL_DISCOVERY_FAILED, and close() completes`, async (t) => {
      noUncaught(t);
      const pool = createPool({ source: new RawSource(watch), transport: new MemoryTransport() });
      const error = await nextSourceError(pool);
      assert.ok(error instanceof PodpoolError);
      assert.equal(error.code, ErrorCode.DISCOVERY_FAILED);
      assert.ok(error.message.startsWith(message), error.message);
      assert.equal(pool.connectivity, 'failing');
      await pool.close();
      assert.equal(pool.connectivity, 'closed');
    });
  }

  it('a watch() that returns no handle still feeds the pool what it reports', async (t) => {
    noUncaught(t);
    const source = new RawSource(() => undefined);
    const pool = poolOver(t, source);
    await nextSourceError(pool);
    source.sink!.snapshot(new EndpointSet([pod(1)]));
    await pool.ready();
    assert.equal(pool.stats().ready, 1);
  });

  for (const [what, close] of [
    ['rejects', () => Promise.reject(new Error('watch stuck'))],
    [
      'throws',
      () => {
        throw new Error('watch stuck');
      },
    ],
  ] as const) {
    it(`a handle whose close() ${what} is reported, and the pool's close() still closes every connection`, async (t) => {
      noUncaught(t);
      const transport = new MemoryTransport();
      const source = new RawSource(() => ({ close }));
      const pool = createPool({ source, transport });
      source.sink!.snapshot(new EndpointSet([pod(1)]));
      await pool.ready();
      const reported = nextSourceError(pool);
      await pool.close();
      const error = await reported;
      assert.equal(error.code, ErrorCode.DISCOVERY_FAILED);
      assert.equal(error.message, 'stopping the raw source failed: watch stuck');
      assert.equal(transport.open(), 0);
    });
  }
});
