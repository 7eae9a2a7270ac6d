/**
 * use()'s retries, hedges and deadline, on a pool over an in-memory transport: where each
 * attempt went, what was counted against which pod, and what the caller got. Waits are the
 * events themselves (a promise that settles, a signal that aborts); nothing sleeps.
 */
import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { first } from '../support/first-balancer.ts';
import { flush } from '../support/flush.ts';
import { harness } from '../support/pool-harness.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';

const A = { address: '10.0.0.1', port: 80 };
const B = { address: '10.0.0.2', port: 80 };
const C = { address: '10.0.0.3', port: 80 };

/** An error the transport says never reached the pod. */
class NotSent extends Error {}
/** An error that counts against the pod and may have reached it. */
class Reset extends Error {}
/** A request the pod refused: not a pod failure. */
class BadRequest extends Error {}

function transport(extra: ConstructorParameters<typeof MemoryTransport>[0] = {}): MemoryTransport {
  return new MemoryTransport({
    wasNotSent: (e) => e instanceof NotSent,
    isPodFailure: (e) => !(e instanceof BadRequest),
    ...extra,
  });
}

function failures(stats: { members: readonly { endpoint: { key: string }; failures: number }[] }, key: string): number {
  return stats.members.find((m) => m.endpoint.key === key)!.failures;
}

