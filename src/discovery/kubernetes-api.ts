/**
 * Reaching the Kubernetes API server for `kubernetesEndpoints`: where the credentials come from,
 * the client a watch uses, and what its failures mean in words that point at the fix.
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { DiscoveryV1Api, KubeConfig, RequestContext, Watch } from '@kubernetes/client-node';
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

/** The API client, built once per watch on first use (the client module alone takes most of a second to load). */
export interface Client {
  readonly api: DiscoveryV1Api;
  readonly watch: Watch;
  readonly server: string;
  requestOptions(signal: AbortSignal): Parameters<DiscoveryV1Api['listNamespacedEndpointSlice']>[1];
}

/**
 * Loads the client module and the credentials, and builds the client a watch uses. `stallTimeoutMs`
 * becomes the watch's inactivity timeout.
 */
export async function connect(credentials: Credentials, stallTimeoutMs: number): Promise<Client> {
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
  // The client gives each request its own connection pool and never closes it, so the idle socket
  // of a watch the server ended cleanly would outlive close() by seconds. No request ever reuses
  // that connection: asking the server to close it when the response ends costs nothing.
  const watchConfig: KubeConfig = Object.create(kc, {
    applySecurityAuthentication: {
      async value(context: RequestContext): Promise<void> {
        await kc.applySecurityAuthentication(context);
        context.setHeaderParam('Connection', 'close');
      },
    },
  });
  const watch = new k8s.Watch(watchConfig);
  // The client's own inactivity timeout (30 s, reset by any byte) would restart every quiet watch
  // before the API server's first bookmark (about a minute); it becomes our stall timeout, and
  // covers the wait for response headers too, which nothing else can interrupt.
  (watch as unknown as { requestTimeoutMs: number }).requestTimeoutMs = stallTimeoutMs;
  return {
    api: kc.makeApiClient(k8s.DiscoveryV1Api),
    watch,
    server: cluster.server,
    requestOptions(signal) {
      return {
        middleware: [
          {
            pre(context) {
              context.setSignal(signal);
              // As for the watch: the list's connection pool is never closed nor reused.
              context.setHeaderParam('Connection', 'close');
              return new k8s.Observable(Promise.resolve(context));
            },
            post(response) {
              return new k8s.Observable(Promise.resolve(response));
            },
          },
        ],
        middlewareMergeStrategy: 'append',
      };
    },
  };
}

/** The HTTP status of a failed list (`ApiException.code`) or watch (`statusCode`), if any. */
export function httpStatus(error: unknown): number | undefined {
  if (error === null || typeof error !== 'object' || error instanceof DOMException) return undefined;
  const { code, statusCode } = error as { code?: unknown; statusCode?: unknown };
  if (typeof statusCode === 'number') return statusCode;
  if (typeof code === 'number') return code;
  return undefined;
}

/** The watch's inactivity timeout fired (the client aborts with a `TimeoutError`). */
export function isTimeout(error: unknown): boolean {
  return error instanceof Error && error.name === 'TimeoutError';
}

/** What went wrong, in words that point at the fix. */
export function explain(error: unknown, namespace: string): string {
  const status = httpStatus(error);
  if (status === 401) {
    return 'HTTP 401 Unauthorized: the API server refused the credentials; the service account token (or the kubeconfig user) is missing, expired or wrong';
  }
  if (status === 403) {
    return `HTTP 403 Forbidden: RBAC does not let this identity get, list and watch endpointslices (API group discovery.k8s.io) in namespace ${namespace}; bind it to a Role that does (see examples/kubernetes)`;
  }
  if (status !== undefined) {
    const detail = statusMessage((error as { body?: unknown }).body) ?? (error instanceof Error && !error.message.startsWith('HTTP-Code') ? error.message : '');
    return `HTTP ${status}${detail ? ` ${detail}` : ''}`;
  }
  // undici's network failures: `fetch failed` before a response, `terminated` during one.
  const cause = error instanceof Error ? (error.cause as { code?: unknown; message?: unknown } | undefined) : undefined;
  if (error instanceof TypeError && cause !== undefined) {
    const what = error.message === 'terminated' ? 'the connection to the API server broke' : 'cannot reach the API server';
    return `${what} (${typeof cause.code === 'string' ? cause.code : String(cause.message)})`;
  }
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
