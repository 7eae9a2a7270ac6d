import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import {
  Server,
  ServerCredentials,
  type sendUnaryData,
  type ServerDuplexStream,
  type ServerUnaryCall,
} from '@grpc/grpc-js';
import { ErrorCode, createPool, staticEndpoints, type Pool, type StateChange } from '../../src/index.ts';
import { grpcTransport } from '../../src/transport/grpc.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { stateReached } from '../support/pool-events.ts';
import { burst } from '../support/burst.ts';
import { EchoClient, echoService, startGrpcPods, stopGrpcPods, type EchoReply, type EchoRequest, unary } from '../../testkit/grpc-pods.ts';

// A pod's gRPC channel that leaves READY takes no new calls until it is READY again: the member
// is out of the picks at once (calls go to the other pods, or wait for it when it is the only
// one), calls in flight finish on the old connection, and it is lost only if the reconnect fails.

const quickReconnect = { minMs: 5, maxMs: 20, factor: 2 };
/** Every wait below is on an event; this only turns a broken feature's endless wait into a failure. */
const events = { timeout: 20_000 };

function memberOf(pool: Pool<unknown>, key: string) {
  return pool.stats().members.find((m) => m.endpoint.key === key)!;
}

/** Counts the pool's connect errors per endpoint from now on. */
function countConnectErrors(pool: Pool<unknown>): Map<string, number> {
  const counts = new Map<string, number>();
  pool.on('connectError', (endpoint) => counts.set(endpoint.key, (counts.get(endpoint.key) ?? 0) + 1));
  return counts;
}

/**
 * A TCP relay in front of a pod. `blackhole()` drops every connection through it and from then
 * on accepts connections and answers nothing: a pod whose process died on a node that still
 * completes handshakes, or whose address leads nowhere. `restore()` forwards again.
 */
