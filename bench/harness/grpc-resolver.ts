/**
 * How the bench's grpc-js `round_robin` peer resolves the headless name without the system
 * resolver.
 *
 * grpc-js's `dns:` resolver ignores a DNS authority (`dns://127.0.0.1:5353/name`) and calls
 * `dns.lookup` (getaddrinfo): the question goes to whatever resolver the machine has, and the
 * bench's name is unknown there. grpc-js can ask a given server itself (its "alternative
 * resolver", behind `GRPC_NODE_USE_ALTERNATIVE_RESOLVER=true`, read once when grpc-js loads).
 *
 * The `cluster-dns:` scheme registered here is grpc-js's own `dns:` resolver, created through
 * `experimental.createResolver`, with its two queries (A/AAAA and TXT) answered by a `node:dns`
 * Resolver pointed at the authority, as the alternative resolver does. Everything that decides
 * *when* to resolve stays grpc-js's code: once at start, again only when the load-balancing
 * policy asks (a subchannel failed or went idle), at most once per
 * `grpc.dns_min_time_between_resolutions_ms` (30 s), with backoff after a failure. So the row
 * shows what a grpc-js user gets, and no packet goes to the machine's resolver.
 */
import { Resolver as DnsResolver } from 'node:dns/promises';
import * as grpc from '@grpc/grpc-js';
import type { ChannelOptions } from '@grpc/grpc-js';

export const CLUSTER_DNS_SCHEME = 'cluster-dns';

/** The grpc-js target for `host:port`, resolved by the DNS server at `server` (`ip:port`). */
export function clusterDnsTarget(server: string, host: string, port: number): string {
  register();
  return `${CLUSTER_DNS_SCHEME}://${server}/${host}:${port}`;
}

type GrpcUri = { scheme?: string; authority?: string; path: string };
type Listener = Parameters<typeof grpc.experimental.createResolver>[1];
type Address = { host: string; port: number };
/** The two queries of grpc-js's DnsResolver (private members of its class, hence checked). */
interface DnsQueries {
  lookup(hostname: string): Promise<Address[]>;
  resolveTxt(hostname: string): Promise<string[][]>;
}

class ClusterDnsResolver implements grpc.experimental.Resolver {
  readonly #inner: grpc.experimental.Resolver;

  constructor(target: GrpcUri, listener: Listener, options: ChannelOptions) {
    if (!target.authority) throw new Error(`${CLUSTER_DNS_SCHEME}: targets name their DNS server: ${CLUSTER_DNS_SCHEME}://ip:port/host:port`);
    const inner = grpc.experimental.createResolver({ scheme: 'dns', authority: target.authority, path: target.path }, listener, options);
    const queries = inner as unknown as DnsQueries & { port: number | null };
    // Fail loudly if a grpc-js release renames them: falling back to getaddrinfo would be silent.
    if (typeof queries.lookup !== 'function' || typeof queries.resolveTxt !== 'function') {
      throw new Error(`${CLUSTER_DNS_SCHEME}: this grpc-js's dns resolver has no lookup/resolveTxt to redirect`);
    }
    const resolver = new DnsResolver({ timeout: 1_000, tries: 2 });
    resolver.setServers([target.authority]);
    // As grpc-js's alternative resolver does: both families, an error only when both fail.
    queries.lookup = async (hostname) => {
      const answers = await Promise.allSettled([resolver.resolve4(hostname), resolver.resolve6(hostname)]);
      if (answers.every((a) => a.status === 'rejected')) throw (answers[0] as PromiseRejectedResult).reason;
      return answers.flatMap((a) => (a.status === 'fulfilled' ? a.value : [])).map((host) => ({ host, port: Number(queries.port) }));
    };
    queries.resolveTxt = (hostname) => resolver.resolveTxt(hostname);
    this.#inner = inner;
  }

  static getDefaultAuthority(target: GrpcUri): string {
    return target.path;
  }

  updateResolution(): void {
    this.#inner.updateResolution();
  }

  destroy(): void {
    this.#inner.destroy();
  }
}

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  grpc.experimental.registerResolver(CLUSTER_DNS_SCHEME, ClusterDnsResolver as never);
}
