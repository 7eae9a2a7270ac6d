import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { Metadata, connectivityState, credentials, status, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { ErrorCode, createPool, ringHash, staticEndpoints, type Pool } from '../../src/index.ts';
import { grpcChannel, type PoolChannel } from '../../src/adapter/grpc-channel.ts';
import { grpcTransport } from '../../src/transport/grpc.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import {
  EchoClient,
  startGrpcPods,
  stopGrpcPods,
  type EchoReply,
  type EchoRequest,
} from '../../testkit/grpc-pods.ts';
import { stateReached } from '../support/pool-events.ts';

/** Every wait below is on an event; this only turns a broken feature's endless wait into a failure. */
const events = { timeout: 20_000 };

/** One stub whose every call goes through the pool. */
function stubOver(channel: PoolChannel<EchoClient>): EchoClient {
  return new EchoClient('podpool', credentials.createInsecure(), { channelOverride: channel });
}

function unary(stub: EchoClient, request: EchoRequest, metadata = new Metadata()): Promise<EchoReply> {
  return new Promise((resolve, reject) => {
    stub.unary(request, metadata, (error, reply) => (error ? reject(error) : resolve(reply!)));
  });
}

function inFlight(pool: Pool<EchoClient>): Record<string, number> {
  return Object.fromEntries(pool.stats().members.map((m) => [m.endpoint.key, m.inFlight]));
}

/** Pods, a round-robin pool over them, and one stub over the pool. */
async function setUp(t: TestContext, count: number, first: number) {
  const cleanup = cleanupAfter(t);
  const pods = await startGrpcPods(count, { first });
  const pool = createPool({
    source: staticEndpoints(pods.map((p) => p.endpoint)),
    transport: grpcTransport(EchoClient),
    reconnect: { minMs: 5, maxMs: 20 },
    ejection: false,
  });
  cleanup.push(() => stopGrpcPods(pods), () => pool.close());
  await pool.ready({ minEndpoints: count });
  const channel = grpcChannel(pool);
  const stub = stubOver(channel);
  cleanup.push(async () => stub.close());
  return { pods, pool, channel, stub, cleanup };
}

