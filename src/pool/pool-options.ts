import { performance } from 'node:perf_hooks';
import type { Balancer } from '../balance/balancer.ts';
import { slowStartPolicy, type SlowStartOptions, type SlowStartPolicy } from '../balance/slow-start.ts';
import { roundRobin } from '../balance/round-robin.ts';
import { subsetPolicy, type SubsetOptions, type SubsetPolicy } from '../balance/subset.ts';
import { zonePolicy, type ZoneOptions, type ZonePolicy } from '../balance/zone.ts';
import type { EndpointSource } from '../discovery/source.ts';
import { checkDeadline, checkDelay, checkNumber, checkOptions, checkSignal, invalidOption, optionNames } from '../options.ts';
import type { CallPlan } from '../call/call.ts';
import { hedgePolicy, type HedgeOptions, type HedgePolicy } from '../call/hedge.ts';
import { retryPolicy, type RetryBudgetOptions, type RetryOptions, type RetryPolicy } from '../call/retry.ts';
import type { Transport } from '../transport/transport.ts';
import type { BeginOptions } from './adapter-pool.ts';
import { reconnectPolicy, type ReconnectOptions, type ReconnectPolicy } from './connector.ts';
import { ejectionPolicy, type EjectionOptions, type EjectionPolicy } from './ejection.ts';

const POOL_OPTIONS = optionNames<PoolOptions<unknown>>({
  source: true,
  transport: true,
  balancer: true,
  drainTimeoutMs: true,
  reconnect: true,
  ejection: true,
  callTimeoutMs: true,
  retry: true,
  retryBudget: true,
  hedge: true,
  slowStart: true,
  subset: true,
  zone: true,
  clock: true,
  random: true,
});

/** Options of {@link createPool}. */
export interface PoolOptions<C> {
  /** Where endpoints come from: `staticEndpoints`, `dnsEndpoints`, `kubernetesEndpoints`. */
  source: EndpointSource;
  /** How to talk to one pod: `httpTransport`, … */
  transport: Transport<C>;
  /** How to choose a pod per call. Default `roundRobin()`. */
  balancer?: Balancer;
  /** How long a removed or terminating pod's in-flight calls may run before its connection closes. Default 30 s. */
  drainTimeoutMs?: number;
  /** Reconnect backoff: exponential from `minMs` by `factor` up to `maxMs`, jittered. */
  reconnect?: ReconnectOptions;
  /** Outlier ejection after consecutive failures; `false` turns it off. */
  ejection?: EjectionOptions | false;
  /**
   * The deadline of a `use()` call (and of each broadcast delivery) that sets no `timeoutMs` of
   * its own: past it the call fails with `PODPOOL_TIMEOUT`, its signal aborts, and it counts
   * against the pod. `Infinity`: no deadline (a call then waits for as long as its pod does).
   * Default 30 s. Calls share its timers: it costs a call about 0.2 µs.
   */
  callTimeoutMs?: number;
  /**
   * Sending a call again on another pod. By default a call that never reached a pod (refused at
   * connect, queued on a connection that closed first) is sent again up to twice; one that may
   * have reached it is not, unless `idempotent: true` (here for every call, or per call in
   * `use()`). `false`: no call is ever sent twice.
   */
  retry?: RetryOptions | false;
  /** How many retries and hedges may be sent: at most `ratio` (0.2) of calls plus `minPerSecond` (10). */
  retryBudget?: RetryBudgetOptions;
  /**
   * Hedging for every `use()` call: after `delayMs`, or once a call is slower than `percentile`
   * of the pool's recent calls, the same call goes to a second pod; the first answer wins and the
   * other is cancelled. A percentile also caps hedges at `100 - percentile` % of calls. Only
   * for calls that may run twice (idempotent ones). Default: none.
   */
  hedge?: HedgeOptions;
  /**
   * Slow start (Envoy's slow-start window): a pod that just connected, while others have served
   * for longer than `windowMs`, gets a share of the calls that grows from `minWeight` (0.1) of its
   * full share to all of it over `windowMs`, so a cold pod is not hit with its full share at
   * once. Calls with an affinity key are not moved. Default: none.
   */
  slowStart?: SlowStartOptions;
  /**
   * Deterministic subsetting: connect to `size` of the pods only, chosen from this client's
   * `clientId` among `clientCount` clients so every pod gets about as many clients as another.
   * Default: every pod.
   */
  subset?: SubsetOptions;
  /** Zone-aware routing: prefer the pods of the client's own `zone` while it has capacity. Default: none. */
  zone?: ZoneOptions;
  /** Time in ms for latency and timers' bookkeeping; default `performance.now`. */
  clock?: () => number;
  /** Random numbers in [0, 1) for balancers; default `Math.random`. */
  random?: () => number;
}

