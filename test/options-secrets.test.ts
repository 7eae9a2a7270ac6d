/**
 * No option error shows a secret. A recognisable secret goes through every option of every
 * factory and per-call options object of the pool, the balancers, the transports and the
 * adapters, in the shapes a credential takes when it lands where it should not (bytes, a
 * `Bearer` value, a PEM block, a `token=` query, a field named `apiKey`, `privateKey`, `auth`,
 * `x-api-key` or `bearer`, nested arrays, a long opaque string), and where it belongs but in a
 * bad shape (`tls.key`, `headers`, `credentials`). Whatever is refused is refused with a
 * `PodpoolError` whose message, and every cause under it, never holds the secret (nor its bytes).
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it, type TestContext } from 'node:test';
import { Client } from '@grpc/grpc-js';
import { leastLoaded } from '../src/balance/least-loaded.ts';
import { peakEwma } from '../src/balance/peak-ewma.ts';
import { random } from '../src/balance/random.ts';
import { ringHash } from '../src/balance/ring-hash.ts';
import { roundRobin } from '../src/balance/round-robin.ts';
import { grpcChannel } from '../src/adapter/grpc-channel.ts';
import { httpDispatcher } from '../src/adapter/http-dispatcher.ts';
import { createEndpoint } from '../src/endpoint.ts';
import { PodpoolError } from '../src/errors.ts';
import { createPool, type Pool } from '../src/pool/pool.ts';
import { exclusiveTransport } from '../src/transport/exclusive.ts';
import { grpcTransport } from '../src/transport/grpc.ts';
import { httpTransport } from '../src/transport/http.ts';
import { webSocketTransport } from '../src/transport/websocket.ts';
import { WebSocketClient } from '../src/transport/websocket-client.ts';
import { ManualSource, pod } from './support/manual-source.ts';
import { MemoryTransport } from './support/memory-transport.ts';

const SECRET = 'S3CRET-hunter2-7f9c';
/** How a Buffer of the secret would print through JSON.stringify. */
const SECRET_BYTES = Buffer.from(SECRET).join(',');

/** The secret as it arrives where it should not: each of these must never be echoed, under any name. */
const STRAYS: readonly unknown[] = [
  Buffer.from(SECRET),
  new Uint8Array(Buffer.from(SECRET)),
  Buffer.from(SECRET).buffer.slice(0),
  `Bearer ${SECRET}`,
  `Basic ${SECRET}`,
  `-----BEGIN PRIVATE KEY-----\n${SECRET}\n-----END PRIVATE KEY-----`,
  `/?token=${SECRET}`,
  `password=${SECRET}`,
  `${'x'.repeat(64)}${SECRET}`,
  { apiKey: SECRET, n: Number.NaN },
  { privateKey: [[SECRET]] },
  { auth: { user: 'me', pass: SECRET } },
  { bearer: SECRET },
  { headers: { 'x-api-key': SECRET } },
  { 'x-api-key': SECRET },
  { token: SECRET, nested: [[Buffer.from(SECRET)]] },
  [[`Bearer ${SECRET}`], Buffer.from(SECRET)],
  [{ secret: SECRET }],
];

/** The secret itself, in a bad shape, under an option that holds secrets. */
const BELONGING: readonly unknown[] = [SECRET, [SECRET, 5], { value: SECRET }, [[SECRET]], Buffer.from(SECRET)];

class EchoClient extends Client {}

/** `base` with `value` at `path` (`tls.key`, `headers.authorization`), the rest kept. */
function at(base: Record<string, unknown>, path: string, value: unknown): Record<string, unknown> {
  const [head, ...rest] = path.split('.');
  if (rest.length === 0) return { ...base, [head]: value };
  const inner = base[head];
  return { ...base, [head]: at(inner !== null && typeof inner === 'object' ? (inner as Record<string, unknown>) : {}, rest.join('.'), value) };
}

