import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect as netConnect, type Server as NetServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { status, type ClientOptions, type ChannelCredentials } from '@grpc/grpc-js';
import {
  ErrorCode,
  PodpoolError,
  createEndpoint,
  createPool,
  staticEndpoints,
  type StateChange,
} from '../../src/index.ts';
import { grpcTransport } from '../../src/transport/grpc.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import {
  EchoClient,
  GrpcPod,
  startGrpcPods,
  stopGrpcPods,
  unary,
} from '../../testkit/grpc-pods.ts';
import { stateReached } from '../support/pool-events.ts';
import { activeResources, assertNothingLeft } from '../support/resources.ts';

const quickReconnect = { minMs: 5, maxMs: 20, factor: 2 };
/** Every wait below is on an event; this only turns a broken feature's endless wait into a failure. */
const events = { timeout: 20_000 };

/**
 * A TCP server that accepts connections, reads what it is sent and never answers: a pod whose
 * process is wedged while its kernel still completes handshakes.
 */
async function startSilentServer(address: string): Promise<{ server: NetServer; port: number; sockets: Set<Socket>; allClosed(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    socket.resume();
    sockets.add(socket);
    socket.once('close', () => {
      sockets.delete(socket);
      server.emit('socketClosed');
    });
  });
  server.listen(0, address);
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    server,
    port,
    sockets,
    async allClosed() {
      while (sockets.size > 0) await once(server, 'socketClosed');
    },
  };
}

/**
 * A TCP relay in front of a pod that can freeze: frozen, it keeps every connection open and
 * accepts new ones but forwards nothing, as a pod on a node that vanished (no FIN, no RST).
 */
