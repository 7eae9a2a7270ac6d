/**
 * The transports' and adapters' options, checked at the door: every delay a timer can't hold
 * (over 2^31 - 1 ms, which Node fires after 1 ms), TLS material Node can't load, undici and
 * grpc-js options that would be ignored or refused only at the first connect, misspelled names.
 * (The pool's own options: test/pool/options.test.ts; secrets in messages: options-secrets.test.ts.)
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { Client } from '@grpc/grpc-js';
import { grpcChannel } from '../src/adapter/grpc-channel.ts';
import { httpDispatcher } from '../src/adapter/http-dispatcher.ts';
import { createEndpoint } from '../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../src/errors.ts';
import { MAX_DELAY_MS } from '../src/options.ts';
import { createPool } from '../src/pool/pool.ts';
import { exclusiveTransport } from '../src/transport/exclusive.ts';
import { grpcTransport } from '../src/transport/grpc.ts';
import { httpTransport } from '../src/transport/http.ts';
import { webSocketTransport } from '../src/transport/websocket.ts';
import { WebSocketClient } from '../src/transport/websocket-client.ts';
import { ManualSource } from './support/manual-source.ts';

class EchoClient extends Client {}

const factory = { create: async () => ({}), destroy() {} };

/** Asserts `PODPOOL_INVALID_OPTION` with a message that starts with `start`. */
function refused(make: () => unknown, start: string): void {
  assert.throws(make, (error: unknown) => {
    assert.ok(error instanceof PodpoolError, `expected a PodpoolError, got ${String(error)}`);
    assert.equal(error.code, ErrorCode.INVALID_OPTION);
    assert.ok(error.message.startsWith(start), `${error.message}\ndoes not start with\n${start}`);
    return true;
  });
}

describe('delays a timer cannot hold', () => {
  const tooLong = MAX_DELAY_MS + 1;
  const cases: [string, (ms: number) => unknown][] = [
    ['connectTimeoutMs', (ms) => httpTransport({ connectTimeoutMs: ms })],
    ['client.headersTimeout', (ms) => httpTransport({ client: { headersTimeout: ms } })],
    ['client.bodyTimeout', (ms) => httpTransport({ client: { bodyTimeout: ms } })],
    ['client.keepAliveTimeout', (ms) => httpTransport({ client: { keepAliveTimeout: ms } })],
    ['client.keepAliveMaxTimeout', (ms) => httpTransport({ client: { keepAliveMaxTimeout: ms } })],
    ['connectTimeoutMs', (ms) => grpcTransport(EchoClient, { connectTimeoutMs: ms })],
    ["channelOptions['grpc.keepalive_time_ms']", (ms) => grpcTransport(EchoClient, { channelOptions: { 'grpc.keepalive_time_ms': ms } })],
    ["channelOptions['grpc.keepalive_timeout_ms']", (ms) => grpcTransport(EchoClient, { channelOptions: { 'grpc.keepalive_timeout_ms': ms } })],
    ["channelOptions['grpc.initial_reconnect_backoff_ms']", (ms) => grpcTransport(EchoClient, { channelOptions: { 'grpc.initial_reconnect_backoff_ms': ms } })],
    ["channelOptions['grpc.client_idle_timeout_ms']", (ms) => grpcTransport(EchoClient, { channelOptions: { 'grpc.client_idle_timeout_ms': ms } })],
    ['heartbeatMs', (ms) => webSocketTransport({ heartbeatMs: ms })],
    ['requestTimeoutMs', (ms) => webSocketTransport({ requestTimeoutMs: ms })],
    ['connectTimeoutMs', (ms) => webSocketTransport({ connectTimeoutMs: ms })],
    ['acquireTimeoutMs', (ms) => exclusiveTransport(factory, { acquireTimeoutMs: ms })],
  ];
  for (const [name, make] of cases) {
    it(`${name}: ${tooLong} is refused, ${MAX_DELAY_MS} taken`, () => {
      refused(() => make(tooLong), `option ${name} must be a number of ms`);
      make(MAX_DELAY_MS);
    });
  }

  it('httpDispatcher readyTimeoutMs and WebSocketClient.request timeoutMs', async (t) => {
    const pool = createPool({ source: new ManualSource(), transport: httpTransport() });
    t.after(() => pool.close());
    refused(() => httpDispatcher(pool, { readyTimeoutMs: tooLong }), 'option readyTimeoutMs must be a number of ms from 1 to 2147483647');
    const ws = new WebSocketClient(new EventEmitter() as never, createEndpoint({ address: '127.0.0.1', port: 1 }), 1, 1_000);
    await assert.rejects(ws.request(1, { timeoutMs: tooLong }), { code: ErrorCode.INVALID_OPTION, message: /^option timeoutMs must be a number of ms/ });
  });
});

