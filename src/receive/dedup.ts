import { checkFunction, checkNumber, checkOptions, invalidArgument, optionNames } from '../options.ts';

/** Options of {@link dedupFilter}. */
export interface DedupOptions {
  /**
   * Ids remembered at most. `add()` forgets the oldest of its own ids when full; an id `keep()`
   * remembers is never forgotten early, so a filter full of those refuses new ones instead.
   * Default 10 000.
   */
  max?: number;
  /** How long an id `add()` remembers is kept, in ms of `clock`. Default: until `max` pushes it out. */
  ttlMs?: number;
  /** Milliseconds for `ttlMs` and `keep()`; default `Date.now`. */
  clock?: () => number;
}

/** What {@link ReplayMemory.keep} did: remembered a `new` id, found a `duplicate`, or was `full`. */
export type KeepOutcome = 'new' | 'duplicate' | 'full';

/**
 * What `verifyMessage` needs to recognise a replay: remember an accepted id for as long as a
 * replay of it could pass. A {@link dedupFilter} is one; a store of your own (shared by the
 * replicas, or kept on disk) can be another, and then a replay is recognised across restarts too.
 */
export interface ReplayMemory {
  /**
   * Remembers `id` for `forMs` more milliseconds (inclusive: still remembered at exactly
   * `forMs`), never forgetting it earlier: `new` the first time, `duplicate` while remembered
   * (which also extends it to `forMs` when that is later), `full` when it can't remember one
   * more id without forgetting one that must still be kept. The caller refuses the message on
   * `duplicate` and `full` alike.
   */
  keep(id: string, forMs: number): KeepOutcome;
}

/**
 * Remembers the message ids a receiver has seen, in bounded memory: at most `max` ids. Broadcasts
 * are retried per pod, so a pod may get one message twice; a receiver that asks `add(id)` before
 * acting applies it once. `verifyMessage` uses `keep()` instead, which never forgets an id early.
 */
export interface DedupFilter extends ReplayMemory {
  /**
   * Remembers `id` for `ttlMs`; true when it is new, false when it is a duplicate (remembered
   * already). When full, forgets the oldest id `add()` remembered (counted in `evicted`); when
   * every id is kept by `keep()`, the new id is not remembered (counted too).
   */
  add(id: string): boolean;
  /** Whether `id` is remembered, without remembering it. */
  has(id: string): boolean;
  /** Ids remembered now (never more than `max`). */
  readonly size: number;
  /** The options it runs with. */
  readonly max: number;
  readonly ttlMs: number;
  /** Ids `add()` forgot (or could not remember) because `max` was reached while they were younger than `ttlMs`. */
  readonly evicted: number;
  /** Ids `keep()` refused (`full`) because `max` ids had to be kept. */
  readonly refused: number;
}

const OPTIONS = optionNames<DedupOptions>({ max: true, ttlMs: true, clock: true });

/**
 * A bounded duplicate filter by id. Two `Map`s, both in insertion order: `add()`'s ids, which all
 * live `ttlMs` so insertion order is expiry order and forgetting is O(1) from the front; and
 * `keep()`'s ids, each with its own deadline. Those are forgotten from the front too, once the
 * front one's deadline passed, so one kept longer holds back the ones behind it until then:
 * memory stays bounded by `max`, and no kept id is forgotten early.
 */
export function dedupFilter(options: DedupOptions = {}): DedupFilter {
  checkOptions(options, OPTIONS);
  const { max = 10_000, ttlMs = Infinity, clock = Date.now } = options;
  checkNumber('max', max, { min: 1, integer: true });
  checkNumber('ttlMs', ttlMs, { min: 1, allowInfinity: true });
  checkFunction('clock', clock, 'a function returning milliseconds');

  /** add()'s ids → the time each was first seen. */
  const added = new Map<string, number>();
  /** keep()'s ids → the last instant each must be remembered. */
  const kept = new Map<string, number>();
  let evicted = 0;
  let refused = 0;

  const expire = (now: number): void => {
    if (ttlMs !== Infinity) {
      for (const [id, at] of added) {
        if (now - at < ttlMs) break;
        added.delete(id);
      }
    }
    for (const [id, until] of kept) {
      if (until >= now) break;
      kept.delete(id);
    }
  };
  const isKept = (id: string, now: number): boolean => (kept.get(id) ?? -Infinity) >= now;
  /** Makes room for one id by forgetting add()'s oldest; false when every id is kept. */
  const makeRoom = (): boolean => {
    if (added.size + kept.size < max) return true;
    if (added.size === 0) return false;
    added.delete(added.keys().next().value as string);
    evicted++;
    return true;
  };

  return {
    add(id) {
      if (typeof id !== 'string') invalidArgument('id', 'a string', id);
      const now = clock();
      expire(now);
      if (added.has(id) || isKept(id, now)) return false;
      kept.delete(id);
      if (!makeRoom()) {
        evicted++;
        return true;
      }
      added.set(id, now);
      return true;
    },
    keep(id, forMs) {
      if (typeof id !== 'string') invalidArgument('id', 'a string', id);
      if (typeof forMs !== 'number' || !(forMs >= 0)) invalidArgument('forMs', 'a number of ms >= 0', forMs);
      const now = clock();
      const until = now + forMs;
      expire(now);
      const current = kept.get(id);
      if (current !== undefined && current >= now) {
        // Set on an existing key keeps its place: the front still holds the oldest.
        if (until > current) kept.set(id, until);
        return 'duplicate';
      }
      // Past its deadline but held back by an earlier one: it goes to the end, as a new one.
      if (current !== undefined) kept.delete(id);
      if (added.delete(id)) {
        kept.set(id, until);
        return 'duplicate';
      }
      if (!makeRoom()) {
        refused++;
        return 'full';
      }
      kept.set(id, until);
      return 'new';
    },
    has(id) {
      const now = clock();
      expire(now);
      return added.has(id) || isKept(id, now);
    },
    get size() {
      return added.size + kept.size;
    },
    max,
    ttlMs,
    get evicted() {
      return evicted;
    },
    get refused() {
      return refused;
    },
  };
}
