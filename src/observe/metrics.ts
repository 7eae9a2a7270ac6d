/**
 * Prometheus metrics for a pool, with prom-client. prom-client is an optional peer dependency:
 * it is loaded when {@link podpoolMetrics} is first called, never by importing podpool.
 *
 * Where the numbers come from, so that the call path pays for nothing it does not have to:
 * - per call (outcomes, durations, broadcast deliveries): the `podpool:call:*` diagnostics
 *   channels, kept to this pool's messages: a Map lookup, a count and one histogram observation
 *   a call (outcomes are counted in the endpoint's series and handed to prom-client at scrape).
 * - what the pool already counts (in-flight, member state, ejections, reconnects, retries,
 *   hedges): `pool.stats()`, read at scrape time in prom-client `collect()` callbacks.
 * - discovery and connects: the pool's `change`, `state`, `sourceError` and `connectError` events.
 *
 * An endpoint's series are removed when its member closes, so churn leaves nothing behind.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { createRequire } from 'node:module';
import type { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { CHANNEL_NAMES, type CallEndMessage, type CallErrorMessage, type CallStartMessage } from '../channels.ts';
import type { Endpoint, EndpointDiff, EndpointSet } from '../endpoint.ts';
import { InvalidOptionError, NotSupportedError, type PodpoolError } from '../errors.ts';
import { checkOptions, invalidArgument, invalidOption, optionNames } from '../options.ts';
import type { StateChange } from '../pool/events.ts';
import { Pool, type PoolStats } from '../pool/pool.ts';

/**
 * A prom-client `Registry`, as podpool's types name it: structurally, so that podpool's
 * declarations do not need prom-client installed (it is an optional peer dependency).
 */
export interface MetricsRegistry {
  registerMetric(metric: never): void;
  getSingleMetric(name: string): unknown;
  removeSingleMetric(name: string): void;
}

/** Options of {@link podpoolMetrics}. */
export interface PodpoolMetricsOptions {
  /** The prom-client registry to register in; prom-client's default `register` if omitted. */
  registry?: MetricsRegistry;
  /** Prefix of every metric name (default `podpool_`). */
  prefix?: string;
  /** Constant labels on every series (`{ pool: 'backend' }`): what tells two pools apart in one registry. */
  labels?: Readonly<Record<string, string>>;
}

/** What {@link podpoolMetrics} returns. */
export interface PodpoolMetrics {
  /** Stops listening and removes this pool's series (and the metrics, once no pool uses them) from the registry. */
  close(): void;
}

const OPTION_NAMES = optionNames<PodpoolMetricsOptions>({ registry: true, prefix: true, labels: true });

/** Call latency from 100 µs (a pod on the same node answering at once) to 10 s. */
const DURATION_BUCKETS = Object.freeze([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]);

/** The states `member_state` shows: a closed member's series are gone, so `closed` would always be 0. */
const MEMBER_STATES = Object.freeze(['connecting', 'ready', 'ejected', 'draining'] as const);
const OUTCOMES = Object.freeze(['answered', 'failed', 'abandoned', 'unrecorded'] as const);
type Outcome = (typeof OUTCOMES)[number];

/** Label names the metrics use themselves; a constant label may not take one. */
const OWN_LABELS = Object.freeze(['endpoint', 'outcome', 'state', 'code', 'le']);
const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

type Labels = Record<string, string>;
type PromClient = typeof import('prom-client');

let promClient: PromClient | undefined;

/** prom-client, loaded on first use (it is CommonJS, hence `require`). */
function loadPromClient(): PromClient {
  if (promClient !== undefined) return promClient;
  try {
    promClient = createRequire(import.meta.url)('prom-client') as PromClient;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw error;
    throw new NotSupportedError('podpoolMetrics() needs prom-client, an optional peer dependency of podpool: npm install prom-client', { cause: error });
  }
  return promClient;
}

/**
 * Exports a pool's metrics to a prom-client registry: requests by outcome and their durations,
 * in-flight calls, member states, ejections, reconnects and connect errors per endpoint; retries,
 * hedges, broadcast deliveries, discovery snapshots, errors and staleness per pool. Several pools
 * may share a registry and a prefix when their `labels` tell them apart.
 */
export function podpoolMetrics(pool: Pool<unknown>, options: PodpoolMetricsOptions = {}): PodpoolMetrics {
  if (!(pool instanceof Pool)) invalidArgument('pool', 'a Pool made by createPool()', pool);
  checkOptions(options, OPTION_NAMES);
  const { prefix = 'podpool_', labels = {} } = options;
  if (typeof prefix !== 'string' || (prefix !== '' && !METRIC_NAME.test(prefix))) invalidOption('prefix', 'a metric name prefix (letters, digits, _ and :)', prefix);
  checkLabels(labels);
  const client = loadPromClient();
  const registry = (options.registry ?? client.register) as Registry;
  if (registry === null || typeof registry !== 'object' || typeof registry.registerMetric !== 'function' || typeof registry.getSingleMetric !== 'function') {
    invalidOption('registry', 'a prom-client Registry', registry);
  }
  const family = Family.for(client, registry, prefix, Object.keys(labels).sort());
  return new PoolMetrics(pool, family, { ...labels });
}

