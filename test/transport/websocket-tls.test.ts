/**
 * webSocketTransport over TLS (`wss://`) as a headless Service has it: pods are dialled by IP,
 * and their certificate names the Service. Real `ws` servers over HTTPS on 127.0.0.x, with a CA
 * and certificates made by openssl for this run (test/support/certificates.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { staticEndpoints } from '../../src/discovery/static.ts';
import type { Endpoint } from '../../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { createPool } from '../../src/pool/pool.ts';
import { webSocketTransport, type WebSocketClient, type WebSocketTransportOptions } from '../../src/transport/websocket.ts';
import { makeCertificates } from '../support/certificates.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { closePods, startPods, type WsPod } from '../../testkit/ws-pods.ts';

const SERVICE = 'echo.podpool-test.svc.cluster.local';
const T = { timeout: 20_000 };

/** The first connect error of a pool over `pods`; the pool then closes (no reconnect happens before). */
async function connectError(pods: readonly WsPod[], tls: WebSocketTransportOptions['tls']): Promise<PodpoolError> {
  const pool = createPool({
    source: staticEndpoints(pods.map((p) => p.endpoint)),
    transport: webSocketTransport({ tls }),
    reconnect: { minMs: 60_000, maxMs: 60_000 },
  });
  const [endpoint, error] = await new Promise<[Endpoint, PodpoolError]>((resolve) => pool.once('connectError', (...args) => resolve(args)));
  await pool.close();
  assert.equal(endpoint.key, pods[0].key);
  assert.equal(error.code, ErrorCode.CONNECT_FAILED);
  return error;
}

describe('webSocketTransport with TLS', () => {
  it('connects with wss:// to pod IPs whose certificate names the Service, with ca and servername', T, async (t) => {
    const cleanup = cleanupAfter(t);
    const { ca, key, cert } = await makeCertificates(SERVICE);
    const pods = await startPods(2, { first: 171, tls: { key, cert } });
    cleanup.push(() => closePods(pods));
    const pool = createPool({
      source: staticEndpoints(pods.map((p) => p.endpoint)),
      transport: webSocketTransport({ tls: { ca, servername: SERVICE }, path: '/echo' }),
      random: () => 0,
    });
    cleanup.push(() => pool.close());
    await pool.ready({ minEndpoints: 2 });

    const replies = [];
    for (let i = 0; i < 2; i++) replies.push(await pool.use((ws: WebSocketClient) => ws.request<{ pod: string }>({ n: i })));
    assert.deepEqual(replies.map((r) => r.pod).toSorted(), pods.map((p) => p.key).toSorted(), 'each pod answered over its TLS socket');
    for (const pod of pods) {
      const [handshake] = pod.handshakes;
      assert.equal(handshake.servername, SERVICE, 'SNI names the Service');
      assert.equal(handshake.headers.host, `${SERVICE}:${pod.port}`, 'and so does Host, as through the Service');
      assert.equal(handshake.url, '/echo');
      assert.equal(handshake.clientCertificate, undefined);
    }
  });

  it('keeps a Host header the caller set', T, async (t) => {
    const cleanup = cleanupAfter(t);
    const { ca, key, cert } = await makeCertificates(SERVICE);
    const [pod] = await startPods(1, { first: 173, tls: { key, cert } });
    cleanup.push(() => closePods([pod]));
    const pool = createPool({
      source: staticEndpoints([pod.endpoint]),
      transport: webSocketTransport({ tls: { ca, servername: SERVICE }, headers: { Host: 'echo.example' } }),
    });
    cleanup.push(() => pool.close());
    await pool.ready();
    assert.equal(pod.handshakes[0].headers.host, 'echo.example');
  });

  it('fails to connect, saying what to set, when servername is missing or not in the certificate', T, async (t) => {
    const cleanup = cleanupAfter(t);
    const { ca, key, cert } = await makeCertificates(SERVICE);
    const [pod] = await startPods(1, { first: 174, tls: { key, cert } });
    cleanup.push(() => closePods([pod]));

    const without = await connectError([pod], { ca });
    assert.match(without.message, /certificate's altnames.*set tls\.servername to the name the certificate holds/);
    const wrong = await connectError([pod], { ca, servername: 'other.podpool-test.svc.cluster.local' });
    assert.match(wrong.message, /certificate's altnames.*the certificate does not name other\.podpool-test\.svc\.cluster\.local/);
    assert.equal(pod.accepted, 0, 'no WebSocket was opened');
  });

  it('fails to connect, naming tls.ca, when another CA signed the pods\' certificate', T, async (t) => {
    const cleanup = cleanupAfter(t);
    const ours = await makeCertificates(SERVICE);
    const theirs = await makeCertificates(SERVICE);
    const [pod] = await startPods(1, { first: 175, tls: { key: theirs.key, cert: theirs.cert } });
    cleanup.push(() => closePods([pod]));
    for (const tls of [{ ca: ours.ca, servername: SERVICE }, { servername: SERVICE }]) {
      const error = await connectError([pod], tls);
      assert.match(error.message, /no CA in tls\.ca signed the pod's certificate/, error.message);
      assert.equal((error.cause as { code?: string }).code, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    }
    assert.equal(pod.accepted, 0);
  });

  it('presents a client certificate when the pod asks for one, and fails without it', T, async (t) => {
    const cleanup = cleanupAfter(t);
    const { ca, key, cert, clientKey, clientCert } = await makeCertificates(SERVICE, { client: true });
    const [pod] = await startPods(1, { first: 176, tls: { key, cert, ca, requestCert: true, rejectUnauthorized: true } });
    cleanup.push(() => closePods([pod]));

    const refused = await connectError([pod], { ca, servername: SERVICE });
    assert.match(refused.message, /certificate required.*the pod asks for a client certificate: pass tls\.cert and tls\.key/);
    assert.equal(pod.accepted, 0);

    const pool = createPool({
      source: staticEndpoints([pod.endpoint]),
      transport: webSocketTransport({ tls: { ca, servername: SERVICE, cert: clientCert, key: clientKey } }),
    });
    cleanup.push(() => pool.close());
    await pool.ready();
    assert.deepEqual(await pool.use((ws) => ws.request('hello')), { pod: pod.key, data: 'hello' });
    assert.equal(pod.handshakes[0].clientCertificate, 'client', 'the pod saw our certificate');
  });

  it('checks tls at the door, never printing a key', T, async () => {
    const { clientKey } = await makeCertificates(SERVICE, { client: true });
    const secretText = clientKey.toString();
    const cases: [unknown, RegExp][] = [
      ['-----BEGIN PRIVATE KEY----- a key in the wrong place', /^option tls must be TLS connection options .*, got a string of \d+ bytes$/],
      [{ servername: '' }, /^option tls\.servername must be the DNS name the pods' certificate holds/],
      [{ key: clientKey }, /^option tls must have cert and key together .*got only key$/],
      [{ cert: 'not a certificate', key: clientKey }, /^option tls must hold a CA, certificate and key Node can load \(PEM or DER\): error:.*no start line/],
    ];
    for (const [tls, message] of cases) {
      assert.throws(
        () => webSocketTransport({ tls: tls as WebSocketTransportOptions['tls'] }),
        (error: PodpoolError) => {
          assert.equal(error.code, ErrorCode.INVALID_OPTION);
          assert.match(error.message, message);
          assert.ok(!error.message.includes('PRIVATE KEY') && !error.message.includes(secretText.slice(40, 80)), error.message);
          return true;
        },
      );
    }
  });
});