describe('httpTransport at the door', () => {
  it('loads tls once, refusing what Node cannot', () => {
    refused(() => httpTransport({ tls: { ca: 5 } as never }), 'option tls must hold a CA, certificate and key Node can load (PEM or DER): The "options.ca" property must be of type string');
    refused(() => httpTransport({ tls: { key: 'not a key', cert: 'not a cert' } }), 'option tls must hold a CA, certificate and key Node can load (PEM or DER): error:');
    refused(() => httpTransport({ tls: { key: 'only a key' } }), 'option tls must have cert and key together');
    refused(() => httpTransport({ tls: { servername: '' } }), 'option tls.servername must be the DNS name');
    refused(() => httpTransport({ tls: 'yes' } as never), 'option tls must be TLS connection options');
  });

  it('refuses a client option undici would refuse at the first connect, or ignore', () => {
    refused(() => httpTransport({ client: { headerTimeout: 5 } as never }), 'unknown option client.headerTimeout (did you mean client.headersTimeout?)');
    refused(() => httpTransport({ client: { maxHeaderSize: -1 } }), 'option client must be undici Client options: invalid maxHeaderSize');
    refused(() => httpTransport({ client: { headersTimeout: -1 } }), 'option client.headersTimeout must be a number >= 0');
    // podpool opens the sockets itself: undici never reads these.
    for (const name of ['connectTimeout', 'socketPath', 'localAddress', 'autoSelectFamily']) {
      refused(() => httpTransport({ client: { [name]: 1 } as never }), `option client.${name} must be left out: the transport opens the sockets itself`);
    }
    refused(() => httpTransport({ client: { pipelining: 2 } as never }), "option client.pipelining must be left out: use the transport's pipelining option");
    refused(() => httpTransport({ client: null as never }), 'option client must be undici Client options, got null');
    refused(() => httpTransport({ http2: true, client: { maxConcurrentStreams: 0 } }), 'option client.maxConcurrentStreams must be an integer >= 1');
    httpTransport({ client: { headersTimeout: 0, bodyTimeout: 0, keepAliveTimeout: 4_000, maxResponseSize: 1 << 20 } });
  });
});

describe('grpcTransport at the door', () => {
  it('refuses a channel option grpc-js would ignore for its name, naming the one meant', () => {
    refused(() => grpcTransport(EchoClient, { channelOptions: { keepalive_time_ms: 5_000 } as never }), "unknown option channelOptions['keepalive_time_ms'] (did you mean channelOptions['grpc.keepalive_time_ms']?)");
    refused(() => grpcTransport(EchoClient, { channelOptions: { 'grpc.max_reconnect_backoff_ms': 'soon' } as never }), "option channelOptions['grpc.max_reconnect_backoff_ms'] must be a number of ms up to 2147483647");
    grpcTransport(EchoClient, { channelOptions: { 'grpc.max_reconnect_backoff_ms': -1, 'grpc-node.max_session_memory': 10, 'grpc.primary_user_agent': 'me', interceptors: [] } });
  });
});

describe('webSocketTransport at the door', () => {
  it('refuses header names and values Node would refuse at every connect', () => {
    refused(() => webSocketTransport({ headers: { 'bad name': 'x' } }), 'option headers must be an object of string header values, with valid header names (not "bad name")');
    refused(() => webSocketTransport({ headers: { 'x-tenant': 'a\r\nb' } }), 'option headers["x-tenant"] must be a header value without line breaks or NUL');
    refused(() => webSocketTransport({ headers: [] as never }), 'option headers must be an object of string header values, got an array of 0');
  });

  it("refuses request() options it does not know, and a signal that isn't one", async () => {
    const ws = new WebSocketClient(new EventEmitter() as never, createEndpoint({ address: '127.0.0.1', port: 1 }), 1, 1_000);
    await assert.rejects(ws.request(1, { timeout: 5 } as never), { code: ErrorCode.INVALID_OPTION, message: /^unknown option timeout \(did you mean timeoutMs\?\)/ });
    await assert.rejects(ws.request(1, { signal: 'x' } as never), { code: ErrorCode.INVALID_OPTION, message: 'option signal must be an AbortSignal, got "x"' });
  });
});

describe('adapters at the door', () => {
  it('grpcChannel: a serviceConfig that is not JSON is refused without quoting it', async (t) => {
    const pool = createPool({ source: new ManualSource(), transport: grpcTransport(EchoClient) });
    t.after(() => pool.close());
    refused(() => grpcChannel(pool, { serviceConfig: '{"methodConfig": [Bearer abc' }), 'option serviceConfig must be a service config object or its JSON (this string does not parse as JSON), got a string of');
  });
});
