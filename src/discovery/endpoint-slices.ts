/**
 * EndpointSlices as discovery reads them, and their merge into one snapshot: the part of the
 * Kubernetes source that needs no API server. A slice is read once, when it changes, into the
 * endpoints it offers for the port and what it had to skip; the merge then touches only the
 * addresses of the slices that changed, so an event costs the size of its slice, not the Service's.
 */
import { isIP } from 'node:net';
import { refusedAddress, type AddressRange } from '../address.ts';
import { createEndpoint, deriveEndpointSet, EndpointSet, sameEndpoint, type Endpoint } from '../endpoint.ts';

/** One endpoint a slice offers for the port, with what the merge needs to choose between slices. */
interface Candidate {
  readonly endpoint: Endpoint;
  /** ready 4 + serving 2 + not terminating 1: the view that wins when two slices name one address. */
  readonly rank: number;
  /** The pod behind it (uid, else namespace/name), to count a dual-stack pod once. */
  readonly pod: string | undefined;
  readonly ipv4: boolean;
  readonly slice: string;
}

/** One slice as read for a port. */
export interface ParsedSlice {
  readonly name: string;
  /** The endpoints it offers for the port, one per address; none from a slice without that port. */
  readonly candidates: readonly Candidate[];
  /** What was skipped and why, each the end of a sentence ("endpoint 10.0.0.1: …"); empty for a sound slice. */
  readonly problems: readonly string[];
  /**
   * It could not be read as a whole (a bad port number, addressType or endpoints list), or every
   * endpoint it had was skipped: its last good version, if any, stands instead.
   */
  readonly unusable: boolean;
}

const ADDRESS_TYPES: ReadonlySet<unknown> = new Set(['IPv4', 'IPv6', 'FQDN']);

/**
 * Reads one EndpointSlice as JSON (a list item or a watch event's object) for `port`: a
 * {@link ParsedSlice}, or why it is no slice at all (not an object, no name) as the end of a
 * sentence. Never throws, whatever `raw` is.
 */
export function readSlice(raw: unknown, port: string | number, allowed: ReadonlySet<AddressRange>): ParsedSlice | string {
  const name = sliceName(raw);
  if (!isObject(raw) || name === undefined) return noSlice(raw);
  const unusable = (problem: string): ParsedSlice => ({ name, candidates: [], problems: [problem], unusable: true });

  const { addressType, endpoints } = raw;
  if (!ADDRESS_TYPES.has(addressType)) return unusable(`addressType is ${describe(addressType)}, not IPv4, IPv6 or FQDN`);
  if (endpoints !== undefined && endpoints !== null && !Array.isArray(endpoints)) {
    return unusable(`endpoints is ${describe(endpoints)}, not a list`);
  }
  const list: readonly unknown[] = endpoints ?? [];
  // FQDN slices name hosts, not addresses: they say nothing about this port.
  if (addressType === 'FQDN' || list.length === 0) return { name, candidates: [], problems: [], unusable: false };

  const problems: string[] = [];
  let number: number;
  if (typeof port === 'number') {
    number = port;
  } else {
    const ports = raw.ports;
    if (ports !== undefined && ports !== null && !Array.isArray(ports)) return unusable(`ports is ${describe(ports)}, not a list`);
    if (ports === undefined || ports === null) return unusable(`it lists no ports, so none named "${port}"`);
    let entry: Record<string, unknown> | undefined;
    for (const p of ports as unknown[]) {
      if (!isObject(p)) {
        problems.push(`a port is ${describe(p)}, not an object`);
        continue;
      }
      // An unnamed port is the Service's only port, named "" by the API.
      if ((p.name ?? '') === port) entry = p;
    }
    // A sound slice without the name: its pods do not serve that port (the controller groups pods by their ports).
    if (entry === undefined) return { name, candidates: [], problems, unusable: problems.length > 0 };
    const value = entry.port;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
      return unusable(`port "${port}" is ${describe(value)}, not a number from 1 to 65535; its ${list.length} endpoints are skipped`);
    }
    number = value;
  }

  const family = addressType === 'IPv4' ? 4 : 6;
  const byKey = new Map<string, Candidate>();
  for (let i = 0; i < list.length; i++) {
    const candidate = readEndpoint(list[i], i, family, number, allowed, name, problems);
    if (candidate === undefined) continue;
    const seen = byKey.get(candidate.endpoint.key);
    if (seen === undefined || candidate.rank > seen.rank) byKey.set(candidate.endpoint.key, candidate);
  }
  return { name, candidates: [...byKey.values()], problems, unusable: byKey.size === 0 && problems.length > 0 };
}

