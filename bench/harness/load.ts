/**
 * Closed-loop load: each client runs `inflight` workers that send a request, wait for the answer
 * and send the next. Every loop is bounded twice, by time and by count, so a bench can't run away.
 */
import { createHistogram, performance, type RecordableHistogram } from 'node:perf_hooks';
import type { PoolStats } from '../../src/index.ts';

/** One client application instance: its own connection(s), whichever way it balances. */
export interface Caller {
  /** One request; resolves with the name of the pod that answered. */
  call(): Promise<string>;
  close(): Promise<void>;
  /** podpool's clients: the pool's own figures (members' in-flight calls, retries, hedges). */
  stats?(): PoolStats;
}

export interface LoadOptions {
  /** Requests in flight per client. */
  inflight: number;
  durationMs: number;
  /** Upper bound on requests per client, whatever the time. */
  maxRequests: number;
  /** Called about every 100 ms with the elapsed fraction, for the progress bar. */
  onTick?: (fraction: number) => void;
  /** Keep every answer's time and pod, for time lines (scale-up). */
  keepAnswers?: boolean;
  /** Stops the load early. */
  signal?: AbortSignal;
  /**
   * Keeps the load going past `durationMs` until this settles (a rolling restart that must finish
   * under load), but never past `maxDurationMs` (default 3 × `durationMs`).
   */
  holdUntil?: Promise<unknown>;
  maxDurationMs?: number;
  /** Workers wait here before each request while it is closed (see {@link Gate}). */
  gate?: Gate;
}

/**
 * Holds the workers back before their next request, for a moment in which the calls in flight
 * must not change but by finishing: a scenario reads a pool's in-flight calls, then kills a pod
 * in another process, and no call starts in between. Calls already started carry on.
 */
export class Gate {
  #opened: PromiseWithResolvers<void> | undefined;

  /** A promise while closed: wait for it before the next request. */
  get closed(): Promise<void> | undefined {
    return this.#opened?.promise;
  }

  /** Closes the gate; returns the function that opens it. */
  close(): () => void {
    const opened = (this.#opened ??= Promise.withResolvers<void>());
    return () => {
      if (this.#opened === opened) this.#opened = undefined;
      opened.resolve();
    };
  }
}

export interface LoadResult {
  requests: number;
  errors: number;
  /** The first few distinct error messages, to say what failed. */
  errorSamples: string[];
  elapsedMs: number;
  latency: RecordableHistogram;
  /** Answers as [ms since start, pod name], when `keepAnswers`. */
  answers: [number, string][];
  /** Answers per pod, as the clients saw them. */
  byPod: Map<string, number>;
}

/**
 * A call that has not answered by then counts as failed, and the worker moves on: a client that
 * queues a request forever (undici BalancedPool once every pod it listed is gone) must not hold
 * the bench past its bounds.
 */
export const CALL_TIMEOUT_MS = 5_000;

export async function runLoad(callers: readonly Caller[], options: LoadOptions): Promise<LoadResult> {
  const { inflight, durationMs, maxRequests, onTick, keepAnswers = false, signal, holdUntil, gate } = options;
  const latency = createHistogram();
  const answers: [number, string][] = [];
  const byPod = new Map<string, number>();
  const errorSamples: string[] = [];
  let requests = 0;
  let errors = 0;
  const start = performance.now();
  let end = start + durationMs;
  if (holdUntil) {
    const cap = start + (options.maxDurationMs ?? durationMs * 3);
    end = cap;
    void holdUntil.finally(() => {
      end = Math.min(cap, Math.max(start + durationMs, performance.now() + Math.min(250, durationMs / 4)));
    });
  }
  const ticker = onTick ? setInterval(() => onTick(Math.min(1, (performance.now() - start) / durationMs)), 100) : undefined;

  const worker = async (caller: Caller, budget: { left: number }): Promise<void> => {
    while (budget.left > 0 && performance.now() < end && !signal?.aborted) {
      const closed = gate?.closed;
      if (closed) {
        await closed;
        continue;
      }
      budget.left--;
      const t0 = performance.now();
      let timer: NodeJS.Timeout | undefined;
      try {
        const pod = await Promise.race([
          caller.call(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`no answer within ${CALL_TIMEOUT_MS} ms`)), CALL_TIMEOUT_MS);
          }),
        ]);
        const t1 = performance.now();
        latency.record(Math.max(1, Math.round((t1 - t0) * 1e6)));
        requests++;
        byPod.set(pod, (byPod.get(pod) ?? 0) + 1);
        if (keepAnswers) answers.push([t1 - start, pod]);
      } catch (error) {
        errors++;
        const message = error instanceof Error ? `${(error as { code?: string }).code ?? error.name}: ${error.message}` : String(error);
        if (errorSamples.length < 5 && !errorSamples.includes(message)) errorSamples.push(message);
        // A client whose connection is down fails fast; don't spin on it.
        await new Promise((r) => setTimeout(r, 5));
      } finally {
        clearTimeout(timer);
      }
    }
  };
  try {
    await Promise.all(
      callers.flatMap((caller) => {
        const budget = { left: maxRequests };
        return Array.from({ length: inflight }, () => worker(caller, budget));
      }),
    );
  } finally {
    clearInterval(ticker);
  }
  onTick?.(1);
  return { requests, errors, errorSamples, elapsedMs: performance.now() - start, latency, answers, byPod };
}

/** Milliseconds at a percentile of a histogram in nanoseconds; 0 when empty. */
export function percentileMs(h: RecordableHistogram, p: number): number {
  return h.count === 0 ? 0 : round(h.percentile(p) / 1e6, 2);
}

/** Coefficient of variation (σ / mean) of per-pod counts, idle pods included. */
export function coefficientOfVariation(values: readonly number[]): number {
  if (values.length === 0) return 0;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  if (mean === 0) return 0;
  const variance = values.reduce((a, v) => a + (v - mean) ** 2, 0) / values.length;
  return round(Math.sqrt(variance) / mean, 3);
}

export function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
