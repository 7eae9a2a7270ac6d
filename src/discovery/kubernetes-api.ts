/**
 * Reaching the Kubernetes API server for `kubernetesEndpoints`: where the credentials come from,
 * the client a watch uses, and what its failures mean in words that point at the fix.
 */
import { existsSync } from 'node:fs';
import { STATUS_CODES } from 'node:http';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { Readable } from 'node:stream';
import type { KubeConfig } from '@kubernetes/client-node';
import { request, type Dispatcher } from 'undici';
import { messageOf } from '../abort.ts';
import { InvalidOptionError } from '../errors.ts';
import { invalidOption } from '../options.ts';

const SERVICE_ACCOUNT_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/** How the API server is reached: resolved at the door, loaded on first use. */
export type Credentials =
  | { readonly kind: 'given'; readonly kubeConfig: KubeConfig }
  | { readonly kind: 'in-cluster' }
  | { readonly kind: 'files'; readonly files: readonly string[] };

/**
 * The credentials to use, decided at the door (a given KubeConfig, the pod's service account,
 * KUBECONFIG, ~/.kube/config, in that order); throws `PODPOOL_INVALID_OPTION` when there are none.
 */
export function findCredentials(given: unknown): Credentials {
  if (given !== undefined) {
    const kc = given as KubeConfig;
    if (given === null || typeof given !== 'object' || typeof kc.getCurrentCluster !== 'function' || typeof kc.makeApiClient !== 'function') {
      invalidOption('kubeConfig', 'a KubeConfig from @kubernetes/client-node', typeof given === 'object' ? 'another object' : given);
    }
    if (kc.getCurrentCluster() === null) {
      // Not invalidOption: it would print the object, credentials and all.
      throw new InvalidOptionError('option kubeConfig must have a current context that names a cluster, got a KubeConfig without one');
    }
    return { kind: 'given', kubeConfig: kc };
  }
  if (process.env.KUBERNETES_SERVICE_HOST && existsSync(SERVICE_ACCOUNT_TOKEN)) return { kind: 'in-cluster' };
  const files = (process.env.KUBECONFIG ?? '').split(delimiter).filter((f) => f.length > 0);
  if (files.length > 0) return { kind: 'files', files };
  const home = join(homedir(), '.kube', 'config');
  if (existsSync(home)) return { kind: 'files', files: [home] };
  throw new InvalidOptionError(
    `option kubeConfig is needed here: this is not a pod (no KUBERNETES_SERVICE_HOST and ${SERVICE_ACCOUNT_TOKEN}), KUBECONFIG is unset and ${home} does not exist`,
  );
}

/**
 * The API server as a watch uses it, built once per watch on first use (the client module alone
 * takes most of a second to load): authenticated GETs whose body the caller reads as it arrives.
 *
 * Lists and watches go through undici with the client's credentials and TLS (its dispatcher)
 * rather than through the client's typed API and `Watch`: the typed API turns `{}` into a list
 * without items and a malformed field into a default (`"conditions": "x"` reads as ready), and
 * `Watch` drops a line that does not parse and buffers a line of any length. Discovery has to see
 * what the server sent to tell a bad answer from an empty one.
 */
export interface Client {
  readonly server: string;
  /**
   * Sends `GET path?query` and resolves with the body of a 200, a stream of bytes; rejects with an
   * {@link ApiStatusError} for any other status, or undici's error when the server is not reached.
   * `signal` aborts the request at any point, the body included.
   */
  get(path: string, query: Readonly<Record<string, string | number | boolean | undefined>>, signal: AbortSignal): Promise<Readable>;
}

/** An answer other than 200: its status and (the start of) its body, a Status object as a rule. */
export class ApiStatusError extends Error {
  readonly statusCode: number;
  readonly body: string;
  constructor(statusCode: number, body: string) {
    super(`HTTP ${statusCode}`);
    this.name = 'ApiStatusError';
    this.statusCode = statusCode;
    this.body = body;
  }
}

// An error status's body is a Status object, a few hundred bytes; only its start is kept.
const MAX_STATUS_BODY = 64 * 1024;

