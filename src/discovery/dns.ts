import { NODATA, NOTFOUND } from 'node:dns';
import { debuglog } from 'node:util';
import { checkAllowAddresses, refusedAddress, type AddressRange } from '../address.ts';
import { jitterOf } from '../backoff.ts';
import { createEndpoint, EndpointSet, type Endpoint } from '../endpoint.ts';
import { DiscoveryFailedError, InvalidEndpointError, NameNotFoundError, PodpoolError } from '../errors.ts';
import { checkDelay, checkFunction, checkNumber, checkOptions, invalidOption, MAX_DELAY_MS, optionNames } from '../options.ts';
import { checkHost, notFoundAdvice } from './dns-names.ts';
import { DnsClient, parseServers, type DnsServerAddress } from './dns-query.ts';
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
  /** How long a server has to answer one try of a query. Default 2000. */
  timeoutMs?: number;
  /** Tries per query and server, 1 to 100; a silent server fails a poll after about tries × timeoutMs. Default 2. */
  tries?: number;
  /** Numbers in [0, 1) for the jitter; tests pin it. Default `Math.random`. */
  random?: () => number;
  /**
   * Address ranges an answer may hold besides ordinary unicast addresses. Default none: an answer
   * of `127.0.0.1` or `0.0.0.0` would send requests to the client's own host (DNS rebinding) and
   * `169.254.169.254` to the cloud's metadata service, and Kubernetes never publishes such pod
   * addresses. A refused address is skipped and reported (`PODPOOL_INVALID_ENDPOINT`, once while
   * it keeps coming back); the other endpoints are used. `['loopback']` for a test DNS server
   * whose records point at 127.x pods.
   */
  allowAddresses?: readonly AddressRange[];
}

// Clients of one Deployment start together and would otherwise poll CoreDNS in lockstep, every
// client at the same instant, and all rush a new pod at once. ±20% around refreshMs keeps the mean
// period (and so the staleness users configured) while the phases drift apart poll after poll.
const JITTER = 0.2;
// One SRV answer can name hundreds of pods; resolving every target at once would burst cluster DNS.
const TARGET_LOOKUPS = 8;
// Past this, setTimeout's 32-bit delay overflows to 1 ms and the source would hammer DNS.
const MAX_REFRESH_MS = 86_400_000;
// A silent server holds a poll for tries × timeoutMs, so more than a hundred tries is a slip,
// not a policy.
const MAX_TRIES = 100;
// Kubernetes port names are RFC 6335 service names: ≤ 15 letters, digits and single hyphens,
// at least one letter. Anything else (`'8080'`, `'_grpc'`) can never match an SRV record.
const SERVICE_NAME = /^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(?:-[a-z0-9]+)*$/i;
const OPTIONS = optionNames<DnsEndpointsOptions>({
  host: true,
  port: true,
  refreshMs: true,
  servers: true,
  timeoutMs: true,
  tries: true,
  random: true,
  allowAddresses: true,
});