function checkLabels(labels: unknown): asserts labels is Labels {
  if (labels === null || typeof labels !== 'object' || Array.isArray(labels)) invalidOption('labels', 'an object of label names to strings', labels);
  for (const [name, value] of Object.entries(labels)) {
    if (!LABEL_NAME.test(name) || name.startsWith('__')) invalidOption(`labels.${name}`, 'a label name (letters, digits and _, not starting with __)', name);
    if (OWN_LABELS.includes(name)) invalidOption(`labels.${name}`, `a label name other than ${OWN_LABELS.join(', ')} (podpool's metrics use them)`, name);
    if (typeof value !== 'string') invalidOption(`labels.${name}`, 'a string', value);
  }
}

/** One endpoint's series of the call metrics, made at its first call and removed when its member closes. */
interface EndpointSeries {
  readonly labels: Labels;
  readonly outcomes: Labels[];
  /** Attempts ended, by outcome (in {@link OUTCOMES}' order): counted here, handed to prom-client at scrape. */
  readonly counts: number[];
  readonly duration: { observe(seconds: number): void };
}

/**
 * The metrics of one prefix in one registry, shared by every pool that exports there (prom-client
 * registers a name once): each pool adds its series, told apart by its constant labels.
 */
class Family {
  static readonly #families = new WeakMap<Registry, Map<string, Family>>();

  readonly labelNames: readonly string[];
  readonly #registry: Registry;
  readonly #prefix: string;
  readonly #names: string[] = [];
  readonly pools = new Set<PoolMetrics>();
  /** Set while one scrape's collect() callbacks run, so `stats()` is read once per pool a scrape. */
  #collected = false;

  readonly requests: Counter;
  readonly duration: Histogram;
  readonly connectErrors: Counter;
  readonly broadcastDeliveries: Counter;
  readonly broadcastFailures: Counter;
  readonly snapshots: Counter;
  readonly discoveryErrors: Counter;
  readonly staleness: Gauge;
  readonly inFlight: Gauge;
  readonly memberState: Gauge;
  readonly ejections: Counter;
  readonly reconnects: Counter;
  readonly retries: Counter;
  readonly hedges: Counter;
  readonly endpoints: Gauge;
  readonly ready: Gauge;

  static for(client: PromClient, registry: Registry, prefix: string, labelNames: readonly string[]): Family {
    let byPrefix = Family.#families.get(registry);
    if (byPrefix === undefined) Family.#families.set(registry, (byPrefix = new Map()));
    const found = byPrefix.get(prefix);
    if (found !== undefined) {
      if (found.labelNames.join() !== labelNames.join()) {
        invalidOption('labels', `the label names [${found.labelNames.join(', ')}] of the pools already exported with prefix "${prefix}" to this registry`, labelNames);
      }
      return found;
    }
    const family = new Family(client, registry, prefix, labelNames);
    byPrefix.set(prefix, family);
    return family;
  }

