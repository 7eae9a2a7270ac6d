import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { debuglog } from 'node:util';
import type { Balancer, Picker, PickerContext } from '../balance/balancer.ts';
import { roundRobin } from '../balance/round-robin.ts';
import type { EndpointSource, SourceWatch } from '../discovery/source.ts';
import { EndpointSet, type Endpoint, type EndpointDiff } from '../endpoint.ts';
import { reasonOf } from '../abort.ts';
import { ClosedError, ErrorCode, NoEndpointsError, NotConnectedError, NotSupportedError, PodpoolError, TimeoutError, abortError } from '../errors.ts';
import { checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import type { Transport } from '../transport/transport.ts';
import { fanOut, planBroadcast, type BroadcastOptions, type BroadcastResult, type Delivery } from './broadcast.ts';
import { Connector, reconnectPolicy, type ReconnectOptions } from './connector.ts';
import { Ejection, ejectionPolicy, type EjectionOptions } from './ejection.ts';
import { Membership } from './membership.ts';
import type { CallOutcome, Member, MemberEvents, MemberState, MemberStats } from './member.ts';

const debug = debuglog('podpool');

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
  readonly #ejection: Ejection<Member<C>> | undefined;
  readonly #memberEvents: MemberEvents;

  readonly #membership: Membership<C>;
  readonly #connector: Connector<C>;
  #endpoints = EndpointSet.empty;
  #hasSnapshot = false;
  #picker: Picker<Member<C>>;
  #pickable: readonly Member<C>[] = [];
  #lastSourceError: PodpoolError | undefined = undefined;
  readonly #waiters = new Set<Waiter>();
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
    const reconnectBackoff = reconnectPolicy(reconnect);
    const clock = options.clock ?? performance.now.bind(performance);
    const random = options.random ?? Math.random;
    if (typeof clock !== 'function') invalidOption('clock', 'a function returning milliseconds', clock);
    if (typeof random !== 'function') invalidOption('random', 'a function returning [0, 1)', random);

    this.#source = source;
    this.#transport = transport;
    this.#balancer = balancer;
    this.#clock = clock;
    this.#context = Object.freeze({ clock, random });
    const policy = ejectionPolicy(options.ejection);
    this.#ejection = policy === undefined ? undefined : new Ejection(policy, () => this.#membership.values(), clock);
    this.#memberEvents = {
      transition: (m, from, to, error) => this.#transitioned(m as Member<C>, from, to, error),
      failed: (m, now) => this.#ejection?.failed(m as Member<C>, now),
      drained: (m) => this.#membership.finishDrain(m as Member<C>),
    };
    this.#connector = new Connector(transport, reconnectBackoff, clock, random, {
      connectError: (m, error) => {
        this.#emit('connectError', m.endpoint, error);
        // The pool may be failing now: calls that fail fast then should hear it.
        this.#wake();
      },
      drainedByLoss: (m) => this.#membership.finishDrain(m),
    });
    this.#membership = new Membership(this.#connector, balancer.latencyDecayMs ?? 10_000, drainTimeoutMs, this.#memberEvents);
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
                new TimeoutError(`ready(): ${this.#pickable.length} of ${minEndpoints} endpoint(s) ready after ${timeoutMs} ms; ${this.#situation()}`),
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
    for (const m of this.#membership.values()) {
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
            new NotConnectedError(`${m.endpoint.key} is not connected (${m.state})${m.lastError ? `: ${m.lastError.message}` : ''}`, { cause: m.lastError }),
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
    for (const m of this.#membership.values()) if (m.state === 'connecting' && !m.connectFailed) return 'connecting';
    return 'failing';
  }

  #begin(member: Member<C>): PoolCall<C> {
    const connection = member.connection!;
    if (connection.acquire !== undefined) {
      throw new NotSupportedError(`the ${this.#transport.name} transport lends a connection per call; use pool.use() instead of begin()`);
    }
    member.startCall();
    const started = this.#clock();
    let ended = false;
    return {
      endpoint: member.endpoint,
      client: connection.client as C,
      end: (error?: unknown) => {
        if (ended) return;
        ended = true;
        this.#endCall(member, started, error !== undefined, error);
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
            fail(new NoEndpointsError(`${what}: no endpoint became ready within ${timeoutMs} ms: ${this.#situation()}`));
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
      members: [...this.#membership.values()].sort(byKey).map((m) => m.stats(now)),
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
    const members = [...this.#membership.values()];
    for (const m of members) this.#membership.drain(m);
    await Promise.all([watchClosed, ...members.map((m) => m.closed.promise)]);
    await this.#connector.settled();
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
    const callSignal = signal ?? m.connectionClosedSignal;
    m.startCall();
    let client: C | undefined;
    // A call that ended past its deadline was counted as a failure when the deadline passed.
    let outcome: CallOutcome = 'unrecorded';
    let failure: unknown;
    try {
      client = connection.acquire === undefined ? (connection.client as C) : await connection.acquire(callSignal);
      const value = await fn(client, m.endpoint, callSignal);
      if (!deadline?.expired) outcome = 'answered';
      return value;
    } catch (error) {
      // A caller that gave up says nothing about the pod; a deadline that passed does, and was
      // counted then (the signal is aborted in both cases).
      if (!signal?.aborted) outcome = this.#outcomeOf(true, error);
      failure = error ?? null;
      throw error;
    } finally {
      if (client !== undefined && connection.release !== undefined) connection.release(client, failure !== undefined || deadline?.expired === true);
      const now = this.#clock();
      m.endCall(outcome, now - started, now, failure);
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
      const connection = m.connectionClosedSignal;
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
          const error = new TimeoutError(`${what} did not finish within ${timeoutMs} ms`);
          const now = this.#clock();
          m.countFailure(now - started, now, error);
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

  /** How a call that ended counts against its pod. */
  #outcomeOf(failed: boolean, error: unknown): CallOutcome {
    // A request the pod refused (`isPodFailure` says so) is an answer: its latency is as real as a success's.
    return !failed || (error !== undefined && !this.#isPodFailure(error)) ? 'answered' : 'failed';
  }

  #endCall(m: Member<C>, started: number, failed: boolean, error: unknown): void {
    const now = this.#clock();
    m.endCall(this.#outcomeOf(failed, error), now - started, now, error);
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

  // ---- state changes -----------------------------------------------------------------------

  #reconcile(endpoints: EndpointSet): void {
    if (this.#closing) return;
    const diff = endpoints.diff(this.#endpoints);
    this.#endpoints = endpoints;
    this.#hasSnapshot = true;
    this.#membership.reconcile(endpoints);
    debug('snapshot: %d endpoints, +%d -%d ~%d', endpoints.size, diff.added.length, diff.removed.length, diff.changed.length);
    this.#emit('change', endpoints, diff);
    // A snapshot that changed nothing about readiness still settles waiters that count on it.
    this.#wake();
  }

  #transitioned(m: Member<C>, from: MemberState, to: MemberState, error: PodpoolError | undefined): void {
    this.#ejection?.moved(m, from, to);
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
    for (const m of this.#membership.values()) if (m.state === 'ready') pickable.push(m);
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

  // ---- messages ----------------------------------------------------------------------------

  #noEndpoints(): PodpoolError {
    return new NoEndpointsError(`no endpoint is ready to take the call: ${this.#situation(false)}`);
  }

  #closedError(what: string): PodpoolError {
    return new ClosedError(`${what}: the pool is closed`);
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
    if (this.#endpoints.size === 0 && this.#membership.size === 0) {
      return `${kind} discovery found no endpoint${discovery || ': check that the Service has ready pods, and that the source names the right Service and port'}`;
    }
    const counts = new Map<MemberState, number>();
    for (const m of this.#membership.values()) counts.set(m.state, (counts.get(m.state) ?? 0) + 1);
    const states = [...counts].map(([state, n]) => `${n} ${state}`).join(', ') || 'no members';
    let lastError: Error | undefined;
    for (const m of this.#membership.values()) lastError = m.lastError ?? lastError;
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
