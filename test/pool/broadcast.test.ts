import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import type { Endpoint } from '../../src/endpoint.ts';
import { ConnectFailedError, ErrorCode, NotConnectedError, PodpoolError } from '../../src/errors.ts';
import type { BroadcastResult, Delivery } from '../../src/pool/broadcast.ts';
import type { PoolOptions } from '../../src/pool/pool.ts';
import { first } from '../support/first-balancer.ts';
import { flush } from '../support/flush.ts';
import { pod, podKey } from '../support/manual-source.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';
import { mockTimers } from '../support/mock-timers.ts';
import { harness as poolHarness, type Harness } from '../support/pool-harness.ts';

const [k1, k2, k3] = [podKey(1), podKey(2), podKey(3)];

/** The pool harness with pods 1 to `pods` set and ready. */
async function harness(t: TestContext, pods: number, options: Partial<PoolOptions<MemoryClient>> = {}): Promise<Harness> {
  const { source, transport, pool } = poolHarness(t, options);
  if (pods > 0) {
    source.set(Array.from({ length: pods }, (_, i) => pod(i + 1)));
    await pool.ready({ minEndpoints: pods });
  }
  return { source, transport, pool };
}

/** Runs mocked time forward until `promise` settles (p-retry's backoff between retries). */
async function drive<T>(timers: TestContext['mock']['timers'], promise: Promise<T>): Promise<T> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let ms = 0; ; ms += 100) {
    await flush();
    if (settled) return promise;
    assert.ok(ms < 60_000, 'the broadcast never ended');
    timers.tick(100);
  }
}

function keysOf(entries: readonly { endpoint: Endpoint }[]): string[] {
  return entries.map((e) => e.endpoint.key);
}

function summary<T>(result: BroadcastResult<T>): { delivered: string[]; failed: [string, string][] } {
  return {
    delivered: keysOf(result.delivered),
    failed: result.failed.map((f) => [f.endpoint.key, (f.error as PodpoolError).code ?? (f.error as Error).message]),
  };
}

