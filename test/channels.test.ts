/**
 * What the pool publishes on `node:diagnostics_channel`, read as a subscriber reads it
 * (`diagnostics_channel.subscribe(name, fn)`): the exact sequence of messages for a call that
 * answers, one retried on another pod, a hedge, a broadcast, adapter calls, member state changes,
 * snapshots and discovery errors. Waits are the messages themselves; nothing sleeps.
 */
import { strict as assert } from 'node:assert';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { describe, test, type TestContext } from 'node:test';
import { CHANNEL_NAMES, type CallEndMessage, type CallErrorMessage, type CallStartMessage } from '../src/channels.ts';
import { ErrorCode, PodpoolError } from '../src/errors.ts';
import { first } from './support/first-balancer.ts';
import { harness } from './support/pool-harness.ts';
import { MemoryTransport, type MemoryClient } from './support/memory-transport.ts';

const A = { address: '10.0.0.1', port: 80 };
const B = { address: '10.0.0.2', port: 80 };
const C = { address: '10.0.0.3', port: 80 };

/** An error the transport says never reached the pod. */
class NotSent extends Error {}

type Name = keyof typeof CHANNEL_NAMES;
interface Heard {
  readonly name: Name;
  readonly message: Record<string, unknown>;
}

/**
 * Subscribes to every channel for the test's length and keeps the messages of `pool` only (the
 * channels are process-wide). `until(n)` resolves once `n` messages were heard.
 */
function listen(t: TestContext, pool: () => object) {
  const heard: Heard[] = [];
  let waiting: { n: number; resolve: () => void } | undefined;
  for (const name of Object.keys(CHANNEL_NAMES) as Name[]) {
    const fn = (message: unknown): void => {
      if ((message as { pool: object }).pool !== pool()) return;
      heard.push({ name, message: message as Record<string, unknown> });
      if (waiting !== undefined && heard.length >= waiting.n) waiting.resolve();
    };
    subscribe(CHANNEL_NAMES[name], fn);
    t.after(() => unsubscribe(CHANNEL_NAMES[name], fn));
  }
  return {
    heard,
    calls: () => heard.filter((h) => h.name.startsWith('call')),
    until: (n: number) =>
      heard.length >= n ? Promise.resolve() : new Promise<void>((resolve) => (waiting = { n, resolve })),
  };
}

/** A call message as the test compares it: the fields that say where and which attempt. */
function shape(h: Heard) {
  const m = h.message as unknown as CallStartMessage & Partial<CallErrorMessage>;
  return {
    name: h.name,
    kind: m.kind,
    endpoint: m.endpoint.key,
    attempt: m.attempt,
    hedge: m.hedge,
    balancer: m.balancer,
    ...(h.name === 'callError' && { outcome: m.outcome }),
  };
}