async function startRelay(address: string, target: { address: string; port: number }) {
  const sockets = new Set<Socket>();
  let swallowing = false;
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  };
  const server = createServer((downstream) => {
    track(downstream);
    if (swallowing) {
      downstream.resume();
      return;
    }
    const upstream = netConnect({ host: target.address, port: target.port });
    track(upstream);
    downstream.pipe(upstream);
    upstream.pipe(downstream);
    downstream.once('close', () => upstream.destroy());
    upstream.once('close', () => downstream.destroy());
  });
  server.listen(0, address);
  await once(server, 'listening');
  return {
    port: (server.address() as { port: number }).port,
    blackhole() {
      swallowing = true;
      for (const socket of sockets) socket.destroy();
    },
    restore() {
      swallowing = false;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

/**
 * A grpc-js Echo server of the test's own, to shut down gracefully (`tryShutdown`: GOAWAY, then
 * it waits for the calls in flight). Counts the unary calls it served.
 */
async function startEchoServer(address: string) {
  const server = new Server();
  let unary = 0;
  let streamOpened!: () => void;
  const streamOpen = new Promise<void>((resolve) => (streamOpened = resolve));
  server.addService(echoService, {
    Unary: (call: ServerUnaryCall<EchoRequest, EchoReply>, callback: sendUnaryData<EchoReply>) => {
      unary++;
      callback(null, { message: call.request.message ?? '', pod: { name: 'graceful', address }, seq: 0, authority: '' });
    },
    Bidi: (call: ServerDuplexStream<EchoRequest, EchoReply>) => {
      streamOpened();
      let seq = 0;
      call.on('data', (request: EchoRequest) => call.write({ message: request.message ?? '', pod: { name: 'graceful', address }, seq: seq++, authority: '' }));
      call.on('error', () => {});
      call.on('end', () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${address}:0`, ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  return {
    server,
    endpoint: { address, port },
    key: `${address}:${port}`,
    get unary() {
      return unary;
    },
    streamOpen,
  };
}

describe('grpcTransport readiness: a channel out of READY is not picked', () => {
  it('a pod killed hard leaves ready at once, before its reconnect is refused; calls made from then on go to the others; it is back when a server listens again', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startGrpcPods(3, { first: 181 });
    const pool = createPool({ source: staticEndpoints(pods.map((p) => p.endpoint)), transport: grpcTransport(EchoClient), reconnect: quickReconnect });
    cleanup.push(() => stopGrpcPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });
    const [a, victim, c] = pods;
    const connectErrors = countConnectErrors(pool);

    // Calls run on every pod while the victim dies; from the moment it leaves ready, every call
    // made must go to another pod and succeed.
    let down = false;
    const afterDown: { pod: string; error?: unknown }[] = [];
    const left = stateReached(pool, victim.key, 'connecting', () => ({
      connectErrors: connectErrors.get(victim.key) ?? 0,
      lastError: memberOf(pool, victim.key).lastError,
      connects: memberOf(pool, victim.key).connects,
    }));
    void left.then(() => (down = true));
    const load = burst(600, 6, async () => {
      const madeAfterDown = down;
      try {
        const reply = await pool.use((client) => unary(client, 'x'));
        if (madeAfterDown) afterDown.push({ pod: reply.pod.address });
      } catch (error) {
        if (madeAfterDown) afterDown.push({ pod: '?', error });
      }
    });
    await victim.callsReach(20);
    await victim.kill();
    const change = await left;
    assert.equal(change.from, 'ready');
    assert.equal(change.error?.code, ErrorCode.NOT_CONNECTED, 'out of the picks because its channel left READY');
    assert.match(change.error!.message, /left READY/);
    assert.deepEqual(change.snapshot, { connectErrors: 0, lastError: undefined, connects: 1 }, 'before the pool knew the pod was gone');
    await load;

    assert.ok(afterDown.length > 0, 'calls were made after the victim left ready');
    assert.deepEqual(afterDown.filter((call) => call.error !== undefined), [], 'no call made after it left ready failed');
    assert.ok(afterDown.every((call) => call.pod === a.key || call.pod === c.key), 'every call made after it left ready went to another pod');

    const up = stateReached(pool, victim.key, 'ready');
    await victim.restart();
    await up;
    victim.resetCalls();
    for (let i = 0; i < 30; i++) await pool.use((client) => unary(client, 'back'));
    assert.equal(victim.calls('Unary'), 10, 'the pod is picked again once a server listens on its port');
  });

  it('a pod whose address stops answering leaves ready at once, while its channel still tries to reconnect (the black hole)', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startGrpcPods(3, { first: 185 });
    const relay = await startRelay('127.0.0.188', pods[1]);
    const [a, behind, c] = pods;
    const key = `127.0.0.188:${relay.port}`;
    const pool = createPool({
      source: staticEndpoints([a.endpoint, { address: '127.0.0.188', port: relay.port }, c.endpoint]),
      // Long enough that the whole test runs inside the reconnect: a member that stayed pickable
      // meanwhile would take a third of the calls and hold them.
      transport: grpcTransport(EchoClient, { connectTimeoutMs: 60_000 }),
      reconnect: quickReconnect,
    });
    cleanup.push(() => stopGrpcPods(pods), () => relay.close(), () => pool.close());
    await pool.ready({ minEndpoints: 3 });
    assert.equal((await Promise.all([1, 2, 3].map(() => pool.use((client) => unary(client, 'up'))))).filter((r) => r.pod.address === behind.key).length, 1);

    const left = stateReached(pool, key, 'connecting');
    relay.blackhole();
    const change = await left;
    assert.equal(change.error?.code, ErrorCode.NOT_CONNECTED);

    a.resetCalls();
    behind.resetCalls();
    c.resetCalls();
    for (let i = 0; i < 30; i++) await pool.use((client) => unary(client, 'x'));
    assert.deepEqual([a.calls('Unary'), behind.calls('Unary'), c.calls('Unary')], [15, 0, 15], 'every call went to a pod that answers');
    assert.deepEqual([memberOf(pool, key).state, memberOf(pool, key).connects, memberOf(pool, key).inFlight], ['connecting', 1, 0], 'still reconnecting in place, nothing piled up on it');
  });

  it('the only pod out of READY makes the pool connecting: a call waits for it rather than failing', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const [pod] = await startGrpcPods(1, { first: 189 });
    const relay = await startRelay('127.0.0.190', pod);
    const key = `127.0.0.190:${relay.port}`;
    const pool = createPool({
      source: staticEndpoints([{ address: '127.0.0.190', port: relay.port }]),
      transport: grpcTransport(EchoClient, { connectTimeoutMs: 300 }),
      reconnect: quickReconnect,
    });
    cleanup.push(() => stopGrpcPods([pod]), () => relay.close(), () => pool.close());
    await pool.ready();
    const connectivity: string[] = [];
    pool.on('connectivity', (state) => connectivity.push(state));

    const left = stateReached(pool, key, 'connecting', () => pool.connectivity);
    relay.blackhole();
    assert.equal((await left).snapshot, 'connecting');
    const waiting = pool.use((client) => unary(client, 'waited'));
    // The channel's reconnect hangs in the black hole until connectTimeoutMs; the pool then
    // reconnects on its own, through the relay that forwards again.
    relay.restore();
    assert.equal((await waiting).message, 'waited');
    assert.equal(connectivity[0], 'connecting');
    assert.equal(connectivity.at(-1), 'ready');
  });

  it('a server shutting down gracefully (GOAWAY): its calls in flight finish, no new call is picked for it, then it is lost', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const [other] = await startGrpcPods(1, { first: 191 });
    const graceful = await startEchoServer('127.0.0.192');
    const pool = createPool({
      source: staticEndpoints([other.endpoint, graceful.endpoint]),
      transport: grpcTransport(EchoClient),
      reconnect: quickReconnect,
    });
    cleanup.push(() => stopGrpcPods([other]), () => pool.close(), async () => graceful.server.forceShutdown());
    await pool.ready({ minEndpoints: 2 });
    // Round robin alternates between the two: make the next pick the graceful server's.
    if ((await pool.use((_client, endpoint) => endpoint.key)) === graceful.key) await pool.use((_client, endpoint) => endpoint.key);
    const changes: StateChange[] = [];
    pool.on('state', (change) => change.endpoint.key === graceful.key && changes.push(change));

    // A stream on the graceful server, in flight across its shutdown.
    let reply!: (message: string) => void;
    let next = new Promise<string>((resolve) => (reply = resolve));
    let write!: (message: string) => void;
    let end!: () => void;
    const stream = pool.use(
      (client, endpoint) =>
        new Promise<string>((resolve, reject) => {
          assert.equal(endpoint.key, graceful.key);
          const call = client.bidi();
          call.on('data', (r: EchoReply) => reply(r.message));
          call.on('error', reject);
          call.on('end', () => resolve('ended'));
          write = (message) => call.write({ message });
          end = () => call.end();
        }),
    );
    await graceful.streamOpen;
    write('before');
    assert.equal(await next, 'before');

    const left = stateReached(pool, graceful.key, 'connecting');
    const shutDown = new Promise<void>((resolve) => graceful.server.tryShutdown(() => resolve()));
    const change = await left;
    assert.equal(change.error?.code, ErrorCode.NOT_CONNECTED, 'out of the picks at the GOAWAY');

    other.resetCalls();
    const servedBefore = graceful.unary;
    for (let i = 0; i < 20; i++) await pool.use((client) => unary(client, 'x'));
    assert.deepEqual([other.calls('Unary'), graceful.unary - servedBefore], [20, 0], 'every new call went to the other pod');

    next = new Promise<string>((resolve) => (reply = resolve));
    write('after the GOAWAY');
    assert.equal(await next, 'after the GOAWAY', 'the stream in flight still runs on the old connection');
    const refused = once(pool, 'connectError');
    end();
    assert.equal(await stream, 'ended', 'and finishes OK');
    await shutDown;
    // Lost once the old connection closed, since the server listens no more: the pool's own reconnect is refused.
    await refused;

    assert.deepEqual(
      changes.map((c) => [c.from, c.to]),
      [['ready', 'connecting']],
      'out of the picks once, and never back: the server is gone',
    );
    const member = memberOf(pool, graceful.key);
    assert.deepEqual([member.state, member.failures], ['connecting', 0], 'the stream counted as a success');
  });
});
