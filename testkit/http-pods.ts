import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** A real HTTP server on its own loopback address, standing in for one pod. */
export interface HttpPod {
  readonly address: string;
  readonly port: number;
  readonly key: string;
  /** Requests served since start. */
  requests: number;
  /** TCP connections accepted since start. */
  connections: number;
  /** Called on each request, before the handler (tests use it to learn a request arrived). */
  onRequest: (() => void) | undefined;
  /** Called on each TCP connection accepted (tests use it to learn a client reconnected). */
  onConnection: (() => void) | undefined;
  /** Closes the keep-alive connections no request is using, as the server's keep-alive timeout does. */
  closeIdleConnections(): void;
  /** TCP connections open now. */
  readonly open: number;
  /** Resolves once no connection is open. */
  idle(): Promise<void>;
  readonly running: boolean;
  /** Stops listening and drops every connection, as a killed pod does. */
  kill(): Promise<void>;
  /** Listens again on the same address and port. */
  restart(): Promise<void>;
}

export type PodHandler = (pod: HttpPod, req: IncomingMessage, res: ServerResponse) => void;

/** Answers with the pod's key, so a test sees which pod served it. */
const whoAmI: PodHandler = (pod, req, res) => {
  req.resume();
  res.end(pod.key);
};

/**
 * Starts `count` pods on 127.0.0.<first>, 127.0.0.<first+1>, … each on a free port. Loopback only:
 * the whole 127/8 range reaches `lo` on Linux.
 */
export async function startHttpPods(count: number, { first = 11, handler = whoAmI, keepAliveTimeoutMs, maxRequestsPerSocket }: HttpPodsOptions = {}): Promise<HttpPod[]> {
  const pods: HttpPod[] = [];
  for (let i = 0; i < count; i++) pods.push(await startHttpPod(`127.0.0.${first + i}`, handler, { keepAliveTimeoutMs, maxRequestsPerSocket }));
  return pods;
}

/** Options of {@link startHttpPods}. */
export interface HttpPodsOptions {
  /** The last octet of the first pod's address (127.0.0.<first>). Default 11. */
  first?: number;
  /** What a pod answers; default its key. */
  handler?: PodHandler;
  /** How long an idle keep-alive connection stays open; node:http's default (5 s) unless given. */
  keepAliveTimeoutMs?: number;
  /** Requests a keep-alive connection serves before the server closes it (`Connection: close`); unlimited unless given. */
  maxRequestsPerSocket?: number;
}

async function startHttpPod(
  address: string,
  handler: PodHandler,
  { keepAliveTimeoutMs, maxRequestsPerSocket }: Pick<HttpPodsOptions, 'keepAliveTimeoutMs' | 'maxRequestsPerSocket'>,
): Promise<HttpPod> {
  let server: Server | undefined;
  let port = 0;
  let open = 0;
  let idleWaiters: (() => void)[] = [];
  const pod: HttpPod = {
    address,
    get port() {
      return port;
    },
    get key() {
      return `${address}:${port}`;
    },
    requests: 0,
    connections: 0,
    onRequest: undefined,
    onConnection: undefined,
    closeIdleConnections() {
      server?.closeIdleConnections();
    },
    get open() {
      return open;
    },
    idle() {
      if (open === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
    get running() {
      return server !== undefined;
    },
    async kill() {
      const s = server;
      if (s === undefined) return;
      server = undefined;
      s.close();
      s.closeAllConnections();
      await once(s, 'close');
    },
    async restart() {
      await listen();
    },
  };
  const listen = async (): Promise<void> => {
    const s = createServer((req, res) => {
      pod.requests++;
      pod.onRequest?.();
      handler(pod, req, res);
    });
    if (keepAliveTimeoutMs !== undefined) s.keepAliveTimeout = keepAliveTimeoutMs;
    if (maxRequestsPerSocket !== undefined) s.maxRequestsPerSocket = maxRequestsPerSocket;
    s.on('connection', (socket) => {
      pod.connections++;
      open++;
      pod.onConnection?.();
      socket.once('close', () => {
        open--;
        if (open === 0) {
          const waiters = idleWaiters;
          idleWaiters = [];
          for (const resolve of waiters) resolve();
        }
      });
    });
    s.listen(port, address);
    await once(s, 'listening');
    port = (s.address() as AddressInfo).port;
    server = s;
  };
  await listen();
  return pod;
}

/** Stops every pod. */
export async function stopPods(pods: readonly HttpPod[]): Promise<void> {
  await Promise.all(pods.map((p) => p.kill()));
}
