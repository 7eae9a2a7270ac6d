/**
 * httpDispatcher sends a request again on another pod: always when it never reached its pod, and
 * for an idempotent method when it may have (a wire error before any response, a 502/503/504),
 * within the pool's retry budget. Real HTTP pods on loopback; Node's built-in fetch (undici 7's
 * legacy handler API), undici 6's request (legacy API, another major) and undici 8's request
 * (the new API). Every assertion is a count the pods or the pool saw.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { request as request8, type Dispatcher } from 'undici';
import { request as request6 } from 'undici6';
import { createPool, httpDispatcher, httpTransport, staticEndpoints, type HttpDispatcherOptions, type Pool } from '../../src/index.ts';
import type { RetryBudgetOptions } from '../../src/call/retry.ts';
import { burst } from '../support/burst.ts';

/** Every wait is on an event; this only turns a broken feature's endless wait into a failure. */
const events = { timeout: 20_000 };

const URL_BASE = 'http://backend.default.svc:8080';

type Body = string | Buffer | AsyncIterable<Buffer> | undefined;

interface Sent {
  method: string;
  path: string;
  headers?: Record<string, string>;
  body?: Body;
  signal?: AbortSignal;
}

/** One HTTP client: sends a request through the dispatcher and reads the whole answer. */
interface Caller {
  readonly name: string;
  send(dispatcher: Dispatcher, sent: Sent): Promise<{ status: number; body: string }>;
}

type AnyRequest = (url: string, init: object) => Promise<{ statusCode: number; body: { text(): Promise<string> } }>;

function requestCaller(name: string, request: AnyRequest): Caller {
  return {
    name,
    async send(dispatcher, { method, path, headers, body, signal }) {
      const response = await request(URL_BASE + path, { dispatcher, method, headers, body, signal });
      return { status: response.statusCode, body: await response.body.text() };
    },
  };
}

const callers: Caller[] = [
  {
    name: `Node ${process.version} built-in fetch (undici ${process.versions.undici})`,
    async send(dispatcher, { method, path, headers, body, signal }) {
      const streamed = body !== undefined && typeof body !== 'string' && !Buffer.isBuffer(body);
      const init = { dispatcher, method, headers, body, signal, ...(streamed && { duplex: 'half' }) };
      const response = await fetch(URL_BASE + path, init as RequestInit);
      return { status: response.status, body: await response.text() };
    },
  },
  requestCaller('undici 6 request', request6 as unknown as AnyRequest),
  requestCaller('undici 8 request', request8 as unknown as AnyRequest),
];

/** A request as the pod read it. */
interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A real HTTP server on a loopback address, standing in for one pod; it records every request it read. */
interface Pod {
  readonly key: string;
  readonly address: string;
  readonly port: number;
  readonly server: Server;
  readonly seen: Seen[];
  /** The client port of the connection each request of `seen` came on. */
  readonly ports: number[];
}

type Handler = (pod: Pod, seen: Seen, req: IncomingMessage, res: ServerResponse) => void;

const answer: Handler = (pod, _seen, _req, res) => void res.end(pod.key);

async function startPod(address: string, handler: Handler): Promise<Pod> {
  const server = createServer();
  server.listen(0, address);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const pod: Pod = { key: `${address}:${port}`, address, port, server, seen: [], ports: [] };
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const seen = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString() };
      pod.seen.push(seen);
      pod.ports.push(req.socket.remotePort!);
      handler(pod, seen, req, res);
    });
  });
  return pod;
}

async function stopPod(pod: Pod): Promise<void> {
  const closed = pod.server.listening ? once(pod.server, 'close') : Promise.resolve();
  pod.server.close();
  pod.server.closeAllConnections();
  await closed;
}

