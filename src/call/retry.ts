/**
 * When a call is sent again on another pod, and how many may be: the retry policy, the retry
 * budget (Linkerd's and Finagle's: retries stay under a ratio of live traffic, plus a small floor
 * per second, so a failing cluster is not hit with a multiple of its load), and the backoff
 * between attempts.
 */
import { backoffMs, type BackoffPolicy } from '../backoff.ts';
import { checkDelay, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';

/** Options of the pool's `retry`, and of `use(fn, { retry })` per call. */
export interface RetryOptions {
  /** Attempts after the first, each on another pod when one is ready. Default 2. */
  retries?: number;
  /**
   * Whether the call may be sent again after it may have reached a pod: it has no effect when
   * done twice (a read, a PUT, an upsert), or the caller does not mind. Default false: only
   * calls that never reached a pod (refused at connect, queued behind a connection that closed)
   * are sent again.
   */
  idempotent?: boolean;
  /** Backoff before a retry: exponential from `minDelayMs` (default 5), doubled, up to `maxDelayMs` (default 100), jittered. */
  minDelayMs?: number;
  maxDelayMs?: number;
}

/** Options of the pool's `retryBudget`. */
export interface RetryBudgetOptions {
  /** Retries and hedges allowed per call made, over the window. Default 0.2. */
  ratio?: number;
  /** Retries allowed per second whatever the traffic, so a quiet client can still retry. Default 10. */
  minPerSecond?: number;
  /** How far back calls and retries count. Default 10 s. */
  windowMs?: number;
}

/** The checked retry policy. */
export interface RetryPolicy {
  readonly retries: number;
  readonly idempotent: boolean;
  readonly backoff: BackoffPolicy;
}

/** What a pool does when given no `retry`: never-sent calls retried twice, nothing else. */
export const DEFAULT_RETRY: RetryPolicy = Object.freeze({
  retries: 2,
  idempotent: false,
  backoff: Object.freeze({ minMs: 5, maxMs: 100, factor: 2 }),
});

/** `retry: false`: no call is ever sent twice. */
export const NO_RETRY: RetryPolicy = Object.freeze({ ...DEFAULT_RETRY, retries: 0 });

const RETRY_OPTIONS = optionNames<RetryOptions>({ retries: true, idempotent: true, minDelayMs: true, maxDelayMs: true });
const BUDGET_OPTIONS = optionNames<RetryBudgetOptions>({ ratio: true, minPerSecond: true, windowMs: true });

/** Checks `retry` options (the pool's, or one call's over `base`), naming any bad one. */
export function retryPolicy(options: RetryOptions | false | undefined, base: RetryPolicy = DEFAULT_RETRY, name = 'retry'): RetryPolicy {
  if (options === undefined) return base;
  if (options === false) return NO_RETRY;
  checkOptions(options, RETRY_OPTIONS, name);
  const { retries = base.retries, idempotent = base.idempotent, maxDelayMs = base.backoff.maxMs } = options;
  // A ceiling under the default floor lowers the floor with it.
  const { minDelayMs = Math.min(base.backoff.minMs, typeof maxDelayMs === 'number' ? maxDelayMs : Infinity) } = options;
  checkNumber(`${name}.retries`, retries, { min: 0, integer: true });
  if (typeof idempotent !== 'boolean') invalidOption(`${name}.idempotent`, 'a boolean', idempotent);
  checkDelay(`${name}.minDelayMs`, minDelayMs, 0);
  checkDelay(`${name}.maxDelayMs`, maxDelayMs, minDelayMs);
  return { retries, idempotent, backoff: { minMs: minDelayMs, maxMs: maxDelayMs, factor: 2 } };
}

/** The jittered wait before retry number `attempt` (1 for the first). */
export function retryDelayMs(policy: RetryPolicy, attempt: number, random: () => number): number {
  return policy.backoff.maxMs === 0 ? 0 : backoffMs(policy.backoff, attempt, random);
}

/** How many slots the budget's window is cut into: it slides by a tenth. */
const SLOTS = 10;

/**
 * Retries allowed: at most `ratio` of the calls made over the last `windowMs`, plus
 * `minPerSecond` per second of the window. Calls and retries are counted in ten slots of a
 * tenth of the window each, so recording a call is an increment and a check is a sum of ten.
 */
export class RetryBudget {
  readonly #ratio: number;
  readonly #floor: number;
  readonly #slotMs: number;
  readonly #clock: () => number;
  readonly #calls = new Float64Array(SLOTS);
  readonly #retries = new Float64Array(SLOTS);
  /** The slot number (time / slotMs) the counters' current slot stands for. */
  #slot = 0;

  constructor(options: RetryBudgetOptions | undefined, clock: () => number) {
    if (options !== undefined) checkOptions(options, BUDGET_OPTIONS, 'retryBudget');
    const { ratio = 0.2, minPerSecond = 10, windowMs = 10_000 } = options ?? {};
    checkNumber('retryBudget.ratio', ratio, { min: 0 });
    checkNumber('retryBudget.minPerSecond', minPerSecond, { min: 0 });
    checkNumber('retryBudget.windowMs', windowMs, { min: 10 });
    this.#ratio = ratio;
    this.#floor = (minPerSecond * windowMs) / 1_000;
    this.#slotMs = windowMs / SLOTS;
    this.#clock = clock;
    this.#slot = Math.floor(clock() / this.#slotMs);
  }

  /** A call was made (not a retry, not a hedge) at `now`: it adds `ratio` to what may be retried. */
  deposit(now: number = this.#clock()): void {
    this.#calls[this.#advance(now)]++;
  }

  /** Takes one retry (or hedge) from the budget; false when it is spent: do not send again. */
  withdraw(): boolean {
    const current = this.#advance(this.#clock());
    let calls = 0;
    let retries = 0;
    for (let i = 0; i < SLOTS; i++) {
      calls += this.#calls[i]!;
      retries += this.#retries[i]!;
    }
    if (retries + 1 > calls * this.#ratio + this.#floor) return false;
    this.#retries[current]++;
    return true;
  }

  /** The index of the current slot, after clearing the slots that fell out of the window. */
  #advance(now: number): number {
    const slot = Math.floor(now / this.#slotMs);
    const passed = slot - this.#slot;
    if (passed > 0) {
      for (let i = 1; i <= Math.min(passed, SLOTS); i++) {
        const index = (this.#slot + i) % SLOTS;
        this.#calls[index] = 0;
        this.#retries[index] = 0;
      }
      this.#slot = slot;
    }
    return slot % SLOTS;
  }
}

/**
 * The pool's retry policy and budget, as an adapter that sends a request again itself (the
 * undici `Dispatcher`, the grpc-js `Channel`) needs them. The pool deposits for every call begun
 * without `avoid`; a retry begun with `avoid` deposits nothing.
 */
export interface RetryGate {
  /** The pool's `retry` policy: attempts after the first (0: never resend), and whether calls are idempotent unless said otherwise. */
  readonly policy: RetryPolicy;
  /**
   * Takes one retry or hedge from the budget; false when it is spent, and the call must not be
   * sent again. A call that never reached a pod is resent without asking: it costs no pod anything.
   */
  withdraw(): boolean;
  /** The jittered wait before retry number `attempt` (1 for the first), in ms. */
  delayMs(attempt: number, policy?: RetryPolicy): number;
}
