import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createH2cServer, type ServerHttp2Stream } from 'node:http2';
import { describe, it } from 'node:test';
import { status } from '@grpc/grpc-js';
import { fetch, type Dispatcher } from 'undici';
import { createEndpoint, type Endpoint } from '../../src/index.ts';
import { grpcTransport } from '../../src/transport/grpc.ts';
import { httpTransport } from '../../src/transport/http.ts';
import type { Connection, Transport } from '../../src/transport/transport.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { EchoClient, startGrpcPods, stopGrpcPods, unary } from '../../testkit/grpc-pods.ts';

// wasNotSent(error): a call that never reached its pod may be sent to another whatever its
// idempotency; one that may have reached it must not be, unless the caller says so. Each side
// of that line is tested against real servers, as callers meet the errors.

/** How a call ended, with what the transport said of its error when it ended. */
type Outcome = { answered: true } | { answered: false; code: unknown; notSent: boolean };

/** Reads `wasNotSent` the moment the call fails, as a retry deciding on it would. */
function outcomeOf(transport: Transport<unknown>, call: Promise<unknown>): Promise<Outcome> {
  return call.then(
    () => ({ answered: true }),
    (error: { code?: unknown; cause?: { code?: unknown } }) => ({
      answered: false,
      code: error.code ?? error.cause?.code,
      notSent: transport.wasNotSent!(error),
    }),
  );
}

/** An HTTP server on `address` whose answers the test decides, request by request. */
async function startServer(address: string, handle: (req: IncomingMessage, res: ServerResponse) => void) {
  const server = createServer(handle);
  server.listen(0, address);
  await once(server, 'listening');
  const endpoint = createEndpoint({ address, port: (server.address() as { port: number }).port });
  return {
    server,
    endpoint,
    async close() {
      server.closeAllConnections();
      if (server.listening) {
        server.close();
        await once(server, 'close');
      }
    },
  };
}

function connectTo<C>(transport: Transport<C>, endpoint: Endpoint): Promise<Connection<C>> {
  return transport.connect(endpoint, { signal: new AbortController().signal, lost: () => {} });
}

describe('httpTransport.wasNotSent', () => {
  it('a request queued behind one on the wire when the connection is destroyed was not sent; the one on the wire may have been', async (t) => {
    const cleanup = cleanupAfter(t);
    let arrived!: () => void;
    const holding = new Promise<void>((resolve) => (arrived = resolve));
    const pod = await startServer('127.0.0.221', (req) => {
      req.resume();
      arrived();
    });
    const transport = httpTransport();
    const connection = await connectTo(transport, pod.endpoint);
    cleanup.push(() => pod.close(), () => connection.close());
    const client = connection.client!;

    const written = outcomeOf(transport, client.request({ method: 'POST', path: '/order', body: 'one' }));
    await holding;
    // One connection, one request at a time: these wait in undici's queue.
    const queued = outcomeOf(transport, client.request({ method: 'POST', path: '/order', body: 'two' }));
    const fetched = outcomeOf(transport, fetch(`http://${pod.endpoint.key}/order`, { method: 'POST', body: 'three', dispatcher: client }));
    await connection.close();

    assert.deepEqual(await queued, { answered: false, code: 'UND_ERR_DESTROYED', notSent: true });
    assert.deepEqual(await fetched, { answered: false, code: 'UND_ERR_DESTROYED', notSent: true }, "fetch's TypeError, through its cause");
    const first = await written;
    assert.equal(first.answered, false);
    assert.equal((first as { notSent: boolean }).notSent, false, 'the request on the wire may have reached the pod');

    // A request made on the closed connection fails before undici queues it.
    assert.deepEqual(await outcomeOf(transport, client.request({ method: 'GET', path: '/' })), { answered: false, code: 'UND_ERR_DESTROYED', notSent: true });
  });

  it('a request queued behind a connection the pod closed, whose replacement is refused, was not sent', async (t) => {
    const cleanup = cleanupAfter(t);
    let reply!: () => void;
    const pod = await startServer('127.0.0.222', (req, res) => {
      req.resume();
      // The pod terminates: it stops listening and closes this connection after its answer.
      reply = () => {
        pod.server.close();
        res.setHeader('connection', 'close');
        res.end('last');
      };
    });
    const transport = httpTransport();
    let lost: Error | undefined;
    const connection = await transport.connect(pod.endpoint, { signal: new AbortController().signal, lost: (error) => (lost = error) });
    cleanup.push(() => pod.close(), () => connection.close());
    const client = connection.client!;

    const answered = client.request({ method: 'GET', path: '/' }).then((res) => res.body.text());
    while (reply === undefined) await new Promise((resolve) => pod.server.once('request', resolve));
    const queued = outcomeOf(transport, client.request({ method: 'POST', path: '/order', body: 'x' }));
    reply();
    assert.equal(await answered, 'last');
    assert.deepEqual(await queued, { answered: false, code: 'ECONNREFUSED', notSent: true });
    assert.match(String(lost?.message), /ECONNREFUSED/, 'and the pod is lost');
  });

  it('a request whose socket the pod reset after reading it may have been sent', async (t) => {
    const cleanup = cleanupAfter(t);
    const pod = await startServer('127.0.0.223', (req) => {
      req.resume();
      req.once('end', () => req.socket.destroy());
    });
    const transport = httpTransport();
    const connection = await connectTo(transport, pod.endpoint);
    cleanup.push(() => pod.close(), () => connection.close());

    assert.deepEqual(await outcomeOf(transport, connection.client!.request({ method: 'POST', path: '/order', body: 'x' })), {
      answered: false,
      code: 'UND_ERR_SOCKET',
      notSent: false,
    });
    assert.equal(transport.wasNotSent!(new Error('anything else')), false);
    assert.equal(transport.wasNotSent!(undefined), false);
  });

  it('discard() frees a dropped response: the connection carries the next request', async (t) => {
    const cleanup = cleanupAfter(t);
    const pod = await startServer('127.0.0.224', (req, res) => {
      req.resume();
      res.end('x'.repeat(256 * 1024));
    });
    const transport = httpTransport();
    const connection = await connectTo(transport, pod.endpoint);
    cleanup.push(() => pod.close(), () => connection.close());
    const client = connection.client as Dispatcher;

    const dropped = await client.request({ method: 'GET', path: '/' });
    transport.discard!(dropped);
    // One connection: this answer comes only once the dropped body was read to its end.
    assert.equal((await (await client.request({ method: 'GET', path: '/' })).body.text()).length, 256 * 1024);

    const response = await fetch(`http://${pod.endpoint.key}/`, { dispatcher: client });
    transport.discard!(response);
    assert.equal(response.bodyUsed, true, "the fetch Response's body was cancelled");
    assert.equal((await (await client.request({ method: 'GET', path: '/' })).body.text()).length, 256 * 1024);
    transport.discard!(null);
    transport.discard!({ body: 'not a stream' });
  });
});