/** Every message and cause message under `error`. */
function messages(error: unknown): string[] {
  const seen: string[] = [];
  for (let e = error; e !== undefined && e !== null && seen.length < 10; e = (e as { cause?: unknown }).cause) {
    seen.push(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
  }
  return seen;
}

const opened: Pool<unknown>[] = [];

/** Runs `make`, and when it fails, asserts a PodpoolError that shows nothing of the secret. */
async function tryShape(label: string, make: () => unknown): Promise<void> {
  let error: unknown;
  try {
    const made = make();
    if (made instanceof Promise) await made;
    if (made instanceof EventEmitter && typeof (made as Pool<unknown>).close === 'function') opened.push(made as Pool<unknown>);
    return;
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PodpoolError, `${label}: expected a PodpoolError, got ${messages(error).join(' <- ')}`);
  for (const message of messages(error)) {
    assert.ok(!message.includes(SECRET), `${label} showed the secret: ${message}`);
    assert.ok(!message.includes(SECRET_BYTES), `${label} showed the secret's bytes: ${message}`);
  }
}

/** A factory and the option paths it takes; `make(options)` calls it. */
interface Target {
  readonly name: string;
  readonly base: Record<string, unknown>;
  readonly paths: readonly string[];
  /** Paths whose values are secrets: the secret itself goes there too, in bad shapes. */
  readonly secrets?: readonly string[];
  make(options: Record<string, unknown>): unknown;
}

function targets(t: TestContext): Target[] {
  const source = new ManualSource();
  source.set([pod(1)]);
  const pool = createPool({ source, transport: new MemoryTransport() });
  const httpPool = createPool({ source: new ManualSource(), transport: httpTransport() });
  const grpcPool = createPool({ source: new ManualSource(), transport: grpcTransport(EchoClient) });
  t.after(() => Promise.all([pool.close(), httpPool.close(), grpcPool.close()]));
  const poolBase = { source: new ManualSource(), transport: new MemoryTransport() };
  const tlsPaths = ['tls', 'tls.key', 'tls.cert', 'tls.ca', 'tls.pfx', 'tls.passphrase', 'tls.servername', 'tls.ticketKeys', 'tls.secureOptions', 'tls.minVersion'];
  const tlsSecrets = ['tls', 'tls.key', 'tls.cert', 'tls.ca', 'tls.pfx', 'tls.passphrase', 'tls.ticketKeys'];
  const ws = new WebSocketClient(new EventEmitter() as never, createEndpoint({ address: '127.0.0.1', port: 1 }), 1, 1_000);
  return [
    {
      name: 'createPool',
      base: poolBase,
      paths: [
        'source', 'transport', 'balancer', 'drainTimeoutMs', 'reconnect', 'reconnect.minMs', 'reconnect.maxMs', 'reconnect.factor',
        'ejection', 'ejection.consecutiveFailures', 'ejection.baseMs', 'ejection.maxMs', 'ejection.maxPercent', 'callTimeoutMs',
        'retry', 'retry.retries', 'retry.idempotent', 'retry.minDelayMs', 'retry.maxDelayMs', 'retryBudget', 'retryBudget.ratio',
        'retryBudget.minPerSecond', 'retryBudget.windowMs', 'hedge', 'hedge.delayMs', 'hedge.percentile', 'slowStart',
        'slowStart.windowMs', 'slowStart.aggression', 'slowStart.minWeight', 'clock', 'random', 'apiKey',
      ],
      make: (options) => createPool(options as never),
    },
    {
      name: 'pool.use',
      base: {},
      paths: ['key', 'signal', 'timeoutMs', 'waitForReady', 'failedResult', 'retry', 'retry.retries', 'hedge', 'hedge.delayMs', 'token'],
      make: (options) => pool.use(() => 1, options as never),
    },
    { name: 'pool.use fn', base: {}, paths: ['fn'], make: (options) => pool.use(options.fn as never) },
    {
      name: 'pool.broadcast',
      base: {},
      paths: ['concurrency', 'timeoutMs', 'retries', 'signal', 'id', 'secret'],
      make: (options) => pool.broadcast(() => 1, options as never),
    },
    { name: 'pool.broadcast fn', base: {}, paths: ['fn'], make: (options) => pool.broadcast(options.fn as never) },
    { name: 'pool.ready', base: {}, paths: ['minEndpoints', 'signal', 'timeoutMs'], make: (options) => pool.ready(options as never) },
    {
      name: 'pool.beginWhenReady',
      base: {},
      paths: ['key', 'signal', 'timeoutMs', 'failFast'],
      make: (options) => pool.beginWhenReady(options as never).then((call) => call.end()),
    },
    { name: 'roundRobin', base: {}, paths: ['password'], make: (options) => roundRobin(options as never) },
    { name: 'random', base: {}, paths: ['seed'], make: (options) => random(options as never) },
    { name: 'leastLoaded', base: {}, paths: ['choices'], make: (options) => leastLoaded(options as never) },
    { name: 'peakEwma', base: {}, paths: ['decayMs', 'defaultLatencyMs'], make: (options) => peakEwma(options as never) },
    { name: 'ringHash', base: {}, paths: ['replicas'], make: (options) => ringHash(options as never) },
    {
      name: 'httpTransport',
      base: {},
      paths: ['connections', 'pipelining', 'http2', ...tlsPaths, 'connectTimeoutMs', 'client', 'client.headersTimeout', 'client.maxHeaderSize', 'client.h2Options', 'client.localAddress', 'client.headers'],
      secrets: tlsSecrets,
      make: (options) => httpTransport(options as never),
    },
    {
      name: 'grpcTransport',
      base: {},
      paths: ['credentials', 'serverName', 'channelOptions', 'channelOptions.grpc-node.token', 'connectTimeoutMs'],
      secrets: ['credentials'],
      make: (options) => grpcTransport(EchoClient, options as never),
    },
    { name: 'grpcTransport client', base: {}, paths: ['ServiceClient'], make: (options) => grpcTransport(options.ServiceClient as never) },
    {
      name: 'webSocketTransport',
      base: {},
      paths: ['path', 'protocols', 'headers', 'headers.authorization', 'headers.x-api-key', 'heartbeatMs', 'highWaterMark', 'requestTimeoutMs', 'connectTimeoutMs', 'perMessageDeflate', ...tlsPaths],
      secrets: ['headers', 'headers.authorization', 'headers.x-api-key', ...tlsSecrets],
      make: (options) => webSocketTransport(options as never),
    },
    { name: 'WebSocketClient.request', base: {}, paths: ['timeoutMs', 'signal', 'apiKey'], make: (options) => ws.request(1, options as never) },
    {
      name: 'exclusiveTransport',
      base: {},
      paths: ['perEndpoint', 'acquireTimeoutMs', 'privateKey'],
      make: (options) => exclusiveTransport({ create: async () => ({}), destroy() {} }, options as never),
    },
    {
      name: 'exclusiveTransport factory',
      base: { create: async () => ({}), destroy() {} },
      paths: ['create', 'destroy', 'validate'],
      make: (factory) => exclusiveTransport(factory as never),
    },
    {
      name: 'httpDispatcher',
      base: {},
      paths: ['waitForReady', 'readyTimeoutMs', 'retry', 'retry.retries', 'retry.methods', 'retry.statusCodes', 'auth'],
      make: (options) => httpDispatcher(httpPool, options as never),
    },
    {
      name: 'grpcChannel',
      base: {},
      paths: ['key', 'serviceConfig', 'serviceConfig.methodConfig', 'bearer'],
      make: (options) => grpcChannel(grpcPool, options as never),
    },
  ];
}

describe('option errors never show a secret', () => {
  it('whatever shape a credential takes, wherever it lands', async (t) => {
    t.after(() => Promise.all(opened.splice(0).map((p) => p.close())));
    let tried = 0;
    for (const target of targets(t)) {
      for (const path of target.paths) {
        for (const value of STRAYS) {
          await tryShape(`${target.name} ${path}`, () => target.make(at(target.base, path, value)));
          tried++;
        }
      }
      for (const path of target.secrets ?? []) {
        for (const value of BELONGING) {
          await tryShape(`${target.name} ${path} (its own)`, () => target.make(at(target.base, path, value)));
          tried++;
        }
      }
    }
    assert.ok(tried > 1_500, `${tried} shapes tried`);
  });

  it('the shapes do reach the messages: a non-secret value is still shown', async () => {
    // What makes the test above worth anything: the same paths do print what they got, when it is no secret.
    assert.throws(() => httpTransport({ connectTimeoutMs: 'soon' } as never), { message: 'option connectTimeoutMs must be a number >= 1, got "soon"' });
    assert.throws(() => createPool({ source: new ManualSource(), transport: new MemoryTransport(), reconnect: { factor: { by: 2 } } } as never), {
      message: 'option reconnect.factor must be a number >= 1, got {"by":2}',
    });
    assert.throws(() => ringHash({ replicas: [1, [2]] } as never), { message: 'option replicas must be an integer >= 1, got [1,[2]]' });
  });

  it('shows what kind of value a secret was, never the value', () => {
    const wsBad = (headers: unknown): string => {
      try {
        webSocketTransport({ headers } as never);
      } catch (error) {
        return (error as Error).message;
      }
      return 'accepted';
    };
    assert.equal(wsBad({ Authorization: `Bearer ${SECRET}`, bad: 5 }), 'option headers["bad"] must be a string, got 5');
    assert.equal(wsBad({ authorization: `Bearer ${SECRET}\n` }), 'option headers["authorization"] must be a header value without line breaks or NUL, got a string of 27 bytes');
    assert.throws(() => httpTransport({ tls: { ca: 5, key: SECRET, cert: SECRET } } as never), (error: unknown) => {
      assert.ok(error instanceof PodpoolError);
      assert.match(error.message, /^option tls must hold a CA, certificate and key Node can load \(PEM or DER\): The "options\.ca" property must be of type string/);
      return true;
    });
    assert.throws(() => httpTransport({ tls: { ticketKeys: SECRET } } as never), (error: unknown) => {
      assert.ok(error instanceof PodpoolError);
      assert.ok(!messages(error).some((m) => m.includes(SECRET)), messages(error).join(' <- '));
      return true;
    });
    assert.throws(() => createPool({ source: new ManualSource(), transport: new MemoryTransport(), balancer: { 'x-api-key': SECRET, name: 'mine' } } as never), {
      message: 'option balancer must be a balancer (roundRobin(), leastLoaded(), …), got {"x-api-key":"(a string of 19 bytes)","name":"mine"}',
    });
  });
});