const USE_OPTIONS = optionNames<UseOptions>({
  key: true,
  signal: true,
  timeoutMs: true,
  waitForReady: true,
  failedResult: true,
  retry: true,
  hedge: true,
});
const READY_OPTIONS = optionNames<ReadyOptions>({ minEndpoints: true, signal: true, timeoutMs: true });
const BEGIN_OPTIONS = optionNames<BeginOptions>({ key: true, signal: true, timeoutMs: true, failFast: true, avoid: true });

/** Options of `pool.use()`. */
export interface UseOptions<T = unknown> {
  /** Affinity key, for `ringHash()`: the same key goes to the same pod while it is ready. */
  key?: string;
  /**
   * Aborts the wait for the call. The callback always gets a signal: this one, or else one that
   * aborts when the pool closes the connection under the call (lost, or drained past
   * `drainTimeoutMs`, or the pool closed).
   */
  signal?: AbortSignal;
  /**
   * Fails the call with `PODPOOL_TIMEOUT` after this long and counts it against the pod; retries
   * and hedges happen within it. A wait for a ready pod (see `waitForReady`) counts toward it.
   * Default the pool's `callTimeoutMs` (30 s); `Infinity`: none.
   */
  timeoutMs?: number;
  /**
   * When no member can be picked (the pool is starting, or every pod is reconnecting or ejected):
   * `true` (the default) waits for one, up to `timeoutMs`, or 10 s without it, or until `signal`
   * aborts, then fails with `PODPOOL_NO_ENDPOINTS`; `false` fails at once. As grpc-js queues
   * a call while its channel connects. A retry that finds no member to pick waits the same way
   * (within the call's deadline), or with `false` lets the last failure stand.
   */
  waitForReady?: boolean;
  /**
   * Whether what `fn` returned says the pod failed, so it counts toward ejection as a thrown
   * pod failure would. By default the transport decides: for HTTP, a response (undici's
   * `{ statusCode }` or a fetch `Response`) with a 5xx or 429 status. The caller still gets the value.
   */
  failedResult?: (result: T) => boolean;
  /**
   * This call's retries, over the pool's `retry`: `{ idempotent: true }` lets a call that may
   * have reached a pod be sent again when it failed against it; `false` sends it only once.
   */
  retry?: RetryOptions | false;
  /** This call's hedging, over the pool's `hedge`; `false`: none. */
  hedge?: HedgeOptions | false;
}

/** How long a call waits for a pickable member when it sets no `timeoutMs` of its own. */
export const DEFAULT_READY_WAIT_MS = 10_000;

/** Options of `pool.ready()`. */
export interface ReadyOptions {
  /** Members that must be ready. Default 1. */
  minEndpoints?: number;
  signal?: AbortSignal;
  /** Fails with `PODPOOL_TIMEOUT` (saying what is missing) after this long. Default, or `Infinity`: no limit. */
  timeoutMs?: number;
}

/** The checked options a pool runs with: every default filled in. */
export interface PoolSettings<C> {
  readonly source: EndpointSource;
  readonly transport: Transport<C>;
  readonly balancer: Balancer;
  readonly drainTimeoutMs: number;
  readonly reconnect: ReconnectPolicy;
  /** `undefined`: ejection is off. */
  readonly ejection: EjectionPolicy | undefined;
  readonly callTimeoutMs: number;
  readonly retry: RetryPolicy;
  readonly retryBudget: RetryBudgetOptions | undefined;
  readonly hedge: HedgePolicy | undefined;
  readonly slowStart: SlowStartPolicy | undefined;
  /** `undefined`: every pod (full mesh). */
  readonly subset: SubsetPolicy | undefined;
  /** `undefined`: no zone preference. */
  readonly zone: ZonePolicy | undefined;
  readonly clock: () => number;
  readonly random: () => number;
}

