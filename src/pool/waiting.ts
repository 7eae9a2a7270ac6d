import { reasonOf } from '../abort.ts';
import { ClosedError, NoEndpointsError, TimeoutError, abortError, type PodpoolError } from '../errors.ts';

/** `PODPOOL_CLOSED` for `what` (`use()`, `ready()`, …) once the pool is closed. */
export function closedError(what: string): ClosedError {
  return new ClosedError(`${what}: the pool is closed`);
}

/** What the waits read of the pool, live. */
export interface WaitView<M> {
  /** `close()` was called. */
  readonly closed: boolean;
  /** Members that can be picked now (state `ready`). */
  readonly pickable: number;
  /** The pool is `failing`: every pod's last connect failed, or is ejected, or there is none. */
  readonly failing: boolean;
  pick(key: string | undefined): M | undefined;
  /** What the pool knows and what to do about it; `waited`: the error ends a wait. */
  situation(waited: boolean): string;
}

/** How `toPick` waits. */
export interface PickWait {
  readonly signal: AbortSignal | undefined;
  readonly timeoutMs: number | undefined;
  /** Fail with `PODPOOL_NO_ENDPOINTS` as soon as the pool is `failing`. */
  readonly failFast: boolean;
  /** Names the wait in errors: `use()`, `beginWhenReady()`. */
  readonly what: string;
}

interface Waiter {
  check(): void;
  fail(error: PodpoolError): void;
}

/**
 * The calls that wait for a pickable member: `ready()` for a count of them, and `use()` or
 * `beginWhenReady()` for one to pick when none is. The pool wakes them on each state change
 * that may matter; they never poll.
 */
export class Waits<M> {
  readonly #view: WaitView<M>;
  readonly #waiters = new Set<Waiter>();

  constructor(view: WaitView<M>) {
    this.#view = view;
  }

  /** `PODPOOL_NO_ENDPOINTS` for a call that finds no member to pick and does not wait. */
  noEndpoints(): NoEndpointsError {
    return new NoEndpointsError(`no endpoint is ready to take the call: ${this.#view.situation(false)}`);
  }

  /** Tells every waiter that something it waits on may have changed. */
  wake(): void {
    if (this.#waiters.size === 0) return;
    for (const w of [...this.#waiters]) w.check();
  }

  /** Ends every wait with `error` (the pool closes). */
  failAll(error: PodpoolError): void {
    for (const w of [...this.#waiters]) w.fail(error);
  }

  /** Resolves once `minEndpoints` members are pickable: `ready()`'s wait. */
  untilPickable(minEndpoints: number, signal: AbortSignal | undefined, timeoutMs: number | undefined): Promise<void> {
    const view = this.#view;
    return new Promise<void>((resolve, reject) => {
      const done = (error?: PodpoolError): void => {
        this.#waiters.delete(waiter);
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve();
      };
      const waiter: Waiter = {
        check: () => {
          if (view.pickable >= minEndpoints) done();
        },
        fail: done,
      };
      const onAbort = (): void => done(abortError(signal!, 'ready()'));
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              done(new TimeoutError(`ready(): ${view.pickable} of ${minEndpoints} endpoint(s) ready after ${timeoutMs} ms; ${view.situation(true)}`));
            }, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(waiter);
    });
  }

  /**
   * Waits until a member can be picked for `key`, then calls `picked` with it, from a microtask
   * of its own: never from inside the state change that made it pickable, and with the pick and
   * what `picked` starts in one synchronous step, so the member can't change in between.
   * `failed` gets the reason the wait ended instead.
   */
  toPick(key: string | undefined, { signal, timeoutMs, failFast, what }: PickWait, picked: (m: M) => void, failed: (error: unknown) => void): void {
    const view = this.#view;
    if (signal?.aborted) {
      failed(reasonOf(signal, what));
      return;
    }
    if (failFast && view.failing) {
      failed(this.noEndpoints());
      return;
    }
    let settled = false;
    let scheduled = false;
    const finish = (): void => {
      settled = true;
      this.#waiters.delete(waiter);
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const fail = (error: unknown): void => {
      if (settled) return;
      finish();
      failed(error);
    };
    const attempt = (): void => {
      scheduled = false;
      if (settled) return;
      if (view.closed) {
        fail(closedError(what));
        return;
      }
      let m: M | undefined;
      try {
        m = view.pick(key);
      } catch (error) {
        fail(error);
        return;
      }
      if (m !== undefined) {
        finish();
        picked(m);
      } else if (failFast && view.failing) {
        fail(this.noEndpoints());
      }
    };
    const waiter: Waiter = {
      check: () => {
        if (scheduled || settled) return;
        scheduled = true;
        queueMicrotask(attempt);
      },
      fail,
    };
    const onAbort = (): void => fail(reasonOf(signal!, what));
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            fail(new NoEndpointsError(`${what}: no endpoint became ready within ${timeoutMs} ms: ${view.situation(true)}`));
          }, timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    this.#waiters.add(waiter);
    // A look now, as a state change would: a wait begun as the pool closes must not outlive it.
    waiter.check();
  }
}