describe('grpcChannel: one stub over the pool', () => {
  it('sends each unary call to the next pod, over the pods’ own connections', events, async (t) => {
    const { pods, pool, stub } = await setUp(t, 3, 151);

    const served: string[] = [];
    for (let i = 0; i < 30; i++) served.push((await unary(stub, { message: `${i}` })).pod.address);
    assert.deepEqual(
      pods.map((p) => p.calls('Unary')),
      [10, 10, 10],
      'round-robin, exactly',
    );
    for (let i = 3; i < 30; i++) assert.equal(served[i], served[i - 3], 'pods take turns in a fixed order');
    assert.deepEqual(
      pool.stats().members.map((m) => [m.requests, m.failures, m.inFlight]),
      [
        [10, 0, 0],
        [10, 0, 0],
        [10, 0, 0],
      ],
      'the pool counted every call on the pod that served it',
    );
    assert.deepEqual(
      pods.map((p) => p.openConnections),
      [1, 1, 1],
      'no connection of the stub’s own',
    );
  });

  it('carries unary, server-streaming, client-streaming and bidi calls', events, async (t) => {
    const { stub } = await setUp(t, 2, 154);

    const call = stub.unary({ message: 'one' }, new Metadata(), { deadline: Date.now() + 60_000 }, () => {});
    const [unaryStatus] = (await once(call, 'status')) as [StatusObject];
    assert.equal(unaryStatus.code, status.OK);
    assert.match(call.getPeer(), /^127\.0\.0\.15[45]:\d+$/, 'the peer is the pod the call went to');

    const replies: EchoReply[] = [];
    const server = stub.serverStream({ message: 'many', count: 5 });
    server.on('data', (reply: EchoReply) => replies.push(reply));
    await once(server, 'end');
    assert.deepEqual(
      replies.map((r) => [r.message, r.seq]),
      [0, 1, 2, 3, 4].map((seq) => ['many', seq]),
    );
    assert.equal(new Set(replies.map((r) => r.pod.address)).size, 1, 'every reply of a server stream from one pod');

    const joined = await new Promise<EchoReply>((resolve, reject) => {
      const upload = stub.clientStream((error, reply) => (error ? reject(error) : resolve(reply!)));
      for (const message of ['a', 'b', 'c']) upload.write({ message });
      upload.end();
    });
    assert.deepEqual([joined.message, joined.seq], ['a b c', 3]);

    const bidi = stub.bidi();
    const echoed: EchoReply[] = [];
    bidi.on('data', (reply: EchoReply) => echoed.push(reply));
    for (const message of ['x', 'y', 'z']) bidi.write({ message });
    bidi.end();
    await once(bidi, 'end');
    assert.deepEqual(
      echoed.map((r) => [r.message, r.seq]),
      [
        ['x', 0],
        ['y', 1],
        ['z', 2],
      ],
    );

    const identity = await new Promise<{ name: string }>((resolve, reject) => {
      stub.whoAmI({}, (error, pod) => (error ? reject(error) : resolve(pod!)));
    });
    assert.match(identity.name, /^pod-15[45]$/);
  });

  it('keeps a stream on its pod for its whole life while other calls take turns', events, async (t) => {
    const { pods, stub } = await setUp(t, 3, 157);

    const bidi = stub.bidi();
    const streamPods = new Set<string>();
    const unaryPods: string[] = [];
    for (let i = 0; i < 6; i++) {
      bidi.write({ message: `stream ${i}` });
      const [reply] = (await once(bidi, 'data')) as [EchoReply];
      assert.equal(reply.seq, i);
      streamPods.add(reply.pod.address);
      unaryPods.push((await unary(stub, { message: `between ${i}` })).pod.address);
    }
    bidi.end();
    await once(bidi, 'status');
    assert.equal(streamPods.size, 1, 'the stream never moved');
    assert.equal(
      pods.reduce((n, p) => n + p.calls('Bidi'), 0),
      1,
      'one stream, opened once',
    );
    assert.equal(new Set(unaryPods).size, 3, 'the unary calls in between went to every pod');
  });

  it('counts a stream in flight on its pod until its status arrives', events, async (t) => {
    const { pods, pool, stub } = await setUp(t, 2, 160);

    const bidi = stub.bidi();
    bidi.write({ message: 'open' });
    const [reply] = (await once(bidi, 'data')) as [EchoReply];
    const streamKey = reply.pod.address;
    const otherKey = pods.find((p) => p.key !== streamKey)!.key;
    assert.deepEqual(inFlight(pool), { [streamKey]: 1, [otherKey]: 0 }, 'open stream: one call in flight on its pod');

    // A unary call on the other pod meanwhile counts there, and only while it runs.
    await unary(stub, { message: 'meanwhile' });
    assert.deepEqual(inFlight(pool), { [streamKey]: 1, [otherKey]: 0 });

    let atStatus: Record<string, number> | undefined;
    bidi.on('status', () => (atStatus = inFlight(pool)));
    bidi.end();
    await once(bidi, 'status');
    assert.deepEqual(atStatus, { [streamKey]: 0, [otherKey]: 0 }, 'not in flight once its status has arrived');

    const server = stub.serverStream({ message: 'm', count: 3 });
    server.on('data', () => {
      assert.equal(Object.values(inFlight(pool)).reduce((a, b) => a + b), 1, 'in flight while replies come');
    });
    await once(server, 'status');
    assert.deepEqual(Object.values(inFlight(pool)), [0, 0]);
  });

  it('counts UNAVAILABLE against the pod, an application code not', events, async (t) => {
    const { pool, stub, pods } = await setUp(t, 1, 162);
    const key = pods[0].key;
    const failures = () => pool.stats().members.find((m) => m.endpoint.key === key)!.failures;

    await assert.rejects(unary(stub, { failWith: status.NOT_FOUND }), { code: status.NOT_FOUND });
    await assert.rejects(unary(stub, { failWith: status.INVALID_ARGUMENT }), { code: status.INVALID_ARGUMENT });
    assert.equal(failures(), 0);
    await assert.rejects(unary(stub, { failWith: status.UNAVAILABLE }), { code: status.UNAVAILABLE });
    assert.equal(failures(), 1);

    // A stream that ends with a failure counts the same way.
    const bidi = stub.bidi();
    bidi.on('error', () => {});
    const statusArrived = new Promise<StatusObject>((resolve) => bidi.on('status', resolve));
    bidi.write({ message: 'fine' });
    bidi.write({ failWith: status.INTERNAL });
    const ended = await statusArrived;
    assert.equal(ended.code, status.INTERNAL);
    assert.equal(failures(), 2);
    assert.equal(pool.stats().members[0].requests, 4);
  });

  it('fails a call without waitForReady with UNAVAILABLE and the pool’s reason once every pod is failing', events, async (t) => {
    const cleanup = cleanupAfter(t);
    // A port that was free a moment ago: the member never gets ready.
    const probe = createServer().listen(0, '127.0.0.163');
    await once(probe, 'listening');
    const port = (probe.address() as { port: number }).port;
    probe.close();
    await once(probe, 'close');
    const pool = createPool({
      source: staticEndpoints([{ address: '127.0.0.163', port }]),
      transport: grpcTransport(EchoClient),
      reconnect: { minMs: 60_000, maxMs: 60_000 },
    });
    cleanup.push(() => pool.close());
    const channel = grpcChannel(pool);
    const stub = stubOver(channel);
    assert.equal(channel.getConnectivityState(true), connectivityState.CONNECTING, 'the first connect runs');
    await once(pool, 'connectError');
    assert.equal(channel.getConnectivityState(true), connectivityState.TRANSIENT_FAILURE);

    await assert.rejects(unary(stub, { message: 'x' }), (error: ServiceError) => {
      assert.equal(error.code, status.UNAVAILABLE);
      assert.match(error.details, /^podpool: no endpoint is ready to take the call/);
      assert.deepEqual(error.metadata.get('podpool-error-code'), [ErrorCode.NO_ENDPOINTS]);
      return true;
    });
    const stream = stub.serverStream({ count: 1 });
    stream.on('data', () => assert.fail('no pod, no reply'));
    const [error] = (await once(stream, 'error')) as [ServiceError];
    assert.equal(error.code, status.UNAVAILABLE);

    const upload = stub.clientStream(() => {});
    upload.on('error', () => {});
    upload.write({ message: 'into the void' });
    const [uploadStatus] = (await once(upload, 'status')) as [StatusObject];
    assert.equal(uploadStatus.code, status.UNAVAILABLE);
  });

  it('follows the pool’s readiness and stops taking calls when closed, leaving the pool open', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const [pod] = await startGrpcPods(1, { first: 164 });
    const pool = createPool({ source: staticEndpoints([pod.endpoint]), transport: grpcTransport(EchoClient), reconnect: { minMs: 5, maxMs: 20 } });
    cleanup.push(() => stopGrpcPods([pod]), () => pool.close());
    const channel = grpcChannel(pool);
    const stub = stubOver(channel);

    // Nothing is ready yet: waitForReady resolves when the pool's member is.
    assert.equal(channel.getConnectivityState(false), connectivityState.CONNECTING);
    await new Promise<void>((resolve, reject) => stub.waitForReady(Date.now() + 60_000, (e) => (e ? reject(e) : resolve())));
    assert.equal(channel.getConnectivityState(false), connectivityState.READY);
    assert.equal((await unary(stub, { message: 'ready' })).message, 'ready');

    // A watcher hears when the last pod goes.
    const changed = new Promise<Error | undefined>((resolve) => channel.watchConnectivityState(connectivityState.READY, Infinity, resolve));
    const down = stateReached(pool, pod.key, 'connecting');
    await pod.kill();
    await down;
    assert.equal(await changed, undefined);
    assert.equal(channel.getConnectivityState(false), connectivityState.CONNECTING, 'the pod reconnects');

    // A watcher whose deadline passes is told so.
    const expired = await new Promise<Error | undefined>((resolve) =>
      channel.watchConnectivityState(channel.getConnectivityState(false), Date.now() - 1, resolve),
    );
    assert.match(expired!.message, /Deadline passed/);

    const up = stateReached(pool, pod.key, 'ready');
    await pod.restart();
    await up;
    const closing = new Promise<Error | undefined>((resolve) => channel.watchConnectivityState(connectivityState.READY, Infinity, resolve));
    stub.close();
    assert.equal(await closing, undefined, 'closing is a state change');
    assert.equal(channel.getConnectivityState(false), connectivityState.SHUTDOWN);
    for (const event of ['state', 'connectError', 'change', 'sourceError'] as const) {
      assert.equal(pool.listenerCount(event), 0, `no watcher left on the pool's ${event} event`);
    }
    await assert.rejects(unary(stub, { message: 'after close' }), (error: ServiceError) => {
      assert.equal(error.code, status.UNAVAILABLE);
      assert.deepEqual(error.metadata.get('podpool-error-code'), [ErrorCode.CLOSED]);
      return true;
    });
    assert.equal(
      await pool.use((client) => new Promise<string>((resolve, reject) => client.unary({ message: 'pool' }, (e, r) => (e ? reject(e) : resolve(r!.message))))),
      'pool',
      'the pool stays open',
    );
  });

  it('stops sending calls to a killed pod and sends them again after it restarts', events, async (t) => {
    const { pods, pool, stub } = await setUp(t, 3, 165);
    const [a, b, c] = pods;

    const down = stateReached(pool, b.key, 'connecting');
    await b.kill();
    await down;
    for (const pod of pods) pod.resetCalls();
    for (let i = 0; i < 30; i++) await unary(stub, { message: 'x' });
    assert.deepEqual([a.calls(), b.calls(), c.calls()], [15, 0, 15]);

    const up = stateReached(pool, b.key, 'ready');
    await b.restart();
    await up;
    for (const pod of pods) pod.resetCalls();
    for (let i = 0; i < 30; i++) await unary(stub, { message: 'x' });
    assert.deepEqual([a.calls(), b.calls(), c.calls()], [10, 10, 10]);
  });

  it('sends calls with the same key to the same pod under ringHash', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pods = await startGrpcPods(3, { first: 168 });
    const pool = createPool({ source: staticEndpoints(pods.map((p) => p.endpoint)), transport: grpcTransport(EchoClient), balancer: ringHash() });
    cleanup.push(() => stopGrpcPods(pods), () => pool.close());
    await pool.ready({ minEndpoints: 3 });
    const stub = stubOver(grpcChannel(pool, { key: (_method, metadata) => metadata.get('tenant')[0]?.toString() }));
    const tenant = (name: string): Metadata => {
      const metadata = new Metadata();
      metadata.set('tenant', name);
      return metadata;
    };

    const home = new Map<string, Set<string>>();
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 20; i++) {
        const reply = await unary(stub, { message: 'x' }, tenant(`tenant-${i}`));
        home.set(`tenant-${i}`, (home.get(`tenant-${i}`) ?? new Set()).add(reply.pod.name));
      }
    }
    for (const [name, served] of home) assert.equal(served.size, 1, `${name} always lands on one pod`);
    assert.ok(new Set([...home.values()].flatMap((s) => [...s])).size > 1, 'tenants spread over the pods');

    await assert.rejects(unary(stub, { message: 'no key' }), (error: ServiceError) => {
      assert.equal(error.code, status.UNAVAILABLE);
      assert.deepEqual(error.metadata.get('podpool-error-code'), [ErrorCode.KEY_REQUIRED]);
      return true;
    });
  });
});
