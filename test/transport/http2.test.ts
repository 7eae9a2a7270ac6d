/**
 * httpTransport({ http2: true }) against real HTTP/2 servers on loopback: over TLS (ALPN `h2`,
 * certificates made with openssl for this run, naming the Service) and cleartext with prior
 * knowledge (h2c). One HTTP/2 connection per pod carries concurrent requests as streams; the
 * pods count their sessions and TCP connections to show it.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createSecureServer, createServer, type Http2Server, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { describe, it } from 'node:test';
import type { Dispatcher } from 'undici';
import { fetch as fetch8 } from 'undici';
import { ErrorCode, createPool, httpDispatcher, httpTransport, staticEndpoints, type Endpoint, type PodpoolError } from '../../src/index.ts';
import { makeCertificates } from '../support/certificates.ts';
import { cleanupAfter } from '../support/cleanup.ts';

const SERVICE = 'backend.podpool-test.svc.cluster.local';
const events = { timeout: 20_000 };

/** An HTTP/2 pod that holds every request until `hold` of them are open at once, then answers them all. */
interface H2Pod {
  readonly address: string;
  readonly port: number;
  readonly key: string;
  /** HTTP/2 sessions and TCP connections the pod accepted. */
  readonly sessions: number;
  readonly connections: number;
  /** The most requests open at once. */
  readonly peak: number;
  /** The HTTP versions requests came with. */
  readonly versions: Set<string>;
  /** Requests held until this many are open together (1: answer at once). */
  hold: number;
  close(): Promise<void>;
}

async function startH2Pod(address: string, tls?: { key: Buffer; cert: Buffer }): Promise<H2Pod> {
  let sessions = 0;
  let connections = 0;
  let open = 0;
  let peak = 0;
  let waiting: (() => void)[] = [];
  const versions = new Set<string>();
  const handler = (req: Http2ServerRequest, res: Http2ServerResponse): void => {
    versions.add(req.httpVersion);
    open++;
    peak = Math.max(peak, open);
    const answer = (): void => {
      open--;
      res.end(pod.key);
    };
    req.resume();
    waiting.push(answer);
    if (waiting.length >= pod.hold) {
      const all = waiting;
      waiting = [];
      for (const one of all) one();
    }
  };
  const server: Http2Server = tls === undefined ? createServer(handler) : createSecureServer({ ...tls, allowHTTP1: false }, handler);
  server.on('session', () => sessions++);
  server.on('connection', () => connections++);
  server.listen(0, address);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const pod: H2Pod = {
    address,
    port,
    key: `${address}:${port}`,
    get sessions() {
      return sessions;
    },
    get connections() {
      return connections;
    },
    get peak() {
      return peak;
    },
    versions,
    hold: 1,
    async close() {
      const closed = once(server, 'close');
      server.close();
      for (const answer of waiting) answer();
      await closed;
    },
  };
  return pod;
}

async function get(client: Dispatcher): Promise<string> {
  const res = await client.request({ method: 'GET', path: '/' });
  return res.body.text();
}

describe('httpTransport({ http2: true })', () => {
  it('over TLS (ALPN h2): one connection per pod carries concurrent requests, through use() and httpDispatcher', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const { ca, key, cert } = await makeCertificates(SERVICE);
    const pods = [await startH2Pod('127.0.0.221', { key, cert }), await startH2Pod('127.0.0.222', { key, cert })];
    cleanup.push(async () => void (await Promise.all(pods.map((p) => p.close()))));
    const pool = createPool({
      source: staticEndpoints(pods.map((p) => ({ address: p.address, port: p.port }))),
      transport: httpTransport({ http2: true, tls: { ca, servername: SERVICE } }),
    });
    cleanup.push(() => pool.close());
    await pool.ready({ minEndpoints: 2 });

    // Each pod answers only once 5 requests are open on it at once: one HTTP/1.1 connection
    // (connections: 1) could never get there.
    for (const pod of pods) pod.hold = 5;
    const bodies = await Promise.all(Array.from({ length: 10 }, () => pool.use((client) => get(client))));
    assert.deepEqual(bodies.toSorted(), [...Array(5).fill(pods[0].key), ...Array(5).fill(pods[1].key)]);

    const dispatcher = httpDispatcher(pool);
    const url = `https://${SERVICE}/`;
    for (const pod of pods) pod.hold = 4;
    const viaFetch = await Promise.all([
      ...Array.from({ length: 4 }, () => fetch8(url, { dispatcher }).then((r) => r.text())),
      // Node's built-in fetch hands the dispatcher the legacy handler API, over HTTP/2 too.
      ...Array.from({ length: 4 }, () => fetch(url, { dispatcher } as RequestInit).then((r) => r.text())),
    ]);
    assert.deepEqual(viaFetch.toSorted(), [...Array(4).fill(pods[0].key), ...Array(4).fill(pods[1].key)]);

    assert.deepEqual(
      pods.map((p) => [p.sessions, p.connections, p.peak, [...p.versions]]),
      [
        [1, 1, 5, ['2.0']],
        [1, 1, 5, ['2.0']],
      ],
      'one HTTP/2 session on one TCP connection per pod, every request a stream on it',
    );
    assert.deepEqual(
      pool.stats().members.map((m) => [m.requests, m.failures, m.inFlight]),
      [
        [9, 0, 0],
        [9, 0, 0],
      ],
    );
  });

  it('cleartext with prior knowledge (h2c): one connection per pod carries concurrent requests', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const pod = await startH2Pod('127.0.0.223');
    cleanup.push(() => pod.close());
    const pool = createPool({ source: staticEndpoints([{ address: pod.address, port: pod.port }]), transport: httpTransport({ http2: true }) });
    cleanup.push(() => pool.close());
    await pool.ready();
    pod.hold = 8;
    const dispatcher = httpDispatcher(pool);
    const bodies = await Promise.all([
      ...Array.from({ length: 4 }, () => pool.use((client) => get(client))),
      ...Array.from({ length: 4 }, () => fetch8('http://backend.default.svc/', { dispatcher }).then((r) => r.text())),
    ]);
    assert.deepEqual(bodies, Array(8).fill(pod.key));
    assert.deepEqual([pod.sessions, pod.connections, pod.peak, [...pod.versions]], [1, 1, 8, ['2.0']]);
  });

  it('fails the connect, saying so, when a TLS pod does not agree to HTTP/2', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const { ca, key, cert } = await makeCertificates(SERVICE);
    // A TLS server that offers no ALPN protocol, as an HTTP/1.1-only one may.
    const server = createTlsServer({ key, cert }, (socket) => socket.on('error', () => {}));
    server.listen(0, '127.0.0.224');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    cleanup.push(async () => {
      const closed = once(server, 'close');
      server.close();
      await closed;
    });
    const pool = createPool({
      source: staticEndpoints([{ address: '127.0.0.224', port }]),
      transport: httpTransport({ http2: true, tls: { ca, servername: SERVICE } }),
      reconnect: { minMs: 60_000, maxMs: 60_000 },
    });
    const [endpoint, error] = (await once(pool, 'connectError')) as [Endpoint, PodpoolError];
    await pool.close();
    assert.equal(endpoint.port, port);
    assert.equal(error.code, ErrorCode.CONNECT_FAILED);
    assert.match(error.message, /the pod did not agree to HTTP\/2 over TLS \(ALPN: none\)/);
  });
});
