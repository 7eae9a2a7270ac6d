/**
 * Deterministic subsetting: each client connects to `size` of the pods, chosen so that every pod
 * gets the same number of clients (to one), instead of every client connecting to every pod.
 *
 * The scheme is the discrete form of Finagle's deterministic aperture. Every client puts the
 * snapshot's endpoints in the same order, a ring ordered by a hash of their keys; client `i` of
 * `C` takes the `size` endpoints from index `floor(i · N / C)` on, wrapping. The clients whose
 * start falls in any `k` consecutive indices number ⌊C·k/N⌋ or ⌈C·k/N⌉, so that is how many
 * clients each pod gets. When one endpoint is added or removed, a client's start moves by at most
 * one place and the endpoint itself enters or leaves its window: at most 2 of its `k` pods change.
 *
 * Google's SRE book shuffles the endpoints per round of clients: as balanced, but a change of N
 * reshuffles every round (up to all `k` of a client's pods change; 10× the connections moved here
 * at 300 clients × 300 pods). Google's later Ringsteady subsetting moves fewer, but needs a
 * stable, dense index per backend (0 to N−1), which a Deployment's pods don't have.
 */
import { EndpointSet } from '../endpoint.ts';
import { checkNumber, checkOptions, invalidArgument, invalidOption, optionNames } from '../options.ts';
import { murmur3 } from './ring-hash.ts';

/** The pool's `subset` option. */
export interface SubsetOptions {
  /** Pods each client connects to; every pod when there are no more than this. */
  size: number;
  /**
   * This client's number, from 0 to `clientCount - 1`: its StatefulSet ordinal, say
   * ({@link statefulSetOrdinal} of its pod name).
   */
  clientId: number;
  /** How many clients share the pods (the client StatefulSet's replicas), up to 1,000,000. */
  clientCount: number;
}

/** A checked subset: which endpoints of a snapshot this client keeps members for. */
export interface SubsetPolicy {
  readonly size: number;
  readonly clientId: number;
  readonly clientCount: number;
  /** The keys of the endpoints of `endpoints` this client connects to. */
  select(endpoints: EndpointSet): ReadonlySet<string>;
}

const SUBSET_OPTIONS = optionNames<SubsetOptions>({ size: true, clientId: true, clientCount: true });

// clientId · N stays an exact integer (below 2^53) for any N a cluster holds, so every client
// computes the same starts.
const MAX_CLIENTS = 1_000_000;

/** Checks `subset`, naming any bad option; `undefined`: every pod (full mesh). */
export function subsetPolicy(options: SubsetOptions | undefined): SubsetPolicy | undefined {
  if (options === undefined) return undefined;
  checkOptions(options, SUBSET_OPTIONS, 'subset');
  const size = checkNumber('subset.size', options.size, { min: 1, integer: true });
  const clientCount = checkNumber('subset.clientCount', options.clientCount, { min: 1, integer: true });
  if (clientCount > MAX_CLIENTS) invalidOption('subset.clientCount', `an integer from 1 to ${MAX_CLIENTS}`, clientCount);
  const clientId = checkNumber('subset.clientId', options.clientId, { min: 0, integer: true });
  if (clientId >= clientCount) invalidOption('subset.clientId', `an integer from 0 to clientCount - 1 (${clientCount - 1})`, clientId);
  return Object.freeze(new DeterministicSubset(size, clientId, clientCount));
}

/**
 * The ordinal at the end of a StatefulSet pod's name (`backend-3` → 3), for `subset.clientId`:
 * in a StatefulSet a pod's host name is its name, so `statefulSetOrdinal(os.hostname())`.
 * Throws `PODPOOL_INVALID_ARGUMENT` for a name that does not end in `-<number>`.
 */
export function statefulSetOrdinal(podName: string): number {
  const match = typeof podName === 'string' && podName.length <= 253 ? ORDINAL.exec(podName) : null;
  if (match === null) invalidArgument('podName', 'a StatefulSet pod name ending in -<ordinal> (backend-3)', podName);
  return Number(match[1]);
}

