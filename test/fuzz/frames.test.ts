/**
 * Fuzzing what arrives from the network in podpool's own frames: datagrams (random bytes, and
 * good datagrams with bytes flipped), signed messages (random fields, and good ones with one
 * field changed), and WebSocket frames in both directions over real sockets on loopback. Each is
 * accepted, dropped with a reason, or rejected with a PodpoolError; nothing else is thrown, and
 * the socket goes on serving.
 */
import assert from 'node:assert/strict';
import { on, once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { WebSocket, WebSocketServer } from 'ws';
import {
  createPool,
  datagramReceiver,
  decodeDatagram,
  dedupFilter,
  encodeDatagram,
  ErrorCode,
  MessageRejectedError,
  PodpoolError,
  signMessage,
  staticEndpoints,
  verifyMessage,
  webSocketTransport,
  type WebSocketClient,
} from '../../src/index.ts';
import { closePods, startPods } from '../../testkit/ws-pods.ts';

const anyInput = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  fc.anything({ maxDepth: 1, withTypedArray: true, withBigInt: true }),
  fc.constantFrom(undefined, null, '', 'PP', 42, new ArrayBuffer(20), new Uint16Array(10), Buffer.alloc(0)),
);

/** A good datagram with some bytes changed, cut short or lengthened. */
const mutatedDatagram = fc
  .record({
    sender: fc.string({ minLength: 1, maxLength: 20 }),
    sequence: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
    body: fc.uint8Array({ maxLength: 50 }),
    flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
    cut: fc.option(fc.nat()),
  })
  .map(({ sender, sequence, body, flips, cut }) => {
    let bytes: Uint8Array = encodeDatagram({ sender, sequence, body });
    for (const [at, value] of flips) bytes[at % bytes.length] = value;
    if (cut !== null) bytes = bytes.subarray(0, cut % (bytes.length + 1));
    return bytes;
  });

function expectPodpoolError(error: unknown, what: string): void {
  if (!(error instanceof PodpoolError)) assert.fail(`${what} threw ${(error as Error)?.stack ?? String(error)}, not a PodpoolError`);
}

describe('fuzz: datagrams', () => {
  it('decodeDatagram and a receiver take any input: a datagram, undefined, a drop with a reason, or a PodpoolError', () => {
    const outcomes = new Set<string>();
    const receiver = datagramReceiver({ onMessage() {} });
    fc.assert(
      fc.property(fc.oneof(anyInput, mutatedDatagram), (input) => {
        try {
          const decoded = decodeDatagram(input as Uint8Array);
          if (decoded !== undefined) assert.ok(typeof decoded.sender === 'string' && Number.isSafeInteger(decoded.sequence) && decoded.sequence >= 1);
        } catch (error) {
          expectPodpoolError(error, 'decodeDatagram');
          assert.ok(!(input instanceof Uint8Array), 'bytes are decoded or refused as not a datagram, never thrown at');
        }
        try {
          outcomes.add(receiver.accept(input as Uint8Array));
        } catch (error) {
          expectPodpoolError(error, 'accept');
          assert.ok(!(input instanceof Uint8Array), 'bytes are accepted or dropped, never thrown at');
        }
      }),
      { numRuns: 2000 },
    );
    // The run reached both sides: flipped datagrams still decode, and garbage is dropped.
    assert.ok(outcomes.has('accepted') && outcomes.has('malformed'), [...outcomes].join());
  });
});

describe('fuzz: signed messages', () => {
  const secret = 'a shared secret of 32 bytes!!!!!';
  const clock = () => 1_800_000_000_000;

  it('verifyMessage rejects any message it did not sign with MESSAGE_REJECTED, and accepts what it did once', () => {
    const field = fc.oneof(fc.string({ maxLength: 50 }), fc.integer(), fc.constantFrom(undefined, null, NaN, '1800000000000', Buffer.from('b')), fc.anything({ maxDepth: 1 }));
    const message = fc.oneof(
      fc.record({ id: field, timestamp: field, signature: field, body: field }, { requiredKeys: [] }),
      anyInput,
    );
    fc.assert(
      fc.property(message, (received) => {
        const seen = dedupFilter({ ttlMs: 120_001 });
        assert.throws(
          () => verifyMessage(received as never, { secret, seen, clock }),
          (error: unknown) => error instanceof MessageRejectedError && error.code === ErrorCode.MESSAGE_REJECTED,
        );
      }),
      { numRuns: 1000 },
    );
  });

  it('a signed message with one field changed is rejected; unchanged it is accepted once', () => {
    const change = fc.oneof(
      fc.record({ field: fc.constantFrom('id', 'signature'), to: fc.string({ maxLength: 60 }) }),
      fc.record({ field: fc.constant('timestamp'), to: fc.oneof(fc.integer(), fc.string({ maxLength: 20 })) }),
      fc.record({ field: fc.constant('body'), to: fc.oneof(fc.string({ maxLength: 30 }), fc.uint8Array({ maxLength: 30 })) }),
    );
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 40 }), fc.string({ maxLength: 100 }), change, (id, body, { field, to }) => {
        const signed = { ...signMessage({ id, body }, { secret, clock }), body };
        const changed = { ...signed, [field]: to };
        const same = String(changed[field as keyof typeof changed]) === String(signed[field as keyof typeof signed]);
        const seen = dedupFilter({ ttlMs: 120_001 });
        if (!same) {
          assert.throws(() => verifyMessage(changed, { secret, seen, clock }), MessageRejectedError);
        }
        verifyMessage(signed, { secret, seen, clock });
        assert.throws(() => verifyMessage(signed, { secret, seen, clock }), (error: unknown) => error instanceof MessageRejectedError && error.reason === 'replay');
      }),
      { numRuns: 500 },
    );
  });
});

