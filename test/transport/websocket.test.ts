import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import type { WebSocket } from 'ws';
import { staticEndpoints } from '../../src/discovery/static.ts';
import { createEndpoint } from '../../src/endpoint.ts';
import { ErrorCode, MessageRejectedError, PodpoolError } from '../../src/errors.ts';
import { createPool, type Pool, type PoolOptions, type StateChange } from '../../src/pool/pool.ts';
import { webSocketTransport, type WebSocketClient, type WebSocketTransportOptions } from '../../src/transport/websocket.ts';
import { resourceNames } from '../support/resources.ts';
import { closePods, startPods, WsPod } from '../../testkit/ws-pods.ts';

type WsPool = Pool<WebSocketClient>;

function poolOver(pods: readonly WsPod[], transport: WebSocketTransportOptions = {}, options: Partial<PoolOptions<WebSocketClient>> = {}): WsPool {
  return createPool({
    source: staticEndpoints(pods.map((p) => p.endpoint)),
    transport: webSocketTransport(transport),
    // Round-robin starts where `random` says; 0 makes the first pick the first pod.
    random: () => 0,
    reconnect: { minMs: 5, maxMs: 20 },
    ...options,
  });
}

/** Resolves with the next state change that matches; rejects after `timeoutMs` (a safety net). */
function stateChange(pool: WsPool, match: (change: StateChange) => boolean, timeoutMs = 10_000): Promise<StateChange> {
  return new Promise((resolve, reject) => {
    const onState = (change: StateChange): void => {
      if (!match(change)) return;
      pool.off('state', onState);
      clearTimeout(timer);
      resolve(change);
    };
    const timer = setTimeout(() => {
      pool.off('state', onState);
      reject(new Error(`no matching state change within ${timeoutMs} ms`));
    }, timeoutMs);
    pool.on('state', onState);
  });
}

function member(pool: WsPool, pod: WsPod) {
  const found = pool.stats().members.find((m) => m.endpoint.key === pod.key);
  assert.ok(found, `${pod.key} is a member`);
  return found;
}

