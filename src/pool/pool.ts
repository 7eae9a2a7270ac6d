import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { debuglog } from 'node:util';
import pRetry from 'p-retry';
import type { Balancer, Picker, PickerContext } from '../balance/balancer.ts';
import { roundRobin } from '../balance/round-robin.ts';
import type { EndpointSource, SourceWatch } from '../discovery/source.ts';
import { EndpointSet, type Endpoint, type EndpointDiff } from '../endpoint.ts';
import { ErrorCode, PodpoolError, abortError } from '../errors.ts';
import { checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import type { Connection, Transport } from '../transport/transport.ts';
import { fanOut, planBroadcast, type BroadcastOptions, type BroadcastResult, type Delivery } from './broadcast.ts';
import { ejectionMs, ejectionPolicy, mayEject, type EjectionOptions, type EjectionPolicy } from './ejection.ts';
import { Member, type MemberState, type MemberStats } from './member.ts';

const debug = debuglog('podpool');

/** A connection that dies younger than this counts as a flap and delays the next connect. */
const STABLE_CONNECTION_MS = 1_000;

const POOL_OPTIONS = optionNames<PoolOptions<unknown>>({
  source: true,
  transport: true,
  balancer: true,
  drainTimeoutMs: true,
  reconnect: true,
  ejection: true,
  clock: true,
  random: true,
});
const RECONNECT_OPTIONS = optionNames<NonNullable<PoolOptions<unknown>['reconnect']>>({ minMs: true, maxMs: true, factor: true });

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
  reconnect?: { minMs?: number; maxMs?: number; factor?: number };
  /** Outlier ejection after consecutive failures; `false` turns it off. */
  ejection?: EjectionOptions | false;
  /** Time in ms for latency and timers' bookkeeping; default `performance.now`. */
  clock?: () => number;
  /** Random numbers in [0, 1) for balancers; default `Math.random`. */
  random?: () => number;
}

/** Options of `pool.use()`. */
export interface UseOptions {
  /** Affinity key, for `ringHash()`: the same key goes to the same pod while it is ready. */
  key?: string;
  /**
   * Aborts the wait for the call. The callback always gets a signal: this one, or else one that
   * aborts when the pool closes the connection under the call (lost, or drained past
   * `drainTimeoutMs`, or the pool closed).
   */
  signal?: AbortSignal;
  /**
   * Fails the call with `PODPOOL_TIMEOUT` after this long and counts it against the pod. A wait
   * for a ready pod (see `waitForReady`) counts toward it.
   */
  timeoutMs?: number;
  /**
   * When no pod is ready (the pool is starting, or every pod is reconnecting or ejected): `true`
   * (the default) waits for one, up to `timeoutMs`, or 10 s without it, or until `signal`
   * aborts, then fails with `PODPOOL_NO_ENDPOINTS`; `false` fails at once. As grpc-js queues
   * a call while its channel connects.
   */
  waitForReady?: boolean;
}

/** How long a call waits for a ready pod when it sets no `timeoutMs` of its own. */
const DEFAULT_READY_WAIT_MS = 10_000;

/** Options of `pool.beginWhenReady()`. */
export interface BeginOptions {
  /** Affinity key, for `ringHash()`. */
  key?: string;
  /** Ends the wait with `PODPOOL_ABORTED` (or the signal's `PodpoolError` reason). */
  signal?: AbortSignal;
  /** Ends the wait with `PODPOOL_NO_ENDPOINTS` after this long. Without it, only `signal` or `close()` end the wait. */
  timeoutMs?: number;
  /**
   * Fails with `PODPOOL_NO_ENDPOINTS` as soon as the pool is `failing`, instead of waiting for a
   * pod to come back: what grpc-js does to a call without `waitForReady`. Default false.
   */
  failFast?: boolean;
}

/**
 * The pool as a grpc-js channel would report it: `ready` while a pod can be picked; else
 * `connecting` while discovery has not answered yet or a pod is connecting for the first time
 * since it was last ready; else `failing` (every pod's last connect failed, or is ejected, or there
 * is none); `closed` once `close()` was called.
 */
export type PoolConnectivity = 'ready' | 'connecting' | 'failing' | 'closed';

/** Options of `pool.ready()`. */
export interface ReadyOptions {
  /** Members that must be ready. Default 1. */
  minEndpoints?: number;
  signal?: AbortSignal;
  /** Fails with `PODPOOL_TIMEOUT` (saying what is missing) after this long. */
  timeoutMs?: number;
}

/** A member changed state. */
export interface StateChange {
  readonly endpoint: Endpoint;
  readonly from: MemberState;
  readonly to: MemberState;
  /** Why, for transitions caused by a failure (`PODPOOL_CONNECTION_LOST`, `PODPOOL_EJECTED`, …). */
  readonly error?: PodpoolError;
}

