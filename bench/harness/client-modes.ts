/**
 * The clients a scenario compares, each as a {@link Mode}: how one application instance connects
 * and sends one request, over HTTP, gRPC or WebSocket. kube-proxy modes dial the ClusterIP over
 * one long-lived connection; podpool modes ({@link podpoolMode}, one builder for every wire) keep
 * one connection per pod and pick per request; peers are what a user would otherwise write
 * (grpc-js `round_robin` over the headless name, undici `BalancedPool` over the pods' addresses).
 * Also the discovery sources podpool can find the pods with ({@link DISCOVERY_SOURCES}).
 */
import * as grpc from '@grpc/grpc-js';
import { BalancedPool, Client, Pool as UndiciPool, type Dispatcher } from 'undici';
import WebSocket from 'ws';
import {
  createPool,
  dnsEndpoints,
  grpcTransport,
  httpTransport,
  leastLoaded,
  peakEwma,
  roundRobin,
  staticEndpoints,
  webSocketTransport,
  type Balancer,
  type EndpointSource,
  type Pool,
  type PoolOptions,
  type Transport,
  type WebSocketClient,
} from '../../src/index.ts';
import type { BenchCluster } from './cluster.ts';
import type { Caller } from './load.ts';
import { EchoClient, POD_PORTS, type EchoClientInstance } from './pods.ts';

export type Wire = 'http' | 'grpc' | 'ws';

export interface ModeOptions {
  /** Requests in flight per client. */
  inflight: number;
  /** This client's number in its row, from 0 (a subset's clientId). */
  client?: number;
}

/** Who balances in a row: the ClusterIP (kube-proxy), podpool, or another client-side balancer. */
export type Kind = 'kube-proxy' | 'podpool' | 'client-side';

/** The connections one client keeps, as a row states them. */
export interface Connections {
  /** In all, with `pods` pods. */
  readonly perClient: number;
  /** `1`, `1 per pod (5)`, `20`, `4 per pod (20)`. */
  readonly text: string;
}

export interface Mode {
  /** What the report calls it: `kube-proxy`, `podpool round-robin`, `grpc-js round_robin`, … */
  readonly client: string;
  readonly wire: Wire;
  readonly kind: Kind;
  /** What one client holds with `pods` pods ready. */
  connections(pods: number): Connections;
  /** Opens one client application instance; resolves once it can send. */
  open(cluster: BenchCluster, options: ModeOptions): Promise<Caller>;
}

/** One long-lived connection to the ClusterIP. */
export const ONE: Connections = { perClient: 1, text: '1' };
/** One long-lived connection to each pod. */
export const onePerPod = (pods: number): Connections => ({ perClient: pods, text: `1 per pod (${pods})` });

/**
 * How a client's HTTP agent holds its sockets, the same for every row it is compared with:
 * - `undefined`: one long-lived connection per destination (the ClusterIP, or each pod), every
 *   request in flight pipelined on it: the shape of a gRPC channel, and of the seed's clients.
 *   An HTTP/1.1 server answers a socket's requests one after another, so this is slow for all.
 * - a number S: an agent of S sockets per client in all, one request on a socket at a time. To
 *   the ClusterIP each socket is DNAT'd on its own (kube-proxy spreads them); client-side, S/N
 *   sockets to each of N pods.
 */
export type HttpAgent = number | undefined;

/** Sockets per pod for an agent of `agent` sockets over `pods` pods (scenarios pick a multiple). */
function perPod(agent: number, pods: number): number {
  return Math.max(1, Math.floor(agent / pods));
}

function httpConnections(agent: HttpAgent, clusterIp: boolean): (pods: number) => Connections {
  if (agent === undefined) return clusterIp ? () => ONE : onePerPod;
  if (clusterIp) return () => ({ perClient: agent, text: String(agent) });
  return (pods) => ({ perClient: perPod(agent, pods) * pods, text: `${perPod(agent, pods)} per pod (${perPod(agent, pods) * pods})` });
}

/** Requests a socket carries at once: all of them on a lone connection, else one. */
function pipeliningFor(agent: HttpAgent, inflight: number): number {
  return agent === undefined ? inflight : 1;
}

const EMPTY = Buffer.alloc(0);

/** One Echo call on a grpc-js client: the pod's name back. */
const grpcRequest = (client: EchoClientInstance): Promise<string> =>
  new Promise<string>((resolve, reject) => {
    client.call(EMPTY, (error, reply) => (error ? reject(error) : resolve(String(reply))));
  });

/** The balancers a scenario may compare, by their report names. */
export const BALANCERS: Record<string, () => Balancer> = {
  'round-robin': roundRobin,
  'least-loaded': leastLoaded,
  'peak-ewma': peakEwma,
};

/** What podpool discovers the pods with in the bench: the headless name, through cluster DNS. */
export type SourceFactory = (cluster: BenchCluster, port: number) => EndpointSource | Promise<EndpointSource>;

/** The ready pods as they are now, listed once: for scenarios where discovery is beside the point. */
export const staticSource: SourceFactory = (cluster, port) =>
  staticEndpoints(cluster.readyPods().map((p) => ({ address: p.address, port, podName: p.name })));