/** Checks `createPool`'s options at the door, naming any bad one. */
export function checkPoolOptions<C>(options: PoolOptions<C>): PoolSettings<C> {
  checkOptions(options, POOL_OPTIONS);
  const { source, transport, balancer = roundRobin(), drainTimeoutMs = 30_000, reconnect = {} } = options;
  if (source === null || typeof source !== 'object' || typeof source.watch !== 'function') {
    invalidOption('source', 'an endpoint source (staticEndpoints, dnsEndpoints, kubernetesEndpoints)', source);
  }
  if (transport === null || typeof transport !== 'object' || typeof transport.connect !== 'function') {
    invalidOption('transport', 'a transport (httpTransport, grpcTransport, …)', transport);
  }
  if (balancer === null || typeof balancer !== 'object' || typeof balancer.picker !== 'function') {
    invalidOption('balancer', 'a balancer (roundRobin(), leastLoaded(), …)', balancer);
  }
  checkDelay('drainTimeoutMs', drainTimeoutMs, 0);
  const reconnectBackoff = reconnectPolicy(reconnect);
  const ejection = ejectionPolicy(options.ejection);
  const clock = options.clock ?? performance.now.bind(performance);
  const random = options.random ?? Math.random;
  if (typeof clock !== 'function') invalidOption('clock', 'a function returning milliseconds', clock);
  if (typeof random !== 'function') invalidOption('random', 'a function returning [0, 1)', random);
  const { callTimeoutMs = DEFAULT_CALL_TIMEOUT_MS } = options;
  checkDeadline('callTimeoutMs', callTimeoutMs);
  const retry = retryPolicy(options.retry);
  const hedge = hedgePolicy(options.hedge);
  const slowStart = slowStartPolicy(options.slowStart);
  const subset = subsetPolicy(options.subset);
  const zone = zonePolicy(options.zone);
  return { source, transport, balancer, drainTimeoutMs, reconnect: reconnectBackoff, ejection, callTimeoutMs, retry, retryBudget: options.retryBudget, hedge, slowStart, subset, zone, clock, random };
}

/** The deadline of a call that sets none: long enough for any request, short of forever. */
export const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/** The plan of a `use()` call: the pool's `defaults` with the call's options over them. */
export function callPlan<T>(defaults: CallPlan<unknown>, options: UseOptions<T>): CallPlan<T> {
  checkOptions(options, USE_OPTIONS);
  const { key, signal, timeoutMs = defaults.timeoutMs, failedResult, waitForReady = true } = options;
  checkKey(key);
  checkSignal('signal', signal);
  checkDeadline('timeoutMs', timeoutMs);
  if (failedResult !== undefined && typeof failedResult !== 'function') invalidOption('failedResult', 'a function (result) => boolean', failedResult);
  if (typeof waitForReady !== 'boolean') invalidOption('waitForReady', 'a boolean', waitForReady);
  return {
    key,
    signal,
    timeoutMs,
    failedResult,
    retry: options.retry === undefined ? defaults.retry : retryPolicy(options.retry, defaults.retry),
    hedge: options.hedge === undefined ? defaults.hedge : hedgePolicy(options.hedge),
    waitForReady,
    what: defaults.what,
  };
}

/** An affinity key: a string, which `ringHash()` hashes (a number would hash as nothing at all). */
function checkKey(key: unknown): void {
  if (key !== undefined && typeof key !== 'string') invalidOption('key', 'a string', key);
}

/**
 * Checks `ready()`'s options; returns its wait's limit (`undefined`: none, as for `Infinity`).
 */
export function checkReadyOptions(options: ReadyOptions): { minEndpoints: number; signal: AbortSignal | undefined; timeoutMs: number | undefined } {
  checkOptions(options, READY_OPTIONS);
  const { minEndpoints = 1, signal, timeoutMs } = options;
  checkNumber('minEndpoints', minEndpoints, { min: 1, integer: true });
  checkSignal('signal', signal);
  const limit = timeoutMs === undefined ? Infinity : checkDeadline('timeoutMs', timeoutMs, 0);
  return { minEndpoints, signal, timeoutMs: limit === Infinity ? undefined : limit };
}

/** Checks `beginWhenReady()`'s options, as an adapter passes them (or a caller of its own). */
export function checkBeginOptions(options: BeginOptions): void {
  checkOptions(options, BEGIN_OPTIONS);
  const { key, signal, timeoutMs, failFast } = options;
  checkKey(key);
  checkSignal('signal', signal);
  if (timeoutMs !== undefined) checkDelay('timeoutMs', timeoutMs, 0);
  if (failFast !== undefined && typeof failFast !== 'boolean') invalidOption('failFast', 'a boolean', failFast);
}
