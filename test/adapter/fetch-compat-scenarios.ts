/**
 * What a user of `httpDispatcher` does with the `fetch` or `request` they already have, as
 * scenarios any HTTP client can run: the tests run them with Node's built-in `fetch` (in this
 * process, and in Node 22 through `fetch-compat-node22.ts`) and with undici 6, 7 and 8's
 * `fetch` and `request`. Each starts real HTTP pods on loopback and a pool of its own, and
 * asserts what the caller and the pool saw.
 */
import assert from 'node:assert/strict';
import type { Dispatcher } from 'undici';
import { ErrorCode, createPool, httpDispatcher, httpTransport, staticEndpoints, type Pool } from '../../src/index.ts';
import { flush } from '../support/flush.ts';
import { ManualSource } from '../support/manual-source.ts';
import { startHttpPods, stopPods, type HttpPod, type PodHandler } from '../../testkit/http-pods.ts';

/** One HTTP client: sends a GET through the dispatcher and reads the whole answer. */
export interface HttpCaller {
  readonly name: string;
  get(url: string, init: { dispatcher: Dispatcher; signal?: AbortSignal }): Promise<{ status: number; body: string }>;
}

/** A `fetch` (Node's, or any undici's) as an {@link HttpCaller}. */
export function fetchCaller(name: string, fetch: (url: string, init: object) => Promise<{ status: number; text(): Promise<string> }>): HttpCaller {
  return {
    name,
    async get(url, init) {
      const response = await fetch(url, init);
      return { status: response.status, body: await response.text() };
    },
  };
}

/** An undici `request` (any major) as an {@link HttpCaller}. */
export function requestCaller(
  name: string,
  request: (url: string, init: object) => Promise<{ statusCode: number; body: { text(): Promise<string> } }>,
): HttpCaller {
  return {
    name,
    async get(url, init) {
      const response = await request(url, init);
      return { status: response.statusCode, body: await response.body.text() };
    },
  };
}

const URL_BASE = 'http://backend.default.svc:8080';
const quickReconnect = { minMs: 5, maxMs: 20, factor: 2 };

/** The code of a podpool or undici error, also where `fetch` wraps it (`TypeError: fetch failed`, its `cause`). */
function codeOf(error: unknown): unknown {
  const { code, cause } = error as { code?: unknown; cause?: { code?: unknown } };
  return code ?? cause?.code;
}

function memberOf(pool: Pool<Dispatcher>, pod: HttpPod) {
  const member = pool.stats().members.find((m) => m.endpoint.key === pod.key);
  assert.ok(member, `no member for ${pod.key}`);
  return member;
}

/** Pods on 127.0.0.<first…>, a ready pool over them and a dispatcher; `close()` undoes it all. */
async function setUp(count: number, first: number, handler?: PodHandler) {
  const pods = await startHttpPods(count, { first, ...(handler !== undefined && { handler }) });
  const pool = createPool({
    source: staticEndpoints(pods.map((p) => ({ address: p.address, port: p.port }))),
    transport: httpTransport(),
    reconnect: quickReconnect,
    ejection: false,
  });
  await pool.ready({ minEndpoints: count });
  const dispatcher = httpDispatcher(pool);
  return { pods, pool, dispatcher, close: async () => void (await Promise.all([pool.close(), stopPods(pods)])) };
}

