import { EventEmitter } from 'node:events';
import { debuglog } from 'node:util';
import { messageOf } from '../abort.ts';
import type { Balancer, Picker, PickerContext } from '../balance/balancer.ts';
import { slowStartPicker, type SlowStartPolicy } from '../balance/slow-start.ts';
import type { SubsetPolicy } from '../balance/subset.ts';
import { zonePicker, type ZoneCounts, type ZonePolicy, type ZoneStats } from '../balance/zone.ts';
import { Calls, type CallFn, type CallPlan, type PoolCall } from '../call/call.ts';
import { NO_RETRY, RetryBudget, retryDelayMs, type RetryGate, type RetryPolicy } from '../call/retry.ts';
import { channels } from '../channels.ts';
import type { EndpointSource, SourceSink, SourceWatch } from '../discovery/source.ts';
import { EndpointSet, type Endpoint } from '../endpoint.ts';
import { DiscoveryFailedError, PodpoolError, abortError } from '../errors.ts';
import { invalidArgument, invalidArgumentError } from '../options.ts';
import type { Transport } from '../transport/transport.ts';
import type { AdapterPool, BeginOptions, PoolConnectivity } from './adapter-pool.ts';
import { broadcastTargets, fanOut, notConnected, planBroadcast, type BroadcastOptions, type BroadcastResult, type Delivery } from './broadcast.ts';
import { Connector } from './connector.ts';
import { Ejection } from './ejection.ts';
import { Membership, type DiscoveryStats } from './membership.ts';
import { byEndpointKey, type Member, type MemberEvents, type MemberState, type MemberStats } from './member.ts';
import { emitGuarded, type PoolEvents } from './events.ts';
import { DEFAULT_READY_WAIT_MS, callPlan, checkBeginOptions, checkPoolOptions, checkReadyOptions, type PoolOptions, type ReadyOptions, type UseOptions } from './pool-options.ts';
import { Waits, closedError } from './waiting.ts';

const debug = debuglog('podpool');

export type { PoolOptions, ReadyOptions, UseOptions } from './pool-options.ts';
export type { PoolEvents, StateChange } from './events.ts';

/** Members `close()` drains in one turn of the event loop (each costs a few µs, more with real connections). */
const DRAINS_PER_TURN = 1_000;

