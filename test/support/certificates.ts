/**
 * Throwaway certificates for TLS tests, made with the `openssl` command for this run only. TLS
 * as a headless Service has it: pods are dialled by IP, and their certificate names the Service
 * (its DNS name), never a pod IP. Every transport's TLS tests take their certificates from here.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A CA, and a server certificate it signed for the pods. */
export interface Certificates {
  /** The CA's certificate, what clients trust. */
  ca: Buffer;
  /** The pods' private key. */
  key: Buffer;
  /** The pods' certificate; its only name is the `dnsName` asked for. */
  cert: Buffer;
}

/** {@link Certificates} plus a client certificate the same CA signed, for mutual TLS. */
export interface MutualCertificates extends Certificates {
  clientKey: Buffer;
  clientCert: Buffer;
}

/**
 * A throwaway CA, and a server certificate it signed whose only name is `dnsName`; with
 * `{ client: true }` also a client certificate (CN `client`, clientAuth) from the same CA.
 */
export async function makeCertificates(dnsName: string): Promise<Certificates>;
export async function makeCertificates(dnsName: string, options: { client: true }): Promise<MutualCertificates>;
export async function makeCertificates(dnsName: string, options: { client?: boolean } = {}): Promise<Certificates | MutualCertificates> {
  const dir = await mkdtemp(join(tmpdir(), 'podpool-tls-'));
  try {
    const openssl = (...args: string[]) =>
      run('openssl', args, { cwd: dir }).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') throw new Error('these tests make their certificates with the openssl command; install it (apt-get install openssl)');
        throw error;
      });
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    const sign = (name: string, extensions: string) =>
      writeFile(join(dir, `${name}.ext`), extensions).then(() =>
        openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`),
      );
    await openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', '/CN=podpool test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
    await openssl('req', ...ec, '-keyout', 'pod.key', '-out', 'pod.csr', '-subj', `/CN=${dnsName}`);
    await sign('pod', `subjectAltName=DNS:${dnsName}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n`);
    const [ca, key, cert] = await Promise.all(['ca.crt', 'pod.key', 'pod.crt'].map((f) => readFile(join(dir, f))));
    if (!options.client) return { ca, key, cert };
    await openssl('req', ...ec, '-keyout', 'client.key', '-out', 'client.csr', '-subj', '/CN=client');
    await sign('client', 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n');
    const [clientKey, clientCert] = await Promise.all(['client.key', 'client.crt'].map((f) => readFile(join(dir, f))));
    return { ca, key, cert, clientKey, clientCert };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