describe('broadcast()', () => {
  it('reports every pod once: delivered with its value or failed with its error; one id for all', async (t) => {
    let now = 0;
    const { pool } = await harness(t, 3, { clock: () => now });
    const seen: Delivery[] = [];
    const boom = new Error('pod 2 said no');
    const result = await pool.broadcast((client, endpoint, delivery) => {
      seen.push(delivery);
      assert.equal(client.key, endpoint.key);
      now += 7;
      if (endpoint.key === k2) throw boom;
      return `${endpoint.key} got ${delivery.id}`;
    });
    assert.match(result.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.deepEqual(
      result.delivered.map((d) => [d.endpoint.key, d.value, d.attempts]),
      [
        [k1, `${k1} got ${result.id}`, 1],
        [k3, `${k3} got ${result.id}`, 1],
      ],
    );
    assert.deepEqual(result.failed, [{ endpoint: result.failed[0].endpoint, error: boom, attempts: 1 }]);
    assert.equal(result.failed[0].endpoint.key, k2);
    assert.deepEqual(
      seen.map((d) => [d.id, d.attempt]),
      [
        [result.id, 1],
        [result.id, 1],
        [result.id, 1],
      ],
    );
    assert.equal(result.durationMs, 21);
    // Deliveries are calls like any other: counted on each member.
    assert.deepEqual(
      pool.stats().members.map((m) => [m.requests, m.failures, m.inFlight]),
      [
        [1, 0, 0],
        [1, 1, 0],
        [1, 0, 0],
      ],
    );
  });

  it('retries a failing pod with the same id and a growing attempt, until it succeeds or runs out', async (t) => {
    const timers = mockTimers(t);
    const { pool } = await harness(t, 3);
    const log: string[] = [];
    const result = await drive(
      timers,
      pool.broadcast(
        (_client, endpoint, { id, attempt }) => {
          log.push(`${endpoint.key} ${id} #${attempt}`);
          if (endpoint.key === k2 && attempt < 3) throw new Error(`flaky ${attempt}`);
          if (endpoint.key === k3) throw new Error(`down ${attempt}`);
          return attempt;
        },
        { retries: 2, id: 'msg-1' },
      ),
    );
    assert.equal(result.id, 'msg-1');
    assert.deepEqual(
      result.delivered.map((d) => [d.endpoint.key, d.value, d.attempts]),
      [
        [k1, 1, 1],
        [k2, 3, 3],
      ],
    );
    assert.deepEqual(
      result.failed.map((f) => [f.endpoint.key, (f.error as Error).message, f.attempts]),
      [[k3, 'down 3', 3]],
    );
    assert.deepEqual(log.toSorted(), [
      `${k1} msg-1 #1`,
      `${k2} msg-1 #1`,
      `${k2} msg-1 #2`,
      `${k2} msg-1 #3`,
      `${k3} msg-1 #1`,
      `${k3} msg-1 #2`,
      `${k3} msg-1 #3`,
    ]);
  });

  it('fails a connecting pod with PODPOOL_NOT_CONNECTED whose cause is its last connect error', async (t) => {
    const { source, transport, pool } = await harness(t, 0);
    transport.refuse(k3);
    const refused = new Promise<PodpoolError>((resolve) => {
      pool.on('connectError', (endpoint, error) => {
        if (endpoint.key === k3) resolve(error);
      });
    });
    source.set([pod(1), pod(2), pod(3)]);
    await pool.ready({ minEndpoints: 2 });
    await refused;
    // Read in the same tick as the broadcast starts: the connect loop keeps failing meanwhile.
    const lastError = pool.stats().members[2].lastError as PodpoolError;
    assert.equal(lastError.code, ErrorCode.CONNECT_FAILED);
    assert.ok(lastError instanceof ConnectFailedError);
    let ran = 0;
    const result = await pool.broadcast(() => ran++);
    assert.deepEqual(summary(result), { delivered: [k1, k2], failed: [[k3, ErrorCode.NOT_CONNECTED]] });
    const error = result.failed[0].error as PodpoolError;
    assert.ok(error instanceof NotConnectedError);
    assert.equal(error.cause, lastError);
    assert.match(error.message, /^10\.0\.0\.3:80 is not connected \(connecting\): could not connect to 10\.0\.0\.3:80/);
    assert.equal(ran, 2);
  });

  it('reaches a pod whose connection comes back before a retry', async (t) => {
    const timers = mockTimers(t);
    const { source, transport, pool } = await harness(t, 0);
    transport.hold(k2);
    source.set([pod(1), pod(2)]);
    await pool.ready();
    const attempts: number[] = [];
    const pending = pool.broadcast(
      (_client, endpoint, delivery) => {
        if (endpoint.key === k2) attempts.push(delivery.attempt);
        return endpoint.key;
      },
      { retries: 1 },
    );
    await flush();
    transport.release(k2);
    const result = await drive(timers, pending);
    assert.deepEqual(summary(result), { delivered: [k1, k2], failed: [] });
    assert.deepEqual(attempts, [2]);
    assert.equal(result.delivered[1].attempts, 2);
  });

  it('fails a pod that does not answer within timeoutMs with PODPOOL_TIMEOUT, and delivers to the rest', async (t) => {
    const timers = mockTimers(t);
    const { pool } = await harness(t, 3);
    const gate = Promise.withResolvers<string>();
    let hungSignal: AbortSignal | undefined;
    const pending = pool.broadcast(
      (_client, endpoint, delivery) => {
        if (endpoint.key !== k2) return endpoint.key;
        hungSignal = delivery.signal;
        return gate.promise; // ignores the signal
      },
      { timeoutMs: 100 },
    );
    timers.tick(99);
    let settled = false;
    void pending.then(() => (settled = true));
    await flush();
    assert.equal(settled, false);
    timers.tick(1);
    const result = await pending;
    assert.deepEqual(summary(result), { delivered: [k1, k3], failed: [[k2, ErrorCode.TIMEOUT]] });
    assert.match((result.failed[0].error as Error).message, /did not reach this pod within 100 ms/);
    assert.equal(hungSignal?.aborted, true);
    gate.resolve('late');
  });

  it('fails pods it had not started by the deadline, when concurrency holds them back', async (t) => {
    const timers = mockTimers(t);
    const { pool } = await harness(t, 3);
    const gate = Promise.withResolvers<void>();
    const started: string[] = [];
    const pending = pool.broadcast(
      (_client, endpoint) => {
        started.push(endpoint.key);
        return gate.promise;
      },
      { timeoutMs: 50, concurrency: 1 },
    );
    timers.tick(50);
    const result = await pending;
    assert.deepEqual(started, [k1]);
    assert.deepEqual(
      result.failed.map((f) => [f.endpoint.key, (f.error as PodpoolError).code, f.attempts]),
      [
        [k1, ErrorCode.TIMEOUT, 1],
        [k2, ErrorCode.TIMEOUT, 0],
        [k3, ErrorCode.TIMEOUT, 0],
      ],
    );
    gate.resolve();
  });

  it('fails the pods still running with PODPOOL_ABORTED when its signal aborts', async (t) => {
    const { pool } = await harness(t, 3);
    const controller = new AbortController();
    const gate = Promise.withResolvers<void>();
    const pending = pool.broadcast(
      (_client, endpoint) => {
        if (endpoint.key === k3) return gate.promise;
        return undefined;
      },
      { signal: controller.signal },
    );
    await flush();
    controller.abort(new Error('shutting down'));
    const result = await pending;
    assert.deepEqual(summary(result), { delivered: [k1, k2], failed: [[k3, ErrorCode.ABORTED]] });
    gate.resolve();
  });

  it('never runs more than concurrency deliveries at once', async (t) => {
    const { pool } = await harness(t, 6);
    let running = 0;
    let most = 0;
    const waiting: (() => void)[] = [];
    const pending = pool.broadcast(
      async (_client, endpoint) => {
        running++;
        most = Math.max(most, running);
        await new Promise<void>((resolve) => waiting.push(resolve));
        running--;
        return endpoint.key;
      },
      { concurrency: 2 },
    );
    for (let released = 0; released < 6; released++) {
      await flush();
      assert.ok(running <= 2, `${running} deliveries at once`);
      assert.equal(waiting.length, Math.min(2, 6 - released), 'a free slot was left unused');
      waiting.shift()!();
    }
    const result = await pending;
    assert.equal(most, 2);
    assert.equal(result.delivered.length, 6);
  });

  it('rejects PODPOOL_NO_ENDPOINTS when there is no pod at all', async (t) => {
    const { source, pool } = await harness(t, 0);
    await assert.rejects(pool.broadcast(() => 1), { code: ErrorCode.NO_ENDPOINTS, message: /await pool\.ready\(\)/ });
    source.set([]);
    await assert.rejects(pool.broadcast(() => 1), { code: ErrorCode.NO_ENDPOINTS });
  });

  it('leaves draining pods out, and still reaches an ejected one', async (t) => {
    const { source, pool } = await harness(t, 3, {
      balancer: first(),
      ejection: { consecutiveFailures: 1, maxPercent: 50, baseMs: 60_000 },
    });
    const gate = Promise.withResolvers<void>();
    const inFlight = pool.use(() => gate.promise); // on pod 1
    source.set([pod(2), pod(3)]);
    assert.equal(pool.stats().members[0].state, 'draining');
    await assert.rejects(
      pool.use(() => {
        throw new Error('500');
      }),
    ); // pod 2
    assert.equal(pool.stats().members[1].state, 'ejected');
    const reached: string[] = [];
    const result = await pool.broadcast((_client, endpoint) => void reached.push(endpoint.key));
    assert.deepEqual(summary(result), { delivered: [k2, k3], failed: [] });
    assert.deepEqual(reached.toSorted(), [k2, k3]);
    gate.resolve();
    await inFlight;
  });

  it('rejects PODPOOL_NO_ENDPOINTS when its only pod is draining', async (t) => {
    const { source, pool } = await harness(t, 1);
    const gate = Promise.withResolvers<void>();
    const inFlight = pool.use(() => gate.promise);
    source.set([]);
    await assert.rejects(pool.broadcast(() => 1), { code: ErrorCode.NO_ENDPOINTS, message: /1 draining/ });
    gate.resolve();
    await inFlight;
  });

  it('lends and gives back a client per delivery with a lending transport', async (t) => {
    const transport = new MemoryTransport({ lend: true });
    const { pool } = await harness(t, 2, { transport });
    const result = await pool.broadcast((client, endpoint) => {
      if (endpoint.key === k2) throw new Error('no');
      return client.connection;
    });
    assert.deepEqual(summary(result), { delivered: [k1], failed: [[k2, 'no']] });
    assert.equal(transport.lent, 0);
    assert.deepEqual(
      transport.releases.map((r) => [r.key, r.failed]).toSorted(),
      [
        [k1, false],
        [k2, true],
      ],
    );
  });
});