/** Whether a text frame is a frame for request `id` (the client would take it as the answer). */
function answers(frame: string | Buffer, id: unknown): boolean {
  if (Buffer.isBuffer(frame)) return false;
  try {
    return (JSON.parse(frame) as { id?: unknown } | null)?.id === id;
  } catch {
    return false;
  }
}

describe('fuzz: WebSocket frames', () => {
  const cleanups: (() => Promise<void>)[] = [];
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });
  const frame = fc.oneof(
    fc.string({ maxLength: 80 }),
    fc.json({ maxDepth: 2 }),
    fc.record({ id: fc.anything({ maxDepth: 0 }), data: fc.anything({ maxDepth: 1 }), reply: fc.anything({ maxDepth: 1 }), error: fc.anything({ maxDepth: 1 }) }, { requiredKeys: [] }).map((f) => JSON.stringify(f) ?? 'null'),
    fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)),
  );

  it('a pod answering with answerRequests takes any frame and still answers the next request', async () => {
    const [pod] = await startPods(1, { first: 201 });
    cleanups.push(() => closePods([pod]));
    const socket = new WebSocket(`ws://${pod.key}/`);
    await once(socket, 'open');
    cleanups.push(async () => {
      socket.close();
      if (socket.readyState !== WebSocket.CLOSED) await once(socket, 'close');
    });
    // Several answers can arrive in one read: an iterator queues them, once() would miss some.
    const answers = on(socket, 'message') as AsyncIterableIterator<[Buffer]>;
    await fc.assert(
      fc.asyncProperty(fc.array(frame, { minLength: 1, maxLength: 5 }), fc.nat(), async (frames, n) => {
        for (const f of frames) socket.send(f, { binary: Buffer.isBuffer(f) });
        // A request of our own after the garbage: its answer proves the pod read past it.
        const id = 1e9 + n;
        socket.send(JSON.stringify({ id, data: 'ping' }));
        // next(), not for await: leaving a for await loop would end the iterator for the next run.
        for (;;) {
          const next = await answers.next();
          assert.equal(next.done, false, 'the socket stayed open');
          const answer = JSON.parse(next.value[0].toString()) as { id?: unknown; reply?: { data?: unknown } };
          if (answer.id === id) {
            assert.equal(answer.reply?.data, 'ping');
            return;
          }
        }
      }),
      { numRuns: 100 },
    );
  });

  it("podpool's client takes any frame from a pod and still gets its answers", async () => {
    const server = createServer();
    const wss = new WebSocketServer({ server });
    let garbage: (string | Buffer)[] = [];
    wss.on('connection', (socket) => {
      socket.on('message', (raw, isBinary) => {
        if (isBinary) return;
        const request = JSON.parse(raw.toString()) as { id?: number; data?: unknown };
        // Whatever the fuzzer chose first, then the answer. A frame carrying the request's own id
        // would be its answer, rightly taken as one: that is no garbage, so it is left out.
        for (const g of garbage) if (!answers(g, request.id)) socket.send(g, { binary: Buffer.isBuffer(g) });
        if (typeof request.id === 'number') socket.send(JSON.stringify({ id: request.id, reply: request.data }));
      });
    });
    server.listen(0, '127.0.0.202');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    const pool = createPool({ source: staticEndpoints([{ address: '127.0.0.202', port }]), transport: webSocketTransport() });
    cleanups.push(async () => {
      await pool.close();
      wss.close();
      server.close();
    });
    await pool.ready();
    await fc.assert(
      fc.asyncProperty(fc.array(frame, { maxLength: 5 }), fc.string({ maxLength: 20 }), async (frames, data) => {
        garbage = frames;
        const reply = await pool.use((client: WebSocketClient) => client.request(data));
        assert.equal(reply, data);
      }),
      { numRuns: 100 },
    );
    assert.equal(pool.stats().members.filter((m) => m.state === 'ready').length, 1, 'the connection survived every frame');
  });
});
