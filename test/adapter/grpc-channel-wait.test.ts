/**
 * Calls through grpcChannel made while no pod is ready behave as on a grpc-js channel of its own:
 * they wait while the pool connects (bounded by their deadline), fail UNAVAILABLE at once while
 * every pod is failing, and with `waitForReady` wait through failures too. Where grpc-js's own
 * behaviour is the question, the same call goes to a plain grpc-js client dialling the same
 * address, and both must end alike.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { describe, it } from 'node:test';
import { Metadata, connectivityState, credentials, status, type ServiceError } from '@grpc/grpc-js';
import { ErrorCode, createPool, grpcChannel, grpcTransport, staticEndpoints } from '../../src/index.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { flush } from '../support/flush.ts';
import { EchoClient, startGrpcPods, stopGrpcPods, type EchoReply } from '../../testkit/grpc-pods.ts';
import { ManualSource } from '../support/manual-source.ts';

/** Every wait below is on an event; this only turns a broken feature's endless wait into a failure. */
const events = { timeout: 20_000 };

interface CallOptions {
  deadline?: number;
  waitForReady?: boolean;
}

function unary(stub: EchoClient, message: string, { deadline, waitForReady }: CallOptions = {}): Promise<EchoReply> {
  const metadata = new Metadata();
  if (waitForReady !== undefined) metadata.setOptions({ waitForReady });
  return new Promise((resolve, reject) => {
    stub.unary({ message }, metadata, deadline === undefined ? {} : { deadline }, (error, reply) => (error ? reject(error) : resolve(reply!)));
  });
}

/** A loopback address and a port nothing listens on: connects are refused at once. */
async function refusingAddress(address: string): Promise<{ address: string; port: number }> {
  const probe = createServer().listen(0, address);
  await once(probe, 'listening');
  const { port } = probe.address() as { port: number };
  probe.close();
  await once(probe, 'close');
  return { address, port };
}

function statusOf(error: unknown): [number, string[]] {
  const { code, metadata } = error as ServiceError;
  return [code, (metadata?.get('podpool-error-code') ?? []).map(String)];
}