describe('use() retries', () => {
  test('a call that never reached its pod is sent again on another pod, without being idempotent', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first() });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    const tried: string[] = [];
    const reply = await pool.use((c: MemoryClient) => {
      tried.push(c.key);
      if (c.key === '10.0.0.1:80') throw new NotSent('refused');
      return c.key;
    });
    assert.equal(reply, '10.0.0.2:80');
    assert.deepEqual(tried, ['10.0.0.1:80', '10.0.0.2:80']);
    const stats = pool.stats();
    assert.equal(stats.retries, 1);
    assert.equal(failures(stats, '10.0.0.1:80'), 1, 'the refusing pod is charged');
  });

  test('a call that may have reached its pod is sent again only when idempotent, and never for a refused request', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first() });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    let calls = 0;
    const resetOnA = (c: MemoryClient): string => {
      calls++;
      if (c.key === '10.0.0.1:80') throw new Reset('reset after the request was written');
      return c.key;
    };
    await assert.rejects(pool.use(resetOnA), Reset);
    assert.equal(calls, 1, 'not idempotent: sent once');
    calls = 0;
    assert.equal(await pool.use(resetOnA, { retry: { idempotent: true } }), '10.0.0.2:80');
    assert.equal(calls, 2);
    calls = 0;
    await assert.rejects(
      pool.use(
        () => {
          calls++;
          throw new BadRequest('404');
        },
        { retry: { idempotent: true } },
      ),
      BadRequest,
    );
    assert.equal(calls, 1, "the request's own fault is never retried");
  });

  test('retries stop after `retries`, each on another pod than the last, and the caller gets the last error', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), retry: { retries: 3, maxDelayMs: 0 } });
    source.set([A, B, C]);
    await pool.ready({ minEndpoints: 3 });
    const tried: string[] = [];
    const error = await pool
      .use((c: MemoryClient) => {
        tried.push(c.key);
        throw new NotSent(`attempt ${tried.length}`);
      })
      .catch((e: unknown) => e);
    assert.ok(error instanceof NotSent);
    assert.equal(error.message, 'attempt 4');
    assert.equal(tried.length, 4);
    for (let i = 1; i < tried.length; i++) assert.notEqual(tried[i], tried[i - 1], 'never the same pod twice in a row');
    assert.equal(pool.stats().retries, 3);
  });

  test('retry: false sends a call once, even one that never reached its pod', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first() });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    let calls = 0;
    const refused = (): never => {
      calls++;
      throw new NotSent('refused');
    };
    await assert.rejects(pool.use(refused, { retry: false }), NotSent);
    assert.equal(calls, 1);
  });

  test('a spent budget stops idempotent retries, not those of calls that never reached a pod', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), retryBudget: { ratio: 0, minPerSecond: 0 } });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    await assert.rejects(
      pool.use(
        (c: MemoryClient) => {
          if (c.key === '10.0.0.1:80') throw new Reset('reset');
          return c.key;
        },
        { retry: { idempotent: true } },
      ),
      Reset,
    );
    const reply = await pool.use((c: MemoryClient) => {
      if (c.key === '10.0.0.1:80') throw new NotSent('refused');
      return c.key;
    });
    assert.equal(reply, '10.0.0.2:80');
  });

  test('the budget allows retries up to its ratio of calls', async (t) => {
    // No floor: only the calls made pay for retries, 1 in 4.
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), retryBudget: { ratio: 0.25, minPerSecond: 0 }, retry: { idempotent: true, maxDelayMs: 0 }, ejection: false });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    const flaky = (c: MemoryClient): string => {
      if (c.key === '10.0.0.1:80') throw new Reset('reset');
      return c.key;
    };
    let failed = 0;
    for (let i = 0; i < 40; i++) await pool.use(flaky).catch(() => failed++);
    assert.equal(pool.stats().retries, 10, 'a quarter of 40 calls');
    assert.equal(failed, 30);
  });

  test('an idempotent call whose result counts as a pod failure is retried, and the dropped result is freed', async (t) => {
    const discarded: unknown[] = [];
    const { source, pool } = harness(t, {
      transport: transport({ isFailedResult: (r) => (r as { status: number }).status >= 500, discard: (r) => discarded.push(r) }),
      balancer: first(),
      retry: { maxDelayMs: 0 },
    });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    const answer = (c: MemoryClient) => ({ status: c.key === '10.0.0.1:80' ? 503 : 200, from: c.key });
    assert.deepEqual(await pool.use(answer), { status: 503, from: '10.0.0.1:80' }, 'not idempotent: the caller gets the 503');
    assert.deepEqual(discarded, []);
    assert.deepEqual(await pool.use(answer, { retry: { idempotent: true } }), { status: 200, from: '10.0.0.2:80' });
    assert.deepEqual(discarded, [{ status: 503, from: '10.0.0.1:80' }]);
  });

  test('with one pod, a retry goes back to it', async (t) => {
    const { source, pool } = harness(t, { transport: transport() });
    source.set([A]);
    await pool.ready();
    let calls = 0;
    const reply = await pool.use((c: MemoryClient) => {
      if (++calls === 1) throw new NotSent('queued on a closed socket');
      return c.key;
    });
    assert.equal(reply, '10.0.0.1:80');
    assert.equal(calls, 2);
  });

  test('a retry that finds no pod ready waits for one: a rolling restart that outran discovery loses nothing', async (t) => {
    const { source, transport: memory, pool } = harness(t, { transport: transport() });
    source.set([A]);
    await pool.ready();
    let calls = 0;
    const reply = await pool.use((c: MemoryClient) => {
      if (++calls === 1) {
        // The only pod's connection goes as the call fails: nothing is pickable when it retries.
        memory.lose(c.key);
        throw new NotSent('queued on the connection that closed');
      }
      return `${c.key} #${c.connection}`;
    });
    assert.equal(reply, '10.0.0.1:80 #2', 'sent again on the new connection');
    assert.equal(pool.stats().retries, 1);
  });

  test('no retry once the caller aborted', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first() });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    const controller = new AbortController();
    let calls = 0;
    await assert.rejects(
      pool.use(
        (_c, _e, signal) =>
          new Promise((_, reject) => {
            calls++;
            signal.addEventListener('abort', () => reject(new NotSent('aborted before it was sent')));
            controller.abort();
          }),
        { signal: controller.signal },
      ),
      (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.ABORTED,
    );
    assert.equal(calls, 1);
  });
});