/** The name of an EndpointSlice as JSON, or undefined when it is not one. */
export function sliceName(raw: unknown): string | undefined {
  const metadata = isObject(raw) ? raw.metadata : undefined;
  const name = isObject(metadata) ? metadata.name : undefined;
  return typeof name === 'string' && name !== '' ? name : undefined;
}

/** Why `raw` is no EndpointSlice (its {@link sliceName} is undefined), as the end of a sentence. */
export function noSlice(raw: unknown): string {
  if (!isObject(raw)) return `an EndpointSlice is ${describe(raw)}, not an object`;
  return `an EndpointSlice has no metadata.name (got ${describe(isObject(raw.metadata) ? raw.metadata.name : raw.metadata)})`;
}

/** One endpoint of a slice, or undefined (with the reason added to `problems`). */
function readEndpoint(
  raw: unknown,
  index: number,
  family: 4 | 6,
  port: number,
  allowed: ReadonlySet<AddressRange>,
  slice: string,
  problems: string[],
): Candidate | undefined {
  if (!isObject(raw)) {
    problems.push(`endpoint #${index} is ${describe(raw)}, not an object`);
    return undefined;
  }
  // The API gives no meaning to addresses beyond the first, and kube-proxy ignores them too.
  const address = Array.isArray(raw.addresses) ? (raw.addresses as unknown[])[0] : undefined;
  if (typeof address !== 'string') {
    problems.push(`endpoint #${index} has no address (addresses is ${describe(raw.addresses)})`);
    return undefined;
  }
  const found = isIP(address);
  if (found !== family) {
    problems.push(
      found === 0 ? `endpoint ${describe(address)}: not an IP address` : `endpoint ${address}: an IPv${found} address in an IPv${family} slice`,
    );
    return undefined;
  }
  const refused = refusedAddress(address, allowed);
  if (refused !== undefined) {
    problems.push(`endpoint ${refused}`);
    return undefined;
  }
  const conditions = raw.conditions ?? {};
  if (!isObject(conditions)) {
    problems.push(`endpoint ${address}: conditions is ${describe(conditions)}, not an object`);
    return undefined;
  }
  const flags: (boolean | undefined)[] = [];
  for (const field of ['ready', 'serving', 'terminating'] as const) {
    const value = conditions[field] ?? undefined;
    if (value !== undefined && typeof value !== 'boolean') {
      problems.push(`endpoint ${address}: conditions.${field} is ${describe(value)}, not true, false or null`);
      return undefined;
    }
    flags.push(value);
  }
  // Unset conditions as the API documents them: ready unless said otherwise, serving as ready.
  // A terminating pod takes no new work even when the slice calls it ready (a Service that
  // publishes not-ready addresses does): it is going away, in-flight work only.
  const terminating = flags[2] ?? false;
  const sliceReady = flags[0] ?? true;
  const serving = flags[1] ?? sliceReady;
  const ready = sliceReady && !terminating;
  // Metadata of the wrong type is left out, not a reason to skip a pod that can be dialled.
  const ref = isObject(raw.targetRef) && raw.targetRef.kind === 'Pod' ? raw.targetRef : undefined;
  const podName = typeof ref?.name === 'string' ? ref.name : undefined;
  const hints = isObject(raw.hints) && Array.isArray(raw.hints.forZones) ? (raw.hints.forZones as unknown[]) : undefined;
  const hintZones = hints?.flatMap((z) => (isObject(z) && typeof z.name === 'string' ? [z.name] : []));
  const endpoint = createEndpoint({
    address,
    port,
    ready,
    serving,
    terminating,
    ...(podName !== undefined && { podName }),
    ...(typeof raw.nodeName === 'string' && { nodeName: raw.nodeName }),
    ...(typeof raw.zone === 'string' && { zone: raw.zone }),
    ...(hintZones !== undefined && hintZones.length > 0 && { hintZones }),
  });
  const uid = typeof ref?.uid === 'string' && ref.uid !== '' ? ref.uid : undefined;
  const pod = ref === undefined ? undefined : (uid ?? `${typeof ref.namespace === 'string' ? ref.namespace : ''}/${podName ?? ''}`);
  return { endpoint, rank: (ready ? 4 : 0) + (serving ? 2 : 0) + (terminating ? 0 : 1), pod, ipv4: family === 4, slice };
}

