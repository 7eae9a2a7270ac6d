import { NODATA, NOTFOUND } from 'node:dns';
import { Resolver } from 'node:dns/promises';
import { debuglog } from 'node:util';
import { jitterOf } from '../backoff.ts';
import { createEndpoint, EndpointSet, type Endpoint } from '../endpoint.ts';
import { DiscoveryFailedError, InvalidEndpointError, NameNotFoundError, PodpoolError } from '../errors.ts';
import { checkFunction, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import { checkHost, notFoundAdvice } from './dns-names.ts';
import type { EndpointSource, SourceSink, SourceWatch } from './source.ts';

const debug = debuglog('podpool');

/** Options of {@link dnsEndpoints}. */
export interface DnsEndpointsOptions {
  /**
   * The headless Service's fully qualified name, `backend.default.svc.cluster.local`: a DNS name
   * alone, no scheme, port or path. It is asked as written: unlike `getaddrinfo`, the resolver
   * applies no search domains from resolv.conf, so a single label (`backend`) or a name ending in
   * `.svc` is refused at once; write a single-label name a DNS server really serves (Docker's
   * service names) with a final dot, `backend.`. A shorter name that DNS does not know
   * (`backend.default`) is reported by the first poll as `PODPOOL_NAME_NOT_FOUND`.
   */
  host: string;
  /** A port number (ask A and AAAA of `host`), or a port name (ask SRV `_<name>._tcp.<host>`). */
  port: number | string;
  /** Mean time between the end of one poll and the start of the next, jittered ±20%. Default 5000. */
  refreshMs?: number;
  /** DNS servers to ask, `'10.96.0.10'`, `'127.0.0.1:5353'`, `'[::1]:53'`. Default: the system's. */
  servers?: readonly string[];
  /** How long a server has to answer one try of a query (c-ares waits at least ~250 ms). Default 2000. */
  timeoutMs?: number;
  /** Tries per query and server; a silent server fails a poll after about tries × timeoutMs. Default 2. */
  tries?: number;
  /** Numbers in [0, 1) for the jitter; tests pin it. Default `Math.random`. */
  random?: () => number;
}

// Clients of one Deployment start together and would otherwise poll CoreDNS in lockstep, every
// client at the same instant, and all rush a new pod at once. ±20% around refreshMs keeps the mean
// period (and so the staleness users configured) while the phases drift apart poll after poll.
const JITTER = 0.2;
// One SRV answer can name hundreds of pods; resolving every target at once would burst cluster DNS.
const TARGET_LOOKUPS = 8;
// Past this, setTimeout's 32-bit delay overflows to 1 ms and the source would hammer DNS.
const MAX_REFRESH_MS = 86_400_000;
// Kubernetes port names are RFC 6335 service names: ≤ 15 letters, digits and single hyphens,
// at least one letter. Anything else (`'8080'`, `'_grpc'`) can never match an SRV record.
const SERVICE_NAME = /^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(?:-[a-z0-9]+)*$/i;
const OPTIONS = optionNames<DnsEndpointsOptions>({ host: true, port: true, refreshMs: true, servers: true, timeoutMs: true, tries: true, random: true });

/**
 * Discovers the pods behind a headless Service by polling DNS: A and AAAA of `host` for a port
 * number, SRV for a port name. Keeps the last good answer through failures and through a single
 * empty answer; reports a name that does not exist (NXDOMAIN) as `PODPOOL_NAME_NOT_FOUND`;
 * throws `PODPOOL_INVALID_OPTION` for a bad option or a `host` that can't be asked as written.
 */
export function dnsEndpoints(options: DnsEndpointsOptions): EndpointSource {
  checkOptions(options, OPTIONS);
  const { host, port } = options;
  checkHost(host);
  if (typeof port === 'number') {
    if (!Number.isInteger(port) || port < 1 || port > 65535) invalidOption('port', 'an integer from 1 to 65535 or a port name', port);
  } else if (typeof port !== 'string' || !SERVICE_NAME.test(port)) {
    invalidOption('port', 'an integer from 1 to 65535 or a port name like "grpc" (letters, digits, hyphens)', port);
  }
  const refreshMs = checkNumber('refreshMs', options.refreshMs ?? 5000, { min: 1 });
  if (refreshMs > MAX_REFRESH_MS) invalidOption('refreshMs', `a number from 1 to ${MAX_REFRESH_MS}`, refreshMs);
  const timeoutMs = checkNumber('timeoutMs', options.timeoutMs ?? 2000, { min: 1, integer: true });
  const tries = checkNumber('tries', options.tries ?? 2, { min: 1, integer: true });
  const random = options.random ?? Math.random;
  checkFunction('random', random, 'a function returning numbers in [0, 1)');
  const servers = options.servers === undefined ? undefined : checkServers(options.servers);

  const asked = typeof port === 'number' ? host : `_${port}._tcp.${host}`;
  const serverList = servers ? servers.join(', ') : 'those of /etc/resolv.conf';

  const lookup = async (resolver: Resolver): Promise<Answer> => {
    try {
      let found: Found[];
      let missing: boolean;
      if (typeof port === 'number') {
        const answer = await addressesOf(resolver, host);
        found = answer.addresses.map((address) => ({ address, port, from: host }));
        missing = answer.missing;
      } else {
        ({ found, missing } = await srvTargets(resolver, asked));
      }
      return { ok: true, missing, ...validate(found, asked) };
    } catch (error) {
      return { ok: false, error: error as Error };
    }
  };
  /** `had`: the endpoints known before this answer emptied them; undefined when none ever were. */
  const notFound = (had: EndpointSet | undefined): PodpoolError => {
    const state =
      had === undefined
        ? 'no endpoints known yet'
        : had.size > 0
          ? `it answered so twice in a row, which empties the set of ${had.size} endpoints (the Service was deleted, or none of its pods is ready)`
          : 'no endpoints';
    return new NameNotFoundError(
      `DNS name ${asked} does not exist (NXDOMAIN from ${serverList}); ${state}, asking again in about ${refreshMs} ms. ` +
        notFoundAdvice(host, port),
    );
  };

  return {
    kind: 'dns',
    watch(sink: SourceSink): SourceWatch {
      // One resolver per watch: cancel() on close must not cut another pool's queries short.
      // maxTimeout: c-ares would otherwise double the wait on each retry (up to 5 s, and cut a
      // longer timeoutMs to 5 s), so the time a silent server costs would not be timeoutMs × tries.
      const resolver = new Resolver({ timeout: timeoutMs, tries, maxTimeout: timeoutMs });
      if (servers !== undefined) resolver.setServers(servers);
      let closed = false;
      let timer: NodeJS.Timeout | undefined;
      let polling: Promise<void> | undefined;
      let reported: EndpointSet | undefined;
      let emptyPolls = 0;

      const poll = async (): Promise<void> => {
        const answer = await lookup(resolver);
        // close() cancels the queries, which then fail with ECANCELLED: not news for anybody.
        if (closed) return;
        if (!answer.ok) {
          // A failure says nothing about the pods, so it breaks a run of empty answers too.
          emptyPolls = 0;
          const error = answer.error as NodeJS.ErrnoException;
          const kept = reported ? `keeping the last ${reported.size} endpoints` : 'no endpoints known yet';
          debug('dns %s: poll failed (%s), %s', asked, error.code, kept);
          sink.error(
            new DiscoveryFailedError(
              `DNS lookup of ${asked} failed (${error.message}); ${kept}, asking again in about ${refreshMs} ms. ` +
                `If it persists, check that the DNS servers (${serverList}) answer for this name`,
              { cause: answer.error },
            ),
          );
          return;
        }
        for (const skipped of answer.skipped) {
          if (closed) return;
          sink.error(skipped);
        }
        if (answer.endpoints.length === 0) {
          // Kubernetes answers NXDOMAIN/NODATA when no pod is ready, but so does a DNS server that
          // restarts or a record caught mid-update: only a second empty answer in a row is believed.
          // NXDOMAIN is such an empty answer (cluster DNS gives it for a headless Service with no
          // ready pod), so it counts towards the two and does not reset them as a failure does.
          // It is also what a wrong name gets, so it is reported whenever it is believed: at once
          // while no endpoint is known (a mistake shows on the first poll), otherwise once
          // confirmed; never for the lone NXDOMAIN of a blip.
          const confirmed = ++emptyPolls >= 2;
          if (answer.missing && (confirmed || reported === undefined || reported.size === 0)) {
            debug('dns %s: NXDOMAIN', asked);
            sink.error(notFound(reported));
            if (closed) return;
          }
          if (!confirmed) {
            debug('dns %s: empty answer, waiting for the next poll to confirm it', asked);
            return;
          }
        } else {
          emptyPolls = 0;
        }
        const set = new EndpointSet(answer.endpoints);
        if (closed || reported?.equals(set)) return;
        reported = set;
        debug('dns %s: %d endpoints', asked, set.size);
        sink.snapshot(set);
      };

      const schedule = (): void => {
        if (closed) return;
        timer = setTimeout(run, refreshMs * (1 - JITTER + 2 * JITTER * jitterOf(random)));
      };

      // The next poll is scheduled only once this one has finished, so polls never overlap however
      // slow the server is: a slow answer stretches the period instead of piling up queries. A sink
      // that throws is its owner's bug: it surfaces as an unhandled rejection, and polling goes on.
      const run = (): void => {
        timer = undefined;
        polling = poll().finally(() => {
          polling = undefined;
          schedule();
        });
      };

      debug('dns %s: watching, every ~%d ms', asked, refreshMs);
      run();
      return {
        async close() {
          closed = true;
          clearTimeout(timer);
          timer = undefined;
          resolver.cancel();
          // The cancelled poll settles at once; waiting for it means nothing of ours is left running.
          await polling?.catch(() => {});
          debug('dns %s: closed', asked);
        },
      };
    },
  };
}

type Answer =
  | { readonly ok: true; readonly missing: boolean; readonly endpoints: Endpoint[]; readonly skipped: PodpoolError[] }
  | { readonly ok: false; readonly error: Error };

interface Found {
  readonly address: string;
  readonly port: number;
  /** The name whose record gave this address, for the message when the record is bad. */
  readonly from: string;
}

/** NXDOMAIN and NODATA: the name has no such record, which is an answer, not a failure. */
function isEmptyAnswer(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return code === NOTFOUND || code === NODATA;
}

/** NXDOMAIN (c-ares's ENOTFOUND): no such name at all, not just no record of this type. */
function isNoSuchName(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | null)?.code === NOTFOUND;
}