/** Pod A (handled by `a`) and pod B (answers), a ready pool over both and a dispatcher; `close()` undoes it all. */
async function setUp(a: Handler, { budget, dispatcher: dispatcherOptions }: { budget?: RetryBudgetOptions; dispatcher?: HttpDispatcherOptions } = {}) {
  const pods = [await startPod('127.0.0.71', a), await startPod('127.0.0.72', answer)];
  const pool = createPool({
    source: staticEndpoints(pods.map((p) => ({ address: p.address, port: p.port }))),
    transport: httpTransport(),
    reconnect: { minMs: 5, maxMs: 20, factor: 2 },
    ejection: false,
    ...(budget !== undefined && { retryBudget: budget }),
  });
  const close = async (): Promise<void> => void (await Promise.all([pool.close(), ...pods.map(stopPod)]));
  try {
    await pool.ready({ minEndpoints: 2 });
    return { a: pods[0]!, b: pods[1]!, pool, dispatcher: httpDispatcher(pool, dispatcherOptions), close };
  } catch (error) {
    await close();
    throw error;
  }
}

function memberOf(pool: Pool<Dispatcher>, pod: Pod) {
  const member = pool.stats().members.find((m) => m.endpoint.key === pod.key);
  assert.ok(member, `no member for ${pod.key}`);
  return member;
}

/**
 * Sends `count` requests one at a time, each once both pods are ready: round-robin alternates
 * between them, so pod A gets its share of first attempts. Resolves with what each request got.
 */
async function oneByOne(
  count: number,
  pool: Pool<Dispatcher>,
  send: (i: number) => Promise<{ status: number; body: string }>,
): Promise<({ status: number; body: string } | { error: unknown })[]> {
  const outcomes: ({ status: number; body: string } | { error: unknown })[] = [];
  for (let i = 0; i < count; i++) {
    await pool.ready({ minEndpoints: 2 });
    outcomes.push(await send(i).catch((error: unknown) => ({ error })));
  }
  return outcomes;
}

const failedOnes = (outcomes: readonly object[]) => outcomes.filter((o) => 'error' in o).length;

/** Reads the request, then drops the connection without answering: the request may have been processed. */
const dropAfterReading: Handler = (_pod, _seen, req) => void req.socket.destroy();

/** Answers 503, as a pod that is overloaded or shutting down does. */
const unavailable: Handler = (_pod, _seen, _req, res) => {
  res.statusCode = 503;
  res.end('busy');
};

/**
 * Answers its first request and closes that connection (`Connection: close`), and stops
 * listening: the requests already queued behind it on the client are refused at connect.
 */
const refuseAfterFirst: Handler = (pod, _seen, _req, res) => {
  res.setHeader('connection', 'close');
  res.end(pod.key);
  pod.server.close();
};

