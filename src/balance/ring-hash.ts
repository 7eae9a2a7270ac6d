import { KeyRequiredError } from '../errors.ts';
import { checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import type { Balancer, Pickable, Picker, PickerContext } from './balancer.ts';

/** Options of {@link ringHash}. */
export interface RingHashOptions {
  /**
   * Points each member gets on the ring, from 1 to 10,000 (default 160): more spreads keys more
   * evenly but builds slower. A ring holds at most 262,144 points: past that (more than 1,638
   * members at the default) each member gets `floor(262144 / members)`.
   */
  replicas?: number;
}

// Ketama's 160 points a member. Measured over random rings: the busiest member owns 1.11× its
// fair share of keys at 10 members, 1.21× at 100, 1.26× at 1,000, and a warm 1,000-member ring
// builds in 5-10 ms (bench:pick). 320 points only bring 1,000 members to 1.21× for twice the build,
// paid again on every membership change; 80 lets the busiest reach 1.43×.
const DEFAULT_REPLICAS = 160;
// The ring is rebuilt on every membership or readiness change, on the event loop: a ring of
// 2^18 points costs 4 MB and builds in 11-14 ms (1,000 members × 262, or 1 × 262,144), where
// 2^20 took 40 ms and 10^6 replicas an unbounded 369 ms and 226 MB. 2^18 leaves the default's
// 160 points untouched up to 1,638 members. A member past it keeps its first points (they are
// drawn in order from its key), so crossing the cap moves only the keys of the points dropped,
// and every client with the same members builds the same ring.
const MAX_RING_POINTS = 2 ** 18;
// Past a few thousand points a member the spread is already within 1-2 % of even: more only
// costs builds. 10,000 is generous, and bounded.
const MAX_REPLICAS = 10_000;
const OPTIONS = optionNames<RingHashOptions>({ replicas: true });

/**
 * Points are kept as signed 32-bit numbers, the hash with its top bit flipped: ordered as the
 * unsigned hashes are, and V8 reads and compares int32 elements about twice as fast as uint32
 * ones (whose upper half does not fit a small integer), which is what a ring's merge does.
 */
const SIGN = 0x80000000;

const RADIX_BITS = 11;
const RADIX = 1 << RADIX_BITS;
const RADIX_MASK = RADIX - 1;

/** Consistent hashing for `use(fn, { key })`: a key sticks to a member; one leaving moves only its keys. */
export function ringHash(options: RingHashOptions = {}): Balancer {
  checkOptions(options, OPTIONS);
  const { replicas = DEFAULT_REPLICAS } = options;
  checkNumber('replicas', replicas, { min: 1, integer: true });
  if (replicas > MAX_REPLICAS) invalidOption('replicas', `an integer from 1 to ${MAX_REPLICAS}`, replicas);
  return Object.freeze({
    name: 'ring-hash',
    picker<M extends Pickable>(members: readonly M[], _context: PickerContext, previous?: Picker<M>): Picker<M> {
      // The ring of the last build, changed by the members that came and went: what a fresh
      // build would make, for the cost of a merge instead of hashing and sorting every point.
      if (previous instanceof RingHashPicker && previous.replicas === replicas) {
        const updated = (previous as RingHashPicker<M>).updated(members);
        if (updated !== undefined) return updated;
      }
      return RingHashPicker.build(members, replicas);
    },
  });
}

/** Points each of `n` members gets: `replicas`, fewer once the ring would pass its cap. */
function pointsPerMember(replicas: number, n: number): number {
  return Math.min(replicas, Math.max(1, Math.floor(MAX_RING_POINTS / n)));
}

class RingHashPicker<M extends Pickable> {
  /** The balancer's points per member, before the cap. */
  readonly replicas: number;
  readonly #perMember: number;
  readonly #members: readonly M[];
  /** Ring positions, ascending; on a tie, in member order. */
  readonly #points: Int32Array;
  /** `#owners[i]` is the index in `#members` of the member at `#points[i]`. */
  readonly #owners: Int32Array;

  constructor(members: readonly M[], replicas: number, perMember: number, points: Int32Array, owners: Int32Array) {
    this.replicas = replicas;
    this.#perMember = perMember;
    this.#members = members;
    this.#points = points;
    this.#owners = owners;
  }

  static build<M extends Pickable>(members: readonly M[], replicas: number): RingHashPicker<M> {
    const perMember = pointsPerMember(replicas, members.length);
    const indices = new Int32Array(members.length);
    for (let m = 0; m < members.length; m++) indices[m] = m;
    const [points, owners] = sortRing(...memberPoints(members, indices, perMember));
    return new RingHashPicker(members, replicas, perMember, points, owners);
  }

  /**
   * This ring over `members` instead (in endpoint key order, as this one's): the points of members
   * that left are dropped, those of members that came are hashed, sorted and merged in. Undefined
   * when each member's share of points changes (the ring's cap), which takes a fresh build.
   */
  updated(members: readonly M[]): RingHashPicker<M> | undefined {
    const perMember = pointsPerMember(this.replicas, members.length);
    if (perMember !== this.#perMember) return undefined;
    const old = this.#members;
    // Both lists are in key order: one walk tells each old member's new index (-1: gone) and the new ones.
    const remap = new Int32Array(old.length);
    const added: number[] = [];
    let i = 0;
    let j = 0;
    let removed = 0;
    while (i < old.length && j < members.length) {
      const a = old[i].endpoint.key;
      const b = members[j].endpoint.key;
      if (a === b) remap[i++] = j++;
      else if (a < b) {
        remap[i++] = -1;
        removed++;
      } else added.push(j++);
    }
    for (; i < old.length; i++, removed++) remap[i] = -1;
    for (; j < members.length; j++) added.push(j);
    const oldPoints = this.#points;
    const oldOwners = this.#owners;
    // Same members: the same ring (its owners index the same places).
    if (removed === 0 && added.length === 0) return new RingHashPicker(members, this.replicas, perMember, oldPoints, oldOwners);
    const [newPoints, newOwners] = sortRing(...memberPoints(members, Int32Array.from(added), perMember));
    const size = members.length * perMember;
    const points = new Int32Array(size);
    const owners = new Int32Array(size);
    const olds = oldPoints.length;
    const news = newPoints.length;
    // One pass over the old ring, the next new point held in locals. Ties go as a fresh build
    // orders them: by member index.
    let k = 0;
    let y = 0;
    let more = news > 0;
    let nextPoint = more ? newPoints[0] : 0;
    let nextOwner = more ? newOwners[0] : 0;
    for (let x = 0; x < olds; x++) {
      const owner = remap[oldOwners[x]];
      if (owner < 0) continue;
      const point = oldPoints[x];
      while (more && (nextPoint < point || (nextPoint === point && nextOwner < owner))) {
        points[k] = nextPoint;
        owners[k++] = nextOwner;
        y++;
        more = y < news;
        if (more) {
          nextPoint = newPoints[y];
          nextOwner = newOwners[y];
        }
      }
      points[k] = point;
      owners[k++] = owner;
    }
    for (; y < news; y++, k++) {
      points[k] = newPoints[y];
      owners[k] = newOwners[y];
    }
    return new RingHashPicker(members, this.replicas, perMember, points, owners);
  }

  pick(key?: string): M | undefined {
    if (key === undefined) {
      throw new KeyRequiredError(
        'the ring-hash balancer routes by key: pass one with pool.use(fn, { key })',
      );
    }
    const points = this.#points;
    const size = points.length;
    if (size === 0) return undefined;
    const hash = murmur3(key, 0) ^ SIGN;
    // The first point at or after the hash, wrapping past the end to the first.
    let lo = 0;
    let hi = size;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid] < hash) lo = mid + 1;
      else hi = mid;
    }
    return this.#members[this.#owners[lo === size ? 0 : lo]];
  }
}