/** Each scenario, by the name its test carries. */
export const scenarios: Record<string, (caller: HttpCaller) => Promise<void>> = {
  async 'answers, each request to the next pod over its one connection'(caller) {
    const { pods, pool, dispatcher, close } = await setUp(2, 201);
    try {
      const bodies: string[] = [];
      for (let i = 0; i < 4; i++) {
        const { status, body } = await caller.get(`${URL_BASE}/hello`, { dispatcher });
        assert.equal(status, 200);
        bodies.push(body);
      }
      assert.deepEqual(bodies.toSorted(), [pods[0].key, pods[0].key, pods[1].key, pods[1].key]);
      assert.deepEqual(
        pods.map((p) => [p.requests, p.connections]),
        [
          [2, 1],
          [2, 1],
        ],
      );
      assert.deepEqual(
        pool.stats().members.map((m) => [m.requests, m.failures, m.inFlight]),
        [
          [2, 0, 0],
          [2, 0, 0],
        ],
      );
    } finally {
      await close();
    }
  },

  async 'aborts a request in flight when its signal aborts; the abort does not count against the pod'(caller) {
    let arrived!: () => void;
    const arrival = new Promise<void>((resolve) => (arrived = resolve));
    const { pods, pool, dispatcher, close } = await setUp(1, 204, (pod, req, res) => {
      req.resume();
      if (req.url === '/hold') arrived(); // and never answers
      else res.end(pod.key);
    });
    try {
      const controller = new AbortController();
      const held = caller.get(`${URL_BASE}/hold`, { dispatcher, signal: controller.signal });
      await arrival;
      controller.abort();
      await assert.rejects(held, { name: 'AbortError' });
      const member = memberOf(pool, pods[0]);
      assert.deepEqual([member.requests, member.failures, member.inFlight], [1, 0, 0]);
    } finally {
      await close();
    }
  },

  async 'counts a 5xx against the pod and a 404 not, and hands both to the caller'(caller) {
    const { pods, pool, dispatcher, close } = await setUp(1, 206, (_pod, req, res) => {
      req.resume();
      res.statusCode = req.url === '/fail' ? 503 : 404;
      res.end(req.url === '/fail' ? 'unavailable' : 'missing');
    });
    try {
      assert.deepEqual(await caller.get(`${URL_BASE}/missing`, { dispatcher }), { status: 404, body: 'missing' });
      assert.equal(memberOf(pool, pods[0]).failures, 0);
      assert.deepEqual(await caller.get(`${URL_BASE}/fail`, { dispatcher }), { status: 503, body: 'unavailable' });
      const member = memberOf(pool, pods[0]);
      // The GET that got a 503 was sent twice more (the pool's 2 retries; the only pod): each attempt counts.
      assert.deepEqual([member.requests, member.failures, member.consecutiveFailures, member.inFlight], [4, 3, 3, 0]);
    } finally {
      await close();
    }
  },

  async 'hands the caller the error of a pod that resets the connection, and counts it against the pod'(caller) {
    const { pods, pool, dispatcher, close } = await setUp(1, 208, (pod, req, res) => {
      req.resume();
      if (req.url === '/reset') req.socket.destroy();
      else res.end(pod.key);
    });
    try {
      await assert.rejects(caller.get(`${URL_BASE}/reset`, { dispatcher }), (error: unknown) => {
        assert.equal(codeOf(error), 'UND_ERR_SOCKET', String(error));
        return true;
      });
      const member = memberOf(pool, pods[0]);
      // The GET was sent twice more once the pod was back (the pool's 2 retries): each attempt counts.
      assert.deepEqual([member.requests, member.failures, member.inFlight], [3, 3, 0]);
      // The pool reconnects, and the next request waits for it if it must.
      assert.deepEqual(await caller.get(`${URL_BASE}/again`, { dispatcher }), { status: 200, body: pods[0].key });
    } finally {
      await close();
    }
  },

  async 'holds a request made before any pod is ready, and sends it once one is'(caller) {
    const [pod] = await startHttpPods(1, { first: 210 });
    const source = new ManualSource();
    const pool = createPool({ source, transport: httpTransport() });
    try {
      const dispatcher = httpDispatcher(pool);
      const early = caller.get(`${URL_BASE}/early`, { dispatcher });
      await flush();
      assert.equal(pod.requests, 0);
      source.set([{ address: pod.address, port: pod.port }]);
      assert.deepEqual(await early, { status: 200, body: pod.key });
      assert.equal(pod.requests, 1);
    } finally {
      await Promise.all([pool.close(), stopPods([pod])]);
    }
  },

  async 'aborts a request that waits for a ready pod when its signal aborts'(caller) {
    const [pod] = await startHttpPods(1, { first: 211 });
    const source = new ManualSource();
    const pool = createPool({ source, transport: httpTransport() });
    try {
      const dispatcher = httpDispatcher(pool);
      const controller = new AbortController();
      const waiting = caller.get(`${URL_BASE}/waiting`, { dispatcher, signal: controller.signal });
      await flush();
      controller.abort();
      await assert.rejects(waiting, { name: 'AbortError' });
      source.set([{ address: pod.address, port: pod.port }]);
      await pool.ready();
      assert.deepEqual(await caller.get(`${URL_BASE}/after`, { dispatcher }), { status: 200, body: pod.key });
      assert.equal(pod.requests, 1, 'the aborted request never reached the pod');
    } finally {
      await Promise.all([pool.close(), stopPods([pod])]);
    }
  },

  async 'fails with PODPOOL_NO_ENDPOINTS when no pod is ready in time, or at once with waitForReady false'(caller) {
    const pool = createPool({ source: staticEndpoints([]), transport: httpTransport() });
    try {
      for (const dispatcher of [httpDispatcher(pool, { readyTimeoutMs: 1 }), httpDispatcher(pool, { waitForReady: false })]) {
        await assert.rejects(caller.get(`${URL_BASE}/`, { dispatcher }), (error: unknown) => {
          assert.equal(codeOf(error), ErrorCode.NO_ENDPOINTS, String(error));
          return true;
        });
      }
    } finally {
      await pool.close();
    }
  },
};
