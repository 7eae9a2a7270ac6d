import assert from 'node:assert/strict';
import { once } from 'node:events';
import { afterEach, describe, it } from 'node:test';
import { leastLoaded } from '../../src/balance/least-loaded.ts';
import { staticEndpoints } from '../../src/discovery/static.ts';
import { createEndpoint, type Endpoint } from '../../src/endpoint.ts';
import { ConnectionLostError, ErrorCode, type PodpoolError } from '../../src/errors.ts';
import { createPool, type Pool } from '../../src/pool/pool.ts';
import { exclusiveTransport, type ExclusiveFactory } from '../../src/transport/exclusive.ts';
import { connectLineClient, LineServer, type LineClient } from '../support/line-server.ts';
import { stateReached } from '../support/pool-events.ts';
import { resourceNames } from '../support/resources.ts';

const quickReconnect = { minMs: 5, maxMs: 20, factor: 2 };

/** A line-client factory that counts what it does, per endpoint key. */
function lineFactory(options: { validate?: boolean } = {}) {
  const creates = new Map<string, number>();
  const clients: LineClient[] = [];
  const factory: ExclusiveFactory<LineClient> = {
    async create(endpoint, signal) {
      creates.set(endpoint.key, (creates.get(endpoint.key) ?? 0) + 1);
      const client = await connectLineClient(endpoint.address, endpoint.port, signal);
      clients.push(client);
      return client;
    },
    destroy: (client) => client.close(),
    ...(options.validate && { validate: (client: LineClient) => !client.socket.destroyed }),
  };
  return { factory, creates, clients };
}

/** Resolves after `n` connect errors for `key`, with them. */
function connectErrors<C>(pool: Pool<C>, key: string, n: number): Promise<PodpoolError[]> {
  const errors: PodpoolError[] = [];
  return new Promise((resolve) => {
    const listener = (endpoint: Endpoint, error: PodpoolError): void => {
      if (endpoint.key !== key) return;
      errors.push(error);
      if (errors.length === n) {
        pool.off('connectError', listener);
        resolve(errors);
      }
    };
    pool.on('connectError', listener);
  });
}

/** A port on `address` where nothing listens: a pod that refuses connections. */
async function refusingEndpoint(address: string): Promise<{ address: string; port: number; key: string }> {
  const probe = await LineServer.start(address);
  const { port, key } = probe;
  await probe.close();
  return { address, port, key };
}

