import pRetry from 'p-retry';
import type { Endpoint } from '../endpoint.ts';
import { NotConnectedError, TimeoutError, abortError } from '../errors.ts';
import { checkDelay, checkNumber, checkOptions, checkSignal, invalidOption, optionNames } from '../options.ts';
import { byEndpointKey, type Member } from './member.ts';

/** Options of `pool.broadcast()`. */
export interface BroadcastOptions {
  /** Deliveries running at once. Default: all pods at once. */
  concurrency?: number;
  /** Deadline for the whole broadcast; pods not reached by then fail with `PODPOOL_TIMEOUT`. */
  timeoutMs?: number;
  /** Extra attempts per pod after a failed one (jittered exponential backoff, 50 ms to 2 s), at most 100. Default 0. */
  retries?: number;
  /** Aborts the broadcast; pods not reached by then fail with `PODPOOL_ABORTED`. */
  signal?: AbortSignal;
  /** The message id handed to every delivery; default a random UUID. Retries reuse it. */
  id?: string;
}

/** What each delivery of a broadcast is told: the same `id` on every pod and every retry. */
export interface Delivery {
  readonly id: string;
  /** 1 for the first attempt on this pod, 2 for the first retry, … */
  readonly attempt: number;
  /** Aborted at the broadcast's deadline or by the caller's signal. */
  readonly signal: AbortSignal;
}

/** One pod's successful delivery. */
export interface Delivered<T> {
  readonly endpoint: Endpoint;
  readonly value: T;
  readonly attempts: number;
}

/** One pod the broadcast did not reach, and why. */
export interface DeliveryFailure {
  readonly endpoint: Endpoint;
  readonly error: unknown;
  readonly attempts: number;
}

/** The outcome of a broadcast: every pod it aimed at is in exactly one of the two lists. */
export interface BroadcastResult<T> {
  readonly id: string;
  readonly delivered: readonly Delivered<T>[];
  readonly failed: readonly DeliveryFailure[];
  readonly durationMs: number;
}

/** The checked options a fan-out runs with. */
export interface FanOutPlan {
  readonly id: string;
  readonly concurrency: number;
  readonly timeoutMs: number | undefined;
  readonly retries: number;
  readonly signal: AbortSignal | undefined;
}

const BROADCAST_OPTIONS = optionNames<BroadcastOptions>({ concurrency: true, timeoutMs: true, retries: true, signal: true, id: true });

/**
 * A broadcast's retries per pod: its backoff reaches its 2 s ceiling by the sixth, so 100 keep
 * trying a pod for over three minutes; more, without a `timeoutMs`, would hold the broadcast on
 * one dead pod for days.
 */
const MAX_RETRIES = 100;

/** Checks broadcast options at the door. */
export function planBroadcast(options: BroadcastOptions | undefined): FanOutPlan {
  if (options !== undefined) checkOptions(options, BROADCAST_OPTIONS);
  const { concurrency = Infinity, timeoutMs, retries = 0, signal, id = crypto.randomUUID() } = options ?? {};
  checkNumber('concurrency', concurrency, { min: 1, integer: true, allowInfinity: true });
  if (timeoutMs !== undefined) checkDelay('timeoutMs', timeoutMs);
  checkNumber('retries', retries, { min: 0, integer: true });
  if (retries > MAX_RETRIES) invalidOption('retries', `an integer from 0 to ${MAX_RETRIES}`, retries);
  checkSignal('signal', signal);
  if (typeof id !== 'string' || id === '') invalidOption('id', 'a non-empty string', id);
  return { id, concurrency, timeoutMs, retries, signal };
}

/**
 * The members a broadcast aims at, in endpoint key order: ready, ejected and reconnecting ones
 * (a pod that is down is reported, not skipped); never a draining one.
 */
export function broadcastTargets<C>(members: Iterable<Member<C>>): Member<C>[] {
  const targets: Member<C>[] = [];
  for (const m of members) {
    if (m.state === 'ready' || m.state === 'ejected' || m.state === 'connecting') targets.push(m);
  }
  return targets.sort(byEndpointKey);
}

/** `PODPOOL_NOT_CONNECTED` for a delivery to a member whose connection is down. */
export function notConnected(m: Member<unknown>): NotConnectedError {
  return new NotConnectedError(`${m.endpoint.key} is not connected (${m.state})${m.lastError ? `: ${m.lastError.message}` : ''}`, { cause: m.lastError });
}

/**
 * Runs `deliver` once per target (retrying each on its own), at most `concurrency` at a time,
 * and sorts every target into delivered or failed. It never rejects because a delivery failed.
 */
export async function fanOut<M, T>(
  targets: readonly M[],
  endpointOf: (target: M) => Endpoint,
  deliver: (target: M, delivery: Delivery) => Promise<T>,
  plan: FanOutPlan,
  clock: () => number,
): Promise<BroadcastResult<T>> {
  const started = clock();
  const controller = new AbortController();
  const { signal } = controller;
  const onCallerAbort = (): void => controller.abort(abortError(plan.signal!, `broadcast ${plan.id}`));
  if (plan.signal?.aborted) onCallerAbort();
  else plan.signal?.addEventListener('abort', onCallerAbort, { once: true });
  const timer =
    plan.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          controller.abort(new TimeoutError(`broadcast ${plan.id} did not reach this pod within ${plan.timeoutMs} ms`));
        }, plan.timeoutMs);

  const outcomes: (Delivered<T> | DeliveryFailure)[] = new Array(targets.length);
  const deliverOne = async (target: M): Promise<Delivered<T> | DeliveryFailure> => {
    const endpoint = endpointOf(target);
    let attempts = 0;
    try {
      const value = await pRetry(
        (attempt) => {
          attempts = attempt;
          signal.throwIfAborted();
          return deliver(target, { id: plan.id, attempt, signal });
        },
        { retries: plan.retries, minTimeout: 50, maxTimeout: 2_000, factor: 2, randomize: true, signal },
      );
      return { endpoint, value, attempts };
    } catch (error) {
      return { endpoint, error: signal.aborted ? signal.reason : error, attempts };
    }
  };

  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < targets.length) {
      const i = next++;
      outcomes[i] = await deliverOne(targets[i]);
    }
  };
  try {
    const workers = Math.min(plan.concurrency, targets.length);
    await Promise.all(Array.from({ length: workers }, worker));
  } finally {
    clearTimeout(timer);
    plan.signal?.removeEventListener('abort', onCallerAbort);
  }

  const delivered: Delivered<T>[] = [];
  const failed: DeliveryFailure[] = [];
  for (const o of outcomes) {
    if ('error' in o) failed.push(o);
    else delivered.push(o);
  }
  return { id: plan.id, delivered, failed, durationMs: clock() - started };
}
