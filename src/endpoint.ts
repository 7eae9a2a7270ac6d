import { isIP } from 'node:net';
import { InvalidEndpointError } from './errors.ts';

/**
 * One pod's address as discovery sees it. Conditions follow Kubernetes EndpointSlices:
 * `ready` means it may take new work; `serving && terminating` means it is shutting down but
 * still answers in-flight work; a source that knows nothing better reports ready endpoints.
 */
export interface Endpoint {
  /** `address:port` (`[v6]:port` for IPv6); unique within a set. */
  readonly key: string;
  /** An IPv4 or IPv6 address, never a host name. */
  readonly address: string;
  readonly port: number;
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
  readonly podName?: string;
  readonly nodeName?: string;
  readonly zone?: string;
  /** Zones this endpoint should serve (EndpointSlice topology hints). */
  readonly hintZones?: readonly string[];
}

/** What a source passes to {@link createEndpoint}: conditions default to ready and serving. */
export interface EndpointInit {
  address: string;
  port: number;
  ready?: boolean;
  serving?: boolean;
  terminating?: boolean;
  podName?: string;
  nodeName?: string;
  zone?: string;
  hintZones?: readonly string[];
}

/** The key of an address and port: `10.0.0.1:80`, `[fd00::1]:80`. */
export function endpointKey(address: string, port: number): string {
  return `${urlHost(address)}:${port}`;
}

/**
 * An address as it goes in a URL or an authority: an IPv6 address in brackets (`[fd00::1]`), so
 * its colons are not read as the port's.
 */
export function urlHost(address: string): string {
  return isIP(address) === 6 ? `[${address}]` : address;
}

/** Validates and freezes an endpoint; throws `PODPOOL_INVALID_ENDPOINT` naming what is wrong. */
export function createEndpoint(init: EndpointInit): Endpoint {
  if (init === null || typeof init !== 'object') {
    throw new InvalidEndpointError(`an endpoint must be an object, got ${String(init)}`);
  }
  const { address, port } = init;
  if (typeof address !== 'string' || isIP(address) === 0) {
    throw new InvalidEndpointError(
      `endpoint address must be an IPv4 or IPv6 address, got ${JSON.stringify(address)}`,
    );
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new InvalidEndpointError(
      `endpoint port must be an integer from 1 to 65535, got ${JSON.stringify(port)} (for ${address})`,
    );
  }
  const terminating = init.terminating ?? false;
  const serving = init.serving ?? !terminating;
  const endpoint: Endpoint = {
    key: endpointKey(address, port),
    address,
    port,
    ready: init.ready ?? (serving && !terminating),
    serving,
    terminating,
    ...(init.podName !== undefined && { podName: init.podName }),
    ...(init.nodeName !== undefined && { nodeName: init.nodeName }),
    ...(init.zone !== undefined && { zone: init.zone }),
    ...(init.hintZones !== undefined && { hintZones: Object.freeze([...init.hintZones]) }),
  };
  return Object.freeze(endpoint);
}

/** What changed between two snapshots. */
export interface EndpointDiff {
  readonly added: readonly Endpoint[];
  readonly removed: readonly Endpoint[];
  /** Same key, other conditions or metadata: `[before, after]`. */
  readonly changed: readonly (readonly [Endpoint, Endpoint])[];
}

/**
 * A set known to differ from `base` by exactly `delta`, over `byKey` (which the caller hands
 * over and never touches again): for sources that track their changes (the Kubernetes source's
 * slice merge), so that the pool reconciles a snapshot in the time of its changes. Internal: not
 * exported from the package.
 */
export let deriveEndpointSet: (base: EndpointSet, byKey: Map<string, Endpoint>, delta: EndpointDiff) => EndpointSet;

/**
 * An immutable snapshot of every endpoint a source knows, keyed by `address:port`. Sources emit
 * whole snapshots, never deltas, so a relist can't leave ghosts behind.
 */
export class EndpointSet implements Iterable<Endpoint> {
  static readonly empty: EndpointSet = new EndpointSet([]);