/**
 * Discovers the pods behind a headless Service by polling DNS: A and AAAA of `host` for a port
 * number, SRV for a port name. Keeps the last good answer through failures and through a single
 * empty answer; reports a name that does not exist (NXDOMAIN) as `PODPOOL_NAME_NOT_FOUND`;
 * skips and reports (once while it keeps coming) an address `allowAddresses` does not accept;
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
  // A timer past 2^31 - 1 ms fires at once; whole milliseconds, as the option always took.
  const timeoutMs = checkDelay('timeoutMs', options.timeoutMs ?? 2000);
  if (!Number.isInteger(timeoutMs)) invalidOption('timeoutMs', `an integer number of ms from 1 to ${MAX_DELAY_MS}`, timeoutMs);
  const tries = checkNumber('tries', options.tries ?? 2, { min: 1, integer: true });
  if (tries > MAX_TRIES) invalidOption('tries', `an integer from 1 to ${MAX_TRIES}`, tries);
  const random = options.random ?? Math.random;
  checkFunction('random', random, 'a function returning numbers in [0, 1)');
  const servers = options.servers === undefined ? undefined : checkServers(options.servers);
  const allowed = checkAllowAddresses(options.allowAddresses, []);

  const asked = typeof port === 'number' ? host : `_${port}._tcp.${host}`;
  const serverList = servers ? (options.servers as readonly string[]).join(', ') : 'those of /etc/resolv.conf';

  const lookup = async (resolver: DnsClient, memory: Memory): Promise<Answer> => {
    try {
      if (typeof port === 'number') {
        const answer = await addressesOf(resolver, host, memory.get(host));
        return {
          ok: true,
          missing: answer.missing,
          found: answer.addresses.map((address) => ({ address, port, from: host })),
          failed: answer.failed,
          memory: new Map([[host, answer.families]]),
        };
      }
      return { ok: true, ...(await srvTargets(resolver, asked, memory)) };
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
  const familyFailed = ({ name, type, error, kept }: FamilyFailure): PodpoolError => {
    const [family, other] = type === 'A' ? ['IPv4', 'IPv6'] : ['IPv6', 'IPv4'];
    const of = name === asked ? '' : ` of ${name}`;
    const using = kept === undefined || kept === 0 ? `using the ${other} addresses alone` : `keeping the last ${kept} ${family} addresses${of}`;
    return new DiscoveryFailedError(
      `DNS lookup of ${asked}: the ${type} query${of} failed (${error.message}) while ${type === 'A' ? 'AAAA' : 'A'} answered; ${using}. ` +
        `Reported once until ${type} answers again. Some resolvers refuse ${type} for a name without ${family} addresses; ` +
        `if the Service has ${family} pods, check the DNS servers (${serverList})`,
      { cause: error },
    );
  };

  return {
    kind: 'dns',
    watch(sink: SourceSink): SourceWatch {
      // One client per watch: cancel() on close must not cut another pool's queries short. Our
      // own client, not Node's Resolver: c-ares keeps records of other names than the one asked.
      const resolver = new DnsClient({ servers, timeoutMs, tries });
      let closed = false;
      let timer: NodeJS.Timeout | undefined;
      let polling: Promise<void> | undefined;
      let reported: EndpointSet | undefined;
      let emptyPolls = 0;
      // Each name's last good addresses per family, from the last poll that answered.
      let memory: Memory = new Map();
      // What was reported as it kept coming back, poll after poll (a family that fails, a record
      // skipped): reported again only once it went away and came back, so a resolver that always
      // refuses AAAA, or a record of 0.0.0.0 left in a zone, is one report and not one a poll.
      let failing = new Set<string>();
      let skipping = new Set<string>();

      /** Reports what is new in `now` compared with `before`; returns `now`'s keys as the new `before`. */
      const reportNew = (before: ReadonlySet<string>, now: readonly { key: string; error: () => PodpoolError }[]): Set<string> => {
        const keys = new Set<string>();
        for (const { key, error } of now) {
          keys.add(key);
          if (!before.has(key) && !closed) sink.error(error());
        }
        return keys;
      };

      const poll = async (): Promise<void> => {
        const answer = await lookup(resolver, memory);
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
        memory = answer.memory;
        failing = reportNew(
          failing,
          answer.failed.map((failure) => ({ key: `${failure.name} ${failure.type}`, error: () => familyFailed(failure) })),
        );
        const { endpoints, skipped } = validate(answer.found, asked, allowed);
        skipping = reportNew(skipping, skipped);
        if (closed) return;
        if (endpoints.length === 0 && answer.found.length > 0) {
          // Every record was refused or malformed: that is no news about the pods (a resolver that
          // answers 0.0.0.0 for names it blocks, say), so it neither empties the set nor counts
          // towards doing so.
          emptyPolls = 0;
          debug('dns %s: every address skipped, keeping the set', asked);
          return;
        }
        if (endpoints.length === 0) {
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
        const set = new EndpointSet(endpoints);
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

/** The two families, with the record type that asks for each. */
type RecordType = 'A' | 'AAAA';

/** One name's last good addresses per record type; a type never answered yet is absent. */
type Families = Readonly<Partial<Record<RecordType, readonly string[]>>>;

/** Families by name (lower case for SRV targets): the host's, or each SRV target's. */
type Memory = ReadonlyMap<string, Families>;

/** One family of one name that failed while the other answered. */
interface FamilyFailure {
  readonly name: string;
  readonly type: RecordType;
  readonly error: Error;
  /** How many of its last good addresses were kept; undefined when it never answered. */
  readonly kept: number | undefined;
}

type Answer =
  | {
      readonly ok: true;
      readonly missing: boolean;
      readonly found: readonly Found[];
      readonly failed: readonly FamilyFailure[];
      /** Replaces the watch's memory: only the names asked this time, so it never grows. */
      readonly memory: Memory;
    }
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
 * so an empty family is normal. Some resolvers refuse or drop AAAA for an IPv4-only name, so one
 * family failing must not void the other's answer; but a dual-stack set that lost one family for
 * one poll would churn every connection of that family. So a family that fails is taken as its
 * last good answer (`before`), the other as it answered now; with no last good answer, the other
 * family alone, unless that says nothing either (NODATA): then the lookup fails, as it does when
 * both fail. NXDOMAIN from the other family covers both: the name itself does not exist.
 */
async function addressesOf(
  resolver: DnsClient,
  name: string,
  before: Families | undefined,
): Promise<{ addresses: string[]; missing: boolean; families: Families; failed: FamilyFailure[] }> {
  // allSettled, not all: a poll returns only when both queries are over, so none outlives it.
  const results = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
  const types = ['A', 'AAAA'] as const;
  const noSuchName = results.some((r) => r.status === 'rejected' && isNoSuchName(r.reason));
  const families: Partial<Record<RecordType, readonly string[]>> = {};
  const addresses: string[] = [];
  const failed: FamilyFailure[] = [];
  for (let i = 0; i < 2; i++) {
    const result = results[i];
    const type = types[i];
    let list: readonly string[] | undefined;
    if (result.status === 'fulfilled') list = result.value;
    else if (isEmptyAnswer(result.reason) || noSuchName) list = [];
    else {
      list = before?.[type];
      failed.push({ name, type, error: result.reason as Error, kept: list?.length });
    }
    if (list === undefined) continue;
    families[type] = list;
    addresses.push(...list);
  }
  if (failed.length === 2) throw failed[0].error;
  if (failed.length === 1 && failed[0].kept === undefined && addresses.length === 0 && !noSuchName) throw failed[0].error;
  return { addresses, missing: noSuchName && addresses.length === 0, families, failed };
}

/**
 * Every (address, port) an SRV name points to. Priority and weight are ignored: Kubernetes gives
 * every pod the same, and balancing is the pool's job. A target that no longer resolves (its pod
 * went between the two queries) is left out; a target whose lookup failed fails the poll, so a
 * transient error never drops a pod; a target one of whose families failed is taken as
 * {@link addressesOf} says.
 */
async function srvTargets(
  resolver: DnsClient,
  srvName: string,
  memory: Memory,
): Promise<{ found: Found[]; missing: boolean; failed: FamilyFailure[]; memory: Memory }> {
  let records: { name: string; port: number }[];
  try {
    records = await resolver.resolveSrv(srvName);
  } catch (error) {
    if (isEmptyAnswer(error)) return { found: [], missing: isNoSuchName(error), failed: [], memory: new Map() };
    throw error;
  }
  const targets = [...new Set(records.map((r) => r.name.toLowerCase()))];
  const addresses = new Map<string, string[]>();
  const next = new Map<string, Families>();
  const failed: FamilyFailure[] = [];
  let failure: unknown;
  let taken = 0;
  const worker = async (): Promise<void> => {
    // Each turn takes one target, so this ends after targets.length turns at most; after a
    // failure the poll is lost anyway, so no new lookup starts.
    while (failure === undefined && taken < targets.length) {
      const target = targets[taken++];
      try {
        const answer = await addressesOf(resolver, target, memory.get(target));
        addresses.set(target, answer.addresses);
        next.set(target, answer.families);
        failed.push(...answer.failed);
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
  return { found, missing: false, failed, memory: next };
}

/** A record left out of the set, with the key that tells it from others across polls. */
interface Skipped {
  readonly key: string;
  readonly error: () => PodpoolError;
}

/**
 * Builds endpoints; a bad record (an SRV port of 0, say) or an address `allowed` does not accept
 * is set aside to be reported, never thrown.
 */
function validate(found: readonly Found[], asked: string, allowed: ReadonlySet<AddressRange>): { endpoints: Endpoint[]; skipped: Skipped[] } {
  const endpoints: Endpoint[] = [];
  const skipped: Skipped[] = [];
  for (const { address, port, from } of found) {
    let endpoint: Endpoint;
    try {
      endpoint = createEndpoint({ address, port });
    } catch (error) {
      skipped.push({
        key: `${from} ${address} ${port}`,
        error: () =>
          new InvalidEndpointError(
            `DNS lookup of ${asked}: skipped the record of ${from} (${(error as Error).message}); fix the record, the other endpoints are used`,
            { cause: error },
          ),
      });
      continue;
    }
    const refused = refusedAddress(address, allowed);
    if (refused === undefined) {
      endpoints.push(endpoint);
      continue;
    }
    skipped.push({
      key: `${from} ${address}`,
      error: () =>
        new InvalidEndpointError(
          `DNS lookup of ${asked}: skipped an address${from === asked ? '' : ` of ${from}`}: ${refused}; the other endpoints are used, ` +
            'and this is not reported again while the record stays',
        ),
    });
  }
  return { endpoints, skipped };
}

/** Parses `servers` here, so a bad entry fails at the door and not in watch(). */
function checkServers(servers: unknown): DnsServerAddress[] {
  const expected = 'a non-empty array of IP addresses with optional ports, like ["127.0.0.1:5353", "[::1]:53"]';
  if (!Array.isArray(servers) || servers.length === 0 || !servers.every((s) => typeof s === 'string')) {
    invalidOption('servers', expected, servers);
  }
  try {
    return parseServers(servers as string[]);
  } catch {
    invalidOption('servers', expected, servers);
  }
}