/**
 * A and AAAA of one name. An IPv4-only cluster answers AAAA with NODATA (and an IPv6-only one A),
 * so an empty family is normal; any other failure of either family fails the whole lookup, since a
 * dual-stack set that lost one family for one poll would churn every connection of that family.
 */
async function addressesOf(resolver: Resolver, name: string): Promise<{ addresses: string[]; missing: boolean }> {
  // allSettled, not all: a poll returns only when both queries are over, so none outlives it.
  const results = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
  const addresses: string[] = [];
  let missing = false;
  for (const result of results) {
    if (result.status === 'fulfilled') addresses.push(...result.value);
    else if (!isEmptyAnswer(result.reason)) throw result.reason;
    else missing ||= isNoSuchName(result.reason);
  }
  return { addresses, missing: missing && addresses.length === 0 };
}

/**
 * Every (address, port) an SRV name points to. Priority and weight are ignored: Kubernetes gives
 * every pod the same, and balancing is the pool's job. A target that no longer resolves (its pod
 * went between the two queries) is left out; a target whose lookup failed fails the poll, so a
 * transient error never drops a pod.
 */
async function srvTargets(resolver: Resolver, srvName: string): Promise<{ found: Found[]; missing: boolean }> {
  let records: { name: string; port: number }[];
  try {
    records = await resolver.resolveSrv(srvName);
  } catch (error) {
    if (isEmptyAnswer(error)) return { found: [], missing: isNoSuchName(error) };
    throw error;
  }
  const targets = [...new Set(records.map((r) => r.name.toLowerCase()))];
  const addresses = new Map<string, string[]>();
  let failure: unknown;
  let next = 0;
  const worker = async (): Promise<void> => {
    // Each turn takes one target, so this ends after targets.length turns at most; after a
    // failure the poll is lost anyway, so no new lookup starts.
    while (failure === undefined && next < targets.length) {
      const target = targets[next++];
      try {
        addresses.set(target, (await addressesOf(resolver, target)).addresses);
      } catch (error) {
        failure ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(TARGET_LOOKUPS, targets.length) }, worker));
  if (failure !== undefined) throw failure;
  const found: Found[] = [];
  for (const record of records) {
    const target = record.name.toLowerCase();
    const list = addresses.get(target) ?? [];
    if (list.length === 0) debug('dns %s: target %s has no address, skipped', srvName, target);
    for (const address of list) found.push({ address, port: record.port, from: target });
  }
  return { found, missing: false };
}

