/**
 * TLS as a headless Service has it: pods are dialled by IP, and their certificate names the
 * Service (its DNS name), never a pod IP. The CA and the pods' certificate are made here, with
 * the `openssl` command, for this run only.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { credentials } from '@grpc/grpc-js';
import { ErrorCode, PodpoolError, createPool, staticEndpoints, type Endpoint } from '../../src/index.ts';
import { grpcChannel } from '../../src/adapter/grpc-channel.ts';
import { grpcTransport } from '../../src/transport/grpc.ts';
import { makeCertificates } from '../support/certificates.ts';
import { cleanupAfter } from '../support/cleanup.ts';
import { EchoClient, startGrpcPods, stopGrpcPods, unary } from '../../testkit/grpc-pods.ts';

const SERVICE = 'echo.podpool-test.svc.cluster.local';
const events = { timeout: 20_000 };

describe('grpcTransport with TLS', () => {
  it('connects to pod IPs whose certificate names the Service, with serverName', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const { ca, key, cert } = await makeCertificates(SERVICE);
    const pods = await startGrpcPods(2, { first: 191, tls: { key, cert } });
    cleanup.push(() => stopGrpcPods(pods));
    const pool = createPool({
      source: staticEndpoints(pods.map((p) => p.endpoint)),
      transport: grpcTransport(EchoClient, { credentials: credentials.createSsl(ca), serverName: SERVICE }),
    });
    cleanup.push(() => pool.close());
    await pool.ready({ minEndpoints: 2 });

    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      await pool.use(async (client, endpoint) => {
        const reply = await unary(client, 'secret');
        assert.equal(reply.pod.address, endpoint.key, 'dialled by IP');
        assert.equal(reply.authority, SERVICE, ':authority names the Service, as through the Service itself');
        seen.add(reply.pod.address);
      });
    }
    assert.equal(seen.size, 2);

    // The Channel over the pool rides the same TLS connections.
    const stub = new EchoClient('podpool', credentials.createInsecure(), { channelOverride: grpcChannel(pool) });
    assert.equal((await unary(stub, 'via the channel')).authority, SERVICE);
    stub.close();
  });

  it('refuses the same pods without serverName, naming the certificate problem', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const { ca, key, cert } = await makeCertificates(SERVICE);
    const [pod] = await startGrpcPods(1, { first: 193, tls: { key, cert } });
    cleanup.push(() => stopGrpcPods([pod]));

    for (const serverName of [undefined, 'other.podpool-test.svc.cluster.local']) {
      const pool = createPool({
        source: staticEndpoints([pod.endpoint]),
        transport: grpcTransport(EchoClient, { credentials: credentials.createSsl(ca), ...(serverName !== undefined && { serverName }) }),
        reconnect: { minMs: 60_000, maxMs: 60_000 },
      });
      const [endpoint, error] = await new Promise<[Endpoint, PodpoolError]>((resolve) =>
        pool.once('connectError', (...args) => resolve(args)),
      );
      await pool.close();
      assert.equal(endpoint.key, pod.key);
      assert.equal(error.code, ErrorCode.CONNECT_FAILED);
      assert.match(error.message, /certificate's altnames/, `serverName ${serverName}: ${error.message}`);
      assert.equal(pod.calls(), 0);
    }
  });

  it('refuses pods whose certificate another CA signed', events, async (t) => {
    const cleanup = cleanupAfter(t);
    const ours = await makeCertificates(SERVICE);
    const theirs = await makeCertificates(SERVICE);
    const [pod] = await startGrpcPods(1, { first: 194, tls: { key: theirs.key, cert: theirs.cert } });
    cleanup.push(() => stopGrpcPods([pod]));
    const pool = createPool({
      source: staticEndpoints([pod.endpoint]),
      transport: grpcTransport(EchoClient, { credentials: credentials.createSsl(ours.ca), serverName: SERVICE }),
      reconnect: { minMs: 60_000, maxMs: 60_000 },
    });
    const [, error] = await new Promise<[Endpoint, PodpoolError]>((resolve) => pool.once('connectError', (...args) => resolve(args)));
    await pool.close();
    assert.equal(error.code, ErrorCode.CONNECT_FAILED);
    assert.match(error.message, /certificate/i);
  });
});