describe('use() deadline', () => {
  test('a call that outlives the pool-wide callTimeoutMs fails PODPOOL_TIMEOUT, its signal aborts, and its pod is charged', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), callTimeoutMs: 20 });
    source.set([A]);
    await pool.ready();
    let signalReason: unknown;
    const hung = (_c: MemoryClient, _e: unknown, signal: AbortSignal) =>
      new Promise<never>((_, reject) =>
        signal.addEventListener('abort', () => {
          signalReason = signal.reason;
          reject(signal.reason);
        }),
      );
    // Three calls in one cohort: one shared timer, each rejected and counted.
    const results = await Promise.allSettled([pool.use(hung), pool.use(hung), pool.use(hung)]);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.equal((r.reason as PodpoolError).code, ErrorCode.TIMEOUT);
      assert.match((r.reason as Error).message, /use\(\) on 10\.0\.0\.1:80 did not finish within 20 ms/);
    }
    assert.equal((signalReason as PodpoolError).code, ErrorCode.TIMEOUT);
    const stats = pool.stats();
    assert.equal(stats.members[0]!.failures, 3);
    assert.equal(stats.members[0]!.inFlight, 0);
  });

  test('the deadline rejects a call whose callback ignores its signal, and a call that ends in time is not charged', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), callTimeoutMs: 20 });
    source.set([A]);
    await pool.ready();
    let finish!: () => void;
    const ignoring = pool.use(() => new Promise<void>((resolve) => (finish = resolve)));
    const quick = pool.use((c: MemoryClient) => c.key);
    assert.equal(await quick, '10.0.0.1:80');
    await assert.rejects(ignoring, (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.TIMEOUT);
    assert.equal(pool.stats().members[0]!.inFlight, 1, 'still counted in flight until it really ends');
    finish();
    await flush();
    assert.equal(pool.stats().members[0]!.inFlight, 0);
    assert.equal(pool.stats().members[0]!.failures, 1, 'counted once, at the deadline');
  });

  test('a lost connection aborts the signal of the calls on it', async (t) => {
    const { source, transport: memory, pool } = harness(t, { transport: transport() });
    source.set([A]);
    await pool.ready();
    const aborted = pool.use(
      (_c, _e, signal) => new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason))),
      { retry: false },
    );
    memory.lose('10.0.0.1:80');
    await assert.rejects(aborted, (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.CONNECTION_LOST);
  });

  test('timeoutMs: Infinity, per call or for the pool, sets no deadline; one past what a timer holds is refused', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), callTimeoutMs: Infinity });
    source.set([A]);
    await pool.ready();
    assert.equal(await pool.use((c: MemoryClient) => c.key), '10.0.0.1:80');
    assert.equal(await pool.use((c: MemoryClient) => c.key, { timeoutMs: Infinity }), '10.0.0.1:80');
    await assert.rejects(pool.use((c: MemoryClient) => c.key, { timeoutMs: 2 ** 31 }), (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_OPTION);
  });

  test('retries stay within the deadline: none is sent after it passed', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), retry: { idempotent: true, retries: 5, minDelayMs: 50, maxDelayMs: 50 } });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    let calls = 0;
    // The first retry's backoff (50–100 ms) can't fit in what is left of a 30 ms deadline.
    await assert.rejects(
      pool.use(
        () => {
          calls++;
          throw new Reset('reset');
        },
        { timeoutMs: 30 },
      ),
      Reset,
    );
    assert.equal(calls, 1);
  });
});

