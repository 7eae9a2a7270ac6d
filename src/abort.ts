/**
 * What podpool does when an `AbortSignal` fires while something waits: the error to reject with,
 * and a promise raced against the signal. One home, so every wait fails the same way.
 */
import { PodpoolError, abortError } from './errors.ts';

/**
 * The error to reject with when `signal` aborts `what`: the signal's own reason when podpool put
 * it there (a `TIMEOUT` or `CLOSED` it aborted with), else `PODPOOL_ABORTED` with the caller's
 * reason as the cause.
 */
export function reasonOf(signal: AbortSignal, what: string): unknown {
  return signal.reason instanceof PodpoolError ? signal.reason : abortError(signal, what);
}

/** The message of anything thrown, for a log line or a wrapping error's message. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * `promise`, unless `signal` aborts first: then it rejects with {@link reasonOf}. A value that
 * arrives after the abort is handed to `late` (when given), so a connection opened too late is
 * closed instead of leaked.
 */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal, what: string, late?: (value: T) => unknown): Promise<T> {
  if (signal.aborted) {
    if (late !== undefined) promise.then(late, () => {});
    return Promise.reject(reasonOf(signal, what));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(reasonOf(signal, what));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        if (!signal.aborted) resolve(value);
        else if (late !== undefined) void late(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