for (const caller of callers) {
  describe(`httpDispatcher retries, with ${caller.name}`, () => {
    it('sends requests refused at connect to the other pod, and counts each refused attempt against its pod', events, async () => {
      const { a, b, pool, dispatcher, close } = await setUp(refuseAfterFirst);
      try {
        const total = 20;
        // Ten at once: the first round puts several on pod A's one connection before it answers.
        // Through fetch the body is a stream: one never sent is sent again all the same.
        const { ok, failed } = await burst(total, 10, async () => {
          const { status } = await caller.send(dispatcher, { method: 'POST', path: '/refused', body: 'x' });
          assert.equal(status, 200);
        });
        assert.deepEqual(failed, []);
        assert.equal(ok, total);
        assert.deepEqual([a.seen.length, b.seen.length], [1, total - 1], 'each request reached a pod once');
        const member = memberOf(pool, a);
        assert.ok(member.failures >= 1, 'some requests were queued on pod A when it stopped listening');
        assert.equal(member.failures, member.requests - 1, 'every attempt on A but the answered one failed');
        assert.equal(memberOf(pool, b).failures, 0);
      } finally {
        await close();
      }
    });

    it('sends a GET again on another pod when its connection drops after the pod read it, and not a POST', events, async () => {
      const { a, b, pool, dispatcher, close } = await setUp(dropAfterReading);
      try {
        const gets = await oneByOne(6, pool, () => caller.send(dispatcher, { method: 'GET', path: '/get' }));
        assert.equal(failedOnes(gets), 0);
        assert.ok(a.seen.length >= 1, 'pod A got its share of first attempts');
        assert.equal(b.seen.length, 6, 'every GET was answered by pod B');
        assert.equal(memberOf(pool, a).failures, a.seen.length, 'each attempt on A counts against it');

        a.seen.length = 0;
        b.seen.length = 0;
        const posts = await oneByOne(6, pool, (i) => caller.send(dispatcher, { method: 'POST', path: `/post/${i}`, body: 'x' }));
        assert.ok(a.seen.length >= 1, 'pod A got its share of POSTs');
        assert.equal(failedOnes(posts), a.seen.length, 'each POST that reached pod A failed');
        assert.equal(a.seen.length + b.seen.length, 6, 'no POST was sent twice');
      } finally {
        await close();
      }
    });

    it('sends POSTs queued behind a connection the pod dropped to the other pod; only those the pod read fail', events, async () => {
      const { a, b, pool, dispatcher, close } = await setUp(dropAfterReading);
      try {
        const total = 20;
        // Ten at once: several wait on pod A's one connection when A drops it.
        const { failed } = await burst(total, 10, async () => void (await caller.send(dispatcher, { method: 'POST', path: '/post' })));
        assert.ok(a.seen.length >= 1);
        assert.equal(failed.length, a.seen.length, 'each POST pod A read failed, once');
        assert.equal(a.seen.length + b.seen.length, total, 'no POST was sent twice');
        const member = memberOf(pool, a);
        assert.ok(member.requests > a.seen.length, 'some attempts on pod A never reached it, and were sent again');
        assert.equal(member.failures, member.requests, 'every attempt on pod A counts against it');
      } finally {
        await close();
      }
    });

    it('sends again the methods its retry option names, and only those', events, async () => {
      const { a, b, pool, dispatcher, close } = await setUp(dropAfterReading, { dispatcher: { retry: { methods: ['POST'] } } });
      try {
        // No body: fetch streams every body, and a streamed one is not sent twice.
        const posts = await oneByOne(4, pool, (i) => caller.send(dispatcher, { method: 'POST', path: `/post/${i}` }));
        assert.equal(failedOnes(posts), 0);
        assert.ok(a.seen.length >= 1);
        assert.equal(b.seen.length, 4);

        a.seen.length = 0;
        b.seen.length = 0;
        const gets = await oneByOne(4, pool, () => caller.send(dispatcher, { method: 'GET', path: '/get' }));
        assert.ok(a.seen.length >= 1);
        assert.equal(failedOnes(gets), a.seen.length, 'a GET is not in methods: not sent again');
        assert.equal(a.seen.length + b.seen.length, 4);
      } finally {
        await close();
      }
    });

    it('sends a GET answered 503 again on another pod; a POST gets the 503', events, async () => {
      const { a, b, pool, dispatcher, close } = await setUp(unavailable);
      try {
        const gets = await oneByOne(6, pool, () => caller.send(dispatcher, { method: 'GET', path: '/get' }));
        assert.deepEqual(gets, Array.from({ length: 6 }, () => ({ status: 200, body: b.key })));
        assert.ok(a.seen.length >= 1);
        assert.equal(memberOf(pool, a).failures, a.seen.length, 'each 503 counts against pod A');
        assert.equal(pool.stats().retries, a.seen.length, 'the pool counts each GET sent again');
        assert.ok(a.seen.length >= 2);
        assert.equal(new Set(a.ports).size, 1, 'each dropped 503 was read to its end: its connection carried the next request');

        a.seen.length = 0;
        b.seen.length = 0;
        const posts = await oneByOne(6, pool, () => caller.send(dispatcher, { method: 'POST', path: '/post', body: 'x' }));
        assert.equal(posts.filter((o) => 'status' in o && o.status === 503 && o.body === 'busy').length, a.seen.length);
        assert.ok(a.seen.length >= 1);
        assert.equal(a.seen.length + b.seen.length, 6);
      } finally {
        await close();
      }
    });

    it('aborts the attempt whose dropped 503 body runs past 1 MiB, and sends the GET again all the same', events, async () => {
      const big = Buffer.alloc(2 * 1024 * 1024, 'x');
      const { a, b, pool, dispatcher, close } = await setUp((_pod, _seen, _req, res) => {
        res.statusCode = 503;
        res.end(big);
      });
      try {
        const gets = await oneByOne(6, pool, () => caller.send(dispatcher, { method: 'GET', path: '/get' }));
        assert.deepEqual(gets, Array.from({ length: 6 }, () => ({ status: 200, body: b.key })));
        assert.ok(a.seen.length >= 2);
        assert.equal(memberOf(pool, a).failures, a.seen.length);
        assert.equal(new Set(a.ports).size, a.seen.length, 'each aborted 503 cost its connection');
      } finally {
        await close();
      }
    });

    it('with the retry budget spent, hands back the 503 and the dropped GET, and still resends never-sent requests', events, async () => {
      const budget = { ratio: 0, minPerSecond: 0 };
      {
        const { a, b, pool, dispatcher, close } = await setUp(unavailable, { budget });
        try {
          const gets = await oneByOne(4, pool, () => caller.send(dispatcher, { method: 'GET', path: '/get' }));
          assert.ok(a.seen.length >= 1);
          assert.equal(gets.filter((o) => 'status' in o && o.status === 503).length, a.seen.length);
          assert.equal(a.seen.length + b.seen.length, 4, 'no GET was sent twice');
        } finally {
          await close();
        }
      }
      {
        const { a, b, pool, dispatcher, close } = await setUp(dropAfterReading, { budget });
        try {
          const gets = await oneByOne(4, pool, () => caller.send(dispatcher, { method: 'GET', path: '/get' }));
          assert.ok(a.seen.length >= 1);
          assert.equal(failedOnes(gets), a.seen.length);
          assert.equal(a.seen.length + b.seen.length, 4);
        } finally {
          await close();
        }
      }
      {
        const { a, b, pool, dispatcher, close } = await setUp(refuseAfterFirst, { budget });
        try {
          const { failed } = await burst(20, 10, async () => void (await caller.send(dispatcher, { method: 'GET', path: '/refused' })));
          assert.deepEqual(failed, []);
          assert.ok(memberOf(pool, a).failures >= 1);
          assert.deepEqual([a.seen.length, b.seen.length], [1, 19]);
        } finally {
          await close();
        }
      }
    });

    it('does not send again a request whose caller aborted it, nor spends the budget on it', events, async () => {
      const controller = new AbortController();
      // Pod A hears its first request as the caller gives up on it (and never answers it); it
      // drops the connection of every later one. The budget holds one retry: the abort must not take it.
      const handler: Handler = (pod, _seen, req) => {
        if (pod.seen.length === 1) controller.abort();
        else req.socket.destroy();
      };
      const { a, b, pool, dispatcher, close } = await setUp(handler, { budget: { ratio: 0, minPerSecond: 0.1 } });
      const skipped = { status: 0, body: 'not sent' };
      try {
        const first = await oneByOne(6, pool, (i) =>
          a.seen.length === 0 ? caller.send(dispatcher, { method: 'GET', path: `/first/${i}`, signal: controller.signal }) : Promise.resolve(skipped),
        );
        assert.equal(a.seen.length, 1, 'one GET reached pod A');
        const aborted = first.find((o) => 'error' in o);
        assert.ok(aborted !== undefined && 'error' in aborted);
        assert.equal((aborted.error as Error).name, 'AbortError');
        assert.equal(memberOf(pool, a).failures, 0, 'an abort says nothing about the pod');

        const later = await oneByOne(6, pool, (i) =>
          a.seen.length === 1 ? caller.send(dispatcher, { method: 'GET', path: `/later/${i}` }) : Promise.resolve(skipped),
        );
        assert.equal(a.seen.length, 2, 'a later GET reached pod A');
        assert.equal(failedOnes(later), 0, 'and was sent again on pod B, with the retry the abort left in the budget');
        assert.equal(b.seen.filter((s) => s.url === a.seen[0]!.url).length, 0, 'the aborted GET never reached pod B');
      } finally {
        await close();
      }
    });

    it('does not send a streamed body again once it was sent', events, async () => {
      const { a, b, pool, dispatcher, close } = await setUp(dropAfterReading);
      try {
        async function* stream(): AsyncIterable<Buffer> {
          yield Buffer.from('streamed ');
          yield Buffer.from('body');
        }
        const streamed = await oneByOne(4, pool, (i) => caller.send(dispatcher, { method: 'PUT', path: `/streamed/${i}`, body: stream() }));
        assert.ok(a.seen.length >= 1);
        assert.equal(failedOnes(streamed), a.seen.length, 'each streamed PUT that reached pod A failed');
        assert.equal(a.seen.length + b.seen.length, 4);
        assert.ok(a.seen.every((s) => s.body === 'streamed body'));
      } finally {
        await close();
      }
    });

    it('resends a request to the other pod with the same method, path, headers and body', events, async () => {
      const { a, b, pool, dispatcher, close } = await setUp(dropAfterReading);
      try {
        // Through fetch, every body is a stream: only a request without one is sent twice.
        const withBody = !caller.name.includes('fetch');
        const outcomes = await oneByOne(4, pool, (i) =>
          caller.send(dispatcher, {
            method: withBody ? 'PUT' : 'GET',
            path: `/items/${i}?version=2`,
            headers: { 'x-request-id': `req-${i}`, 'content-type': 'text/plain', 'x-many': 'one, two' },
            ...(withBody && { body: Buffer.from(`body of ${i}`) }),
          }),
        );
        assert.equal(failedOnes(outcomes), 0);
        assert.ok(a.seen.length >= 1);
        for (const first of a.seen) {
          const again = b.seen.find((s) => s.headers['x-request-id'] === first.headers['x-request-id']);
          assert.ok(again, `${first.headers['x-request-id']} reached pod B`);
          assert.deepEqual(again, first);
          assert.equal(again.headers.host, 'backend.default.svc:8080');
          if (withBody) assert.equal(again.body, `body of ${first.url.slice('/items/'.length, -'?version=2'.length)}`);
        }
      } finally {
        await close();
      }
    });
  });
}