describe('use() hedging', () => {
  test('after the delay a second pod gets the call; the first answer wins and the other is cancelled, not charged', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), hedge: { delayMs: 5 } });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    let lostReason: unknown;
    const reply = await pool.use((c: MemoryClient, _e, signal) => {
      if (c.key === '10.0.0.2:80') return c.key;
      // The slow pod: answers only when cancelled.
      return new Promise<string>((_, reject) =>
        signal.addEventListener('abort', () => {
          lostReason = signal.reason;
          reject(signal.reason);
        }),
      );
    });
    assert.equal(reply, '10.0.0.2:80');
    assert.equal((lostReason as PodpoolError).code, ErrorCode.ABORTED);
    const stats = pool.stats();
    assert.equal(stats.hedges, 1);
    assert.equal(failures(stats, '10.0.0.1:80'), 0, 'losing a hedge is not a failure');
    assert.ok(stats.members.find((m) => m.endpoint.key === '10.0.0.1:80')!.latencyMs > 0, 'but its time so far is a latency sample');
  });

  test('a call that answers before the delay sends no hedge; hedge: false per call turns it off', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), hedge: { delayMs: 1_000 } });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    assert.equal(await pool.use((c: MemoryClient) => c.key), '10.0.0.1:80');
    assert.equal(await pool.use((c: MemoryClient) => c.key, { hedge: false }), '10.0.0.1:80');
    assert.equal(pool.stats().hedges, 0);
  });

  test('a percentile hedge waits for 20 answered calls before it hedges', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), hedge: { percentile: 90 } });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    for (let i = 0; i < 19; i++) await pool.use((c: MemoryClient) => c.key);
    assert.equal(pool.stats().hedges, 0);
    // The 20th answered call gives the window its percentile; the next slow call is hedged.
    await pool.use((c: MemoryClient) => c.key);
    const reply = await pool.use((c: MemoryClient, _e, signal) =>
      c.key === '10.0.0.1:80' ? new Promise<string>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason))) : c.key,
    );
    assert.equal(reply, '10.0.0.2:80');
    assert.equal(pool.stats().hedges, 1);
  });

  test('a call made before the percentile was known is hedged once it is, if still running', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), hedge: { percentile: 90 } });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    // The pool's very first call: slow on A, and nothing has answered yet.
    const early = pool.use((c: MemoryClient, _e, signal) =>
      c.key === '10.0.0.1:80' ? new Promise<string>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason))) : c.key,
    );
    for (let i = 0; i < 20; i++) await pool.use((c: MemoryClient) => c.key);
    assert.equal(await early, '10.0.0.2:80', 'hedged to B once 20 calls had answered');
    assert.equal(pool.stats().hedges, 1);
  });

  test('a percentile hedge sends at most 100 - percentile % of the calls made as hedges', async (t) => {
    const { source, pool } = harness(t, { transport: transport(), balancer: first(), hedge: { percentile: 50 }, ejection: false });
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    for (let i = 0; i < 20; i++) await pool.use((c: MemoryClient) => c.key);
    // Every call from now on is slow on A: each would be hedged, but only half of all calls may
    // be, plus one a second over the budget's 10 s window (the clock barely moves: ten). The slow
    // answers of those that are not stay under the median: it does not move.
    const slowOnA = (c: MemoryClient, _e: unknown, signal: AbortSignal): Promise<string> | string =>
      c.key === '10.0.0.2:80'
        ? c.key
        : new Promise<string>((resolve, reject) => {
            const timer = setTimeout(() => resolve(c.key), 20);
            signal.addEventListener('abort', () => {
              clearTimeout(timer);
              reject(signal.reason);
            });
          });
    const replies = new Map<string, number>();
    for (let i = 0; i < 80; i++) {
      const reply = await pool.use(slowOnA);
      replies.set(reply, (replies.get(reply) ?? 0) + 1);
    }
    assert.equal(pool.stats().hedges, 60, 'half of 100 calls, plus ten');
    assert.deepEqual(Object.fromEntries(replies), { '10.0.0.2:80': 60, '10.0.0.1:80': 20 });
  });

  test('bad retry and hedge options fail at the door, naming the option', (t) => {
    assert.throws(() => harness(t, { transport: transport(), retry: { retries: -1 } }), /option retry\.retries must be/);
    assert.throws(() => harness(t, { transport: transport(), hedge: { delayMs: 1, percentile: 90 } }), /exactly one of delayMs and percentile/);
    assert.throws(() => harness(t, { transport: transport(), hedge: { percentile: 100 } }), /hedge\.percentile/);
    assert.throws(() => harness(t, { transport: transport(), retryBudget: { ratio: -1 } }), /retryBudget\.ratio/);
    assert.throws(() => harness(t, { transport: transport(), callTimeoutMs: 0 }), /callTimeoutMs/);
    // Past what a timer holds (2^31 - 1 ms) Node fires it after 1 ms: refused, not a deadline of 1 ms.
    assert.throws(() => harness(t, { transport: transport(), callTimeoutMs: 2 ** 31 }), /option callTimeoutMs must be a number of ms from 1 to 2147483647/);
    assert.throws(() => harness(t, { transport: transport(), hedge: { delayMs: 2 ** 31 } }), /hedge\.delayMs/);
    assert.throws(() => harness(t, { transport: transport(), slowStart: { windowMs: 2 ** 31 } }), /slowStart\.windowMs/);
  });
});