  private constructor(client: PromClient, registry: Registry, prefix: string, labelNames: readonly string[]) {
    this.labelNames = labelNames;
    this.#registry = registry;
    this.#prefix = prefix;
    const collect = (): void => this.#collect();
    const make = <M>(Kind: new (config: never) => M, name: string, help: string, own: readonly string[], extra: object = {}): M => {
      const full = prefix + name;
      // Checked before registering anything, so a clash leaves the registry as it was.
      if (registry.getSingleMetric(full) !== undefined) {
        this.#unregister();
        throw new InvalidOptionError(`option prefix: the registry already has a metric named ${full} (another library's, or a pool's with another prefix)`);
      }
      const metric = new Kind({ name: full, help, labelNames: [...labelNames, ...own], registers: [registry], ...extra } as never);
      this.#names.push(full);
      return metric;
    };
    this.requests = make(client.Counter, 'requests_total', 'Calls ended on a pod (attempts: a retry or a hedge is another), by outcome: answered (an error the pod answered with included), failed (counted against the pod), abandoned (a hedge answered first), unrecorded (the caller gave up).', ['endpoint', 'outcome'], { collect });
    this.duration = make(client.Histogram, 'request_duration_seconds', 'Duration of calls on a pod, whatever their outcome.', ['endpoint'], { buckets: DURATION_BUCKETS });
    this.connectErrors = make(client.Counter, 'connect_errors_total', 'Failed connects to a pod; the pool tries again after a backoff.', ['endpoint']);
    this.broadcastDeliveries = make(client.Counter, 'broadcast_deliveries_total', 'Broadcast attempts a pod answered.', [], { collect });
    this.broadcastFailures = make(client.Counter, 'broadcast_failures_total', 'Broadcast attempts that ended without an answer.', [], { collect });
    this.snapshots = make(client.Counter, 'discovery_snapshots_total', 'Snapshots discovery delivered.', []);
    this.discoveryErrors = make(client.Counter, 'discovery_errors_total', 'Discovery failures (the pool keeps its last good snapshot), by error code.', ['code']);
    this.staleness = make(client.Gauge, 'discovery_staleness_seconds', 'Time since discovery last reported a snapshot (no series before the first).', [], { collect });
    this.inFlight = make(client.Gauge, 'in_flight', 'Calls in flight on a pod.', ['endpoint'], { collect });
    this.memberState = make(client.Gauge, 'member_state', "A pod's member state: 1 for the state it is in, 0 for the others.", ['endpoint', 'state'], { collect });
    this.ejections = make(client.Counter, 'ejections_total', 'Times a pod was ejected as an outlier.', ['endpoint'], { collect });
    this.reconnects = make(client.Counter, 'reconnects_total', 'Connections opened to a pod after its first.', ['endpoint'], { collect });
    this.retries = make(client.Counter, 'retries_total', 'Calls sent again after an attempt failed.', [], { collect });
    this.hedges = make(client.Counter, 'hedges_total', 'Hedges sent: second attempts of calls slower than the hedge delay.', [], { collect });
    this.endpoints = make(client.Gauge, 'endpoints', 'Endpoints in the last snapshot.', [], { collect });
    this.ready = make(client.Gauge, 'ready_members', 'Members that can be picked now.', [], { collect });
  }