describe('httpDispatcher retry options', () => {
  it('refuses a bad retry option at the door, naming it', async () => {
    const pool = createPool({ source: staticEndpoints([]), transport: httpTransport() });
    try {
      for (const [retry, name] of [
        [{ methods: 'GET' }, 'retry.methods'],
        [{ methods: ['GET', 'NOT A METHOD'] }, 'retry.methods'],
        [{ statusCodes: [200] }, 'retry.statusCodes'],
        [{ retries: -1 }, 'retry.retries'],
        [{ retires: 1 }, 'retry.retires'],
        ['all', 'retry'],
      ] as const) {
        assert.throws(
          () => httpDispatcher(pool, { retry } as unknown as HttpDispatcherOptions),
          (error: Error & { code?: string }) => error.code === 'PODPOOL_INVALID_OPTION' && error.message.includes(name),
        );
      }
    } finally {
      await pool.close();
    }
  });

  it('does not send again a request its pod’s client refused for the request’s own fault', events, async () => {
    const { a, b, pool, dispatcher, close } = await setUp(answer);
    try {
      // undici 8's request() leaves header values to the Client, which refuses a line break in one.
      await assert.rejects(request8(`${URL_BASE}/bad`, { dispatcher, headers: { 'x-bad': 'a\r\nb' } }), { code: 'UND_ERR_INVALID_ARG' });
      const attempts = pool.stats().members.reduce((sum, m) => sum + m.requests, 0);
      assert.equal(attempts, 1, 'one attempt, not one per pod');
      assert.deepEqual([a.seen.length, b.seen.length], [0, 0]);
    } finally {
      await close();
    }
  });

  it('with retry: false, sends no request twice, not even one refused at connect', events, async () => {
    const { a, b, pool, dispatcher, close } = await setUp(refuseAfterFirst, { dispatcher: { retry: false } });
    try {
      const { failed } = await burst(20, 10, async () => void (await request8(`${URL_BASE}/refused`, { dispatcher }).then((r) => r.body.text())));
      const refused = memberOf(pool, a).failures;
      assert.ok(refused >= 1);
      assert.equal(failed.length, refused, 'each refused attempt reached the caller');
      assert.deepEqual([a.seen.length, b.seen.length], [1, 19 - refused]);
    } finally {
      await close();
    }
  });
});