/** How often podpool's DNS source polls in the bench (its default is 5 s). */
export const DNS_REFRESH_MS = 1_000;

/**
 * The headless name through cluster DNS. In the stand-ins its server is named (as a pod's
 * resolv.conf would): the machine's own resolver never hears of the bench's names; in a real
 * cluster the pod's resolver answers. The userspace stand-in's pods are on 127.x, which
 * dnsEndpoints refuses unless told (`allowAddresses`).
 */
export const dnsSource: SourceFactory = (cluster, port) =>
  dnsEndpoints({
    host: cluster.headlessName,
    port,
    refreshMs: DNS_REFRESH_MS,
    ...(cluster.dnsServer !== undefined && { servers: [cluster.dnsServer] }),
    allowAddresses: cluster.allowAddresses,
  });

/**
 * The discovery sources podpool can use in the stand-in cluster, by report name: cluster DNS and
 * the Kubernetes API (a fake API server speaking list/watch).
 */
export const DISCOVERY_SOURCES: Readonly<Record<string, SourceFactory>> = {
  dns: dnsSource,
  kubernetes: (cluster, port) => cluster.kubernetesSource(port),
};

// ---- HTTP ---------------------------------------------------------------------------------

async function httpText(dispatcher: Dispatcher): Promise<string> {
  const res = await dispatcher.request({ path: '/', method: 'GET' });
  return res.body.text();
}

/** kube-proxy: the ClusterIP, over one pipelined keep-alive connection or an agent of S sockets. */
export function httpKubeProxy(agent?: HttpAgent): Mode {
  return {
    client: 'kube-proxy',
    wire: 'http',
    kind: 'kube-proxy',
    connections: httpConnections(agent, true),
    async open(cluster, { inflight }) {
      const { host, port } = cluster.clusterAddress('http');
      const origin = `http://${host}:${port}`;
      const options = { pipelining: pipeliningFor(agent, inflight), keepAliveTimeout: 120_000 };
      const client = agent === undefined ? new Client(origin, options) : new UndiciPool(origin, { ...options, connections: agent });
      return { call: () => httpText(client), close: () => client.close() };
    },
  };
}

/** undici `BalancedPool` over the pods' addresses, listed once at start, sockets as `agent` says. */
export function httpBalancedPool(agent?: HttpAgent): Mode {
  return {
    client: 'undici BalancedPool',
    wire: 'http',
    kind: 'client-side',
    connections: httpConnections(agent, false),
    async open(cluster, { inflight }) {
      const pods = cluster.readyPods();
      const pool = new BalancedPool(
        pods.map((p) => `http://${p.address}:${POD_PORTS.http}`),
        { connections: agent === undefined ? 1 : perPod(agent, pods.length), pipelining: pipeliningFor(agent, inflight), keepAliveTimeout: 120_000 },
      );
      return { call: () => httpText(pool), close: () => pool.close() };
    },
  };
}

// ---- gRPC ---------------------------------------------------------------------------------

function grpcCaller(client: EchoClientInstance): Caller {
  return {
    call: () => grpcRequest(client),
    close: async () => client.close(),
  };
}

function waitForReady(client: grpc.Client): Promise<void> {
  return new Promise((resolve, reject) => client.waitForReady(Date.now() + 10_000, (e) => (e ? reject(e) : resolve())));
}

/** kube-proxy: a grpc-js client on the ClusterIP; pick_first, so one HTTP/2 connection. */
export const grpcKubeProxy: Mode = {
  client: 'kube-proxy',
  wire: 'grpc',
  kind: 'kube-proxy',
  connections: () => ONE,
  async open(cluster) {
    const { host, port } = cluster.clusterAddress('grpc');
    const client = new EchoClient(`${host}:${port}`, grpc.credentials.createInsecure(), {
      // Distinct channel options keep grpc-js from sharing one subchannel between clients.
      'grpc.primary_user_agent': `bench-${Math.random()}`,
    }) as EchoClientInstance;
    await waitForReady(client);
    return grpcCaller(client);
  },
};

/** grpc-js's own `round_robin` over the headless name: the peer gRPC users reach for. */
export const grpcRoundRobin: Mode = {
  client: 'grpc-js round_robin',
  wire: 'grpc',
  kind: 'client-side',
  connections: onePerPod,
  async open(cluster) {
    const client = new EchoClient(cluster.grpcDnsTarget(), grpc.credentials.createInsecure(), {
      'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
      'grpc.primary_user_agent': `bench-${Math.random()}`,
    }) as EchoClientInstance;
    await waitForReady(client);
    return grpcCaller(client);
  },
};

// ---- WebSocket ----------------------------------------------------------------------------