async function startFreezableRelay(address: string, target: GrpcPod) {
  const sockets = new Set<Socket>();
  let frozen = false;
  const server = createServer((downstream) => {
    const upstream = netConnect({ host: target.address, port: target.port });
    for (const [from, to] of [
      [downstream, upstream],
      [upstream, downstream],
    ] as const) {
      sockets.add(from);
      from.on('data', (chunk: Buffer) => {
        if (!frozen) to.write(chunk);
      });
      from.on('error', () => {});
      from.once('close', () => to.destroy());
    }
  });
  server.listen(0, address);
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    port,
    freeze: () => void (frozen = true),
    thaw: () => void (frozen = false),
    async close() {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

describe('grpcTransport options', () => {
  it('checks its options at the door, naming the option', () => {
    const cases: [() => unknown, RegExp][] = [
      [() => grpcTransport(undefined as never), /option ServiceClient must be a grpc-js client constructor/],
      [() => grpcTransport(class {} as never), /option ServiceClient/],
      [() => grpcTransport(EchoClient, null as never), /option options must be an object/],
      [() => grpcTransport(EchoClient, { credentials: {} as ChannelCredentials }), /option credentials must be grpc-js ChannelCredentials/],
      [() => grpcTransport(EchoClient, { serverName: '' }), /option serverName must be a non-empty DNS name/],
      [() => grpcTransport(EchoClient, { serverName: 'echo.default.svc' }), /option serverName must be used with TLS credentials/],
      [() => grpcTransport(EchoClient, { channelOptions: { 'grpc.keepalive_time_ms': -1 } }), /option channelOptions\['grpc.keepalive_time_ms'\] must be an integer >= 1, got -1/],
      [() => grpcTransport(EchoClient, { channelOptions: { 'grpc.keepalive_timeout_ms': '5s' as never } }), /grpc.keepalive_timeout_ms/],
      [() => grpcTransport(EchoClient, { channelOptions: { 'grpc.keepalive_permit_without_calls': 2 } }), /must be 0 or 1, got 2/],
      [() => grpcTransport(EchoClient, { channelOptions: { channelOverride: {} } as never }), /option channelOptions.channelOverride must be left out/],
      [() => grpcTransport(EchoClient, { connectTimeoutMs: 0 }), /option connectTimeoutMs must be a number >= 1, got 0/],
    ];
    for (const [make, message] of cases) {
      assert.throws(make, (error: unknown) => {
        assert.ok(error instanceof PodpoolError);
        assert.equal(error.code, ErrorCode.INVALID_OPTION);
        assert.match(error.message, message);
        return true;
      });
    }
  });

  it('decides which status codes count against a pod', () => {
    const { isPodFailure } = grpcTransport(EchoClient);
    const counted = [status.UNAVAILABLE, status.DEADLINE_EXCEEDED, status.INTERNAL];
    for (const code of Object.values(status).filter((c): c is number => typeof c === 'number')) {
      assert.equal(isPodFailure!({ code }), counted.includes(code), `status ${status[code]}`);
    }
    // The pool's own TIMEOUT and CONNECTION_LOST are the pool's to count (test/pool/ejection.test.ts).
    assert.equal(isPodFailure!(new TypeError('a bug in the callback')), false);
    assert.equal(isPodFailure!(undefined), false);
  });
});

describe('grpcTransport against real grpc-js servers on loopback', () => {
  it('dials each pod by IP, with keepalive on and a connection of its own', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startGrpcPods(2, { first: 110 });
    const made: { address: string; options: ClientOptions | undefined }[] = [];
    class SpyClient extends EchoClient {
      constructor(address: string, creds: ChannelCredentials, options?: ClientOptions) {
        super(address, creds, options);
        made.push({ address, options });
      }
    }
    const pool = createPool({
      source: staticEndpoints(pods.map((p) => p.endpoint)),
      transport: grpcTransport(SpyClient, { channelOptions: { 'grpc.keepalive_time_ms': 30_000, 'grpc.primary_user_agent': 'test' } }),
    });
    cleanup.push(() => stopGrpcPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 2 });

    assert.deepEqual(
      made.map((m) => m.address).sort(),
      pods.map((p) => `ipv4:${p.key}`),
    );
    for (const { options } of made) {
      assert.equal(options?.['grpc.keepalive_time_ms'], 30_000, 'channelOptions win over the defaults');
      assert.equal(options?.['grpc.keepalive_timeout_ms'], 5_000);
      assert.equal(options?.['grpc.keepalive_permit_without_calls'], 1);
      assert.equal(options?.['grpc.use_local_subchannel_pool'], 1);
      assert.equal(options?.['grpc.primary_user_agent'], 'test');
    }
    const replies = await pool.broadcast((client) => unary(client, { message: 'hi' }));
    assert.deepEqual(
      replies.delivered.map((d) => d.value.pod.address).sort(),
      pods.map((p) => p.key),
    );
  });

  it('dials an IPv6 pod with its address bracketed', events, async (t) => {
    const cleanup = cleanupAfter(t);
    let pod: GrpcPod;
    try {
      pod = await GrpcPod.start({ address: '::1' });
    } catch (error) {
      t.skip(`no IPv6 loopback here (${(error as Error).message})`);
      return;
    }
    const pool = createPool({ source: staticEndpoints([pod.endpoint]), transport: grpcTransport(EchoClient) });
    cleanup.push(() => stopGrpcPods([pod]), () => pool.close());
    await pool.ready();
    const reply = await pool.use((client, endpoint) => {
      assert.equal(endpoint.key, `[::1]:${pod.port}`);
      assert.equal(client.getChannel().getTarget(), `ipv6:[::1]:${pod.port}`);
      return unary(client, { message: 'v6' });
    });
    assert.equal(reply.pod.address, `[::1]:${pod.port}`);
  });

  it('sends every pod its share, each through its own client and one connection', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startGrpcPods(3, { first: 112 });
    const pool = createPool({ source: staticEndpoints(pods.map((p) => p.endpoint)), transport: grpcTransport(EchoClient) });
    cleanup.push(() => stopGrpcPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });

    const clients = new Map<string, Set<EchoClient>>();
    for (let i = 0; i < 30; i++) {
      await pool.use(async (client, endpoint) => {
        const reply = await unary(client, { message: `call ${i}` });
        assert.equal(reply.pod.address, endpoint.key, 'the call went to the pod it was given');
        assert.equal(reply.message, `call ${i}`);
        clients.set(endpoint.key, (clients.get(endpoint.key) ?? new Set()).add(client));
      });
    }
    assert.deepEqual(
      pods.map((p) => p.calls('Unary')),
      [10, 10, 10],
      'round-robin, exactly',
    );
    assert.deepEqual(
      pods.map((p) => clients.get(p.key)?.size),
      [1, 1, 1],
      'one client per pod',
    );
    assert.equal(new Set([...clients.values()].flatMap((s) => [...s])).size, 3, 'no two pods share a client');
    assert.deepEqual(
      pods.map((p) => p.openConnections),
      [1, 1, 1],
      'one connection per pod, reused by every call',
    );
    assert.deepEqual(
      pool.stats().members.map((m) => [m.state, m.requests, m.failures, m.inFlight]),
      [
        ['ready', 10, 0, 0],
        ['ready', 10, 0, 0],
        ['ready', 10, 0, 0],
      ],
    );
  });

  it('counts UNAVAILABLE against the pod and an application code not', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const [pod] = await startGrpcPods(1, { first: 115 });
    const pool = createPool({ source: staticEndpoints([pod.endpoint]), transport: grpcTransport(EchoClient), ejection: false });
    cleanup.push(() => stopGrpcPods([pod]), () => pool.close());
    await pool.ready();

    await assert.rejects(pool.use((client) => unary(client, { failWith: status.NOT_FOUND })), { code: status.NOT_FOUND });
    assert.equal(pool.stats().members[0].failures, 0);
    await assert.rejects(pool.use((client) => unary(client, { failWith: status.UNAVAILABLE })), { code: status.UNAVAILABLE });
    assert.equal(pool.stats().members[0].failures, 1);
    assert.equal(pool.stats().members[0].requests, 2);
  });

  it('stops picking a pod killed mid-stream and takes it back after it restarts', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startGrpcPods(3, { first: 116 });
    const pool = createPool({
      source: staticEndpoints(pods.map((p) => p.endpoint)),
      transport: grpcTransport(EchoClient),
      reconnect: quickReconnect,
      ejection: false,
    });
    cleanup.push(() => stopGrpcPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });

    // A stream open on whichever pod round-robin picks: that pod dies under it.
    let opened!: (key: string) => void;
    const streamOpen = new Promise<string>((resolve) => (opened = resolve));
    const stream = pool.use(
      (client, endpoint) =>
        new Promise<void>((resolve, reject) => {
          const call = client.bidi();
          call.on('data', () => opened(endpoint.key));
          call.on('error', reject);
          call.on('end', resolve);
          call.write({ message: 'hold' });
        }),
    );
    const victimKey = await streamOpen;
    const b = pods.find((p) => p.key === victimKey)!;
    const [a, c] = pods.filter((p) => p !== b);
    const down = stateReached(pool, b.key, 'connecting');
    const refused = new Promise<PodpoolError>((resolve) => pool.on('connectError', (endpoint, error) => endpoint.key === b.key && resolve(error)));
    await b.kill();
    await assert.rejects(stream, { code: status.UNAVAILABLE }, 'the stream on the dead pod ends UNAVAILABLE');
    const change = await down;
    assert.equal(change.from, 'ready');
    // Out of the picks as soon as its channel left READY; lost once the reconnect was refused.
    assert.equal((change.error as PodpoolError).code, ErrorCode.NOT_CONNECTED);
    assert.match((await refused).message, /ECONNREFUSED/);
    assert.equal(pool.stats().members.find((m) => m.endpoint.key === b.key)?.failures, 1, 'the broken stream counts against it');

    a.resetCalls();
    c.resetCalls();
    for (let i = 0; i < 30; i++) await pool.use((client) => unary(client, { message: 'x' }));
    assert.deepEqual([a.calls('Unary'), c.calls('Unary')], [15, 15], 'every call went to a live pod');

    const up = stateReached(pool, b.key, 'ready');
    await b.restart();
    await up;
    b.resetCalls();
    for (let i = 0; i < 30; i++) await pool.use((client) => unary(client, { message: 'x' }));
    assert.equal(b.calls('Unary'), 10, 'the restarted pod takes its share again');
    assert.equal(pool.stats().members.find((m) => m.endpoint.key === b.key)?.connects, 2);
  });

  it('keeps a pod in the pool while its channel reconnects after a GOAWAY, not picked until it is READY again', events, async (t) => {
    const cleanup = cleanupAfter(t);
    // The pod ends every connection after 50 ms with a GOAWAY, as servers with a maximum
    // connection age do; the channel must reconnect on its own, without the pool losing the
    // connection: between the GOAWAY and READY the member is only out of the picks.
    const pod = await GrpcPod.start({
      address: '127.0.0.119',
      serverOptions: { 'grpc.max_connection_age_ms': 50, 'grpc.max_connection_age_grace_ms': 5_000 },
    });
    const pool = createPool({ source: staticEndpoints([pod.endpoint]), transport: grpcTransport(EchoClient) });
    cleanup.push(() => stopGrpcPods([pod]), () => pool.close());
    await pool.ready();
    const changes: StateChange[] = [];
    pool.on('state', (change) => changes.push(change));

    await pod.acceptedReach(3);
    await pool.ready();
    assert.ok(changes.length >= 4, `the member left ready at each GOAWAY (${changes.length} changes)`);
    assert.deepEqual(
      changes.map((c) => [c.from, c.to, c.error?.code]),
      changes.map((_, i) => (i % 2 === 0 ? ['ready', 'connecting', ErrorCode.NOT_CONNECTED] : ['connecting', 'ready', undefined])),
      'in and out of the picks, never lost',
    );
    assert.equal(pool.stats().members[0].connects, 1);
    assert.equal((await pool.use((client) => unary(client, { message: 'still here' }))).message, 'still here');
  });

  it('connect() waits for READY, honours its signal and its timeout, and leaves no socket behind', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const silent = await startSilentServer('127.0.0.121');
    cleanup.push(async () => {
      silent.server.close();
      await once(silent.server, 'close');
    });
    const endpoint = createEndpoint({ address: '127.0.0.121', port: silent.port });
    const transport = grpcTransport(EchoClient, { connectTimeoutMs: 100 });
    const lost = (): void => assert.fail('lost() is for connections that were up');

    const controller = new AbortController();
    silent.server.once('connection', () => controller.abort(new Error('the pool gave up on it')));
    await assert.rejects(transport.connect(endpoint, { signal: controller.signal, lost }), /the pool gave up on it/);
    await silent.allClosed();

    await assert.rejects(transport.connect(endpoint, { signal: new AbortController().signal, lost }), /not READY after 100 ms \(CONNECTING\)/);
    await silent.allClosed();

    await assert.rejects(transport.connect(endpoint, { signal: AbortSignal.abort(), lost }), { name: 'AbortError' });

    // A port nobody listens on: the reason grpc-js saw is in the message.
    const closed = createServer().listen(0, '127.0.0.121');
    await once(closed, 'listening');
    const freePort = (closed.address() as { port: number }).port;
    closed.close();
    await once(closed, 'close');
    const refused = createEndpoint({ address: '127.0.0.121', port: freePort });
    await assert.rejects(transport.connect(refused, { signal: new AbortController().signal, lost }), /failed to connect: connect ECONNREFUSED/);
  });

  it('notices through keepalive a pod that stops answering without closing, and takes it back', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const [pod] = await startGrpcPods(1, { first: 122 });
    const relay = await startFreezableRelay('127.0.0.123', pod);
    const pool = createPool({
      source: staticEndpoints([{ address: '127.0.0.123', port: relay.port }]),
      transport: grpcTransport(EchoClient, {
        connectTimeoutMs: 1_000,
        channelOptions: { 'grpc.keepalive_time_ms': 200, 'grpc.keepalive_timeout_ms': 500 },
      }),
      reconnect: quickReconnect,
    });
    cleanup.push(() => stopGrpcPods([pod]), () => relay.close(), () => pool.close());
    await pool.ready();
    const key = `127.0.0.123:${relay.port}`;
    assert.equal((await pool.use((client) => unary(client, { message: 'up' }))).pod.address, pod.key);

    const down = stateReached(pool, key, 'connecting');
    const lost = new Promise<void>((resolve) => pool.once('connectError', () => resolve()));
    relay.freeze();
    const change = await down;
    assert.equal(change.from, 'ready');
    // Out of the picks once keepalive took its channel out of READY; lost when the reconnect timed out.
    assert.equal((change.error as PodpoolError).code, ErrorCode.NOT_CONNECTED);
    assert.match(change.error!.message, /left READY/);
    await lost;

    const up = stateReached(pool, key, 'ready');
    relay.thaw();
    await up;
    assert.equal(pool.stats().members[0].connects, 2, 'reconnected by the pool, once the channel was lost');
    assert.equal((await pool.use((client) => unary(client, { message: 'back' }))).message, 'back');
  });

  it('close() ends what still runs and leaves nothing behind', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startGrpcPods(2, { first: 124 });
    cleanup.push(() => stopGrpcPods(pods));
    const before = activeResources();

    const pool = createPool({
      source: staticEndpoints(pods.map((p) => p.endpoint)),
      transport: grpcTransport(EchoClient),
      drainTimeoutMs: 0,
    });
    await pool.ready({ minEndpoints: 2 });
    for (let i = 0; i < 4; i++) await pool.use((client) => unary(client, { message: 'x' }));
    let opened!: () => void;
    const streamOpen = new Promise<void>((resolve) => (opened = resolve));
    const stream = pool.use(
      (client) =>
        new Promise<void>((resolve, reject) => {
          const call = client.bidi();
          call.on('data', () => opened());
          call.on('error', reject);
          call.on('end', resolve);
          call.write({ message: 'still open at close' });
        }),
    );
    await streamOpen;

    await pool.close();
    await assert.rejects(stream, { code: status.UNAVAILABLE }, 'a stream still open when the pool closes is ended');
    for (const pod of pods) await pod.connectionsAtMost(0);
    assertNothingLeft(before);
  });
});