/**
 * All the slices of a Service merged into one snapshot, kept up to date slice by slice: each
 * `address:port` once, and each dual-stack pod once.
 *
 * An address moving from one slice to another sits in both for a moment: it counts once, and its
 * ready view wins (then serving, then not terminating, then the slice whose name sorts first), so
 * the result does not depend on the order slices arrive in. A dual-stack Service lists each pod
 * under both families: one pod must be one member (a broadcast reaches it once, a balancer weighs
 * it once), so it counts by its IPv4 address.
 */
export class EndpointSliceMerge {
  readonly #slices = new Map<string, ParsedSlice>();
  /** Every slice's candidate for each key: one as a rule, two while a pod moves between slices. */
  readonly #candidates = new Map<string, Candidate[]>();
  /** The winning candidate of each key. */
  readonly #chosen = new Map<string, Candidate>();
  /** How many IPv4 keys each pod has among the chosen, and its chosen IPv6 keys. */
  readonly #podIPv4 = new Map<string, number>();
  readonly #podIPv6 = new Map<string, Set<string>>();
  /** The snapshot's endpoints, kept in step with `#chosen`. */
  readonly #visible = new Map<string, Endpoint>();
  readonly #dirty = new Set<string>();
  #changed = true;
  /** The last snapshot made, and what the next one changes: the pool reconciles only that. */
  #last = EndpointSet.empty;
  #added: Endpoint[] = [];
  #removed: Endpoint[] = [];
  #updated: (readonly [Endpoint, Endpoint])[] = [];

  /** The slice of that name, as last set. */
  get(name: string): ParsedSlice | undefined {
    return this.#slices.get(name);
  }

  /** The names of the slices held. */
  names(): IterableIterator<string> {
    return this.#slices.keys();
  }

  /** Sets (adds or replaces) a slice; its addresses are merged at the next {@link snapshot}. */
  set(slice: ParsedSlice): void {
    this.delete(slice.name);
    this.#slices.set(slice.name, slice);
    for (const c of slice.candidates) {
      const key = c.endpoint.key;
      const list = this.#candidates.get(key);
      if (list === undefined) this.#candidates.set(key, [c]);
      else list.push(c);
      this.#dirty.add(key);
    }
  }

  /** Removes a slice; false when there was none of that name. */
  delete(name: string): boolean {
    const old = this.#slices.get(name);
    if (old === undefined) return false;
    this.#slices.delete(name);
    for (const c of old.candidates) {
      const key = c.endpoint.key;
      const list = this.#candidates.get(key);
      if (list === undefined) continue;
      if (list.length === 1) this.#candidates.delete(key);
      else list.splice(list.indexOf(c), 1);
      this.#dirty.add(key);
    }
    return true;
  }

