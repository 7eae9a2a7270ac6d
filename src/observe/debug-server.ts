/**
 * An opt-in HTTP endpoint that shows a running service's pools as JSON: what `podpool top`
 * polls, and what `curl` reads when someone asks where the traffic went. It reads `stats()` at
 * each request and nothing else, so it costs the call path nothing.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP, type AddressInfo } from 'node:net';
import { addressRange } from '../address.ts';
import type { Endpoint } from '../endpoint.ts';
import { checkOptions, invalidOption, optionNames } from '../options.ts';
import type { PoolConnectivity } from '../pool/adapter-pool.ts';
import type { PoolStats } from '../pool/pool.ts';
import type { MemberStats } from '../pool/member.ts';

/** What the debug server reads from a pool: a `Pool` has both. */
export interface DebugPool {
  stats(): PoolStats;
  readonly connectivity: PoolConnectivity;
}

/** Options of {@link podpoolDebugServer}. */
export interface DebugServerOptions {
  /** The pools to show, by the name the JSON and `podpool top` give them. */
  pools: Readonly<Record<string, DebugPool>>;
  /** Port to listen on; 0 (the default) picks a free one (read it from `port` or `url`). */
  port?: number;
  /**
   * Address to listen on (default `127.0.0.1`). Only a loopback address unless `allowRemote`:
   * the JSON names every pod, its address and its last error, which is for the people who run the
   * service, not for whoever can reach the pod's network.
   */
  host?: string;
  /** Listen on a `host` outside loopback anyway (behind a NetworkPolicy or an authenticating proxy). */
  allowRemote?: boolean;
}

const OPTIONS = optionNames<DebugServerOptions>({ pools: true, port: true, host: true, allowRemote: true });

/** The paths the server answers; anything else is a 404. */
export const DEBUG_PATHS: readonly string[] = Object.freeze(['/podpool', '/debug/podpool']);

/** A listening debug server. */
export interface DebugServer {
  /** `http://host:port/podpool`. */
  readonly url: string;
  readonly port: number;
  /** Stops listening and drops open connections (a polling `podpool top` keeps one alive). */
  close(): Promise<void>;
}

/** A member as the JSON shows it: its endpoint flattened, its last error with its message. */
export interface DebugMember extends Omit<MemberStats, 'endpoint' | 'lastError'> {
  /** `address:port`. */
  readonly key: string;
  readonly address: string;
  readonly port: number;
  readonly podName?: string;
  readonly nodeName?: string;
  readonly zone?: string;
  readonly lastError?: { readonly name: string; readonly code?: string; readonly message: string };
}

/** One pool in the JSON: its `stats()`, its connectivity, its members as {@link DebugMember}. */
export interface DebugPoolView extends Omit<PoolStats, 'members'> {
  readonly connectivity: PoolConnectivity;
  readonly members: readonly DebugMember[];
}

/** The body of `GET /podpool`. */
export interface DebugView {
  /** When the numbers were read, as an ISO 8601 time. */
  readonly time: string;
  readonly pools: Readonly<Record<string, DebugPoolView>>;
}

/**
 * Starts an HTTP server that answers `GET /podpool` (and `/debug/podpool`) with every pool's
 * `stats()` and connectivity as JSON ({@link DebugView}); `podpool top <url>` shows it live.
 * Resolves once it listens. Bound to loopback unless `allowRemote`.
 */
export async function podpoolDebugServer(options: DebugServerOptions): Promise<DebugServer> {
  checkOptions(options, OPTIONS);
  const { pools, port = 0, host = '127.0.0.1', allowRemote = false } = options;
  if (pools === null || typeof pools !== 'object' || Array.isArray(pools)) invalidOption('pools', 'an object of pools by name', pools);
  const entries = Object.entries(pools);
  if (entries.length === 0) invalidOption('pools', 'an object of at least one pool by name', pools);
  for (const [name, pool] of entries) {
    if (pool === null || typeof pool !== 'object' || typeof pool.stats !== 'function') invalidOption(`pools.${name}`, 'a pool', pool);
  }
  if (!Number.isInteger(port) || port < 0 || port > 65_535) invalidOption('port', 'an integer from 0 to 65535', port);
  if (typeof allowRemote !== 'boolean') invalidOption('allowRemote', 'a boolean', allowRemote);
  if (typeof host !== 'string' || (host !== 'localhost' && isIP(host) === 0)) invalidOption('host', 'an IP address (or localhost)', host);
  if (!allowRemote && host !== 'localhost' && addressRange(host) !== 'loopback') {
    invalidOption('host', 'a loopback address (127.0.0.0/8 or ::1) unless allowRemote is true, since the JSON names every pod and its errors', host);
  }

  const server = createServer((request, response) => answer(entries, request, response));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  let closed: Promise<void> | undefined;
  return {
    url: `http://${shown}:${bound}${DEBUG_PATHS[0]}`,
    port: bound,
    close: () => (closed ??= closeServer(server)),
  };
}

function answer(pools: ReadonlyArray<[string, DebugPool]>, request: IncomingMessage, response: ServerResponse): void {
  const path = (request.url ?? '/').split('?', 1)[0]!;
  if (!DEBUG_PATHS.includes(path)) return reply(response, 404, { error: `no ${path} here; try ${DEBUG_PATHS[0]}` });
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.setHeader('allow', 'GET, HEAD');
    return reply(response, 405, { error: `${request.method} is not allowed; use GET` });
  }
  reply(response, 200, debugView(pools));
}

function reply(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  // Numbers change every request: a cache in between would show a stale pool.
  response.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) });
  response.end(response.req.method === 'HEAD' ? undefined : text);
}

/** Every pool's numbers now, as `GET /podpool` answers them. */
function debugView(pools: ReadonlyArray<[string, DebugPool]>): DebugView {
  const view: Record<string, DebugPoolView> = {};
  for (const [name, pool] of pools) {
    const { members, ...stats } = pool.stats();
    view[name] = { ...stats, connectivity: pool.connectivity, members: members.map(debugMember) };
  }
  return { time: new Date().toISOString(), pools: view };
}

function debugMember(member: MemberStats): DebugMember {
  const { endpoint, lastError, ...numbers } = member;
  return {
    ...endpointFields(endpoint),
    ...numbers,
    // An Error's JSON is `{}` (a PodpoolError's is its code and name): the message is what a person needs.
    ...(lastError !== undefined && { lastError: errorFields(lastError) }),
  };
}

function endpointFields(endpoint: Endpoint): Pick<DebugMember, 'key' | 'address' | 'port' | 'podName' | 'nodeName' | 'zone'> {
  return {
    key: endpoint.key,
    address: endpoint.address,
    port: endpoint.port,
    ...(endpoint.podName !== undefined && { podName: endpoint.podName }),
    ...(endpoint.nodeName !== undefined && { nodeName: endpoint.nodeName }),
    ...(endpoint.zone !== undefined && { zone: endpoint.zone }),
  };
}

function errorFields(error: Error): NonNullable<DebugMember['lastError']> {
  const code = (error as { code?: unknown }).code;
  return { name: error.name, ...(typeof code === 'string' && { code }), message: error.message };
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.close((error) => (error ? reject(error) : resolve()));
    server.closeAllConnections();
  });
}