describe('exclusiveTransport against real TCP line servers on loopback', { timeout: 20_000 }, () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  it('lends each socket to one caller at a time, and opens at most perEndpoint per pod', async () => {
    const server = await LineServer.start('127.0.0.121');
    const { factory } = lineFactory();
    const pool = createPool({ source: staticEndpoints([server]), transport: exclusiveTransport(factory, { perEndpoint: 3 }) });
    cleanup.push(() => server.close(), () => pool.close());
    await pool.ready();
    assert.equal(server.connections, 1, 'connect opened one socket to prove the pod takes connections');

    server.hold();
    const calls = Array.from({ length: 10 }, (_, i) => pool.use((client) => client.request(`call ${i}`)));
    await server.outstandingReaches(3);
    assert.equal(server.open, 3, 'three callers hold the three sockets; seven wait');
    assert.equal(pool.stats().members[0].inFlight, 10);
    server.release();

    assert.deepEqual(await Promise.all(calls), Array.from({ length: 10 }, (_, i) => `call ${i}`));
    assert.equal(server.maxOutstandingPerSocket, 1, 'no socket ever carried two requests at once');
    assert.equal(server.maxOpen, 3);
    assert.equal(server.connections, 3, 'sockets were reused, not reopened');
    assert.equal(pool.stats().members[0].inFlight, 0);
  });

  it('least-loaded counts borrowed connections', async () => {
    const [a, b] = [await LineServer.start('127.0.0.122'), await LineServer.start('127.0.0.123')];
    const { factory } = lineFactory();
    const pool = createPool({
      source: staticEndpoints([a, b]),
      transport: exclusiveTransport(factory, { perEndpoint: 2 }),
      balancer: leastLoaded({ choices: Infinity }),
      random: () => 0,
    });
    cleanup.push(() => a.close(), () => b.close(), () => pool.close());
    await pool.ready({ minEndpoints: 2 });

    a.hold();
    // Both idle: the scan starts at the first member (random() = 0), which is a.
    const held = pool.use((client, endpoint) => client.request('held').then(() => endpoint.key));
    await a.outstandingReaches(1);
    const inFlight = pool.stats().members.map((m) => [m.endpoint.key, m.inFlight]);
    assert.deepEqual(inFlight, [
      [a.key, 1],
      [b.key, 0],
    ]);
    for (let i = 0; i < 5; i++) {
      assert.equal(await pool.use((client, endpoint) => client.request('x').then(() => endpoint.key)), b.key, 'a has a socket lent out');
    }
    a.release();
    assert.equal(await held, a.key);
    assert.equal(a.requests, 1);
    assert.equal(b.requests, 5);
  });

  it('never readies a pod that refuses connections, and tries one socket per connect attempt', async () => {
    const good = await LineServer.start('127.0.0.124');
    const refusing = await refusingEndpoint('127.0.0.125');
    const { factory, creates } = lineFactory();
    const pool = createPool({
      source: staticEndpoints([good, refusing]),
      transport: exclusiveTransport(factory, { perEndpoint: 2, acquireTimeoutMs: 60_000 }),
      reconnect: quickReconnect,
    });
    cleanup.push(() => good.close(), () => pool.close());
    const errors = connectErrors(pool, refusing.key, 3);
    await pool.ready();

    const seen = await errors;
    for (const error of seen) {
      assert.equal(error.code, ErrorCode.CONNECT_FAILED);
      assert.match(error.message, /ECONNREFUSED/);
    }
    // generic-pool alone would retry a failed create in a loop for as long as a caller waits
    // (thousands of connects); here each connect attempt opens one socket and fails.
    assert.equal(creates.get(refusing.key), 3);
    const states = Object.fromEntries(pool.stats().members.map((m) => [m.endpoint.key, m.state]));
    assert.deepEqual(states, { [good.key]: 'ready', [refusing.key]: 'connecting' });
    for (let i = 0; i < 4; i++) {
      assert.equal(await pool.use((client, endpoint) => client.request('hi').then(() => endpoint.key)), good.key);
    }
  });

  it('fails a caller waiting on a pod that dies at once, reports the pod lost, and takes it back after a restart', async () => {
    const server = await LineServer.start('127.0.0.126');
    const { factory, creates } = lineFactory();
    // A caller that hung until the acquire timeout would time this test out.
    const pool = createPool({
      source: staticEndpoints([server]),
      transport: exclusiveTransport(factory, { perEndpoint: 1, acquireTimeoutMs: 60_000 }),
      reconnect: quickReconnect,
      ejection: false,
    });
    cleanup.push(() => server.close(), () => pool.close());
    await pool.ready();

    server.hold();
    const borrowing = pool.use((client) => client.request('first'));
    await server.outstandingReaches(1);
    const waiting = pool.use((client) => client.request('second'));
    const lost = stateReached(pool, server.key, 'connecting', () => creates.get(server.key));
    await server.kill();

    await assert.rejects(borrowing, /closed the connection|ECONNRESET/);
    await assert.rejects(waiting, { code: ErrorCode.CONNECT_FAILED, message: /ECONNREFUSED/ });
    const change = await lost;
    assert.ok(change.error instanceof ConnectionLostError);
    assert.equal(change.error.name, 'ConnectionLostError');
    assert.equal((change.error as PodpoolError).code, ErrorCode.CONNECTION_LOST);
    assert.equal(change.snapshot, 2, 'one create after the death, not a loop of them');

    const back = stateReached(pool, server.key, 'ready');
    await server.restart();
    await back;
    assert.equal(await pool.use((client) => client.request('again')), 'again');
  });

  it('with validate, finds idle sockets of a killed pod dead at borrow time, and the pod lost', async () => {
    const server = await LineServer.start('127.0.0.127');
    const { factory, clients } = lineFactory({ validate: true });
    const pool = createPool({
      source: staticEndpoints([server]),
      transport: exclusiveTransport(factory, { perEndpoint: 2 }),
      reconnect: quickReconnect,
      ejection: false,
    });
    cleanup.push(() => server.close(), () => pool.close());
    await pool.ready();
    assert.equal(await pool.use((client) => client.request('warm')), 'warm');

    const lost = stateReached(pool, server.key, 'connecting');
    await server.kill();
    await Promise.all(clients.map((c) => (c.socket.closed ? undefined : once(c.socket, 'close'))));
    // The idle socket fails validation, the replacement is refused: a caller that does not wait
    // for a pod fails at once (its retry finds none to go to).
    await assert.rejects(
      pool.use((client) => client.request('x'), { waitForReady: false }),
      { code: ErrorCode.CONNECT_FAILED },
    );
    await lost;
    await assert.rejects(pool.use((client) => client.request('x'), { waitForReady: false }), { code: ErrorCode.NO_ENDPOINTS });

    const back = stateReached(pool, server.key, 'ready');
    await server.restart();
    await back;
    assert.equal(await pool.use((client) => client.request('again')), 'again');
  });

  it('destroys the socket of a call that failed, and reuses the others', async () => {
    const server = await LineServer.start('127.0.0.128');
    const { factory, clients } = lineFactory();
    const pool = createPool({ source: staticEndpoints([server]), transport: exclusiveTransport(factory, { perEndpoint: 1 }), ejection: false });
    cleanup.push(() => server.close(), () => pool.close());
    await pool.ready();
    await pool.use((client) => client.request('ok'));
    await pool.use((client) => client.request('ok'));
    assert.equal(server.connections, 1);

    await assert.rejects(
      pool.use(async (client) => {
        await client.request('then fail');
        throw new Error('application error');
      }),
      /application error/,
    );
    assert.equal(clients[0].socket.destroyed, true);
    assert.equal(await pool.use((client) => client.request('fresh')), 'fresh');
    assert.equal(server.connections, 2);
  });

  it('bounds every wait: a full pod times out, a hanging create is aborted, an aborted caller leaves', async () => {
    const server = await LineServer.start('127.0.0.129');
    cleanup.push(() => server.close());
    const endpoint = createEndpoint({ address: server.address, port: server.port });
    const context = () => ({ signal: new AbortController().signal, lost: () => assert.fail('not lost') });

    // All lent out: the next caller gets PODPOOL_TIMEOUT, not an endless wait.
    const { factory } = lineFactory();
    const connection = await exclusiveTransport(factory, { perEndpoint: 1, acquireTimeoutMs: 20 }).connect(endpoint, context());
    const lent = await connection.acquire!(undefined);
    await assert.rejects(connection.acquire!(undefined), { code: ErrorCode.TIMEOUT, message: /no connection to .* came free/ });

    // An aborted caller leaves the queue; the socket it was waiting for goes to the next one.
    const controller = new AbortController();
    const abandoned = connection.acquire!(controller.signal);
    controller.abort();
    await assert.rejects(abandoned, { code: ErrorCode.ABORTED });
    connection.release!(lent, false);
    assert.equal(await connection.acquire!(undefined), lent, 'the same socket, given back by the abandoned wait');
    connection.release!(lent, false);
    await connection.close();
    assert.equal(lent.socket.destroyed, true);

    // A create that never finishes is aborted at acquireTimeoutMs, and connect fails.
    let createSignal: AbortSignal | undefined;
    const hanging = exclusiveTransport<object>(
      {
        create: (_endpoint, signal) => {
          createSignal = signal;
          return new Promise(() => {});
        },
        destroy: () => {},
      },
      { acquireTimeoutMs: 20 },
    );
    await assert.rejects(hanging.connect(endpoint, context()), { code: ErrorCode.TIMEOUT });
    assert.equal(createSignal?.aborted, true);
  });

  it('stops connecting when the pool aborts the connect, and aborts the create under way', async () => {
    let createSignal: AbortSignal | undefined;
    let created = () => {};
    const started = new Promise<void>((resolve) => (created = resolve));
    const transport = exclusiveTransport<object>({
      create: (_endpoint, signal) => {
        createSignal = signal;
        created();
        return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
      },
      destroy: () => {},
    });
    const controller = new AbortController();
    const connecting = transport.connect(createEndpoint({ address: '127.0.0.132', port: 9 }), { signal: controller.signal, lost: () => {} });
    await started;
    controller.abort();
    await assert.rejects(connecting, { code: ErrorCode.ABORTED });
    assert.equal(createSignal?.aborted, true);
  });

  it('treats a validate that throws as "not valid", without an unhandled rejection', async () => {
    const server = await LineServer.start('127.0.0.130');
    cleanup.push(() => server.close());
    let validations = 0;
    const { factory } = lineFactory();
    const transport = exclusiveTransport({
      ...factory,
      validate: () => {
        validations++;
        if (validations === 2) throw new Error('validate broke');
        return true;
      },
    });
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const pool = createPool({ source: staticEndpoints([server]), transport });
      cleanup.push(() => pool.close());
      await pool.ready();
      assert.equal(await pool.use((client) => client.request('a')), 'a');
      assert.equal(server.connections, 2, 'the socket that failed validation was replaced');
      await pool.close();
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    assert.deepEqual(unhandled, []);
  });

  it('close() leaves no socket or timer behind, even with calls waiting', async () => {
    const server = await LineServer.start('127.0.0.131');
    const resourcesBefore = resourceNames();
    const { factory } = lineFactory();
    const pool = createPool({
      source: staticEndpoints([server]),
      transport: exclusiveTransport(factory, { perEndpoint: 2 }),
      drainTimeoutMs: 0,
    });
    await pool.ready();
    for (let i = 0; i < 5; i++) await pool.use((client) => client.request('x'));
    server.hold();
    const calls = Promise.allSettled(Array.from({ length: 4 }, () => pool.use((client) => client.request('held'))));
    await server.outstandingReaches(2);
    await pool.close();
    // Two held sockets were destroyed under their calls; two callers were still waiting.
    for (const outcome of await calls) assert.equal(outcome.status, 'rejected');
    await server.idle();
    assert.deepEqual(resourceNames(), resourcesBefore, `before: ${resourcesBefore}`);
    await server.close();
    await assert.rejects(pool.use((client) => client.request('x')), { code: ErrorCode.CLOSED });
  });

  it('rejects bad options at the door, naming the option', () => {
    const { factory } = lineFactory();
    assert.throws(() => exclusiveTransport(factory, { perEndpoint: 0 }), /option perEndpoint must be an integer >= 1, got 0/);
    assert.throws(() => exclusiveTransport(factory, { acquireTimeoutMs: Infinity }), { code: ErrorCode.INVALID_OPTION });
    assert.throws(() => exclusiveTransport(factory, { acquireTimeoutMs: 0 }), /option acquireTimeoutMs/);
    assert.throws(() => exclusiveTransport({ ...factory, create: undefined as never }), /option factory.create must be a function/);
    assert.throws(() => exclusiveTransport({ ...factory, validate: 'yes' as never }), /option factory.validate/);
  });
});