/** The pool's events. */
export interface PoolEvents {
  /** A new snapshot from discovery, with what changed. */
  change: [endpoints: EndpointSet, diff: EndpointDiff];
  /** A member moved from one state to another. */
  state: [change: StateChange];
  /** An attempt to connect to a pod failed; the pool will try again after a backoff. */
  connectError: [endpoint: Endpoint, error: PodpoolError];
  /** Discovery failed; the pool keeps the last good snapshot. */
  sourceError: [error: PodpoolError];
  /** `pool.connectivity` changed: what an adapter watches instead of every state change. */
  connectivity: [connectivity: PoolConnectivity];
}

/** `pool.stats()`. */
export interface PoolStats {
  /** The source's kind. */
  readonly source: string;
  readonly balancer: string;
  readonly transport: string;
  /** Endpoints in the last snapshot. */
  readonly endpoints: number;
  /** Members that can be picked now. */
  readonly ready: number;
  /** Every member, in endpoint key order. */
  readonly members: readonly MemberStats[];
}

/**
 * One call begun with `pool.begin()`: the connection to use and the endpoint it goes to. Call
 * `end()` exactly once, with the error if it failed; later calls are ignored.
 */
export interface PoolCall<C> {
  readonly endpoint: Endpoint;
  readonly client: C;
  end(error?: unknown): void;
}

/**
 * What an adapter over the pool (`grpcChannel`, `httpDispatcher`) needs of it: begin a call now
 * or once a pod is ready, the connectivity in O(1) while a pod is ready, and word when it
 * changes. Adapters depend on this, never on `Pool` itself.
 */
export interface AdapterPool<C> {
  /** The source's kind (`static`, `dns`, `kubernetes`), for names such as a channel's target. */
  readonly sourceKind: string;
  readonly connectivity: PoolConnectivity;
  begin(key?: string): PoolCall<C>;
  beginWhenReady(options?: BeginOptions): Promise<PoolCall<C>>;
  on(event: 'connectivity', listener: (connectivity: PoolConnectivity) => void): unknown;
  off(event: 'connectivity', listener: (connectivity: PoolConnectivity) => void): unknown;
}

/** A connection `#open` made, and a loss the transport reported before the member took it. */
interface Opened<C> {
  readonly connection: Connection<C>;
  lostEarly(): Error | undefined;
}

interface Waiter {
  check(): void;
  fail(error: PodpoolError): void;
}

/**
 * Client-side balancing over one long-lived connection per pod. Create it with
 * {@link createPool}; see the README for the programs people write with it.
 */
export class Pool<C> extends EventEmitter<PoolEvents> implements AdapterPool<C> {
  readonly #source: EndpointSource;
  readonly #transport: Transport<C>;
  readonly #balancer: Balancer;
  readonly #context: PickerContext;
  readonly #clock: () => number;
  readonly #drainTimeoutMs: number;
  readonly #reconnect: { readonly minMs: number; readonly maxMs: number; readonly factor: number };
  readonly #ejection: EjectionPolicy | undefined;
  readonly #latencyDecayMs: number;

  readonly #members = new Map<string, Member<C>>();
  #endpoints = EndpointSet.empty;
  #hasSnapshot = false;
  #picker: Picker<Member<C>>;
  #pickable: readonly Member<C>[] = [];
  #lastSourceError: PodpoolError | undefined = undefined;
  readonly #waiters = new Set<Waiter>();
  readonly #closingConnections = new Set<Promise<void>>();
  readonly #connectLoops = new Set<Promise<void>>();
  readonly #watch: SourceWatch;
  #closing: Promise<void> | undefined = undefined;
  /** The connectivity last announced with a `connectivity` event. */
  #announced: PoolConnectivity = 'connecting';

