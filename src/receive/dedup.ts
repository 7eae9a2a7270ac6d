import { checkFunction, checkNumber, checkOptions, invalidArgument, optionNames } from '../options.ts';

/** Options of {@link dedupFilter}. */
export interface DedupOptions {
  /** Ids remembered at most; the oldest is forgotten first. Default 10 000. */
  max?: number;
  /** How long an id is remembered, in ms of `clock`. Default: until `max` pushes it out. */
  ttlMs?: number;
  /** Milliseconds for `ttlMs`; default `Date.now`. */
  clock?: () => number;
}

const OPTIONS = optionNames<DedupOptions>({ max: true, ttlMs: true, clock: true });

/**
 * Remembers the message ids a receiver has seen, in bounded memory: at most `max` ids, each for
 * at most `ttlMs`. Broadcasts are retried per pod, so a pod may get one message twice; a receiver
 * that asks `add(id)` before acting applies it once.
 */
export interface DedupFilter {
  /** Remembers `id`; true when it is new, false when it is a duplicate (remembered already). */
  add(id: string): boolean;
  /** Whether `id` is remembered, without remembering it. */
  has(id: string): boolean;
  /** Ids remembered now (never more than `max`). */
  readonly size: number;
  /** The options it runs with, so a verifier can check the filter remembers long enough. */
  readonly max: number;
  readonly ttlMs: number;
  /** Ids forgotten because `max` was reached while they were younger than `ttlMs`. */
  readonly evicted: number;
}

/**
 * A bounded duplicate filter by id. A `Map` keeps insertion order, which is also expiry order
 * since every id lives for the same `ttlMs`, so forgetting is O(1) from the front.
 */
export function dedupFilter(options: DedupOptions = {}): DedupFilter {
  checkOptions(options, OPTIONS);
  const { max = 10_000, ttlMs = Infinity, clock = Date.now } = options;
  checkNumber('max', max, { min: 1, integer: true });
  checkNumber('ttlMs', ttlMs, { min: 1, allowInfinity: true });
  checkFunction('clock', clock, 'a function returning milliseconds');

  /** id → the time it was first seen. */
  const seen = new Map<string, number>();
  let evicted = 0;

  const expire = (now: number): void => {
    if (ttlMs === Infinity) return;
    for (const [id, at] of seen) {
      if (now - at < ttlMs) break;
      seen.delete(id);
    }
  };

  return {
    add(id) {
      if (typeof id !== 'string') invalidArgument('id', 'a string', id);
      const now = clock();
      expire(now);
      if (seen.has(id)) return false;
      if (seen.size >= max) {
        // The oldest still-live id goes: the caller sized the filter for fewer messages per ttlMs.
        const oldest = seen.keys().next().value as string;
        seen.delete(oldest);
        evicted++;
      }
      seen.set(id, now);
      return true;
    },
    has(id) {
      expire(clock());
      return seen.has(id);
    },
    get size() {
      return seen.size;
    },
    max,
    ttlMs,
    get evicted() {
      return evicted;
    },
  };
}