describe('grpcChannel: calls made while no pod is ready', () => {
  it('a call made before discovery answers waits, and succeeds once a pod is up', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const [pod] = await startGrpcPods(1, { first: 171 });
    const source = new ManualSource();
    const pool = createPool({ source, transport: grpcTransport(EchoClient) });
    cleanup.push(() => stopGrpcPods([pod]), () => pool.close());
    const channel = grpcChannel(pool);
    const stub = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: channel });
    cleanup.push(async () => stub.close());

    assert.equal(channel.getConnectivityState(false), connectivityState.CONNECTING);
    const early = unary(stub, 'early');
    const earlyStream = stub.serverStream({ message: 'stream', count: 2 });
    const replies: number[] = [];
    earlyStream.on('data', (reply: EchoReply) => replies.push(reply.seq));
    await flush();
    assert.equal(pod.calls(), 0);
    source.set([pod.endpoint]);
    assert.equal((await early).pod.address, pod.key);
    await once(earlyStream, 'end');
    assert.deepEqual(replies, [0, 1]);
    assert.equal(pool.stats().members[0].requests, 2);
    assert.equal(pool.stats().members[0].inFlight, 0);
  });

  it('a call with a deadline fails DEADLINE_EXCEEDED when no pod is ready by then', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pool = createPool({ source: new ManualSource(), transport: grpcTransport(EchoClient) });
    cleanup.push(() => pool.close());
    const stub = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: grpcChannel(pool) });
    cleanup.push(async () => stub.close());

    for (const waitForReady of [false, true]) {
      await assert.rejects(unary(stub, 'late', { deadline: Date.now() + 50, waitForReady }), (error: ServiceError) => {
        assert.deepEqual(statusOf(error), [status.DEADLINE_EXCEEDED, [ErrorCode.NO_ENDPOINTS]]);
        assert.match(error.details, /deadline exceeded while waiting for a ready pod \(the pool is connecting\)/);
        return true;
      });
    }
    await assert.rejects(unary(stub, 'past', { deadline: Date.now() - 1 }), (error: ServiceError) => error.code === status.DEADLINE_EXCEEDED);
  });

  it('while every pod is failing: UNAVAILABLE at once without waitForReady, as grpc-js; with it, waits and succeeds once the pod is back', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const [pod] = await startGrpcPods(1, { first: 172 });
    const { address, port } = pod.endpoint as { address: string; port: number };
    await pod.kill();
    const pool = createPool({
      source: staticEndpoints([{ address, port }]),
      transport: grpcTransport(EchoClient),
      reconnect: { minMs: 5, maxMs: 20 },
    });
    cleanup.push(() => stopGrpcPods([pod]), () => pool.close());
    const channel = grpcChannel(pool);
    const stub = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: channel });
    // The same pod through grpc-js alone, for what grpc-js does in the same spot.
    const plain = new EchoClient(`ipv4:${address}:${port}`, credentials.createInsecure());
    cleanup.push(async () => stub.close(), async () => plain.close());

    await once(pool, 'connectError');
    assert.equal(channel.getConnectivityState(false), connectivityState.TRANSIENT_FAILURE);
    await assert.rejects(unary(stub, 'fail fast'), (error: ServiceError) => {
      assert.deepEqual(statusOf(error), [status.UNAVAILABLE, [ErrorCode.NO_ENDPOINTS]]);
      return true;
    });
    await assert.rejects(unary(plain, 'fail fast'), (error: ServiceError) => error.code === status.UNAVAILABLE, 'grpc-js fails it alike');

    const patient = unary(stub, 'patient', { waitForReady: true, deadline: Date.now() + 15_000 });
    const plainPatient = unary(plain, 'patient', { waitForReady: true, deadline: Date.now() + 15_000 });
    await flush();
    assert.equal(pod.calls(), 0);
    await pod.restart();
    assert.equal((await patient).message, 'patient');
    assert.equal((await plainPatient).message, 'patient', 'grpc-js waited alike');
  });

  it('a call waiting without waitForReady fails UNAVAILABLE when the pool goes from connecting to failing', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const source = new ManualSource();
    const pool = createPool({ source, transport: grpcTransport(EchoClient), reconnect: { minMs: 60_000, maxMs: 60_000 } });
    cleanup.push(() => pool.close());
    const stub = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: grpcChannel(pool) });
    cleanup.push(async () => stub.close());

    const waiting = unary(stub, 'waiting');
    await flush();
    source.set([await refusingAddress('127.0.0.173')]);
    await assert.rejects(waiting, (error: ServiceError) => {
      assert.deepEqual(statusOf(error), [status.UNAVAILABLE, [ErrorCode.NO_ENDPOINTS]]);
      assert.match(error.details, /^podpool: no endpoint is ready to take the call/);
      return true;
    });
  });

  it('a waiting call ends CANCELLED when cancelled, and UNAVAILABLE when the channel or the pool closes', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pool = createPool({ source: new ManualSource(), transport: grpcTransport(EchoClient) });
    cleanup.push(() => pool.close());
    const channel = grpcChannel(pool);
    const stub = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: channel });

    const metadata = new Metadata();
    const cancelled = new Promise<ServiceError>((resolve) => {
      const call = stub.unary({ message: 'x' }, metadata, {}, (error) => resolve(error as ServiceError));
      setImmediate(() => call.cancel());
    });
    assert.equal((await cancelled).code, status.CANCELLED);

    const onChannelClose = unary(stub, 'channel closes', { waitForReady: true });
    await flush();
    stub.close();
    await assert.rejects(onChannelClose, (error: ServiceError) => {
      assert.deepEqual(statusOf(error), [status.UNAVAILABLE, [ErrorCode.CLOSED]]);
      return true;
    });

    const other = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: grpcChannel(pool) });
    cleanup.push(async () => other.close());
    const onPoolClose = unary(other, 'pool closes', { waitForReady: true });
    await flush();
    await pool.close();
    await assert.rejects(onPoolClose, (error: ServiceError) => {
      assert.deepEqual(statusOf(error), [status.UNAVAILABLE, [ErrorCode.CLOSED]]);
      return true;
    });
  });
});