  /** @internal Use {@link createPool}. */
  constructor(options: PoolOptions<C>) {
    super();
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
    checkNumber('drainTimeoutMs', drainTimeoutMs, { min: 0 });
    checkOptions(reconnect, RECONNECT_OPTIONS, 'reconnect');
    const { minMs = 100, maxMs = 10_000, factor = 2 } = reconnect;
    checkNumber('reconnect.minMs', minMs, { min: 1 });
    checkNumber('reconnect.maxMs', maxMs, { min: minMs });
    checkNumber('reconnect.factor', factor, { min: 1 });
    const clock = options.clock ?? performance.now.bind(performance);
    const random = options.random ?? Math.random;
    if (typeof clock !== 'function') invalidOption('clock', 'a function returning milliseconds', clock);
    if (typeof random !== 'function') invalidOption('random', 'a function returning [0, 1)', random);

    this.#source = source;
    this.#transport = transport;
    this.#balancer = balancer;
    this.#clock = clock;
    this.#context = Object.freeze({ clock, random });
    this.#drainTimeoutMs = drainTimeoutMs;
    this.#reconnect = { minMs, maxMs, factor };
    this.#ejection = ejectionPolicy(options.ejection);
    this.#latencyDecayMs = balancer.latencyDecayMs ?? 10_000;
    this.#picker = balancer.picker(this.#pickable, this.#context);
    this.#watch = source.watch({
      snapshot: (endpoints) => this.#reconcile(endpoints),
      error: (error) => {
        this.#lastSourceError = error;
        debug('source %s: %s', source.kind, error.message);
        this.#emit('sourceError', error);
        this.#wake();
      },
    });
  }

  /** The source's kind (`static`, `dns`, `kubernetes`), as `stats().source` reports it. */
  get sourceKind(): string {
    return this.#source.kind;
  }

  /** The last snapshot discovery reported (empty before the first). */
  get endpoints(): EndpointSet {
    return this.#endpoints;
  }

  /**
   * Resolves once at least `minEndpoints` members are ready to be picked. Rejects with
   * `PODPOOL_TIMEOUT` (saying what is missing), `PODPOOL_ABORTED` or `PODPOOL_CLOSED`.
   */
  async ready(options: ReadyOptions = {}): Promise<void> {
    const { minEndpoints = 1, signal, timeoutMs } = options;
    checkNumber('minEndpoints', minEndpoints, { min: 1, integer: true });
    if (timeoutMs !== undefined) checkNumber('timeoutMs', timeoutMs, { min: 0 });
    if (this.#closing) throw this.#closedError('ready()');
    if (signal?.aborted) throw abortError(signal, 'ready()');
    if (this.#pickable.length >= minEndpoints) return;
    await new Promise<void>((resolve, reject) => {
      const done = (error?: PodpoolError): void => {
        this.#waiters.delete(waiter);
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve();
      };
      const waiter: Waiter = {
        check: () => {
          if (this.#pickable.length >= minEndpoints) done();
        },
        fail: done,
      };
      const onAbort = (): void => done(abortError(signal!, 'ready()'));
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              done(
                new PodpoolError(
                  ErrorCode.TIMEOUT,
                  `ready(): ${this.#pickable.length} of ${minEndpoints} endpoint(s) ready after ${timeoutMs} ms; ${this.#situation()}`,
                ),
              );
            }, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(waiter);
    });
  }

  /**
   * Picks a pod, runs `fn` with its connection, and records the latency and outcome. When no
   * member is ready it waits for one (see `UseOptions.waitForReady`), then fails with
   * `PODPOOL_NO_ENDPOINTS`; otherwise it fails with whatever `fn` threw.
   */
  use<T>(
    fn: (client: C, endpoint: Endpoint, signal: AbortSignal) => T | PromiseLike<T>,
    options?: UseOptions,
  ): Promise<T> {
    // Not an async function: the common path then makes one promise, not two.
    let member: Member<C> | undefined;
    try {
      if (this.#closing) throw this.#closedError('use()');
      // Checked before the pick: a bad option is the caller's bug whether or not a pod is ready.
      const timeoutMs = options?.timeoutMs;
      if (timeoutMs !== undefined) checkNumber('timeoutMs', timeoutMs, { min: 1 });
      member = this.#picker.pick(options?.key);
    } catch (error) {
      return Promise.reject(error);
    }
    // Only a call that finds nothing ready pays for waiting.
    if (member === undefined) return this.#useWhenReady(fn, options);
    const signal = options?.signal;
    const timeoutMs = options?.timeoutMs;
    if (signal === undefined && timeoutMs === undefined) return this.#call(member, fn, undefined, undefined);
    return this.#callWithin(member, fn, signal, timeoutMs, `use() on ${member.endpoint.key}`);
  }

  #useWhenReady<T>(
    fn: (client: C, endpoint: Endpoint, signal: AbortSignal) => T | PromiseLike<T>,
    options: UseOptions | undefined,
  ): Promise<T> {
    if (options?.waitForReady === false) return Promise.reject(this.#noEndpoints());
    const signal = options?.signal;
    const timeoutMs = options?.timeoutMs;
    const started = this.#clock();
    return new Promise<T>((resolve, reject) => {
      this.#waitToPick(
        options?.key,
        { signal, timeoutMs: timeoutMs ?? DEFAULT_READY_WAIT_MS, failFast: false, what: 'use()' },
        (m) => {
          // The wait spent part of the call's time.
          const left = timeoutMs === undefined ? undefined : Math.max(1, timeoutMs - (this.#clock() - started));
          resolve(
            signal === undefined && left === undefined
              ? this.#call(m, fn, undefined, undefined)
              : this.#callWithin(m, fn, signal, left, `use() on ${m.endpoint.key}`),
          );
        },
        reject,
      );
    });
  }

  /**
   * Runs `fn` on every pod the pool has (ready, ejected, or reconnecting; not draining) and
   * reports each one: delivered with its value, or failed with its error. A pod whose connection
   * is down fails with `PODPOOL_NOT_CONNECTED` unless a retry finds it back. Rejects only for bad
   * options, a closed pool, or no pods at all (`PODPOOL_NO_ENDPOINTS`).
   */
  async broadcast<T>(
    fn: (client: C, endpoint: Endpoint, delivery: Delivery) => T | PromiseLike<T>,
    options?: BroadcastOptions,
  ): Promise<BroadcastResult<T>> {
    const plan = planBroadcast(options);
    if (this.#closing) throw this.#closedError('broadcast()');
    const targets: Member<C>[] = [];
    for (const m of this.#members.values()) {
      if (m.state === 'ready' || m.state === 'ejected' || m.state === 'connecting') targets.push(m);
    }
    if (targets.length === 0) throw this.#noEndpoints();
    targets.sort(byKey);
    return fanOut(
      targets,
      (m) => m.endpoint,
      (m, delivery) => {
        if (m.connection === undefined) {
          return Promise.reject(
            new PodpoolError(
              ErrorCode.NOT_CONNECTED,
              `${m.endpoint.key} is not connected (${m.state})${m.lastError ? `: ${m.lastError.message}` : ''}`,
              { cause: m.lastError },
            ),
          );
        }
        return this.#callWithin(m, (c, e) => fn(c, e, delivery), delivery.signal, undefined, `broadcast to ${m.endpoint.key}`);
      },
      plan,
      this.#clock,
    );
  }

  /**
   * For adapters that must pick synchronously (an undici `Dispatcher`, a grpc-js `Channel`):
   * picks a pod and counts a call in flight until `end()`. Throws `PODPOOL_NO_ENDPOINTS` when
   * no member is ready; {@link beginWhenReady} waits instead.
   */
  begin(key?: string): PoolCall<C> {
    if (this.#closing) throw this.#closedError('begin()');
    const member = this.#picker.pick(key);
    if (member === undefined) throw this.#noEndpoints();
    return this.#begin(member);
  }

  /**
   * `begin()` for adapters whose caller may wait: resolves with a begun call as soon as a member
   * is ready. Rejects with `PODPOOL_NO_ENDPOINTS` when `timeoutMs` passes (or, with `failFast`,
   * when the pool is `failing`), `PODPOOL_ABORTED` when `signal` aborts, `PODPOOL_CLOSED` when
   * the pool closes. Woken by the state changes that make a member ready; it never polls.
   */
  beginWhenReady(options: BeginOptions = {}): Promise<PoolCall<C>> {
    const { key, signal, timeoutMs, failFast = false } = options;
    if (timeoutMs !== undefined) checkNumber('timeoutMs', timeoutMs, { min: 0 });
    if (this.#closing) return Promise.reject(this.#closedError('beginWhenReady()'));
    return new Promise((resolve, reject) => {
      this.#waitToPick(key, { signal, timeoutMs, failFast, what: 'beginWhenReady()' }, (m) => {
        try {
          resolve(this.#begin(m));
        } catch (error) {
          reject(error);
        }
      }, reject);
    });
  }

  /** Where the pool stands, as a grpc-js channel reports its connectivity state. */
  get connectivity(): PoolConnectivity {
    if (this.#closing) return 'closed';
    if (this.#pickable.length > 0) return 'ready';
    if (!this.#hasSnapshot) return this.#lastSourceError === undefined ? 'connecting' : 'failing';
    for (const m of this.#members.values()) if (m.state === 'connecting' && !m.connectFailed) return 'connecting';
    return 'failing';
  }

  #begin(member: Member<C>): PoolCall<C> {
    const connection = member.connection!;
    if (connection.acquire !== undefined) {
      throw new PodpoolError(
        ErrorCode.INVALID_OPTION,
        `the ${this.#transport.name} transport lends a connection per call; use pool.use() instead of begin()`,
      );
    }
    member.inFlight++;
    member.requests++;
    const started = this.#clock();
    let ended = false;
    return {
      endpoint: member.endpoint,
      client: connection.client as C,
      end: (error?: unknown) => {
        if (ended) return;
        ended = true;
        this.#record(member, started, error !== undefined, error);
        this.#settle(member);
      },
    };
  }

  /**
   * Waits until a member can be picked for `key`, then calls `picked` with it, from a microtask
   * of its own: never from inside the state change that made it ready, and with the pick and
   * what `picked` starts in one synchronous step, so the member can't change in between.
   * `failed` gets the reason the wait ended instead.
   */
  #waitToPick(
    key: string | undefined,
    { signal, timeoutMs, failFast, what }: { signal: AbortSignal | undefined; timeoutMs: number | undefined; failFast: boolean; what: string },
    picked: (m: Member<C>) => void,
    failed: (error: unknown) => void,
  ): void {
    if (signal?.aborted) {
      failed(reasonOf(signal, what));
      return;
    }
    if (failFast && this.connectivity === 'failing') {
      failed(this.#noEndpoints());
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
      if (this.#closing) {
        fail(this.#closedError(what));
        return;
      }
      let m: Member<C> | undefined;
      try {
        m = this.#picker.pick(key);
      } catch (error) {
        fail(error);
        return;
      }
      if (m !== undefined) {
        finish();
        picked(m);
      } else if (failFast && this.connectivity === 'failing') {
        fail(this.#noEndpoints());
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
            fail(new PodpoolError(ErrorCode.NO_ENDPOINTS, `${what}: no endpoint became ready within ${timeoutMs} ms: ${this.#situation()}`));
          }, timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    this.#waiters.add(waiter);
  }

  /** Each member's numbers, in endpoint key order. */
  stats(): PoolStats {
    const now = this.#clock();
    return {
      source: this.#source.kind,
      balancer: this.#balancer.name,
      transport: this.#transport.name,
      endpoints: this.#endpoints.size,
      ready: this.#pickable.length,
      members: [...this.#members.values()].sort(byKey).map((m) => m.stats(now)),
    };
  }

  /**
   * Stops discovery, stops picking, lets in-flight calls finish (up to `drainTimeoutMs`) and
   * closes every connection. Resolves when no socket, timer or watch is left.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      this.#closing = this.#shutdown();
      this.#announceConnectivity();
    }
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    const watchClosed = this.#watch.close();
    const closed = this.#closedError('the wait');
    for (const w of [...this.#waiters]) w.fail(closed);
    const members = [...this.#members.values()];
    for (const m of members) this.#drain(m);
    await Promise.all([watchClosed, ...members.map((m) => m.closed.promise)]);
    // Every loop was aborted above; one that opened a connection as the abort came closes it.
    await Promise.all(this.#connectLoops);
    await Promise.all(this.#closingConnections);
    debug('pool closed');
  }

  // ---- the per-call path ------------------------------------------------------------------

  async #call<T>(
    m: Member<C>,
    fn: (client: C, endpoint: Endpoint, signal: AbortSignal) => T | PromiseLike<T>,
    signal: AbortSignal | undefined,
    deadline: { expired: boolean } | undefined,
    started = this.#clock(),
  ): Promise<T> {
    const connection = m.connection!;
    // The caller's signal, or else the connection's: either way fn learns when to give up.
    const callSignal = signal ?? m.calls.signal;
    m.inFlight++;
    m.requests++;
    let client: C | undefined;
    let failed = false;
    try {
      client = connection.acquire === undefined ? (connection.client as C) : await connection.acquire(callSignal);
      const value = await fn(client, m.endpoint, callSignal);
      // A call that ended past its deadline was counted as a failure when the deadline passed.
      if (deadline?.expired) failed = true;
      else this.#record(m, started, false, undefined);
      return value;
    } catch (error) {
      failed = true;
      // A caller that gave up says nothing about the pod; a deadline that passed does, and was
      // counted then (the signal is aborted in both cases).
      if (!signal?.aborted) this.#record(m, started, true, error);
      throw error;
    } finally {
      if (client !== undefined && connection.release !== undefined) connection.release(client, failed);
      this.#settle(m);
    }
  }

  /**
   * `#call` raced against a signal and a timeout. The caller's promise settles at the deadline,
   * and the timeout counts against the pod then: a pod that never answers must add up to an
   * ejection even when `fn` ignores its signal. The member keeps counting the call in flight until
   * `fn` really ends, which is the truth the balancers need.
   */
  #callWithin<T>(
    m: Member<C>,
    fn: (client: C, endpoint: Endpoint, signal: AbortSignal) => T | PromiseLike<T>,
    outer: AbortSignal | undefined,
    timeoutMs: number | undefined,
    what: string,
  ): Promise<T> {
    if (outer?.aborted) return Promise.reject(reasonOf(outer, what));
    return new Promise<T>((resolve, reject) => {
      const controller = new AbortController();
      const deadline = { expired: false };
      const started = this.#clock();
      let timer: NodeJS.Timeout | undefined;
      // fn's signal also aborts when the pool closes the connection under the call.
      const connection = m.calls.signal;
      const onConnectionClosed = (): void => controller.abort(connection.reason);
      const finish = (): void => {
        clearTimeout(timer);
        outer?.removeEventListener('abort', onAbort);
        connection.removeEventListener('abort', onConnectionClosed);
      };
      const onAbort = (): void => {
        const error = reasonOf(outer!, what);
        controller.abort(error);
        finish();
        reject(error);
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          deadline.expired = true;
          const error = new PodpoolError(ErrorCode.TIMEOUT, `${what} did not finish within ${timeoutMs} ms`);
          this.#record(m, started, true, error);
          controller.abort(error);
          finish();
          reject(error);
        }, timeoutMs);
      }
      outer?.addEventListener('abort', onAbort, { once: true });
      connection.addEventListener('abort', onConnectionClosed, { once: true });
      this.#call(m, fn, controller.signal, deadline, started).then(
        (value) => {
          finish();
          resolve(value);
        },
        (error: unknown) => {
          finish();
          reject(error);
        },
      );
    });
  }

  #record(m: Member<C>, started: number, failed: boolean, error: unknown): void {
    const now = this.#clock();
    const latency = now - started;
    if (!failed) {
      m.latency.observe(latency, now);
      m.consecutiveFailures = 0;
      return;
    }
    if (error !== undefined && !this.#isPodFailure(error)) {
      // The pod answered; the request was wrong. Its latency is as real as a success's.
      m.latency.observe(latency, now);
      m.consecutiveFailures = 0;
      return;
    }
    m.latency.observeFailure(latency, now);
    m.failures++;
    m.consecutiveFailures++;
    if (error instanceof Error) m.lastError = error;
    const policy = this.#ejection;
    if (policy !== undefined && m.state === 'ready' && m.consecutiveFailures >= policy.consecutiveFailures) {
      this.#eject(m, policy, now);
    }
  }

  /**
   * The pool's own TIMEOUT (a call past its `timeoutMs`) and CONNECTION_LOST (the connection
   * closed under a call) always count against the pod; for everything else the transport, which
   * knows its protocol's errors, decides.
   */
  #isPodFailure(error: unknown): boolean {
    if (error instanceof PodpoolError && (error.code === ErrorCode.TIMEOUT || error.code === ErrorCode.CONNECTION_LOST)) return true;
    return this.#transport.isPodFailure === undefined || this.#transport.isPodFailure(error);
  }

  #settle(m: Member<C>): void {
    m.inFlight--;
    if (m.inFlight === 0 && m.state === 'draining') this.#finishDrain(m);
  }

  // ---- state changes -----------------------------------------------------------------------

  #reconcile(endpoints: EndpointSet): void {
    if (this.#closing) return;
    const diff = endpoints.diff(this.#endpoints);
    this.#endpoints = endpoints;
    this.#hasSnapshot = true;
    for (const e of endpoints) {
      const m = this.#members.get(e.key);
      const wanted = e.ready && !e.terminating;
      if (m !== undefined) m.endpoint = e;
      if (wanted) {
        if (m === undefined) this.#add(e);
        else if (m.state === 'draining') this.#revive(m);
      } else if (m !== undefined) {
        this.#drain(m);
      }
    }
    for (const m of [...this.#members.values()]) {
      if (!endpoints.has(m.endpoint.key)) this.#drain(m);
    }
    debug('snapshot: %d endpoints, +%d -%d ~%d', endpoints.size, diff.added.length, diff.removed.length, diff.changed.length);
    this.#emit('change', endpoints, diff);
    // A snapshot that changed nothing about readiness still settles waiters that count on it.
    this.#wake();
  }

  #transition(m: Member<C>, to: MemberState, error?: PodpoolError): void {
    const from = m.state;
    if (from === to) return;
    m.state = to;
    debug('%s: %s → %s%s', m.endpoint.key, from, to, error ? ` (${error.message})` : '');
    if (from === 'ready' || to === 'ready') this.#rebuild();
    this.#emit('state', { endpoint: m.endpoint, from, to, ...(error !== undefined && { error }) });
  }

  /**
   * Emits without letting a listener's throw cut a state change in half (a transition left
   * undone, a connect loop ended): the error is thrown again on its own, so it still surfaces as
   * an uncaught exception, and the pool's state stays whole.
   */
  #emit<E extends keyof PoolEvents>(event: E, ...args: PoolEvents[E]): void {
    try {
      (this.emit as (event: E, ...args: PoolEvents[E]) => boolean)(event, ...args);
    } catch (error) {
      queueMicrotask(() => {
        throw error;
      });
    }
    // Every other event may be one that moves the connectivity.
    if (event !== 'connectivity') this.#announceConnectivity();
  }

  #announceConnectivity(): void {
    const connectivity = this.connectivity;
    if (connectivity === this.#announced) return;
    this.#announced = connectivity;
    this.#emit('connectivity', connectivity);
  }

  #rebuild(): void {
    const pickable: Member<C>[] = [];
    for (const m of this.#members.values()) if (m.state === 'ready') pickable.push(m);
    pickable.sort(byKey);
    this.#pickable = pickable;
    this.#picker = this.#balancer.picker(pickable, this.#context);
    this.#wake();
  }

  /** Tells every waiter that something it waits on may have changed. */
  #wake(): void {
    if (this.#waiters.size === 0) return;
    for (const w of [...this.#waiters]) w.check();
  }

  #add(endpoint: Endpoint): void {
    const m = new Member<C>(endpoint, this.#latencyDecayMs);
    this.#members.set(endpoint.key, m);
    debug('%s: new member', endpoint.key);
    this.#connect(m);
  }

  /** Starts the member's connect loop; `close()` waits for every loop to end. */
  #connect(m: Member<C>): void {
    const loop = this.#connectLoop(m);
    this.#connectLoops.add(loop);
    void loop.finally(() => this.#connectLoops.delete(loop));
  }

  async #connectLoop(m: Member<C>): Promise<void> {
    const { signal } = m.abort;
    const { minMs, maxMs, factor } = this.#reconnect;
    let opened: Opened<C> | undefined;
    try {
      if (m.flaps > 0) {
        // The last connection died young: wait as a failed attempt would, so a pod that
        // accepts and drops at once can't pull us into a tight loop.
        const backoff = Math.min(maxMs, minMs * factor ** (m.flaps - 1));
        await sleep(backoff * (1 + this.#context.random()), undefined, { signal });
      }
      const { connection, lostEarly } = await pRetry(async () => (opened = await this.#open(m, signal)), {
        retries: Infinity,
        minTimeout: minMs,
        maxTimeout: maxMs,
        factor,
        randomize: true,
        signal,
        onFailedAttempt: ({ error }) => {
          const failure = error as PodpoolError;
          m.lastError = failure;
          m.connectFailed = true;
          this.#emit('connectError', m.endpoint, failure);
          // The pool may be failing now: calls that fail fast then should hear it.
          this.#wake();
        },
      });
      if (signal.aborted) {
        this.#closeConnection(connection);
        return;
      }
      m.connection = connection;
      m.calls = new AbortController();
      m.connects++;
      m.connectedAt = this.#clock();
      m.consecutiveFailures = 0;
      m.connectFailed = false;
      this.#transition(m, 'ready');
      // A loss reported between connect resolving and now matched no member connection yet.
      const lost = lostEarly();
      if (lost !== undefined) this.#lost(m, connection, lost);
    } catch {
      // Aborted: the member is draining or the pool is closing; nothing to report. p-retry looks
      // at the signal again after an attempt succeeded, so a connection that opened just as the
      // abort came ends up here, and nothing else would ever close it.
      if (opened !== undefined && m.connection !== opened.connection) void this.#closeConnection(opened.connection);
    }
  }

  async #open(m: Member<C>, signal: AbortSignal): Promise<Opened<C>> {
    let connection: Connection<C> | undefined;
    let lostEarly: Error | undefined;
    const context = {
      signal,
      lost: (error: Error) => {
        // Until the member has adopted this connection, keep the loss for #connectLoop.
        if (connection !== undefined && m.connection === connection) this.#lost(m, connection, error);
        else lostEarly ??= error;
      },
    };
    try {
      connection = await this.#transport.connect(m.endpoint, context);
    } catch (error) {
      if (signal.aborted) throw error;
      throw new PodpoolError(
        ErrorCode.CONNECT_FAILED,
        `could not connect to ${m.endpoint.key} (${this.#transport.name}): ${messageOf(error)}`,
        { cause: error },
      );
    }
    if (lostEarly !== undefined) {
      this.#closeConnection(connection);
      throw new PodpoolError(ErrorCode.CONNECT_FAILED, `connection to ${m.endpoint.key} was lost as it opened: ${lostEarly.message}`, {
        cause: lostEarly,
      });
    }
    return { connection, lostEarly: () => lostEarly };
  }

  #lost(m: Member<C>, connection: Connection<C>, error: Error): void {
    if (m.connection !== connection) return;
    m.connection = undefined;
    const lost = new PodpoolError(ErrorCode.CONNECTION_LOST, `lost the connection to ${m.endpoint.key}: ${error.message}`, {
      cause: error,
    });
    m.calls.abort(lost);
    this.#closeConnection(connection);
    m.lastError = lost;
    m.flaps = this.#clock() - m.connectedAt < STABLE_CONNECTION_MS ? m.flaps + 1 : 0;
    if (m.state === 'draining') {
      this.#finishDrain(m);
      return;
    }
    if (m.state === 'closed') return;
    clearTimeout(m.timer);
    m.timer = undefined;
    this.#transition(m, 'connecting', lost);
    this.#connect(m);
  }

  #eject(m: Member<C>, policy: EjectionPolicy, now: number): void {
    let ejected = 0;
    let connected = 0;
    for (const other of this.#members.values()) {
      if (other.state === 'ejected') ejected++;
      if (other.state === 'ready' || other.state === 'ejected') connected++;
    }
    if (!mayEject(policy, ejected, connected)) return;
    // A member that stayed healthy for a whole maxMs starts again from the base duration.
    m.ejectionStreak = m.ejectionStreak > 0 && now - m.unejectedAt < policy.maxMs ? m.ejectionStreak + 1 : 1;
    m.ejections++;
    const duration = ejectionMs(policy, m.ejectionStreak);
    this.#transition(
      m,
      'ejected',
      new PodpoolError(ErrorCode.EJECTED, `${m.consecutiveFailures} failures in a row; ejected for ${duration} ms`, {
        cause: m.lastError,
      }),
    );
    m.timer = setTimeout(() => {
      m.timer = undefined;
      if (m.state !== 'ejected') return;
      m.consecutiveFailures = 0;
      m.unejectedAt = this.#clock();
      this.#transition(m, 'ready');
    }, duration);
  }

  #drain(m: Member<C>): void {
    if (m.state === 'draining' || m.state === 'closed') return;
    clearTimeout(m.timer);
    m.timer = undefined;
    if (m.connection === undefined) m.abort.abort();
    this.#transition(m, 'draining');
    if (m.connection === undefined || m.inFlight === 0) {
      this.#finishDrain(m);
      return;
    }
    m.timer = setTimeout(() => this.#finishDrain(m), this.#drainTimeoutMs);
  }

  /** An endpoint came back before its member finished draining: take it up again. */
  #revive(m: Member<C>): void {
    clearTimeout(m.timer);
    m.timer = undefined;
    if (m.connection !== undefined) {
      this.#transition(m, 'ready');
      return;
    }
    m.abort = new AbortController();
    this.#transition(m, 'connecting');
    this.#connect(m);
  }

  #finishDrain(m: Member<C>): void {
    if (m.state === 'closed') return;
    clearTimeout(m.timer);
    m.timer = undefined;
    m.abort.abort();
    const connection = m.connection;
    m.connection = undefined;
    if (connection !== undefined && m.inFlight > 0) {
      m.calls.abort(
        new PodpoolError(ErrorCode.CLOSED, `the pool closed its connection to ${m.endpoint.key} after ${this.#drainTimeoutMs} ms of draining`),
      );
    }
    this.#members.delete(m.endpoint.key);
    this.#transition(m, 'closed');
    if (connection === undefined) m.closed.resolve();
    else void this.#closeConnection(connection).then(() => m.closed.resolve());
  }

  #closeConnection(connection: Connection<C>): Promise<void> {
    const closing = connection.close().catch((error: unknown) => {
      debug('closing a connection failed: %s', messageOf(error));
    });
    this.#closingConnections.add(closing);
    void closing.finally(() => this.#closingConnections.delete(closing));
    return closing;
  }

  // ---- messages ----------------------------------------------------------------------------

  #noEndpoints(): PodpoolError {
    return new PodpoolError(ErrorCode.NO_ENDPOINTS, `no endpoint is ready to take the call: ${this.#situation(false)}`);
  }

  #closedError(what: string): PodpoolError {
    return new PodpoolError(ErrorCode.CLOSED, `${what}: the pool is closed`);
  }

  /**
   * What the pool knows and what to do about it, for errors a person will read. `waited`: the
   * error ends a wait (ready(), a call waiting for a pod), so the advice is not "wait".
   */
  #situation(waited = true): string {
    const kind = this.#source.kind;
    // A discovery error says best what is wrong (a name that does not exist, a refused request)
    // and what to check; it is the news whenever discovery has nothing to offer.
    const discovery = this.#lastSourceError ? `; discovery's last error: ${this.#lastSourceError.message}` : '';
    if (!this.#hasSnapshot) {
      if (discovery !== '') return `${kind} discovery has not reported any endpoint yet${discovery}`;
      return waited
        ? `${kind} discovery has not answered yet: its server may be slow or out of reach (NODE_DEBUG=podpool shows what it does), or it needs longer than that`
        : `${kind} discovery has not answered yet (the pool is starting): wait with await pool.ready(), or let the call wait for a pod`;
    }
    if (this.#endpoints.size === 0 && this.#members.size === 0) {
      return `${kind} discovery found no endpoint${discovery || ': check that the Service has ready pods, and that the source names the right Service and port'}`;
    }
    const counts = new Map<MemberState, number>();
    for (const m of this.#members.values()) counts.set(m.state, (counts.get(m.state) ?? 0) + 1);
    const states = [...counts].map(([state, n]) => `${n} ${state}`).join(', ') || 'no members';
    let lastError: Error | undefined;
    for (const m of this.#members.values()) lastError = m.lastError ?? lastError;
    return `${this.#endpoints.size} endpoint(s) discovered, ${states}${lastError ? `; last error: ${lastError.message}` : ''}`;
  }
}

/**
 * Creates a pool: starts discovery at once and keeps one connection per ready pod. Throws
 * `PODPOOL_INVALID_OPTION` naming any bad option.
 */
export function createPool<C>(options: PoolOptions<C>): Pool<C> {
  return new Pool(options);
}

function byKey(a: { endpoint: Endpoint }, b: { endpoint: Endpoint }): number {
  return a.endpoint.key < b.endpoint.key ? -1 : a.endpoint.key > b.endpoint.key ? 1 : 0;
}

function reasonOf(signal: AbortSignal, what: string): unknown {
  return signal.reason instanceof PodpoolError ? signal.reason : abortError(signal, what);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