  /** The merged snapshot, or undefined when nothing in it changed since the last one. */
  snapshot(): EndpointSet | undefined {
    // Pass one: each changed key's winner, and the pods whose IPv4 presence that turns on or off
    // (their IPv6 keys go in `recheck`).
    const recheck = new Set<string>();
    for (const key of this.#dirty) {
      const before = this.#chosen.get(key);
      const after = best(this.#candidates.get(key));
      if (before === after) continue;
      if (before !== undefined) this.#count(before, -1, recheck);
      if (after === undefined) this.#chosen.delete(key);
      else {
        this.#chosen.set(key, after);
        this.#count(after, 1, recheck);
      }
    }
    // Pass two: what the snapshot shows for each key touched.
    for (const key of this.#dirty) this.#show(key);
    for (const key of recheck) if (!this.#dirty.has(key)) this.#show(key);
    this.#dirty.clear();
    if (!this.#changed) return undefined;
    this.#changed = false;
    const delta = { added: this.#added, removed: this.#removed, changed: this.#updated };
    this.#added = [];
    this.#removed = [];
    this.#updated = [];
    this.#last = deriveEndpointSet(this.#last, new Map(this.#visible), delta);
    return this.#last;
  }

  #show(key: string): void {
    const c = this.#chosen.get(key);
    const shown = c === undefined || (!c.ipv4 && c.pod !== undefined && this.#podIPv4.has(c.pod)) ? undefined : c.endpoint;
    const was = this.#visible.get(key);
    if (shown === was || (shown !== undefined && was !== undefined && sameEndpoint(shown, was))) return;
    if (shown === undefined) {
      this.#visible.delete(key);
      this.#removed.push(was!);
    } else {
      this.#visible.set(key, shown);
      if (was === undefined) this.#added.push(shown);
      else this.#updated.push([was, shown]);
    }
    this.#changed = true;
  }

  /** Counts a chosen candidate in (+1) or out (-1) of its pod's families; keys to look at again go in `recheck`. */
  #count(c: Candidate, delta: 1 | -1, recheck: Set<string>): void {
    if (c.pod === undefined) return;
    if (c.ipv4) {
      const n = (this.#podIPv4.get(c.pod) ?? 0) + delta;
      if (n > 0) this.#podIPv4.set(c.pod, n);
      else this.#podIPv4.delete(c.pod);
      // The pod's IPv6 addresses hide behind its first IPv4 one and come back after its last.
      if (n === 0 || (n === 1 && delta === 1)) for (const key of this.#podIPv6.get(c.pod) ?? []) recheck.add(key);
      return;
    }
    const keys = this.#podIPv6.get(c.pod) ?? new Set<string>();
    if (delta === 1) keys.add(c.endpoint.key);
    else keys.delete(c.endpoint.key);
    if (keys.size > 0) this.#podIPv6.set(c.pod, keys);
    else this.#podIPv6.delete(c.pod);
  }
}

function best(list: readonly Candidate[] | undefined): Candidate | undefined {
  if (list === undefined) return undefined;
  let winner = list[0];
  for (let i = 1; i < list.length; i++) {
    const c = list[i];
    if (c.rank > winner.rank || (c.rank === winner.rank && c.slice < winner.slice)) winner = c;
  }
  return winner;
}

/** Merges slices (JSON objects) into one snapshot at once; what the source does event by event. */
export function mergeEndpointSlices(slices: Iterable<unknown>, port: string | number, allowed: ReadonlySet<AddressRange> = new Set()): EndpointSet {
  const merge = new EndpointSliceMerge();
  for (const raw of slices) {
    const slice = readSlice(raw, port, allowed);
    if (typeof slice !== 'string') merge.set(slice);
  }
  return merge.snapshot() ?? EndpointSet.empty;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** A value as a message shows it: short, and never a whole object. */
function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'an object';
  const text = typeof value === 'string' ? JSON.stringify(value) : String(value);
  return text.length <= 64 ? text : `${text.slice(0, 64)}…`;
}