/** Loads the client module and the credentials, and builds the client a watch uses. */
export async function connect(credentials: Credentials): Promise<Client> {
  const k8s = await import('@kubernetes/client-node');
  let kc: KubeConfig;
  if (credentials.kind === 'given') {
    kc = credentials.kubeConfig;
  } else {
    kc = new k8s.KubeConfig();
    if (credentials.kind === 'in-cluster') {
      kc.loadFromCluster();
    } else {
      // As the client's loadFromDefault reads KUBECONFIG: the first file, then the others merged in.
      kc.loadFromFile(credentials.files[0]);
      for (const file of credentials.files.slice(1)) {
        const more = new k8s.KubeConfig();
        more.loadFromFile(file);
        kc.mergeConfig(more);
      }
    }
  }
  const cluster = kc.getCurrentCluster();
  if (cluster === null) throw new Error('the kubeconfig has no current context naming a cluster');
  const server = cluster.server;
  return {
    server,
    async get(path, query, signal) {
      const url = new URL(server.replace(/\/+$/, '') + path);
      for (const [key, value] of Object.entries(query)) if (value !== undefined) url.searchParams.set(key, String(value));
      // The client's own authentication: bearer token (refreshed by exec or OIDC plugins), basic
      // auth, impersonation headers, and a dispatcher with the cluster's CA and client certificate.
      const context = new k8s.RequestContext(url.toString(), k8s.HttpMethod.GET);
      await kc.applySecurityAuthentication(context);
      signal.throwIfAborted();
      // The client gives each request its own connection pool and never closes it, so the idle
      // socket of a watch the server ended cleanly would outlive close() by seconds. No request
      // ever reuses that connection: asking the server to close it when the response ends costs nothing.
      context.setHeaderParam('Connection', 'close');
      const { statusCode, body } = await request(url, {
        method: 'GET',
        headers: { ...context.getHeaders(), Accept: 'application/json' },
        ...(context.getDispatcher() !== undefined && { dispatcher: context.getDispatcher() as unknown as Dispatcher }),
        signal,
        // undici's own timers (300 s) would cut a watch the caller means to keep longer; the
        // caller times the wait for headers and the silence between chunks itself.
        headersTimeout: 0,
        bodyTimeout: 0,
      });
      if (statusCode === 200) return body;
      let text = '';
      try {
        for await (const chunk of body) {
          text += String(chunk);
          if (text.length >= MAX_STATUS_BODY) break;
        }
      } catch {
        // The status says enough without its body.
      }
      body.destroy();
      throw new ApiStatusError(statusCode, text.slice(0, MAX_STATUS_BODY));
    },
  };
}

/**
 * A body read whole, as text; rejects (and ends the request) when it grows past `max` bytes, so a
 * server gone wrong can't fill the memory.
 */
export async function readText(body: Readable, max: number): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) {
      body.destroy();
      throw new Error(`the answer grew past ${max} bytes`);
    }
    parts.push(chunk);
  }
  return Buffer.concat(parts).toString('utf8');
}

/** The HTTP status of a failed request, if any. */
export function httpStatus(error: unknown): number | undefined {
  return error instanceof ApiStatusError ? error.statusCode : undefined;
}

/**
 * What went wrong, in words that point at the fix; `streaming` says the failure came while the
 * body was being read (the connection broke) rather than before (the server was not reached).
 */
export function explain(error: unknown, namespace: string, { streaming = false }: { streaming?: boolean } = {}): string {
  const status = httpStatus(error);
  if (status === 401) {
    return 'HTTP 401 Unauthorized: the API server refused the credentials; the service account token (or the kubeconfig user) is missing, expired or wrong';
  }
  if (status === 403) {
    return `HTTP 403 Forbidden: RBAC does not let this identity get, list and watch endpointslices (API group discovery.k8s.io) in namespace ${namespace}; bind it to a Role that does (see examples/kubernetes)`;
  }
  if (status !== undefined) {
    const detail = statusMessage((error as ApiStatusError).body) ?? STATUS_CODES[status];
    return `HTTP ${status}${detail ? ` ${detail}` : ''}`;
  }
  // Node's and undici's network failures carry a code (ECONNREFUSED, UND_ERR_SOCKET, a TLS code);
  // undici's parser errors may not.
  const code = error instanceof Error ? (error as { code?: unknown }).code : undefined;
  const detail = `${typeof code === 'string' ? `${code}: ` : ''}${messageOf(error)}`;
  if (streaming) return `the connection to the API server broke (${detail})`;
  if (typeof code === 'string') return `cannot reach the API server (${detail})`;
  return messageOf(error);
}

/** The message of a Status object the API server answered with, parsed or not. */
function statusMessage(body: unknown): string | undefined {
  let parsed = body;
  if (typeof body === 'string') {
    try {
      parsed = JSON.parse(body);
    } catch {
      return body.slice(0, 200) || undefined;
    }
  }
  const message = parsed !== null && typeof parsed === 'object' ? (parsed as { message?: unknown }).message : undefined;
  return typeof message === 'string' ? message : undefined;
}