  // Not `readonly`: deriveEndpointSet sets them on a set it has just made (freezing a set does
  // not reach its private fields).
  #byKey: ReadonlyMap<string, Endpoint>;
  /**
   * The set this one was derived from, and what changed since: `diff()` against it costs the
   * changes, not the size. Held weakly, so the newest snapshot does not keep a chain of old ones alive.
   */
  #base: WeakRef<EndpointSet> | undefined = undefined;
  #delta: EndpointDiff | undefined = undefined;

  static {
    deriveEndpointSet = (base, byKey, delta) => {
      const set = new EndpointSet([]);
      set.#byKey = byKey;
      set.#base = new WeakRef(base);
      set.#delta = delta;
      return set;
    };
  }

  /** Builds a set; a key given twice keeps the last one (sources merge before they build). */
  constructor(endpoints: Iterable<Endpoint | EndpointInit>) {
    const byKey = new Map<string, Endpoint>();
    for (const e of endpoints) {
      const endpoint = isEndpoint(e) ? e : createEndpoint(e);
      byKey.set(endpoint.key, endpoint);
    }
    this.#byKey = byKey;
    Object.freeze(this);
  }

  get size(): number {
    return this.#byKey.size;
  }

  get(key: string): Endpoint | undefined {
    return this.#byKey.get(key);
  }

  has(key: string): boolean {
    return this.#byKey.has(key);
  }

  [Symbol.iterator](): Iterator<Endpoint> {
    return this.#byKey.values();
  }

  /** The endpoints in key order, which makes output and tests stable. */
  toArray(): Endpoint[] {
    return [...this.#byKey.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** The endpoints that may take new work. */
  ready(): Endpoint[] {
    return this.toArray().filter((e) => e.ready);
  }

  /** What is new, gone and changed in this set compared with `previous`. */
  diff(previous: EndpointSet): EndpointDiff {
    if (this.#delta !== undefined && this.#base?.deref() === previous) return this.#delta;
    const added: Endpoint[] = [];
    const changed: (readonly [Endpoint, Endpoint])[] = [];
    const removed: Endpoint[] = [];
    for (const e of this.#byKey.values()) {
      const before = previous.get(e.key);
      if (before === undefined) added.push(e);
      else if (!sameEndpoint(before, e)) changed.push([before, e]);
    }
    // Those of `previous` not kept: as many as it has more than the kept ones, so the search
    // stops once they are found (none when nothing was removed).
    let missing = previous.size - (this.#byKey.size - added.length);
    if (missing > 0) {
      for (const e of previous) {
        if (this.#byKey.has(e.key)) continue;
        removed.push(e);
        if (--missing === 0) break;
      }
    }
    return { added, removed, changed };
  }

  /** True when both sets hold the same endpoints with the same conditions. */
  equals(other: EndpointSet): boolean {
    if (other.size !== this.size) return false;
    for (const e of this.#byKey.values()) {
      const o = other.get(e.key);
      if (o === undefined || !sameEndpoint(o, e)) return false;
    }
    return true;
  }
}

function isEndpoint(e: Endpoint | EndpointInit): e is Endpoint {
  return typeof (e as Endpoint).key === 'string' && Object.isFrozen(e);
}

/** Same key, conditions and metadata. */
export function sameEndpoint(a: Endpoint, b: Endpoint): boolean {
  if (a === b) return true;
  return (
    a.key === b.key &&
    a.ready === b.ready &&
    a.serving === b.serving &&
    a.terminating === b.terminating &&
    a.podName === b.podName &&
    a.nodeName === b.nodeName &&
    a.zone === b.zone &&
    sameZones(a.hintZones, b.hintZones)
  );
}

/** Compared in place: a snapshot diff compares every endpoint, and a join would allocate for each. */
function sameZones(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  if (a === b) return true;
  const n = a?.length ?? 0;
  if (n !== (b?.length ?? 0)) return false;
  for (let i = 0; i < n; i++) if (a![i] !== b![i]) return false;
  return true;
}
