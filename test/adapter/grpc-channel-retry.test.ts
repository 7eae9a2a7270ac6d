/**
 * Retries through grpcChannel: a call that never reached its pod is sent again on another pod
 * (free of the budget), and one that may have is sent again only as the channel's
 * `serviceConfig` (gRFC A6, grpc-js's shape) or the pool's `retry: { idempotent: true }` says,
 * before it is committed, within the retry budget. Real grpc-js servers on loopback; the pool
 * picks with `first()`, so each test knows which pod every attempt goes to, and the counts
 * (calls each server saw, each member's requests and failures) say what happened.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it, type TestContext } from 'node:test';
import {
  Metadata,
  Server,
  ServerCredentials,
  connectivityState,
  credentials,
  status,
  type ChannelInterface,
  type ServerDuplexStream,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceError,
  type StatusObject,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { ErrorCode, createPool, staticEndpoints, type Pool } from '../../src/index.ts';
import { grpcChannel, type GrpcChannelOptions } from '../../src/adapter/grpc-channel.ts';
import type { GrpcMethodConfig, GrpcServiceConfig } from '../../src/adapter/grpc-retry.ts';
import { grpcTransport } from '../../src/transport/grpc.ts';
import type { ConnectContext, Transport } from '../../src/transport/transport.ts';
import type { RetryBudgetOptions, RetryOptions } from '../../src/call/retry.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { first } from '../support/first-balancer.ts';
import {
  EchoClient,
  echoService,
  startGrpcPods,
  stopGrpcPods,
  type EchoReply,
  type EchoRequest,
  type GrpcPod,
  type StreamRequest,
  unary,
} from '../../testkit/grpc-pods.ts';

/** Every wait below is on an event; this only turns a broken feature's endless wait into a failure. */
const events = { timeout: 20_000 };

const ECHO = 'podpool.echo.v1.Echo';

/** A policy that retries UNAVAILABLE on every Echo method, with backoffs too short to matter. */
function retryUnavailable(maxAttempts = 3, name?: GrpcMethodConfig['name']): GrpcServiceConfig & { methodConfig: GrpcMethodConfig[] } {
  return {
    methodConfig: [
      {
        name: name ?? [{ service: ECHO }],
        retryPolicy: {
          maxAttempts,
          initialBackoff: '0.001s',
          maxBackoff: '0.002s',
          backoffMultiplier: 2,
          retryableStatusCodes: ['UNAVAILABLE'],
        },
      },
    ],
  };
}

/**
 * A pod whose every Echo call fails with `code` (trailers only, unless a server stream asks for
 * replies first), counting calls and keeping what they carried. `pushback` is sent as
 * `grpc-retry-pushback-ms`.
 */
class FailingPod {
  readonly address: string;
  readonly calls = { Unary: 0, ServerStream: 0, ClientStream: 0, Bidi: 0 };
  /** The messages each client stream carried, and each call's `grpc-previous-rpc-attempts`. */
  readonly uploads: string[][] = [];
  readonly previousAttempts: (string | undefined)[] = [];
  readonly #server = new Server();
  readonly #code: number;
  readonly #pushback: string | undefined;
  port = 0;

  constructor(address: string, code: number, pushback?: string) {
    this.address = address;
    this.#code = code;
    this.#pushback = pushback;
    this.#server.addService(echoService, this.#handlers());
  }

  get key(): string {
    return `${this.address}:${this.port}`;
  }

  get endpoint() {
    return { address: this.address, port: this.port };
  }

  async start(): Promise<this> {
    this.port = await new Promise<number>((resolve, reject) => {
      this.#server.bindAsync(`${this.address}:0`, ServerCredentials.createInsecure(), (error, port) => (error ? reject(error) : resolve(port)));
    });
    return this;
  }

  close(): Promise<void> {
    this.#server.forceShutdown();
    return Promise.resolve();
  }

  #failure(): Partial<StatusObject> {
    const metadata = new Metadata();
    if (this.#pushback !== undefined) metadata.set('grpc-retry-pushback-ms', this.#pushback);
    return { code: this.#code, details: `${this.address} fails every call`, metadata };
  }

  #seen(metadata: Metadata): void {
    this.previousAttempts.push(metadata.get('grpc-previous-rpc-attempts')[0]?.toString());
  }