/** Builds endpoints; a bad record (an SRV port of 0, say) is set aside to be reported, never thrown. */
function validate(found: readonly Found[], asked: string): { endpoints: Endpoint[]; skipped: PodpoolError[] } {
  const endpoints: Endpoint[] = [];
  const skipped: PodpoolError[] = [];
  for (const { address, port, from } of found) {
    try {
      endpoints.push(createEndpoint({ address, port }));
    } catch (error) {
      skipped.push(
        new InvalidEndpointError(
          `DNS lookup of ${asked}: skipped the record of ${from} (${(error as Error).message}); fix the record, the other endpoints are used`,
          { cause: error },
        ),
      );
    }
  }
  return { endpoints, skipped };
}

/** Copies and checks `servers` with Node's own parser, so a bad entry fails here and not in watch(). */
function checkServers(servers: unknown): string[] {
  const expected = 'a non-empty array of IP addresses with optional ports, like ["127.0.0.1:5353", "[::1]:53"]';
  if (!Array.isArray(servers) || servers.length === 0 || !servers.every((s) => typeof s === 'string')) {
    invalidOption('servers', expected, servers);
  }
  const copy = [...(servers as string[])];
  try {
    new Resolver().setServers(copy);
  } catch {
    invalidOption('servers', expected, servers);
  }
  return copy;
}