describe('grpcTransport.wasNotSent', () => {
  it('a call failed by a channel with no connection, or made on a closed client, was not sent', async (t) => {
    const cleanup = cleanupAfter(t);
    const [pod] = await startGrpcPods(1, { first: 225 });
    cleanup.push(() => stopGrpcPods([pod]));
    const transport = grpcTransport(EchoClient);
    let failedPick: Promise<Outcome> | undefined;
    let lost!: () => void;
    const channelFailed = new Promise<void>((resolve) => (lost = resolve));
    const connection = await transport.connect(createEndpoint(pod.endpoint), {
      signal: new AbortController().signal,
      lost: () => {
        // The channel is in TRANSIENT_FAILURE: a call now fails on its pick.
        failedPick = outcomeOf(transport, unary(connection.client!, 'x'));
        lost();
      },
    });
    cleanup.push(() => connection.close());
    assert.equal((await unary(connection.client!, 'up')).message, 'up');

    await pod.kill();
    await channelFailed;
    assert.deepEqual(await failedPick, { answered: false, code: status.UNAVAILABLE, notSent: true });

    await connection.close();
    let thrown: unknown;
    try {
      connection.client!.unary({ message: 'late' }, () => {});
    } catch (error) {
      thrown = error;
    }
    assert.match(String(thrown), /Channel has been shut down/);
    assert.equal(transport.wasNotSent!(thrown), true);
  });

  it('a call whose connection the server reset after reading it may have been sent', async (t) => {
    const cleanup = cleanupAfter(t);
    // A bare HTTP/2 server: it takes the call's stream, reads the request, then drops the connection.
    const server = createH2cServer();
    server.on('stream', (stream: ServerHttp2Stream) => {
      stream.resume();
      stream.once('end', () => stream.session?.socket.destroy());
    });
    server.listen(0, '127.0.0.226');
    await once(server, 'listening');
    cleanup.push(async () => {
      server.close();
      await once(server, 'close');
    });
    const transport = grpcTransport(EchoClient);
    const connection = await connectTo(transport, createEndpoint({ address: '127.0.0.226', port: (server.address() as { port: number }).port }));
    cleanup.push(() => connection.close());

    const outcome = await outcomeOf(transport, unary(connection.client!, 'x'));
    assert.deepEqual(outcome, { answered: false, code: status.UNAVAILABLE, notSent: false });
    assert.equal(transport.wasNotSent!(Object.assign(new Error('14 UNAVAILABLE: upstream said so'), { code: status.UNAVAILABLE, details: 'upstream said so' })), false);
  });
});
