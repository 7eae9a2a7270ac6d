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
    picker<M extends Pickable>(members: readonly M[], _context: PickerContext): Picker<M> {
      return new RingHashPicker(members, replicas);
    },
  });
}

class RingHashPicker<M extends Pickable> implements Picker<M> {
  readonly #members: readonly M[];
  /** Ring positions, ascending. */
  readonly #points: Uint32Array;
  /** `#owners[i]` is the index in `#members` of the member at `#points[i]`. */
  readonly #owners: Uint32Array;

  constructor(members: readonly M[], replicas: number) {
    this.#members = members;
    const n = members.length;
    const perMember = Math.min(replicas, Math.max(1, Math.floor(MAX_RING_POINTS / n)));
    const size = n * perMember;
    let points = new Uint32Array(size);
    let owners = new Uint32Array(size);
    for (let m = 0, i = 0; m < n; m++) {
      // From the endpoint key alone, so every client process builds the same ring and sends a
      // key to the same pod.
      const seed = murmur3(members[m].endpoint.key, 0);
      for (let r = 0; r < perMember; r++, i++) {
        points[i] = replica(seed, r);
        owners[i] = m;
      }
    }
    // LSD radix sort, 11 bits a pass: a 1,000-member ring sorts in a few ms where the built-in
    // sort takes 10-15, and the build is paid on every membership change. Being stable, it leaves
    // the rare colliding points in member order, so a collision resolves the same way in a ring
    // without some other member: removal then moves only the removed member's keys.
    let nextPoints = new Uint32Array(size);
    let nextOwners = new Uint32Array(size);
    const counts = new Uint32Array(RADIX);
    for (let shift = 0; shift < 32; shift += RADIX_BITS) {
      counts.fill(0);
      for (let i = 0; i < size; i++) counts[(points[i] >>> shift) & RADIX_MASK]++;
      for (let d = 0, at = 0; d < RADIX; d++) {
        const c = counts[d];
        counts[d] = at;
        at += c;
      }
      for (let i = 0; i < size; i++) {
        const to = counts[(points[i] >>> shift) & RADIX_MASK]++;
        nextPoints[to] = points[i];
        nextOwners[to] = owners[i];
      }
      [points, nextPoints] = [nextPoints, points];
      [owners, nextOwners] = [nextOwners, owners];
    }
    this.#points = points;
    this.#owners = owners;
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
    const hash = murmur3(key, 0);
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