describe('diagnostics channels: calls', () => {
  test('a use() that answers: a start and an end on the pod it went to, the same call object in both', async (t) => {
    const { source, pool } = harness(t, { balancer: first() });
    const ch = listen(t, () => pool);
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    assert.equal(await pool.use((c: MemoryClient) => c.key), '10.0.0.1:80');
    const calls = ch.calls();
    assert.deepEqual(calls.map(shape), [
      { name: 'callStart', kind: 'use', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first' },
      { name: 'callEnd', kind: 'use', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first' },
    ]);
    const [start, end] = calls.map((h) => h.message as unknown as CallEndMessage);
    assert.equal(end.call, start.call);
    assert.equal(start.logicalCall, start.call, 'a first attempt is its own logical call');
    assert.equal(start.pool, pool);
    assert.equal(typeof end.durationMs, 'number');
    assert.ok(end.durationMs >= 0);
  });

  test('a failed attempt retried on another pod: error (failed) then attempt 2, one logical call', async (t) => {
    const transport = new MemoryTransport({ wasNotSent: (e) => e instanceof NotSent });
    const { source, pool } = harness(t, { transport, balancer: first() });
    const ch = listen(t, () => pool);
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    const refused = new NotSent('refused');
    await pool.use((c: MemoryClient) => {
      if (c.key === '10.0.0.1:80') throw refused;
      return c.key;
    });
    // A second call, to tell two logical calls apart.
    await pool.use((c: MemoryClient) => c.key);
    const calls = ch.calls();
    assert.deepEqual(calls.map(shape), [
      { name: 'callStart', kind: 'use', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first' },
      { name: 'callError', kind: 'use', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first', outcome: 'failed' },
      { name: 'callStart', kind: 'use', endpoint: '10.0.0.2:80', attempt: 2, hedge: false, balancer: 'first' },
      { name: 'callEnd', kind: 'use', endpoint: '10.0.0.2:80', attempt: 2, hedge: false, balancer: 'first' },
      { name: 'callStart', kind: 'use', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first' },
      { name: 'callEnd', kind: 'use', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first' },
    ]);
    const m = calls.map((h) => h.message as unknown as CallErrorMessage);
    assert.equal(m[1].error, refused);
    assert.notEqual(m[2].call, m[0].call, 'each attempt is a call object of its own');
    assert.equal(m[2].logicalCall, m[0].logicalCall, 'the retry is the same logical call');
    assert.notEqual(m[4].logicalCall, m[0].logicalCall, 'the next use() is another');
  });

  test('an answer counted as the pod failing is an error, with the error the pool recorded', async (t) => {
    const { source, pool } = harness(t, { balancer: first() });
    const ch = listen(t, () => pool);
    source.set([A]);
    await pool.ready();
    assert.deepEqual(await pool.use(() => ({ statusCode: 503 }), { failedResult: (r) => r.statusCode === 503 }), { statusCode: 503 });
    const calls = ch.calls();
    assert.deepEqual(calls.map((h) => [h.name, (h.message as { outcome?: string }).outcome]), [
      ['callStart', undefined],
      ['callError', 'failed'],
    ]);
    assert.match(String((calls[1].message as unknown as CallErrorMessage).error), /10\.0\.0\.1:80 answered HTTP 503/);
  });

  test('a hedge: attempt 2 with hedge true on another pod; the loser ends abandoned', async (t) => {
    const { source, pool } = harness(t, { balancer: first(), hedge: { delayMs: 5 } });
    const ch = listen(t, () => pool);
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    const reply = await pool.use((c: MemoryClient, _e, signal) => {
      if (c.key === '10.0.0.2:80') return c.key;
      // The slow pod: ends only when cancelled.
      return new Promise<string>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
    });
    assert.equal(reply, '10.0.0.2:80');
    await ch.until(4);
    const calls = ch.calls();
    assert.deepEqual(calls.map(shape), [
      { name: 'callStart', kind: 'use', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first' },
      { name: 'callStart', kind: 'use', endpoint: '10.0.0.2:80', attempt: 2, hedge: true, balancer: 'first' },
      { name: 'callEnd', kind: 'use', endpoint: '10.0.0.2:80', attempt: 2, hedge: true, balancer: 'first' },
      { name: 'callError', kind: 'use', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first', outcome: 'abandoned' },
    ]);
    const m = calls.map((h) => h.message as unknown as CallErrorMessage);
    assert.equal(m[1].logicalCall, m[0].logicalCall, 'the hedge and the first attempt are one call');
    assert.equal(m[3].call, m[0].call);
    assert.equal((m[3].error as PodpoolError).code, ErrorCode.ABORTED);
  });

  test('a broadcast over 3 pods: a start and an end per pod, kind broadcast; a retried delivery counts its attempt', async (t) => {
    const { source, pool } = harness(t, { balancer: first() });
    const ch = listen(t, () => pool);
    source.set([A, B, C]);
    await pool.ready({ minEndpoints: 3 });
    let failedOnce = false;
    const result = await pool.broadcast(
      (c: MemoryClient) => {
        if (c.key === '10.0.0.3:80' && !failedOnce) {
          failedOnce = true;
          throw new Error('first delivery to C lost');
        }
        return c.key;
      },
      { retries: 1 },
    );
    assert.equal(result.delivered.length, 3);
    const calls = ch.calls().map(shape);
    const of = (endpoint: string) => calls.filter((c) => c.endpoint === endpoint).map((c) => [c.name, c.kind, c.attempt, c.outcome]);
    assert.deepEqual(of('10.0.0.1:80'), [
      ['callStart', 'broadcast', 1, undefined],
      ['callEnd', 'broadcast', 1, undefined],
    ]);
    assert.deepEqual(of('10.0.0.2:80'), [
      ['callStart', 'broadcast', 1, undefined],
      ['callEnd', 'broadcast', 1, undefined],
    ]);
    assert.deepEqual(of('10.0.0.3:80'), [
      ['callStart', 'broadcast', 1, undefined],
      ['callError', 'broadcast', 1, 'failed'],
      ['callStart', 'broadcast', 2, undefined],
      ['callEnd', 'broadcast', 2, undefined],
    ]);
    assert.equal(calls.length, 8);
  });

  test('adapter calls through begin(): kind adapter; a retry (avoid) is attempt 2; end(error) is an error', async (t) => {
    const { source, pool } = harness(t, { balancer: first() });
    const ch = listen(t, () => pool);
    source.set([A, B]);
    await pool.ready({ minEndpoints: 2 });
    const call = pool.begin();
    const lost = new PodpoolError(ErrorCode.CONNECTION_LOST, 'stream reset');
    call.end(lost);
    pool.begin(undefined, call.endpoint).end();
    const calls = ch.calls();
    assert.deepEqual(calls.map(shape), [
      { name: 'callStart', kind: 'adapter', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first' },
      { name: 'callError', kind: 'adapter', endpoint: '10.0.0.1:80', attempt: 1, hedge: false, balancer: 'first', outcome: 'failed' },
      { name: 'callStart', kind: 'adapter', endpoint: '10.0.0.2:80', attempt: 2, hedge: false, balancer: 'first' },
      { name: 'callEnd', kind: 'adapter', endpoint: '10.0.0.2:80', attempt: 2, hedge: false, balancer: 'first' },
    ]);
    assert.equal((calls[1].message as unknown as CallErrorMessage).error, lost);
  });

  test('messages of another pool are told apart by pool identity', async (t) => {
    const one = harness(t, { balancer: first() });
    const two = harness(t, { balancer: first() });
    const ch = listen(t, () => one.pool);
    one.source.set([A]);
    two.source.set([B]);
    await Promise.all([one.pool.ready(), two.pool.ready()]);
    await two.pool.use(() => 1);
    assert.deepEqual(ch.calls(), []);
    await one.pool.use(() => 1);
    assert.equal(ch.calls().length, 2);
  });
});

describe('diagnostics channels: members and discovery', () => {
  test('a member state change carries the endpoint, from, to and the error, as the state event does', async (t) => {
    const { source, transport, pool } = harness(t, { balancer: first() });
    const ch = listen(t, () => pool);
    const events: unknown[] = [];
    pool.on('state', (change) => events.push(change));
    source.set([A]);
    await pool.ready();
    const lost = new Error('10.0.0.1:80 reset the connection');
    transport.lose('10.0.0.1:80', lost);
    const states = ch.heard.filter((h) => h.name === 'memberState').map((h) => h.message);
    assert.deepEqual(
      states.map((m) => [(m.endpoint as { key: string }).key, m.from, m.to]),
      [
        ['10.0.0.1:80', 'connecting', 'ready'],
        ['10.0.0.1:80', 'ready', 'connecting'],
      ],
    );
    assert.ok(states[1].error instanceof PodpoolError, 'the loss, as the pool reports it');
    assert.deepEqual(
      states.map(({ pool: _pool, ...rest }) => rest),
      events,
      'the same change as the state event',
    );
  });

  test('a snapshot carries the source, the set and its diff', async (t) => {
    const { source, pool } = harness(t, { balancer: first() });
    const ch = listen(t, () => pool);
    const set = source.set([A, B]);
    source.set([B]);
    const snapshots = ch.heard.filter((h) => h.name === 'snapshot').map((h) => h.message);
    assert.equal(snapshots.length, 2);
    assert.equal(snapshots[0].source, 'manual');
    assert.equal(snapshots[0].endpoints, set);
    const keys = (list: unknown) => (list as { key: string }[]).map((e) => e.key);
    const diff = (i: number) => snapshots[i].diff as { added: unknown; removed: unknown };
    assert.deepEqual(keys(diff(0).added), ['10.0.0.1:80', '10.0.0.2:80']);
    assert.deepEqual(keys(diff(1).removed), ['10.0.0.1:80']);
  });

  test('a discovery error carries the source and the PodpoolError', async (t) => {
    const { source, pool } = harness(t, { balancer: first() });
    const ch = listen(t, () => pool);
    pool.on('sourceError', () => {});
    const failure = source.fail('the API server said 503');
    const errors = ch.heard.filter((h) => h.name === 'discoveryError').map((h) => h.message);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].source, 'manual');
    assert.equal(errors[0].error, failure);
    assert.equal((failure as PodpoolError).code, ErrorCode.DISCOVERY_FAILED);
  });
});