function hasCode(code: string) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof PodpoolError, `expected a PodpoolError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return true;
  };
}

/**
 * The process's active handles and timers. A closed handle is released in the event loop's
 * close phase, after its 'close' event: two setImmediate turns let one whole loop iteration
 * pass first, so what was closed before the call is not counted.
 */
async function resources(): Promise<string[]> {
  for (let turn = 0; turn < 2; turn++) await new Promise((resolve) => setImmediate(resolve));
  return resourceNames();
}

const lostNever = (): void => {
  throw new Error('lost() must not be called');
};

describe('webSocketTransport options', () => {
  it('throws PODPOOL_INVALID_OPTION at the door, naming the option', () => {
    const bad: [WebSocketTransportOptions, RegExp][] = [
      [{ path: 'ws' }, /option path/],
      [{ protocols: [''] }, /option protocols/],
      [{ protocols: 7 as unknown as string }, /option protocols/],
      [{ headers: { authorization: 1 as unknown as string } }, /option headers/],
      [{ heartbeatMs: 0 }, /option heartbeatMs/],
      [{ heartbeatMs: Number.NaN }, /option heartbeatMs/],
      [{ highWaterMark: -1 }, /option highWaterMark/],
      [{ requestTimeoutMs: 0 }, /option requestTimeoutMs/],
      [{ requestTimeoutMs: 2 ** 31 }, /option requestTimeoutMs/],
      [{ connectTimeoutMs: Infinity }, /option connectTimeoutMs/],
      [{ perMessageDeflate: 'yes' as unknown as boolean }, /option perMessageDeflate/],
    ];
    for (const [options, message] of bad) {
      assert.throws(() => webSocketTransport(options), (error: unknown) => hasCode(ErrorCode.INVALID_OPTION)(error) && message.test((error as Error).message));
    }
    assert.throws(() => webSocketTransport(null as unknown as WebSocketTransportOptions), hasCode(ErrorCode.INVALID_OPTION));
  });

  it('tells pod failures (lost, timed out, not read) from a refusal by the pod', () => {
    const { isPodFailure } = webSocketTransport();
    assert.ok(isPodFailure);
    for (const code of [ErrorCode.CONNECTION_LOST, ErrorCode.TIMEOUT, ErrorCode.NOT_CONNECTED, ErrorCode.BACKPRESSURE]) {
      assert.equal(isPodFailure(new PodpoolError(code, 'x')), true, code);
    }
    for (const error of [new PodpoolError(ErrorCode.MESSAGE_REJECTED, 'x'), new PodpoolError(ErrorCode.CLOSED, 'x'), new TypeError('x'), 'x', null]) {
      assert.equal(isPodFailure(error), false, String(error));
    }
  });
});

describe('webSocketTransport connect', () => {
  it('sends the path, subprotocols and headers, and offers permessage-deflate only when asked', async () => {
    const [plain, deflating] = await startPods(2);
    const transport = webSocketTransport({ path: '/feed?v=2', protocols: ['podpool.v1', 'json'], headers: { authorization: 'Bearer t' } });
    const connection = await transport.connect(createEndpoint(plain.endpoint), { signal: new AbortController().signal, lost: lostNever });
    const withDeflate = await webSocketTransport({ perMessageDeflate: true }).connect(createEndpoint(deflating.endpoint), {
      signal: new AbortController().signal,
      lost: lostNever,
    });
    try {
      const [handshake] = plain.handshakes;
      assert.equal(handshake.url, '/feed?v=2');
      assert.equal(handshake.headers['sec-websocket-protocol'], 'podpool.v1,json');
      assert.equal(handshake.protocol, 'podpool.v1');
      assert.equal(handshake.headers.authorization, 'Bearer t');
      assert.equal(handshake.headers['sec-websocket-extensions'], undefined);
      assert.match(String(deflating.handshakes[0].headers['sec-websocket-extensions']), /permessage-deflate/);
    } finally {
      await connection.close();
      await withDeflate.close();
      await closePods([plain, deflating]);
    }
  });

  it('rejects with the status when the pod answers the upgrade with an HTTP error', async () => {
    const server = createHttpServer();
    const serverSockets: Promise<unknown>[] = [];
    server.on('upgrade', (_req, socket: Socket) => {
      serverSockets.push(once(socket, 'close'));
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    });
    server.listen(0, '127.0.0.11');
    await once(server, 'listening');
    const { port } = server.address() as { port: number };
    try {
      await assert.rejects(
        webSocketTransport().connect(createEndpoint({ address: '127.0.0.11', port }), { signal: new AbortController().signal, lost: lostNever }),
        /Unexpected server response: 404/,
      );
    } finally {
      await Promise.all(serverSockets);
      server.close();
      await once(server, 'close');
    }
  });

  it('stops, terminates and rejects when the signal aborts during the upgrade, leaving nothing behind', async () => {
    // A pod that accepts TCP and never answers the upgrade request.
    const server = createNetServer();
    const sockets = new Set<Socket>();
    server.on('connection', (socket) => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
    });
    server.listen(0, '127.0.0.12');
    await once(server, 'listening');
    const { port } = server.address() as { port: number };
    const before = await resources();
    const controller = new AbortController();
    const accepted = once(server, 'connection');
    const connecting = webSocketTransport().connect(createEndpoint({ address: '127.0.0.12', port }), { signal: controller.signal, lost: lostNever });
    const [socket] = (await accepted) as [Socket];
    const reason = new Error('the pool no longer wants it');
    const serverSideClosed = socket.closed ? Promise.resolve() : once(socket, 'close');
    controller.abort(reason);
    await assert.rejects(connecting, (error) => error === reason);
    await serverSideClosed;
    assert.deepEqual(await resources(), before);
    server.close();
    await once(server, 'close');
  });

  it('rejects pending requests with PODPOOL_CONNECTION_LOST and calls lost() once when the pod dies', async () => {
    const hung = Promise.withResolvers<void>();
    const [pod] = await startPods(1, { handler: (data) => (data === 'hang' ? hung.promise : data) });
    let lostCalls = 0;
    const lost = Promise.withResolvers<Error>();
    const transport = webSocketTransport();
    const connection = await transport.connect(createEndpoint(pod.endpoint), {
      signal: new AbortController().signal,
      lost: (error) => {
        lostCalls++;
        lost.resolve(error);
      },
    });
    const client = connection.client!;
    try {
      assert.equal(await client.request('ping'), 'ping');
      const pending = client.request('hang');
      await pod.until('message', () => pod.requests === 2);
      assert.equal(client.pending, 1);
      await pod.kill();
      const inFlight = await pending.catch((error: unknown) => error);
      hasCode(ErrorCode.CONNECTION_LOST)(inFlight);
      // The pod read it: a retry must be the caller's call (idempotent), not the pool's.
      assert.equal(transport.wasNotSent!(inFlight), false);
      assert.match((await lost.promise).message, /dropped without a close frame/);
      assert.equal(client.pending, 0);
      assert.throws(() => client.send('after'), hasCode(ErrorCode.CONNECTION_LOST));
      // Refused before a byte was written: the pool may send it to another pod.
      const refused = await client.request('after').catch((error: unknown) => error);
      hasCode(ErrorCode.CONNECTION_LOST)(refused);
      assert.equal(transport.wasNotSent!(refused), true);
      await connection.close();
      await connection.close();
      assert.equal(lostCalls, 1);
    } finally {
      hung.resolve();
      await pod.close();
    }
  });

  it('closes with a close handshake (code 1000) and does not report its own close as lost', async () => {
    const [pod] = await startPods(1);
    const serverSocket = once(pod, 'connection') as Promise<[WebSocket]>;
    const connection = await webSocketTransport().connect(createEndpoint(pod.endpoint), { signal: new AbortController().signal, lost: lostNever });
    const [socket] = await serverSocket;
    const closedWith = once(socket, 'close');
    await connection.close();
    assert.equal((await closedWith)[0], 1000);
    await pod.close();
  });
});

describe('webSocketTransport in a pool', () => {
  it('opens one socket per pod and balances requests round-robin, each answered by the pod it went to', async () => {
    const pods = await startPods(3);
    const pool = poolOver(pods);
    try {
      await pool.ready({ minEndpoints: 3, timeoutMs: 10_000 });
      const replies = await Promise.all(
        Array.from({ length: 30 }, (_, i) => pool.use(async (ws, endpoint) => ({ endpoint: endpoint.key, reply: await ws.request<{ pod: string; data: number }>(i) }))),
      );
      for (const { endpoint, reply } of replies) assert.equal(reply.pod, endpoint);
      assert.deepEqual(replies.map((r) => r.reply.data), Array.from({ length: 30 }, (_, i) => i));
      assert.deepEqual(pods.map((p) => p.requests), [10, 10, 10]);
      assert.deepEqual(pods.map((p) => p.accepted), [1, 1, 1]);
      assert.deepEqual(pods.map((p) => p.connections), [1, 1, 1]);
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('send() is fire-and-forget: it returns at once and the message reaches the pod, unanswered', async () => {
    const pods = await startPods(1);
    const [pod] = pods;
    const pool = poolOver(pods);
    try {
      await pool.ready({ timeoutMs: 10_000 });
      const returned = await pool.use((ws) => ws.send({ event: 'config', version: 3 }));
      assert.equal(returned, undefined);
      await pod.until('message', () => pod.messages === 1);
      assert.deepEqual(pod.received, [{ event: 'config', version: 3 }]);
      assert.equal(pod.requests, 0);
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('data JSON cannot carry (a BigInt, a cycle) is refused with PODPOOL_INVALID_ARGUMENT, not sent, and the socket serves on', async () => {
    const pods = await startPods(1);
    const [pod] = pods;
    const pool = poolOver(pods);
    try {
      await pool.ready({ timeoutMs: 10_000 });
      const cycle: Record<string, unknown> = {};
      cycle.self = cycle;
      const refused = (error: unknown) => error instanceof PodpoolError && error.code === ErrorCode.INVALID_ARGUMENT && /JSON/.test(error.message);
      await assert.rejects(pool.use((ws) => ws.send(1n)), refused);
      await assert.rejects(pool.use((ws) => ws.request(cycle)), refused);
      assert.deepEqual(await pool.use((ws) => ws.request('after')), { pod: pod.key, data: 'after' });
      assert.equal(pod.messages, 1, 'only the good request reached the pod');
      assert.equal(pool.stats().members[0].consecutiveFailures, 0, "the caller's bad data is not the pod's failure");
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('an error reply rejects with PODPOOL_MESSAGE_REJECTED and does not count against the pod; a timeout does', async () => {
    const late = Promise.withResolvers<string>();
    const pods = await startPods(1, {
      handler: (data) => {
        if (data === 'bad') throw Object.assign(new Error('unknown key'), { code: 'E_KEY' });
        if (data === 'slow') return late.promise;
        if (data === 'bigint') return 1n;
        return data;
      },
    });
    const [pod] = pods;
    const pool = poolOver(pods);
    try {
      await pool.ready({ timeoutMs: 10_000 });
      await assert.rejects(
        pool.use((ws) => ws.request('bad')),
        (error: unknown) => {
          hasCode(ErrorCode.MESSAGE_REJECTED)(error);
          assert.ok(error instanceof MessageRejectedError);
          assert.equal(error.reason, 'handler');
          const cause = (error as PodpoolError).cause as Error & { code?: string };
          assert.equal(cause.message, 'unknown key');
          assert.equal(cause.code, 'E_KEY');
          return true;
        },
      );
      // A reply JSON can't carry is answered as the handler's error, not left hanging.
      await assert.rejects(pool.use((ws) => ws.request('bigint')), hasCode(ErrorCode.MESSAGE_REJECTED));
      assert.equal(member(pool, pod).failures, 0);
      // 'slow' is never answered before the deadline: the answer is held until after it.
      await assert.rejects(
        pool.use((ws) => ws.request('slow', { timeoutMs: 1 })),
        hasCode(ErrorCode.TIMEOUT),
      );
      assert.equal(member(pool, pod).failures, 1);
      // The late answer is dropped, and the socket keeps serving.
      late.resolve('too late');
      assert.equal(await pool.use((ws) => ws.request('next')), 'next');
      assert.equal(pod.requests, 4);
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('refuses with PODPOOL_BACKPRESSURE when a pod stops reading, instead of buffering without bound', async () => {
    const pods = await startPods(1, { record: false });
    const [pod] = pods;
    const highWaterMark = 64 * 1024;
    const pool = poolOver(pods, { highWaterMark });
    const pad = 'x'.repeat(16 * 1024);
    try {
      await pool.ready({ timeoutMs: 10_000 });
      pod.pauseReading();
      const { sent, refusal, buffered, requestRefusal } = await pool.use(async (ws) => {
        let sent = 0;
        let refusal: unknown;
        let buffered = 0;
        // Bounded: loopback kernel buffers hold a few MB at most, far below 8000 × 16 KiB.
        for (; sent < 8_000; sent++) {
          try {
            ws.send({ seq: sent, pad });
          } catch (error) {
            refusal = error;
            buffered = ws.socket.bufferedAmount;
            break;
          }
        }
        const requestRefusal = await ws.request('ack?').catch((error: unknown) => error);
        return { sent, refusal, buffered, requestRefusal };
      });
      hasCode(ErrorCode.BACKPRESSURE)(refusal);
      hasCode(ErrorCode.BACKPRESSURE)(requestRefusal);
      assert.ok(sent > 0 && sent < 8_000, `sent ${sent}`);
      assert.ok(buffered >= highWaterMark, `buffered ${buffered}`);
      assert.ok(buffered < highWaterMark + pad.length + 64, `buffered ${buffered} grew past the mark by more than one message`);
      assert.ok(pod.messages < sent, 'the pod stopped reading');
      // Nothing was lost or duplicated: once the pod reads again it gets exactly what was sent.
      pod.resumeReading();
      await pod.until('message', () => pod.messages === sent);
      assert.equal(pod.requests, 0);
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('terminates a socket whose pod misses a pong; the member goes back to connecting', async () => {
    const pods = await startPods(1, { autoPong: false });
    const [pod] = pods;
    const pool = poolOver(pods, { heartbeatMs: 10 });
    try {
      const lost = stateChange(pool, (c) => c.endpoint.key === pod.key && c.from === 'ready' && c.to === 'connecting');
      await pool.ready({ timeoutMs: 10_000 });
      const { error } = await lost;
      hasCode(ErrorCode.CONNECTION_LOST)(error);
      assert.match(((error as PodpoolError).cause as Error).message, /no pong from 127\.0\.0\.11:\d+ within 10 ms/);
      assert.ok(pod.pings >= 1);
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('keeps a socket whose pod answers its pings', async () => {
    const pods = await startPods(1);
    const [pod] = pods;
    const pool = poolOver(pods, { heartbeatMs: 100 });
    const changes: StateChange[] = [];
    pool.on('state', (c) => changes.push(c));
    try {
      await pool.ready({ timeoutMs: 10_000 });
      await pod.until('ping', () => pod.pings >= 3);
      assert.equal(member(pool, pod).state, 'ready');
      assert.equal(member(pool, pod).connects, 1);
      assert.equal(pod.accepted, 1);
      assert.deepEqual(changes.map((c) => c.to), ['ready']);
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('stops picking a pod killed mid-test and takes it back once it restarts on the same address', async () => {
    const pods = await startPods(3);
    const [a, b, c] = pods;
    const pool = poolOver(pods);
    const roundOf = (n: number) => Promise.all(Array.from({ length: n }, () => pool.use((ws) => ws.request('work'))));
    try {
      await pool.ready({ minEndpoints: 3, timeoutMs: 10_000 });
      await roundOf(9);
      assert.deepEqual(pods.map((p) => p.requests), [3, 3, 3]);

      const down = stateChange(pool, (s) => s.endpoint.key === b.key && s.to === 'connecting');
      await b.kill();
      hasCode(ErrorCode.CONNECTION_LOST)((await down).error);
      await roundOf(10);
      assert.deepEqual(pods.map((p) => p.requests), [8, 3, 8]);

      const up = stateChange(pool, (s) => s.endpoint.key === b.key && s.to === 'ready');
      await b.restart();
      await up;
      assert.equal(member(pool, b).connects, 2);
      await roundOf(30);
      assert.deepEqual(pods.map((p) => p.requests), [18, 13, 18]);
      assert.deepEqual([a.accepted, b.accepted, c.accepted], [1, 2, 1]);
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('broadcast with request/ack reaches every live pod exactly once and reports the dead and the dying', async () => {
    const pods = await startPods(5);
    const [, , , dying, dead] = pods;
    const pool = poolOver(pods);
    try {
      await pool.ready({ minEndpoints: 5, timeoutMs: 10_000 });
      const down = stateChange(pool, (s) => s.endpoint.key === dead.key && s.to === 'connecting');
      await dead.kill();
      await down;
      // This one dies with the message in hand, before it can acknowledge it.
      dying.once('message', () => void dying.kill());

      const result = await pool.broadcast((ws, _endpoint, { id, signal }) => ws.request<{ pod: string }>({ type: 'invalidate', key: 'user:42', id }, { signal }), {
        timeoutMs: 10_000,
      });

      const live = pods.slice(0, 3);
      assert.deepEqual(result.delivered.map((d) => d.endpoint.key), live.map((p) => p.key));
      for (const d of result.delivered) assert.equal(d.value.pod, d.endpoint.key);
      const failed = new Map(result.failed.map((f) => [f.endpoint.key, f.error]));
      assert.deepEqual([...failed.keys()].sort(), [dying.key, dead.key].sort());
      hasCode(ErrorCode.CONNECTION_LOST)(failed.get(dying.key));
      hasCode(ErrorCode.NOT_CONNECTED)(failed.get(dead.key));
      const copies = (p: WsPod) => p.received.filter((m) => (m as { id?: string }).id === result.id).length;
      assert.deepEqual(pods.map(copies), [1, 1, 1, 1, 0]);
    } finally {
      await pool.close();
      await closePods(pods);
    }
  });

  it('close() rejects what still waits with PODPOOL_CLOSED and leaves no socket or timer behind', async () => {
    const hung = Promise.withResolvers<void>();
    const pods = await startPods(2, { handler: (data) => (data === 'hang' ? hung.promise : data) });
    const before = await resources();
    // Default heartbeat (30 s): its interval timers must go with the connections.
    const pool = poolOver(pods, {}, { drainTimeoutMs: 0 });
    try {
      await pool.ready({ minEndpoints: 2, timeoutMs: 10_000 });
      assert.equal(await pool.use((ws) => ws.request('hello')), 'hello');
      await pool.use((ws) => ws.send('fire'));
      const pending = pool.use((ws) => ws.request('hang', { timeoutMs: 60_000 }));
      // Round-robin from the first pod: hello → first, fire → second, hang → first.
      await pods[0].until('message', () => pods[0].messages === 2);
      await pods[1].until('message', () => pods[1].messages === 1);
      assert.ok((await resources()).length > before.length);
      const outcome = pending.then(
        () => assert.fail('a request still waiting must not resolve'),
        (error: unknown) => error,
      );
      await pool.close();
      hasCode(ErrorCode.CLOSED)(await outcome);
      await Promise.all(pods.map((p) => p.until('disconnect', () => p.connections === 0)));
      assert.deepEqual(await resources(), before);
    } finally {
      hung.resolve();
      await pool.close();
      await closePods(pods);
    }
  });
});