/** The points of the members at `indices` (ascending), `perMember` each, with their owners, in member order. */
function memberPoints(members: readonly Pickable[], indices: Int32Array, perMember: number): [Int32Array, Int32Array] {
  const size = indices.length * perMember;
  const points = new Int32Array(size);
  const owners = new Int32Array(size);
  for (let n = 0, i = 0; n < indices.length; n++) {
    const m = indices[n];
    // From the endpoint key alone, so every client process builds the same ring and sends a
    // key to the same pod. A member past the cap keeps its first points.
    const seed = murmur3(members[m].endpoint.key, 0);
    for (let r = 0; r < perMember; r++, i++) {
      points[i] = replica(seed, r) ^ SIGN;
      owners[i] = m;
    }
  }
  return [points, owners];
}

/**
 * Sorts points ascending, owners alongside. LSD radix sort, 11 bits a pass: a 1,000-member ring
 * sorts in a few ms where the built-in sort takes 10-15. Being stable, it leaves the rare
 * colliding points in member order, so a collision resolves the same way in a ring without some
 * other member: removal then moves only the removed member's keys.
 */
function sortRing(points: Int32Array, owners: Int32Array): [Int32Array, Int32Array] {
  const size = points.length;
  let nextPoints: Int32Array = new Int32Array(size);
  let nextOwners: Int32Array = new Int32Array(size);
  const counts = new Uint32Array(RADIX);
  for (let shift = 0; shift < 32; shift += RADIX_BITS) {
    counts.fill(0);
    for (let i = 0; i < size; i++) counts[((points[i] ^ SIGN) >>> shift) & RADIX_MASK]++;
    for (let d = 0, at = 0; d < RADIX; d++) {
      const c = counts[d];
      counts[d] = at;
      at += c;
    }
    for (let i = 0; i < size; i++) {
      const to = counts[((points[i] ^ SIGN) >>> shift) & RADIX_MASK]++;
      nextPoints[to] = points[i];
      nextOwners[to] = owners[i];
    }
    [points, nextPoints] = [nextPoints, points];
    [owners, nextOwners] = [nextOwners, owners];
  }
  return [points, owners];
}

/** MurmurHash3 x86_32 of a string's UTF-16LE bytes, read from char codes so it allocates nothing. */
export function murmur3(key: string, seed: number): number {
  const length = key.length;
  let h = seed | 0;
  let i = 0;
  for (; i + 1 < length; i += 2) {
    h = mixBlock(h, key.charCodeAt(i) | (key.charCodeAt(i + 1) << 16));
    h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
  }
  if (i < length) h = mixBlock(h, key.charCodeAt(i));
  return finalize(h ^ (length * 2));
}

/**
 * Point `r` of a member whose key hashed to `seed`: `r` mixed in as one more murmur3 block and
 * finalized, so a member's key is hashed once, not once per point.
 */
function replica(seed: number, r: number): number {
  const h = mixBlock(seed, r);
  return finalize(Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64);
}

function mixBlock(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  return h ^ Math.imul(k, 0x1b873593);
}

function finalize(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