  #handlers() {
    return {
      Unary: (call: ServerUnaryCall<EchoRequest, EchoReply>, callback: sendUnaryData<EchoReply>) => {
        this.calls.Unary++;
        this.#seen(call.metadata);
        callback(this.#failure());
      },
      ServerStream: (call: ServerWritableStream<StreamRequest, EchoReply>) => {
        this.calls.ServerStream++;
        this.#seen(call.metadata);
        const pod = { name: 'failing', address: this.key };
        for (let seq = 0; seq < (call.request.count ?? 0); seq++) call.write({ message: call.request.message ?? '', pod, seq, authority: '' });
        call.emit('error', this.#failure());
      },
      ClientStream: (call: ServerReadableStream<EchoRequest, EchoReply>, callback: sendUnaryData<EchoReply>) => {
        this.calls.ClientStream++;
        this.#seen(call.metadata);
        const messages: string[] = [];
        this.uploads.push(messages);
        call.on('data', (request: EchoRequest) => messages.push(request.message ?? ''));
        call.on('error', () => {});
        call.on('end', () => callback(this.#failure()));
      },
      Bidi: (call: ServerDuplexStream<EchoRequest, EchoReply>) => {
        this.calls.Bidi++;
        this.#seen(call.metadata);
        call.on('error', () => {});
        call.once('data', () => call.emit('error', this.#failure()));
      },
      WhoAmI: (_call: unknown, callback: sendUnaryData<unknown>) => callback(this.#failure()),
    };
  }
}

/**
 * The pool's view of a connection, minus its bad news: a member whose pod died stays pickable,
 * as it is for the moment between a pod dying and the pool hearing of it, made as long as the
 * test needs. Each pod's client is kept, so the test can watch (or close) its channel.
 */
function unaware<C extends { getChannel(): ChannelInterface }>(transport: Transport<C>, clients: Map<string, C>): Transport<C> {
  const deaf = (context: ConnectContext): ConnectContext =>
    new Proxy(context, {
      get: (target, name) => {
        const value = Reflect.get(target, name) as unknown;
        return typeof value === 'function' ? () => {} : value;
      },
    });
  return {
    ...transport,
    async connect(endpoint, context) {
      const connection = await transport.connect(endpoint, deaf(context));
      clients.set(endpoint.key, connection.client!);
      return connection;
    },
  };
}

/** Resolves once `channel` has left READY: its connection is gone, and a call on it waits for a new one or fails. */
async function leftReady(channel: ChannelInterface): Promise<void> {
  while (channel.getConnectivityState(false) === connectivityState.READY) {
    await new Promise<void>((resolve) => channel.watchConnectivityState(connectivityState.READY, Infinity, () => resolve()));
  }
}

interface SetUp {
  retry?: RetryOptions | false;
  retryBudget?: RetryBudgetOptions;
  channel?: GrpcChannelOptions;
  transport?: Transport<EchoClient>;
}

/** A pool over `endpoints` that always picks the first pickable one, and one stub over it. */
async function poolOver(t: TestContext, endpoints: { address: string; port: number }[], options: SetUp = {}) {
  const cleanup = cleanupAfter(t);
  const pool = createPool({
    source: staticEndpoints(endpoints),
    transport: options.transport ?? grpcTransport(EchoClient),
    balancer: first(),
    reconnect: { minMs: 5, maxMs: 20 },
    ejection: false,
    ...(options.retry !== undefined && { retry: options.retry }),
    ...(options.retryBudget !== undefined && { retryBudget: options.retryBudget }),
  });
  cleanup.push(() => pool.close());
  await pool.ready({ minEndpoints: endpoints.length });
  const stub = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: grpcChannel(pool, options.channel) });
  cleanup.push(async () => stub.close());
  return { pool, stub, cleanup };
}

/** A failing pod first (by key, so `first()` picks it), then `good` healthy pods. */
async function failingThenGood(t: TestContext, at: number, code: number, options: SetUp & { pushback?: string; good?: number } = {}) {
  const failing = await new FailingPod(`127.0.0.${at}`, code, options.pushback).start();
  const pods = await startGrpcPods(options.good ?? 1, { first: at + 1 });
  const { pool, stub, cleanup } = await poolOver(t, [failing.endpoint, ...pods.map((p) => p.endpoint)], options);
  cleanup.push(() => stopGrpcPods(pods), () => failing.close());
  return { failing, good: pods[0]!, pool, stub };
}

/**
 * Two pods behind an {@link unaware} pool: `first` (which `first()` picks), which the test
 * breaks, and `up`. With `killed`, the first pod's server is gone and its channel has noticed.
 */
async function brokenFirst(t: TestContext, at: number, { killed = true, ...options }: SetUp & { killed?: boolean } = {}) {
  const clients = new Map<string, EchoClient>();
  const pods = await startGrpcPods(2, { first: at });
  const [broken, up] = pods as [GrpcPod, GrpcPod];
  const { pool, stub, cleanup } = await poolOver(t, [broken.endpoint, up.endpoint], { ...options, transport: unaware(grpcTransport(EchoClient), clients) });
  cleanup.push(() => stopGrpcPods(pods));
  if (killed) {
    await broken.kill();
    await leftReady(clients.get(broken.key)!.getChannel());
  }
  return { broken, up, pool, stub, clientOf: (pod: GrpcPod) => clients.get(pod.key)! };
}

/** Each member's [requests, failures], by endpoint key. */
function counts(pool: Pool<EchoClient>): Record<string, [number, number]> {
  return Object.fromEntries(pool.stats().members.map((m) => [m.endpoint.key, [m.requests, m.failures]]));
}

describe('grpcChannel: a call that never reached its pod is sent again on another', () => {
  it('a pod whose server is gone while its member is still pickable: every call succeeds on the other pod', events, async (t) => {
    const { broken: gone, up, pool, stub } = await brokenFirst(t, 181);

    const served: string[] = [];
    for (let i = 0; i < 5; i++) served.push((await unary(stub, { message: `${i}` })).pod.address);

    assert.deepEqual(served, Array(5).fill(up.key), 'no call failed: each one went on to the pod that is up');
    assert.deepEqual(
      counts(pool),
      { [gone.key]: [5, 5], [up.key]: [5, 0] },
      'each attempt is a call of its own: the first of each on the gone pod (a failure there), the retry on the other',
    );
  });

  it('a pod whose client was closed as the call began: the call goes to the other pod', events, async (t) => {
    const { broken: closed, up, pool, stub, clientOf } = await brokenFirst(t, 183, { killed: false });
    clientOf(closed).close();
    const reply = await unary(stub, { message: 'after close' });

    assert.equal(reply.pod.address, up.key);
    assert.equal(closed.calls(), 0);
    assert.deepEqual(
      Object.fromEntries(Object.entries(counts(pool)).map(([key, [requests]]) => [key, requests])),
      { [closed.key]: 1, [up.key]: 1 },
      'one attempt on each pod',
    );
  });

  it('is bounded by the pool’s retry.retries, and not at all with retry: false', events, async (t) => {
    const clients = new Map<string, EchoClient>();
    const pods = await startGrpcPods(3, { first: 185 });
    const [a, b, up] = pods;
    const { pool, stub, cleanup } = await poolOver(t, pods.map((p) => p.endpoint), {
      transport: unaware(grpcTransport(EchoClient), clients),
      retry: { retries: 1 },
    });
    cleanup.push(() => stopGrpcPods(pods));
    const noRetryClients = new Map<string, EchoClient>();
    const noRetry = await poolOver(t, pods.map((p) => p.endpoint), { transport: unaware(grpcTransport(EchoClient), noRetryClients), retry: false });

    await a.kill();
    await b.kill();
    for (const channels of [clients, noRetryClients]) {
      await leftReady(channels.get(a.key)!.getChannel());
      await leftReady(channels.get(b.key)!.getChannel());
    }
    // first() picks a; the retry avoids it and takes b; a second retry would have reached `up`.
    await assert.rejects(unary(stub, { message: 'two dead pods' }), (error: ServiceError) => {
      assert.equal(error.code, status.UNAVAILABLE);
      assert.match(error.details, /No connection established/, 'the last attempt’s status');
      return true;
    });
    assert.equal(up.calls(), 0);
    assert.deepEqual(counts(pool), { [a.key]: [1, 1], [b.key]: [1, 1], [up.key]: [0, 0] });

    await assert.rejects(unary(noRetry.stub, { message: 'retry: false' }), { code: status.UNAVAILABLE });
    assert.equal(up.calls(), 0);
  });
});

describe('grpcChannel: serviceConfig retry policies (gRFC A6)', () => {
  it('retries UNAVAILABLE from a pod’s handler on another pod when the policy names the method', events, async (t) => {
    const { failing, good, pool, stub } = await failingThenGood(t, 187, status.UNAVAILABLE, { channel: { serviceConfig: retryUnavailable() } });

    const reply = await unary(stub, { message: 'retried' });

    assert.equal(reply.pod.address, good.key);
    assert.deepEqual([failing.calls.Unary, good.calls('Unary')], [1, 1]);
    assert.deepEqual(counts(pool), { [failing.key]: [1, 1], [good.key]: [1, 0] }, 'the failed attempt counts against its pod');
    assert.deepEqual(failing.previousAttempts, [undefined]);
  });

  it('does not retry without a policy, for a method the policy does not name, or a code it does not list', events, async (t) => {
    const none = await failingThenGood(t, 189, status.UNAVAILABLE);
    await assert.rejects(unary(none.stub, { message: 'no policy' }), { code: status.UNAVAILABLE });
    assert.deepEqual([none.failing.calls.Unary, none.good.calls('Unary')], [1, 0]);

    const other = await failingThenGood(t, 191, status.UNAVAILABLE, {
      channel: { serviceConfig: retryUnavailable(3, [{ service: ECHO, method: 'ServerStream' }]) },
    });
    await assert.rejects(unary(other.stub, { message: 'not named' }), { code: status.UNAVAILABLE });
    assert.deepEqual([other.failing.calls.Unary, other.good.calls('Unary')], [1, 0]);

    const invalid = await failingThenGood(t, 193, status.INVALID_ARGUMENT, { channel: { serviceConfig: retryUnavailable() } });
    await assert.rejects(unary(invalid.stub, { message: 'not retryable' }), { code: status.INVALID_ARGUMENT });
    assert.deepEqual([invalid.failing.calls.Unary, invalid.good.calls('Unary')], [1, 0]);
  });

  it('makes at most maxAttempts attempts (5 at most), alternating pods; the caller sees the last status', events, async (t) => {
    const a = await new FailingPod('127.0.0.195', status.UNAVAILABLE).start();
    const b = await new FailingPod('127.0.0.196', status.UNAVAILABLE).start();
    t.after(() => Promise.all([a.close(), b.close()]));

    const three = await poolOver(t, [a.endpoint, b.endpoint], { channel: { serviceConfig: retryUnavailable(3) } });
    await assert.rejects(unary(three.stub, { message: 'x' }), (error: ServiceError) => {
      assert.equal(error.details, `${a.address} fails every call`, 'the third attempt went back to a');
      assert.deepEqual(error.metadata.get('grpc-previous-rpc-attempts'), ['2']);
      return true;
    });
    assert.deepEqual([a.calls.Unary, b.calls.Unary], [2, 1]);
    assert.deepEqual([...a.previousAttempts, ...b.previousAttempts], [undefined, '2', '1'], 'each retry says how many came before');

    const ten = await poolOver(t, [a.endpoint, b.endpoint], { channel: { serviceConfig: JSON.stringify(retryUnavailable(10)) } });
    await assert.rejects(unary(ten.stub, { message: 'y' }), { code: status.UNAVAILABLE });
    assert.equal(a.calls.Unary + b.calls.Unary, 3 + 5, 'maxAttempts 10 is taken as 5');
  });

  it('honours grpc-retry-pushback-ms: a negative one stops the retries, a zero one retries at once', events, async (t) => {
    const stop = await failingThenGood(t, 197, status.UNAVAILABLE, { pushback: '-1', channel: { serviceConfig: retryUnavailable() } });
    await assert.rejects(unary(stop.stub, { message: 'pushed back' }), { code: status.UNAVAILABLE });
    assert.deepEqual([stop.failing.calls.Unary, stop.good.calls('Unary')], [1, 0]);

    const now = await failingThenGood(t, 199, status.UNAVAILABLE, { pushback: '0', channel: { serviceConfig: retryUnavailable() } });
    assert.equal((await unary(now.stub, { message: 'pushback 0' })).pod.address, now.good.key);
  });

  it('does not retry when the backoff would run past the call’s deadline: the caller gets the last status', events, async (t) => {
    const slow = retryUnavailable();
    slow.methodConfig[0]!.retryPolicy = { ...slow.methodConfig[0]!.retryPolicy!, initialBackoff: '60s', maxBackoff: '60s' };
    const { failing, good, stub } = await failingThenGood(t, 219, status.UNAVAILABLE, { channel: { serviceConfig: slow } });

    const error = await new Promise<ServiceError | null>((resolve) => {
      stub.unary({ message: 'short deadline' }, new Metadata(), { deadline: Date.now() + 30_000 }, (e) => resolve(e));
    });

    assert.equal(error?.code, status.UNAVAILABLE, 'at once, not DEADLINE_EXCEEDED after a wait');
    assert.deepEqual([failing.calls.Unary, good.calls('Unary')], [1, 0]);
  });

  it('with the pool’s retry: { idempotent: true }, retries UNAVAILABLE of every method no entry names', events, async (t) => {
    const idempotent = await failingThenGood(t, 201, status.UNAVAILABLE, { retry: { idempotent: true, minDelayMs: 0, maxDelayMs: 1 } });
    assert.equal((await unary(idempotent.stub, { message: 'idempotent' })).pod.address, idempotent.good.key);

    const deadline = await failingThenGood(t, 203, status.DEADLINE_EXCEEDED, { retry: { idempotent: true } });
    await assert.rejects(unary(deadline.stub, { message: 'other codes are the caller’s' }), { code: status.DEADLINE_EXCEEDED });
    assert.equal(deadline.good.calls('Unary'), 0);

    // An entry without a retryPolicy says: this method is not retried.
    const opted = await failingThenGood(t, 205, status.UNAVAILABLE, {
      retry: { idempotent: true },
      channel: { serviceConfig: { methodConfig: [{ name: [{ service: ECHO, method: 'Unary' }] }] } },
    });
    await assert.rejects(unary(opted.stub, { message: 'opted out' }), { code: status.UNAVAILABLE });
    assert.equal(opted.good.calls('Unary'), 0);
  });

  it('stops policy retries when the budget is spent, but still resends calls that never reached a pod', events, async (t) => {
    const spent = { ratio: 0, minPerSecond: 0 };
    const policy = await failingThenGood(t, 207, status.UNAVAILABLE, { retryBudget: spent, channel: { serviceConfig: retryUnavailable() } });
    await assert.rejects(unary(policy.stub, { message: 'no budget' }), { code: status.UNAVAILABLE });
    assert.deepEqual([policy.failing.calls.Unary, policy.good.calls('Unary')], [1, 0]);

    const transparent = await brokenFirst(t, 209, { retryBudget: spent, channel: { serviceConfig: retryUnavailable() } });
    assert.equal((await unary(transparent.stub, { message: 'never sent' })).pod.address, transparent.up.key);
  });
});

describe('grpcChannel: retries of streams', () => {
  it('never retries a server stream that got response headers; retries one that failed before', events, async (t) => {
    const { failing, good, stub } = await failingThenGood(t, 211, status.UNAVAILABLE, { channel: { serviceConfig: retryUnavailable() } });

    const committed = stub.serverStream({ message: 'm', count: 2 });
    const replies: EchoReply[] = [];
    committed.on('data', (reply: EchoReply) => replies.push(reply));
    const [error] = (await once(committed, 'error')) as [ServiceError];
    assert.equal(error.code, status.UNAVAILABLE);
    assert.deepEqual(replies.map((r) => [r.pod.address, r.seq]), [[failing.key, 0], [failing.key, 1]], 'what the caller saw stays its answer');
    assert.deepEqual([failing.calls.ServerStream, good.calls('ServerStream')], [1, 0]);

    const early = stub.serverStream({ message: 'n', count: 0 });
    // count 0: the failing pod answers with trailers only, so the retry's pod streams from the start.
    const [status0] = (await once(early, 'status')) as [StatusObject];
    assert.equal(status0.code, status.OK);
    assert.deepEqual([failing.calls.ServerStream, good.calls('ServerStream')], [2, 1]);
  });

  it('replays every message of a client stream, and its half-close, on the retry’s pod', events, async (t) => {
    const { failing, good, pool, stub } = await failingThenGood(t, 213, status.UNAVAILABLE, { channel: { serviceConfig: retryUnavailable() } });

    const reply = await new Promise<EchoReply>((resolve, reject) => {
      const upload = stub.clientStream((error, answer) => (error ? reject(error) : resolve(answer!)));
      for (const message of ['a', 'b', 'c']) upload.write({ message });
      upload.end();
    });

    assert.deepEqual(failing.uploads, [['a', 'b', 'c']], 'the first pod read the whole stream');
    assert.deepEqual([reply.pod.address, reply.message, reply.seq], [good.key, 'a b c', 3], 'the second pod saw every message');
    assert.deepEqual(counts(pool), { [failing.key]: [1, 1], [good.key]: [1, 0] });
  });

  it('commits a client stream whose messages pass 256 KiB: it is not retried', events, async (t) => {
    const { failing, good, stub } = await failingThenGood(t, 215, status.UNAVAILABLE, { channel: { serviceConfig: retryUnavailable() } });

    const big = 'x'.repeat(100 * 1024);
    const error = await new Promise<ServiceError>((resolve) => {
      const upload = stub.clientStream((e) => resolve(e as ServiceError));
      for (let i = 0; i < 3; i++) upload.write({ message: big });
      upload.end();
    });

    assert.equal(error?.code, status.UNAVAILABLE);
    assert.equal(failing.uploads[0]?.length, 3);
    assert.equal(good.calls('ClientStream'), 0, 'over the buffer, the stream stays on its first pod');
  });

  it('retries a bidi stream that failed before its first reply, replaying what was written', events, async (t) => {
    const { failing, good, stub } = await failingThenGood(t, 217, status.UNAVAILABLE, { channel: { serviceConfig: retryUnavailable() } });

    const bidi = stub.bidi();
    const echoed: EchoReply[] = [];
    bidi.on('data', (reply: EchoReply) => echoed.push(reply));
    bidi.write({ message: 'x' });
    bidi.write({ message: 'y' });
    bidi.end();
    const [ended] = (await once(bidi, 'status')) as [StatusObject];

    assert.equal(ended.code, status.OK);
    assert.deepEqual(echoed.map((r) => [r.pod.address, r.message]), [[good.key, 'x'], [good.key, 'y']]);
    assert.deepEqual([failing.calls.Bidi, good.calls('Bidi')], [1, 1]);
  });
});

describe('grpcChannel: serviceConfig is checked at the door', () => {
  const policy = retryUnavailable().methodConfig[0]!.retryPolicy!;
  const bad: [string, unknown][] = [
    ['serviceConfig', '{ not json'],
    ['serviceConfig.retryThrottling', { retryThrottling: { maxTokens: 10, tokenRatio: 0.1 } }],
    ['serviceConfig.methodConfig', { methodConfig: {} }],
    ['serviceConfig.methodConfig[0].name', { methodConfig: [{ retryPolicy: policy }] }],
    ['serviceConfig.methodConfig[0].timeout', { methodConfig: [{ name: [{}], timeout: '1s' }] }],
    ['serviceConfig.methodConfig[0].name[0].method', { methodConfig: [{ name: [{ method: 'Unary' }] }] }],
    ['serviceConfig.methodConfig[1].name[0]', { methodConfig: [{ name: [{ service: ECHO }] }, { name: [{ service: ECHO }] }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.maxAttempts', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, maxAttempts: 1 } }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.initialBackoff', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, initialBackoff: '100ms' } }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.maxBackoff', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, maxBackoff: '0s' } }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.backoffMultiplier', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, backoffMultiplier: 0 } }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.retryableStatusCodes', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, retryableStatusCodes: [] } }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.retryableStatusCodes[1]', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, retryableStatusCodes: ['UNAVAILABLE', 'NOPE'] } }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.retryableStatusCodes[0]', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, retryableStatusCodes: [99] } }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.retryableStatusCodes[0]', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, retryableStatusCodes: ['OK'] } }] }],
    ['serviceConfig.methodConfig[0].retryPolicy.hedgingDelay', { methodConfig: [{ name: [{}], retryPolicy: { ...policy, hedgingDelay: '1s' } }] }],
  ];

  it('throws PODPOOL_INVALID_OPTION naming the field', async () => {
    const pool = createPool({ source: staticEndpoints([]), transport: grpcTransport(EchoClient) });
    try {
      for (const [field, serviceConfig] of bad) {
        assert.throws(
          () => grpcChannel(pool, { serviceConfig: serviceConfig as GrpcChannelOptions['serviceConfig'] }),
          (error: Error & { code?: string }) => {
            assert.equal(error.code, ErrorCode.INVALID_OPTION, field);
            const named = error.message.match(/(?:unknown )?option (\S+?)(?:;|\s)/)?.[1];
            assert.equal(named, field, error.message);
            return true;
          },
        );
      }
      // Codes by name in any case or by number, and a JSON string, are what grpc-js takes too.
      const good = { methodConfig: [{ name: [{ service: ECHO, method: 'Unary' }, {}], retryPolicy: { ...policy, retryableStatusCodes: ['unavailable', 4] } }] };
      grpcChannel(pool, { serviceConfig: good }).close();
      grpcChannel(pool, { serviceConfig: JSON.stringify(good) }).close();
    } finally {
      await pool.close();
    }
  });
});