/** One WebSocket, requests correlated by id, as an application over a ws connection does. */
function wsCaller(socket: WebSocket): Caller {
  let next = 0;
  const pending = new Map<number, { resolve: (pod: string) => void; reject: (e: Error) => void }>();
  socket.on('message', (data) => {
    const { id, reply } = JSON.parse(String(data)) as { id: number; reply: string };
    const waiter = pending.get(id);
    if (!waiter) return;
    pending.delete(id);
    waiter.resolve(reply);
  });
  socket.on('close', () => {
    const error = new Error('the WebSocket closed');
    for (const w of pending.values()) w.reject(error);
    pending.clear();
  });
  socket.on('error', () => {});
  return {
    call() {
      if (socket.readyState !== WebSocket.OPEN) return Promise.reject(new Error('the WebSocket is not open'));
      const id = ++next;
      return new Promise<string>((resolve, reject) => {
        pending.set(id, { resolve, reject });
        socket.send(JSON.stringify({ id, data: null }));
      });
    },
    async close() {
      if (socket.readyState === WebSocket.CLOSED) return;
      const closed = new Promise((r) => socket.once('close', r));
      socket.terminate();
      await closed;
    },
  };
}

/** kube-proxy: one WebSocket to the ClusterIP. */
export const wsKubeProxy: Mode = {
  client: 'kube-proxy',
  wire: 'ws',
  kind: 'kube-proxy',
  connections: () => ONE,
  async open(cluster) {
    const { host, port } = cluster.clusterAddress('ws');
    const socket = new WebSocket(`ws://${host}:${port}/`);
    await new Promise<void>((resolve, reject) => {
      socket.once('open', resolve);
      socket.once('error', reject);
    });
    return wsCaller(socket);
  },
};

// ---- podpool, over any wire ---------------------------------------------------------------

/** What a podpool mode varies by wire: the pods' port, the transport, and one request in `use()`. */
interface PodpoolWire<C> {
  readonly port: number;
  /** What one client holds with `pods` pods ready, sockets as `agent` says (HTTP only). */
  connections(agent: HttpAgent): (pods: number) => Connections;
  transport(agent: HttpAgent, inflight: number, pods: number): Transport<C>;
  /** Passed to `pool.use()` as it is: made once, not per request. */
  readonly request: (client: C) => Promise<string>;
}

const wsRequest = (ws: WebSocketClient): Promise<string> => ws.request<string>(null);

const PODPOOL_WIRES: { readonly http: PodpoolWire<Dispatcher>; readonly grpc: PodpoolWire<EchoClientInstance>; readonly ws: PodpoolWire<WebSocketClient> } = {
  http: {
    port: POD_PORTS.http,
    connections: (agent) => httpConnections(agent, false),
    transport: (agent, inflight, pods) =>
      httpTransport({
        connections: agent === undefined ? 1 : perPod(agent, pods),
        pipelining: pipeliningFor(agent, inflight),
        client: { keepAliveTimeout: 120_000 },
      }),
    request: httpText,
  },
  // One grpc-js client per pod, a pick per call.
  grpc: {
    port: POD_PORTS.grpc,
    connections: () => onePerPod,
    transport: () => grpcTransport(EchoClient as never),
    request: grpcRequest,
  },
  // One socket per pod, requests correlated by id.
  ws: {
    port: POD_PORTS.ws,
    connections: () => onePerPod,
    transport: () => webSocketTransport({ requestTimeoutMs: 10_000 }),
    request: wsRequest,
  },
};

export interface PodpoolModeOptions {
  /** How the pool finds the pods; the headless name in cluster DNS unless given. */
  source?: SourceFactory;
  /** HTTP only: the sockets an agent holds (see {@link HttpAgent}). */
  agent?: HttpAgent;
  /** More pool options (retry, hedge, …), over the bench's own; say them in `label`. */
  pool?: Partial<PoolOptions<unknown>>;
  /** Added to the row's name: `podpool round-robin, <label>`. */
  label?: string;
  /** Members the client waits for before the load; default every ready pod (a subset holds fewer). */
  ready?: number;
  /** Run on each client's pool once it is ready (metrics, say); what it returns runs before the pool closes. */
  attach?: (pool: Pool<unknown>) => () => void;
}

/**
 * podpool over `wire` with one balancer, configured the same for every wire: the scenario's
 * source and balancer, quick reconnects, and ready once every pod is.
 */
export function podpoolMode(wire: Wire, balancer: string, { source = dnsSource, agent, pool: extra, label, ready, attach }: PodpoolModeOptions = {}): Mode {
  const how = PODPOOL_WIRES[wire] as PodpoolWire<unknown>;
  return {
    client: label === undefined ? `podpool ${balancer}` : `podpool ${balancer}, ${label}`,
    wire,
    kind: 'podpool',
    connections: how.connections(agent),
    async open(cluster, { inflight }) {
      const pool: Pool<unknown> = createPool({
        source: await source(cluster, how.port),
        transport: how.transport(agent, inflight, cluster.readyPods().length),
        balancer: BALANCERS[balancer]!(),
        reconnect: { minMs: 20, maxMs: 500 },
        drainTimeoutMs: 2_000,
        ...extra,
      });
      try {
        await pool.ready({ minEndpoints: ready ?? cluster.readyPods().length, timeoutMs: 10_000 });
      } catch (error) {
        await pool.close();
        throw error;
      }
      const { request } = how;
      const detach = attach?.(pool);
      return { call: () => pool.use(request), close: () => (detach?.(), pool.close()), stats: () => pool.stats() };
    },
  };
}