/** Changes a picker build applies one by one (a binary search and a splice each); past it, in one pass. */
const FEW_CHANGES = 8;

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
  /** Calls sent again after an attempt failed: by `use()`, and by adapters (`begin()` with `avoid`). */
  readonly retries: number;
  /** Hedges sent: second attempts of calls slower than the hedge's delay. */
  readonly hedges: number;
  /** With the `zone` option: the client's zone, the calls picked inside and outside it, and how the picker routes now. */
  readonly zone?: ZoneStats;
  /** Discovery's last snapshot and last error, with their times. */
  readonly discovery: DiscoveryStats;
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
  readonly #membership: Membership<C>;
  readonly #connector: Connector<C>;
  readonly #calls: Calls<C>;
  readonly #waits: Waits<Member<C>>;
  readonly #watch: SourceWatch;
  readonly #budget: RetryBudget;
  /** The plan of a `use()` call made without options. */
  readonly #plan: CallPlan<unknown>;
  readonly #broadcastPlan: CallPlan<unknown>;
  /** The retry policy and budget, as adapters read them. */
  readonly retry: RetryGate;
  readonly #slowStart: SlowStartPolicy | undefined;
  readonly #subset: SubsetPolicy | undefined;
  readonly #zone: ZonePolicy | undefined;
  readonly #zoneCounts: ZoneCounts = { local: 0, remote: 0, mode: 'all', localShare: 0 };
  /** With subsetting, the keys of the last snapshot's subset: the zone plan counts only those. */
  #subsetKeys: ReadonlySet<string> | undefined = undefined;
  /** Rebuilds the picker when the next warming member is warm (slow start). */
  #warmTimer: NodeJS.Timeout | undefined = undefined;
  #picker: Picker<Member<C>>;
  /** The balancer's own picker inside `#picker` (no slow start; with `zone`, the zone picker), which the next build may start from. */
  #balancerPicker: Picker<Member<C>> | undefined = undefined;
  /** The members `#picker` picks from, in endpoint key order: those in state `ready` when it was built. */
  #pickable: readonly Member<C>[] = [];
  /** Members in state `ready` now; the picker catches up at its next build. */
  #readyCount = 0;
  /** Members that entered `ready` since the picker was built (and have not left it since). */
  #entered = new Set<Member<C>>();
  /** Members of the picker that left `ready` since it was built (some may have come back: they are in `#entered` too). */
  #left: Member<C>[] = [];
  /** The picker is behind the members' states; a build is queued. */
  #stale = false;
  #closing: Promise<void> | undefined = undefined;
  /** The connectivity last announced with a `connectivity` event. */
  #announced: PoolConnectivity = 'connecting';

  /** @internal Use {@link createPool}. */
  constructor(options: PoolOptions<C>) {
    super();
    const { source, transport, balancer, drainTimeoutMs, reconnect, ejection, callTimeoutMs, retry, retryBudget, hedge, slowStart, subset, zone, clock, random } = checkPoolOptions(options);
    this.#slowStart = slowStart;
    this.#subset = subset;
    this.#zone = zone;
    this.#source = source;
    this.#transport = transport;
    this.#balancer = balancer;
    this.#clock = clock;
    this.#context = Object.freeze({ clock, random });
    this.#ejection = ejection === undefined ? undefined : new Ejection(ejection, () => this.#membership.values(), clock);
    const memberEvents: MemberEvents = {
      transition: (m, from, to, error) => this.#transitioned(m as Member<C>, from, to, error),
      failed: (m, now) => this.#ejection?.failed(m as Member<C>, now),
      drained: (m) => this.#membership.finishDrain(m as Member<C>),
    };
    this.#connector = new Connector(transport, reconnect, clock, random, {
      connectError: (m, error) => {
        this.#emit('connectError', m.endpoint, error);
        // The pool may be failing now: calls that fail fast then should hear it.
        this.#waits.wake();
      },
      drainedByLoss: (m) => this.#membership.finishDrain(m),
    });
    this.#membership = new Membership(source.kind, this.#connector, balancer.latencyDecayMs ?? 10_000, drainTimeoutMs, memberEvents);
    const budget = new RetryBudget(retryBudget, clock);
    this.#budget = budget;
    this.#calls = new Calls(transport, clock, random, {
      pickAnother: (key, avoid) => this.#pickAvoiding(key, avoid.endpoint),
      pickWhenReady: (key, signal, timeoutMs) =>
        new Promise((resolve, reject) => this.#waits.toPick(key, { signal, timeoutMs, failFast: false, what: 'a retry' }, resolve, reject)),
      withdraw: () => budget.withdraw(),
      deposit: (now) => budget.deposit(now),
    }, callTimeoutMs, { pool: this, balancer: balancer.name });
    if (hedge?.percentile !== undefined) this.#calls.keepLatencies();
    this.#plan = Object.freeze({ key: undefined, signal: undefined, timeoutMs: callTimeoutMs, failedResult: undefined, retry, hedge, waitForReady: true, what: 'use() on' });
    // A delivery is retried by the broadcast itself (its `retries`), on its own pod, never hedged.
    this.#broadcastPlan = Object.freeze({ ...this.#plan, retry: NO_RETRY, hedge: undefined, what: 'broadcast to', kind: 'broadcast' as const });
    this.retry = Object.freeze({
      policy: retry,
      withdraw: () => budget.withdraw(),
      delayMs: (attempt: number, policy: RetryPolicy = retry) => retryDelayMs(policy, attempt, random),
    });
    const pool = this;
    this.#waits = new Waits<Member<C>>({
      get closed() {
        return pool.#closing !== undefined;
      },
      get pickable() {
        return pool.#readyCount;
      },
      get failing() {
        return pool.connectivity === 'failing';
      },
      pick: (key) => this.#pick(key),
      situation: (waited) => this.#membership.situation(waited),
    });
    this.#picker = balancer.picker(this.#pickable, this.#context);
    this.#watch = this.#startWatch(source);
  }

  /**
   * Starts discovery, holding the source to its contract: a snapshot that is not an
   * `EndpointSet`, an error that is not a `PodpoolError`, a `watch()` that throws or returns no
   * handle to close are reported as `sourceError`s (the last good set stays), never thrown
   * into the source or out of `close()`.
   */
  #startWatch(source: EndpointSource): SourceWatch {
    const { kind } = source;
    const sink: SourceSink = {
      snapshot: (endpoints) => {
        if (endpoints instanceof EndpointSet) this.#reconcile(endpoints);
        else this.#sourceFailed(invalidArgumentError(`snapshot of the ${kind} source`, 'an EndpointSet (the pool keeps its last good set)', endpoints));
      },
      error: (error) => {
        this.#sourceFailed(
          error instanceof PodpoolError
            ? error
            : new DiscoveryFailedError(`the ${kind} source failed: ${messageOf(error)}`, { cause: error }),
        );
      },
    };
    let watch: unknown;
    try {
      watch = source.watch(sink);
    } catch (error) {
      return this.#noWatch(new DiscoveryFailedError(`the ${kind} source's watch() threw: ${messageOf(error)}`, { cause: error }));
    }
    if (watch === null || typeof watch !== 'object' || typeof (watch as SourceWatch).close !== 'function') {
      return this.#noWatch(
        new DiscoveryFailedError(`the ${kind} source's watch() returned ${watch === null || typeof watch !== 'object' ? String(watch) : 'an object without close()'}, not a handle to stop it with: the pool can't stop its discovery`),
      );
    }
    return watch as SourceWatch;
  }

  /** A watch that could not be started (or can't be stopped): reported once listeners can hear it. */
  #noWatch(error: PodpoolError): SourceWatch {
    queueMicrotask(() => this.#sourceFailed(error));
    return { close: () => Promise.resolve() };
  }

  #sourceFailed(error: PodpoolError): void {
    this.#membership.discoveryFailed(error);
    debug('source %s: %s', this.#source.kind, error.message);
    this.#emit('sourceError', error);
    if (channels.discoveryError.hasSubscribers) channels.discoveryError.publish({ pool: this, source: this.#source.kind, error });
    this.#waits.wake();
  }

  /** The source's kind (`static`, `dns`, `kubernetes`), as `stats().source` reports it. */
  get sourceKind(): string {
    return this.#source.kind;
  }

  /** The last snapshot discovery reported (empty before the first). */
  get endpoints(): EndpointSet {
    return this.#membership.endpoints;
  }

  /** Where the pool stands, as a grpc-js channel reports its connectivity state. */
  get connectivity(): PoolConnectivity {
    if (this.#closing) return 'closed';
    if (this.#readyCount > 0) return 'ready';
    if (!this.#membership.hasSnapshot) return this.#membership.sourceError === undefined ? 'connecting' : 'failing';
    if (this.#membership.waiting > 0) return 'connecting';
    for (const m of this.#membership.values()) if (m.state === 'connecting' && !m.connectFailed) return 'connecting';
    return 'failing';
  }

  /**
   * Resolves once at least `minEndpoints` members can be picked (state `ready`). Rejects with
   * `PODPOOL_TIMEOUT` (saying what is missing), `PODPOOL_ABORTED` or `PODPOOL_CLOSED`.
   */
  async ready(options: ReadyOptions = {}): Promise<void> {
    const { minEndpoints, signal, timeoutMs } = checkReadyOptions(options);
    if (this.#closing) throw closedError('ready()');
    if (signal?.aborted) throw abortError(signal, 'ready()');
    if (this.#readyCount >= minEndpoints) return;
    await this.#waits.untilPickable(minEndpoints, signal, timeoutMs);
  }

  /**
   * Picks a pod, runs `fn` with its connection, and records the latency and outcome. When no
   * member can be picked it waits for one (see `UseOptions.waitForReady`), then fails with
   * `PODPOOL_NO_ENDPOINTS`; otherwise it fails with whatever `fn` threw.
   */
  use<T>(fn: CallFn<C, T>, options?: UseOptions<T>): Promise<T> {
    // Not an async function: the common path then makes one promise, not two.
    let member: Member<C> | undefined;
    let plan: CallPlan<T>;
    try {
      if (typeof fn !== 'function') invalidArgument('fn', 'a function (client, endpoint, signal) => result', fn);
      if (this.#closing) throw closedError('use()');
      // Checked before the pick: a bad option is the caller's bug whether or not a pod is ready.
      plan = options === undefined ? (this.#plan as CallPlan<T>) : callPlan(this.#plan, options);
      member = this.#pick(plan.key);
    } catch (error) {
      return Promise.reject(error);
    }
    // Only a call that finds nothing to pick pays for waiting.
    if (member === undefined) return this.#useWhenPickable(fn, plan);
    return this.#calls.run(member, fn, plan);
  }

  #useWhenPickable<T>(fn: CallFn<C, T>, plan: CallPlan<T>): Promise<T> {
    if (!plan.waitForReady) return Promise.reject(this.#waits.noEndpoints());
    const { signal, timeoutMs } = plan;
    const started = this.#clock();
    return new Promise<T>((resolve, reject) => {
      // A call with the pool's default deadline waits up to 10 s for a pod; one with its own, within it.
      const wait = { signal, timeoutMs: plan === this.#plan || timeoutMs === Infinity ? DEFAULT_READY_WAIT_MS : timeoutMs, failFast: false, what: 'use()' };
      this.#waits.toPick(
        plan.key,
        wait,
        (m) => {
          // The wait spent part of the call's time.
          const spent = this.#clock() - started;
          resolve(this.#calls.run(m, fn, spent === 0 || timeoutMs === Infinity ? plan : { ...plan, timeoutMs: Math.max(1, timeoutMs - spent) }));
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
    if (typeof fn !== 'function') invalidArgument('fn', 'a function (client, endpoint, { id, attempt, signal }) => result', fn);
    const plan = planBroadcast(options);
    if (this.#closing) throw closedError('broadcast()');
    const targets = broadcastTargets(this.#membership.values());
    if (targets.length === 0) throw this.#waits.noEndpoints();
    const deliver = (m: Member<C>, delivery: Delivery): Promise<T> =>
      m.connection === undefined
        ? Promise.reject(notConnected(m))
        : this.#calls.run(m, (c, e) => fn(c, e, delivery), { ...this.#broadcastPlan, signal: delivery.signal }, delivery.attempt);
    return fanOut(targets, (m) => m.endpoint, deliver, plan, this.#clock);
  }

  /**
   * For adapters that must pick synchronously (an undici `Dispatcher`, a grpc-js `Channel`):
   * picks a pod and counts a call in flight until `end()`. Throws `PODPOOL_NO_ENDPOINTS` when
   * no member can be picked; {@link beginWhenReady} waits instead.
   */
  begin(key?: string, avoid?: Endpoint): PoolCall<C> {
    if (this.#closing) throw closedError('begin()');
    const member = avoid === undefined ? this.#pick(key) : this.#pickAvoiding(key, avoid);
    if (member === undefined) throw this.#waits.noEndpoints();
    if (avoid === undefined) this.#budget.deposit();
    else this.#calls.retries++;
    return this.#calls.begin(member, avoid === undefined ? 1 : 2);
  }

  /**
   * A pick for a retry: another member than the one on `avoid` when another is pickable. The
   * balancer picks first (it knows load and latency); when it insists on `avoid` (a key's pod,
   * or chance), the next pickable member in key order takes the call.
   */
  #pickAvoiding(key: string | undefined, avoid: Endpoint): Member<C> | undefined {
    if (this.#closing) return undefined;
    // The fallback below walks the picker's members: they must be the ready ones.
    if (this.#stale) this.#rebuild();
    const first = this.#picker.pick(key);
    if (first === undefined || first.endpoint.key !== avoid.key) return first;
    const pickable = this.#pickable;
    if (pickable.length < 2) return first;
    const again = this.#picker.pick(key);
    if (again !== undefined && again.endpoint.key !== avoid.key) return again;
    const at = pickable.indexOf(first);
    return pickable[(at + 1) % pickable.length];
  }

  /**
   * `begin()` for adapters whose caller may wait: resolves with a begun call as soon as a member
   * can be picked. Rejects with `PODPOOL_NO_ENDPOINTS` when `timeoutMs` passes (or, with
   * `failFast`, when the pool is `failing`), `PODPOOL_ABORTED` when `signal` aborts,
   * `PODPOOL_CLOSED` when the pool closes. Woken by the state changes that make a member
   * pickable; it never polls.
   */
  beginWhenReady(options: BeginOptions = {}): Promise<PoolCall<C>> {
    try {
      checkBeginOptions(options);
    } catch (error) {
      return Promise.reject(error);
    }
    const { key, signal, timeoutMs, failFast = false, avoid } = options;
    if (this.#closing) return Promise.reject(closedError('beginWhenReady()'));
    return new Promise((resolve, reject) => {
      const picked = (m: Member<C>): void => {
        try {
          if (avoid === undefined) this.#budget.deposit();
          else this.#calls.retries++;
          resolve(this.#calls.begin(m, avoid === undefined ? 1 : 2));
        } catch (error) {
          reject(error);
        }
      };
      this.#waits.toPick(key, { signal, timeoutMs, failFast, what: 'beginWhenReady()' }, picked, reject);
    });
  }

  /** Each member's numbers, in endpoint key order. */
  stats(): PoolStats {
    const now = this.#clock();
    return {
      source: this.#source.kind,
      balancer: this.#balancer.name,
      transport: this.#transport.name,
      endpoints: this.#membership.endpoints.size,
      ready: this.#readyCount,
      members: [...this.#membership.values()].sort(byEndpointKey).map((m) => m.stats(now)),
      retries: this.#calls.retries,
      hedges: this.#calls.hedges,
      discovery: this.#membership.discoveryStats(),
      ...(this.#zone !== undefined && { zone: { zone: this.#zone.zone, ...this.#zoneCounts } }),
    };
  }

  /**
   * Stops discovery, stops picking, lets in-flight calls finish (up to `drainTimeoutMs`) and
   * closes every connection. Resolves when no socket, timer or watch is left.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      // Set before the shutdown starts: what its first drains make happen (a state listener
      // calling use(), a queued picker build) must already find the pool closing.
      const closing = Promise.withResolvers<void>();
      this.#closing = closing.promise;
      this.#shutdown().then(closing.resolve, closing.reject);
      this.#announceConnectivity();
    }
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    clearTimeout(this.#warmTimer);
    const watchClosed = this.#closeWatch();
    this.#waits.failAll(closedError('the wait'));
    this.#membership.stop();
    const members = [...this.#membership.values()];
    for (let i = 0; i < members.length; i++) {
      // A few thousand at a time: 10,000 drains in one go held the event loop for 50 ms and more.
      if (i > 0 && i % DRAINS_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
      this.#membership.drain(members[i]);
    }
    await Promise.all([watchClosed, ...members.map((m) => m.closed.promise)]);
    await this.#connector.settled();
    debug('pool closed');
  }

  /** Stops discovery; a watch whose close() throws or rejects is reported, and the pool still closes. */
  async #closeWatch(): Promise<void> {
    try {
      await this.#watch.close();
    } catch (error) {
      this.#sourceFailed(new DiscoveryFailedError(`stopping the ${this.#source.kind} source failed: ${messageOf(error)}`, { cause: error }));
    }
  }

  // ---- state changes -----------------------------------------------------------------------

  #reconcile(endpoints: EndpointSet): void {
    if (this.#closing) return;
    const subset = this.#subset?.select(endpoints);
    this.#subsetKeys = subset;
    const diff = this.#membership.reconcile(endpoints, subset);
    debug('snapshot: %d endpoints, +%d -%d ~%d', endpoints.size, diff.added.length, diff.removed.length, diff.changed.length);
    // The zone plan counts every pod of the snapshot, ready or not, and reads their hints: a
    // change to any of them may move it, not only a member entering or leaving `ready`.
    if (this.#zone !== undefined && (diff.added.length > 0 || diff.removed.length > 0 || diff.changed.length > 0)) this.#queueRebuild();
    this.#emit('change', endpoints, diff);
    if (channels.snapshot.hasSubscribers) channels.snapshot.publish({ pool: this, source: this.#source.kind, endpoints, diff });
    // A snapshot that changed nothing about pickable members still settles waiters that count on it.
    this.#waits.wake();
  }

  #transitioned(m: Member<C>, from: MemberState, to: MemberState, error: PodpoolError | undefined): void {
    this.#ejection?.moved(m, from, to);
    debug('%s: %s → %s%s', m.endpoint.key, from, to, error ? ` (${error.message})` : '');
    if (to === 'ready') {
      this.#readyCount++;
      this.#entered.add(m);
      this.#queueRebuild();
    } else if (from === 'ready') {
      this.#readyCount--;
      // It may have entered since the last build; then it is simply not added.
      if (!this.#entered.delete(m)) this.#left.push(m);
      this.#queueRebuild();
    }
    const change = { endpoint: m.endpoint, from, to, ...(error !== undefined && { error }) };
    this.#emit('state', change);
    if (channels.memberState.hasSubscribers) channels.memberState.publish({ pool: this, ...change });
  }

  /**
   * A member entered or left `ready`: the picker is rebuilt once for the whole burst (a snapshot
   * of N new pods, a close, a node's pods all lost at once), at the first pick after it or in a
   * microtask, whichever comes first. A pick never sees a stale picker, and whatever awaits the
   * change (`ready()`, a waiting call) finds the new one built. A closing pool picks nothing, so
   * it builds nothing.
   */
  #queueRebuild(): void {
    if (this.#stale || this.#closing) return;
    this.#stale = true;
    queueMicrotask(() => {
      if (this.#stale && !this.#closing) this.#rebuild();
    });
  }

  /** The pick every call makes: one flag read more than the picker's own. */
  #pick(key: string | undefined): Member<C> | undefined {
    if (this.#stale) this.#rebuild();
    return this.#picker.pick(key);
  }

  /**
   * A new picker over the members in `ready`: the last one's members, without those that left
   * it, merged (in endpoint key order) with those that entered since. A few changes cost a copy
   * of the list and a binary search each; many, a pass over it and a sort of the new ones. Never a
   * sort of all.
   */
  #rebuild(): void {
    this.#stale = false;
    const left = this.#left;
    const entered = this.#entered;
    let pickable: Member<C>[];
    if (left.length <= FEW_CHANGES) {
      pickable = this.#pickable.slice();
      // Each was in the list; one that came back is in `entered`, and goes back in below.
      for (const m of left) {
        const at = indexByKey(pickable, m.endpoint.key);
        if (pickable[at] === m) pickable.splice(at, 1);
      }
    } else {
      pickable = [];
      for (const m of this.#pickable) if (m.state === 'ready' && !entered.has(m)) pickable.push(m);
    }
    if (entered.size > FEW_CHANGES) pickable = mergeByKey(pickable, [...entered].sort(byEndpointKey));
    else for (const m of entered) pickable.splice(indexByKey(pickable, m.endpoint.key), 0, m);
    this.#left = [];
    entered.clear();
    this.#pickable = pickable;
    let picker: Picker<Member<C>>;
    if (this.#zone === undefined) {
      picker = this.#balancer.picker(pickable, this.#context, this.#balancerPicker);
      this.#balancerPicker = picker;
    } else {
      picker = zonePicker(this.#balancer, pickable, this.#context, this.#zone, this.#zoneCounts, this.#membership.endpoints, this.#subsetKeys, this.#balancerPicker);
      this.#balancerPicker = picker;
    }
    this.#picker = this.#withSlowStart(picker, pickable);
    this.#waits.wake();
  }

  /**
   * The picker, holding back members that connected less than the slow-start window ago while
   * others are warm; rebuilt when the next of them is warm, so the check is gone once none warms.
   */
  #withSlowStart(picker: Picker<Member<C>>, pickable: readonly Member<C>[]): Picker<Member<C>> {
    const policy = this.#slowStart;
    if (policy === undefined || this.#closing) return picker;
    clearTimeout(this.#warmTimer);
    this.#warmTimer = undefined;
    const now = this.#clock();
    let warm = 0;
    let nextWarm = Infinity;
    for (const m of pickable) {
      const warmAt = m.connectedAt + policy.windowMs;
      if (warmAt <= now) warm++;
      else nextWarm = Math.min(nextWarm, warmAt);
    }
    if (nextWarm === Infinity) return picker;
    this.#warmTimer = setTimeout(() => this.#rebuild(), nextWarm - now);
    this.#warmTimer.unref();
    // All warming together (the pool starting): none is colder than another.
    if (warm === 0) return picker;
    return slowStartPicker(picker, policy, (m) => (this.#clock() - m.connectedAt < policy.windowMs ? m.connectedAt : undefined), this.#context);
  }

  #emit<E extends keyof PoolEvents>(event: E, ...args: PoolEvents[E]): void {
    emitGuarded(this, event, args);
    // Every other event may be one that moves the connectivity.
    if (event !== 'connectivity') this.#announceConnectivity();
  }

  #announceConnectivity(): void {
    const connectivity = this.connectivity;
    if (connectivity === this.#announced) return;
    this.#announced = connectivity;
    this.#emit('connectivity', connectivity);
  }
}

/** Where `key` is, or would go, in members sorted by endpoint key. */
function indexByKey(members: readonly { endpoint: Endpoint }[], key: string): number {
  let lo = 0;
  let hi = members.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (members[mid].endpoint.key < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Two arrays in endpoint key order, merged into a new one in that order. */
function mergeByKey<M extends { endpoint: Endpoint }>(a: readonly M[], b: readonly M[]): M[] {
  const out: M[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(byEndpointKey(b[j], a[i]) < 0 ? b[j++] : a[i++]);
  while (i < a.length) out.push(a[i++]);
  while (j < b.length) out.push(b[j++]);
  return out;
}

/**
 * Creates a pool: starts discovery at once and keeps one connection per ready pod. Throws
 * `PODPOOL_INVALID_OPTION` naming any bad option.
 */
export function createPool<C>(options: PoolOptions<C>): Pool<C> {
  return new Pool(options);
}