  /**
   * Every metric read from `stats()` or counted per call (prom-client's label hashing costs µs a
   * call; a number in the endpoint's series costs nothing) is filled by the first collect() of a scrape: prom-client
   * calls them one after another in the same turn, so the flag is cleared in a microtask.
   */
  #collect(): void {
    if (this.#collected) return;
    this.#collected = true;
    queueMicrotask(() => (this.#collected = false));
    for (const metric of [this.requests, this.broadcastDeliveries, this.broadcastFailures, this.inFlight, this.memberState, this.ejections, this.reconnects, this.retries, this.hedges, this.endpoints, this.ready, this.staleness]) metric.reset();
    for (const pool of this.pools) pool.collect();
  }

  leave(pool: PoolMetrics): void {
    this.pools.delete(pool);
    if (this.pools.size > 0) return;
    this.#unregister();
    Family.#families.get(this.#registry)?.delete(this.#prefix);
  }

  #unregister(): void {
    for (const name of this.#names) this.#registry.removeSingleMetric(name);
    this.#names.length = 0;
  }
}

/** One pool's share of a {@link Family}. */
class PoolMetrics implements PodpoolMetrics {
  readonly #pool: Pool<unknown>;
  readonly #family: Family;
  readonly #labels: Labels;
  /** Series of endpoints that had a call or a connect error, by endpoint key. */
  readonly #series = new Map<string, EndpointSeries>();
  /** Endpoint keys per `endpoint` label value: two keys may share a pod name for a moment (a pod moved). */
  readonly #labelUsers = new Map<string, number>();
  readonly #errorCodes = new Set<string>();
  #broadcastDeliveries = 0;
  #broadcastFailures = 0;
  #closed = false;

  constructor(pool: Pool<unknown>, family: Family, labels: Labels) {
    const key = family.labelNames.map((n) => `${n}=${labels[n]}`).join();
    for (const other of family.pools) {
      if (other.#family.labelNames.map((n) => `${n}=${other.#labels[n]}`).join() === key) {
        invalidOption('labels', 'labels that tell this pool apart from the others exported to this registry with this prefix', labels);
      }
    }
    this.#pool = pool;
    this.#family = family;
    this.#labels = labels;
    family.pools.add(this);
    // Counted by events, not at scrape: it starts at 0, so a rate() has a series before the first.
    family.snapshots.inc(labels, 0);
    subscribe(CHANNEL_NAMES.callEnd, this.#callEnded);
    subscribe(CHANNEL_NAMES.callError, this.#callFailed);
    pool.on('change', this.#changed);
    pool.on('state', this.#stateChanged);
    pool.on('sourceError', this.#sourceFailed);
    pool.on('connectError', this.#connectFailed);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    unsubscribe(CHANNEL_NAMES.callEnd, this.#callEnded);
    unsubscribe(CHANNEL_NAMES.callError, this.#callFailed);
    this.#pool.off('change', this.#changed);
    this.#pool.off('state', this.#stateChanged);
    this.#pool.off('sourceError', this.#sourceFailed);
    this.#pool.off('connectError', this.#connectFailed);
    const f = this.#family;
    for (const key of [...this.#series.keys()]) this.#drop(key);
    f.snapshots.remove(this.#labels);
    for (const code of this.#errorCodes) f.discoveryErrors.remove({ ...this.#labels, code });
    f.leave(this);
  }

  /** Adds this pool's `stats()` to the metrics read at scrape time (they were reset just before). */
  collect(): void {
    const f = this.#family;
    const stats: PoolStats = this.#pool.stats();
    const pool = this.#labels;
    f.retries.inc(pool, stats.retries);
    f.broadcastDeliveries.inc(pool, this.#broadcastDeliveries);
    f.broadcastFailures.inc(pool, this.#broadcastFailures);
    for (const s of this.#series.values()) {
      for (let i = 0; i < OUTCOMES.length; i++) if (s.counts[i] > 0) f.requests.inc(s.outcomes[i], s.counts[i]);
    }
    f.hedges.inc(pool, stats.hedges);
    f.endpoints.set(pool, stats.endpoints);
    f.ready.set(pool, stats.ready);
    const { lastSnapshotAt } = stats.discovery;
    if (lastSnapshotAt !== undefined) f.staleness.set(pool, Math.max(0, Date.now() - lastSnapshotAt) / 1000);
    for (const m of stats.members) {
      // A closed member is on its way out of the pool: its series go with it.
      if (m.state === 'closed') continue;
      const labels = { ...pool, endpoint: endpointLabel(m.endpoint) };
      f.inFlight.set(labels, m.inFlight);
      f.ejections.inc(labels, m.ejections);
      f.reconnects.inc(labels, Math.max(0, m.connects - 1));
      for (const state of MEMBER_STATES) f.memberState.set({ ...labels, state }, state === m.state ? 1 : 0);
    }
  }

  readonly #callEnded = (message: unknown): void => {
    const m = message as CallEndMessage;
    if (m.pool !== this.#pool) return;
    this.#ended(m, 'answered', false);
  };

  readonly #callFailed = (message: unknown): void => {
    const m = message as CallErrorMessage;
    if (m.pool !== this.#pool) return;
    this.#ended(m, m.outcome, true);
  };

  /** `errored`: on the error channel, which a broadcast counts as a failed delivery even when the pod answered (with an error). */
  #ended(m: CallStartMessage & { readonly durationMs: number }, outcome: Outcome, errored: boolean): void {
    const s = this.#seriesOf(m.endpoint);
    s.counts[OUTCOMES.indexOf(outcome)]++;
    s.duration.observe(m.durationMs / 1000);
    if (m.kind === 'broadcast') {
      if (errored) this.#broadcastFailures++;
      else this.#broadcastDeliveries++;
    }
  }

  readonly #changed = (_endpoints: EndpointSet, _diff: EndpointDiff): void => {
    this.#family.snapshots.inc(this.#labels, 1);
  };

  readonly #stateChanged = (change: StateChange): void => {
    if (change.to === 'closed') this.#drop(change.endpoint.key);
  };

  readonly #sourceFailed = (error: PodpoolError): void => {
    this.#errorCodes.add(error.code);
    this.#family.discoveryErrors.inc({ ...this.#labels, code: error.code }, 1);
  };

  readonly #connectFailed = (endpoint: Endpoint): void => {
    this.#family.connectErrors.inc(this.#seriesOf(endpoint).labels, 1);
  };

  #seriesOf(endpoint: Endpoint): EndpointSeries {
    let s = this.#series.get(endpoint.key);
    if (s === undefined) {
      const value = endpointLabel(endpoint);
      const labels = { ...this.#labels, endpoint: value };
      s = { labels, outcomes: OUTCOMES.map((outcome) => ({ ...labels, outcome })), counts: OUTCOMES.map(() => 0), duration: this.#family.duration.labels(labels) };
      this.#series.set(endpoint.key, s);
      this.#labelUsers.set(value, (this.#labelUsers.get(value) ?? 0) + 1);
    }
    return s;
  }

  /** Removes an endpoint's series, unless another endpoint of this pool still goes by its label. */
  #drop(key: string): void {
    const s = this.#series.get(key);
    if (s === undefined) return;
    this.#series.delete(key);
    const value = s.labels.endpoint;
    const users = (this.#labelUsers.get(value) ?? 1) - 1;
    if (users > 0) {
      this.#labelUsers.set(value, users);
      return;
    }
    this.#labelUsers.delete(value);
    const f = this.#family;
    f.duration.remove(s.labels);
    f.connectErrors.remove(s.labels);
  }
}

/** The `endpoint` label: the pod's name when discovery knows it (stable across restarts), else `address:port`. */
function endpointLabel(endpoint: Endpoint): string {
  return endpoint.podName ?? endpoint.key;
}