// A Kubernetes name (lower-case letters, digits, '-' and '.'), then the ordinal: a replica
// index, far below 10^9.
const ORDINAL = /^[a-z0-9][-a-z0-9.]*-(0|[1-9][0-9]{0,8})$/;

// Any constant: every client must use the same.
const RING_SEED = 0x5eed;

/**
 * Which pods are candidates: every endpoint of the snapshot, ready or not, terminating or not.
 * A pod that is not in service (not ready, or terminating) keeps its place in the ring, and a
 * client whose window holds it connects to the next pod in service past its window instead; so
 * a pod failing its readiness probe moves one connection of each client that had it (⌊C·k/N⌋ or
 * ⌈C·k/N⌉ clients), spread over the next `k` pods, not the windows of every client. Only a pod
 * joining or leaving discovery shifts the windows.
 */
class DeterministicSubset implements SubsetPolicy {
  readonly size: number;
  readonly clientId: number;
  readonly clientCount: number;
  // The ring of the last snapshot, kept so that the next is placed in the time of its changes:
  // the pool asks on every snapshot, and a snapshot usually adds or removes a pod or two. Keys and
  // their hashes in two arrays, so a search compares numbers.
  #last = EndpointSet.empty;
  #ring: string[] = [];
  #ringHashes: number[] = [];

  constructor(size: number, clientId: number, clientCount: number) {
    this.size = size;
    this.clientId = clientId;
    this.clientCount = clientCount;
  }

  select(endpoints: EndpointSet): ReadonlySet<string> {
    const ring = this.#place(endpoints);
    const n = ring.length;
    const keys = new Set<string>();
    if (n === 0) return keys;
    const start = Math.floor((this.clientId * n) / this.clientCount);
    for (let i = 0; i < n && keys.size < this.size; i++) {
      const key = ring[(start + i) % n]!;
      const e = endpoints.get(key)!;
      if (e.ready && !e.terminating) keys.add(key);
    }
    return keys;
  }

  /** The endpoints' keys in ring order: by hash, then by key (for the rare equal hashes). */
  #place(endpoints: EndpointSet): readonly string[] {
    if (endpoints === this.#last) return this.#ring;
    // What changed since the last snapshot: O(changes) for a set a source derived from it, else
    // one pass over both.
    const { added, removed } = endpoints.diff(this.#last);
    this.#last = endpoints;
    const ring = this.#ring;
    const hashes = this.#ringHashes;
    if (added.length + removed.length > ring.length / SPLICE_FRACTION) {
      // Many changes (the first snapshot, a relist): hash and sort the whole set once.
      const entries = Array.from(endpoints, (e) => ({ key: e.key, hash: murmur3(e.key, RING_SEED) }));
      entries.sort((a, b) => a.hash - b.hash || (a.key < b.key ? -1 : 1));
      this.#ring = entries.map((e) => e.key);
      this.#ringHashes = entries.map((e) => e.hash);
      return this.#ring;
    }
    // A few: each found by binary search, spliced out or in (a memmove of the arrays).
    for (const e of removed) {
      const at = search(ring, hashes, e.key, murmur3(e.key, RING_SEED));
      ring.splice(at, 1);
      hashes.splice(at, 1);
    }
    for (const e of added) {
      const hash = murmur3(e.key, RING_SEED);
      const at = search(ring, hashes, e.key, hash);
      ring.splice(at, 0, e.key);
      hashes.splice(at, 0, hash);
    }
    return ring;
  }
}

// Changes past 1/8 of the ring are cheaper sorted whole than spliced one by one.
const SPLICE_FRACTION = 8;

/** Where `key` (hashed to `hash`) is in the ring, or goes: the first place not before it. */
function search(ring: readonly string[], hashes: readonly number[], key: string, hash: number): number {
  let lo = 0;
  let hi = ring.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const h = hashes[mid]!;
    if (h < hash || (h === hash && ring[mid]! < key)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
