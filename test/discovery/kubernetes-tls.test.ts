/**
 * kubernetesEndpoints against an API server over HTTPS, as every real cluster serves it: the
 * cluster's CA from the kubeconfig, its tls-server-name, a bearer token or a client certificate.
 * Lists and watches go through our own requests with the client's credentials, so this is where
 * the kubeconfig's TLS settings are proved to reach them.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors.ts';
import { makeCertificates, type MutualCertificates } from '../support/certificates.ts';
import { discover, pods, slice, startServer } from '../support/kubernetes-discovery.ts';

const TIMEOUT = { timeout: 20_000 };
// The name on the API server's certificate; the client dials 127.0.0.1 and checks this name.
const SERVER_NAME = 'kubernetes.default.svc';

describe('kubernetesEndpoints over HTTPS', () => {
  let certs: MutualCertificates;
  let otherCa: Buffer;
  before(async () => {
    certs = await makeCertificates(SERVER_NAME, { client: true });
    otherCa = (await makeCertificates(SERVER_NAME)).ca;
  });

  it('lists and watches with the cluster CA, the server name and a bearer token from the kubeconfig', TIMEOUT, async (t) => {
    const server = await startServer(t, { tls: { key: certs.key, cert: certs.cert } });
    assert.match(server.url, /^https:/);
    await server.apply(slice('backend-a', pods(0, 2)));
    const { recorder } = discover(t, server, { kubeConfig: server.kubeConfig({ ca: certs.ca, servername: SERVER_NAME }) });
    await recorder.snapshotWhere((s) => s.size === 2);
    // The watch is live over TLS too: a change arrives through it.
    await server.apply(slice('backend-a', pods(0, 3)));
    await recorder.snapshotWhere((s) => s.size === 3);
    assert.ok(server.requests.some((r) => r.kind === 'watch' && r.token === server.token));
  });

  it('authenticates with a client certificate when the kubeconfig has one and no token', TIMEOUT, async (t) => {
    const server = await startServer(t, { tls: { key: certs.key, cert: certs.cert, ca: certs.ca } });
    await server.apply(slice('backend-a', pods(0, 2)));
    const kubeConfig = server.kubeConfig({ token: null, ca: certs.ca, servername: SERVER_NAME, client: { cert: certs.clientCert, key: certs.clientKey } });
    const { recorder } = discover(t, server, { kubeConfig });
    await recorder.snapshotWhere((s) => s.size === 2);
    const list = server.requests.find((r) => r.kind === 'list');
    assert.equal(list?.token, undefined);
    assert.equal(list?.clientCertificate, 'client');
  });

  it('refuses a server whose certificate the kubeconfig CA did not sign, and says so', TIMEOUT, async (t) => {
    const server = await startServer(t, { tls: { key: certs.key, cert: certs.cert } });
    await server.apply(slice('backend-a', pods(0, 2)));
    const { recorder } = discover(t, server, { kubeConfig: server.kubeConfig({ ca: otherCa, servername: SERVER_NAME }) });
    const error = await recorder.errorWhere();
    assert.equal(error.code, ErrorCode.DISCOVERY_FAILED);
    assert.match(error.message, /certificate|verify|self.signed/i);
    assert.equal(recorder.snapshots.length, 0, 'nothing was taken from a server that could not be verified');
    assert.equal(server.requests.length, 0, 'no request reached it');
  });
});
