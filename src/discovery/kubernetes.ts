import { setTimeout as sleep } from 'node:timers/promises';
import { debuglog } from 'node:util';
import type { KubeConfig } from '@kubernetes/client-node';
import { messageOf } from '../abort.ts';
import { backoffMs, jitterOf } from '../backoff.ts';
import { checkAllowAddresses, type AddressRange } from '../address.ts';
import { DiscoveryFailedError, InvalidEndpointError } from '../errors.ts';
import { checkDelay, checkFunction, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import { EndpointSliceMerge, noSlice, readSlice, sliceName, type ParsedSlice } from './endpoint-slices.ts';
import { connect, explain, findCredentials, httpStatus, readText, type Client, type Credentials } from './kubernetes-api.ts';
import { excerpt, LineSplitter, parseWatchLine } from './kubernetes-lines.ts';
import type { EndpointSource, SourceSink, SourceWatch } from './source.ts';

const debug = debuglog('podpool');

/** What {@link kubernetesEndpoints} takes. */
export interface KubernetesEndpointsOptions {
  /** The Service's name: its EndpointSlices carry the label `kubernetes.io/service-name=<service>`. */
  service: string;
  /** The namespace of the Service (in a pod, pass its own: the downward API's `metadata.namespace`). */
  namespace: string;
  /** A port name of the Service (each slice's number for that name is used) or a port number. */
  port: string | number;
  /** Where and who to talk to; by default the pod's service account, else `KUBECONFIG`, else `~/.kube/config`. */
  kubeConfig?: KubeConfig;
  /** A watch that brings no event nor bookmark for this long is restarted (default 120 000: two bookmark periods). */
  stallTimeoutMs?: number;
  /** The wait after failures in a row: doubling from `initialMs` (1000), jittered up to twice that, never over `maxMs` (30 000). */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Time in ms, to tell a watch that ran a while from one that ended at once; default `performance.now`. */
  clock?: () => number;
  /** Numbers in [0, 1) for the backoff's jitter and the watch's timeout; tests pin it. Default `Math.random`. */
  random?: () => number;
  /**
   * Address ranges to accept from EndpointSlices (default none: Kubernetes itself refuses loopback
   * and link-local addresses in a slice, so one there is an error or an attack). An endpoint at a
   * refused address is skipped and reported as `PODPOOL_INVALID_ENDPOINT`; a fake API server on
   * loopback needs `['loopback']`.
   */
  allowAddresses?: readonly AddressRange[];
}

const DEFAULT_STALL_TIMEOUT_MS = 120_000;
const DEFAULT_BACKOFF_INITIAL_MS = 1_000;
const DEFAULT_BACKOFF_MAX_MS = 30_000;
// Slices a page: a page is parsed and read in one go, and 20 slices of 100 endpoints (the
// controller's default) take a few ms where a page of 100 (10,000 endpoints, 1.9 MB of JSON)
// held the event loop for 50-100 ms; a Service of 10,000 pods then costs 5 requests, not 1. The
// bound on pages only stops a server that keeps handing out continue tokens.
const LIST_PAGE_SIZE = 20;
const MAX_LIST_PAGES = 1_000;
// etcd refuses objects over 1.5 MiB, so a page of 20 slices stays under 30 MiB; past this, the
// server is broken (and a string this long would be near what V8 can hold).
const MAX_LIST_PAGE_BYTES = 256 * 1024 * 1024;
// Problems found in slices are reported once per slice version and at most this many in a burst,
// then one per interval: a Service of broken slices must not flood the log on every relist.
const REPORT_BURST = 10;
const REPORT_INTERVAL_MS = 6_000;
// How many of a slice's problems a report spells out.
const PROBLEMS_SHOWN = 3;
// As client-go's reflector does: the server ends each watch after 5 to 10 minutes, which moves
// long-lived watches across API server replicas and bounds the life of a watch gone wrong.
const MIN_WATCH_TIMEOUT_S = 300;

const OPTIONS = optionNames<KubernetesEndpointsOptions>({
  service: true,
  namespace: true,
  port: true,
  kubeConfig: true,
  stallTimeoutMs: true,
  backoff: true,
  clock: true,
  random: true,
  allowAddresses: true,
});
const BACKOFF_OPTIONS = optionNames<NonNullable<KubernetesEndpointsOptions['backoff']>>({ initialMs: true, maxMs: true });

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;

/** Discovers a Service's pods by watching all its EndpointSlices through the API server; throws `PODPOOL_INVALID_OPTION` for a bad option. */
export function kubernetesEndpoints(options: KubernetesEndpointsOptions): EndpointSource {
  checkOptions(options, OPTIONS);
  const { service, namespace, port } = options;
  if (typeof service !== 'string' || service.length > 63 || !DNS_1035_LABEL.test(service)) {
    invalidOption('service', 'a Service name (a DNS-1035 label such as "backend")', service);
  }
  if (typeof namespace !== 'string' || namespace.length > 63 || !DNS_LABEL.test(namespace)) {
    invalidOption('namespace', 'a namespace name (a DNS label such as "default")', namespace);
  }
  if (typeof port === 'number') {
    if (checkNumber('port', port, { min: 1, integer: true }) > 65535) invalidOption('port', 'a port number from 1 to 65535', port);
  } else if (typeof port !== 'string' || port.length > 63 || !DNS_LABEL.test(port)) {
    invalidOption('port', 'a port name of the Service (such as "grpc") or a port number', port);
  } else if (/^[0-9]+$/.test(port)) {
    // Port names hold a letter; a string of digits is almost always a number read from the environment.
    invalidOption('port', `a port name or a number (pass ${port} as a number)`, port);
  }
  const stallTimeoutMs = checkDelay('stallTimeoutMs', options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS, 1);
  const backoff = options.backoff ?? {};
  checkOptions(backoff, BACKOFF_OPTIONS, 'backoff');
  const initialMs = checkDelay('backoff.initialMs', backoff.initialMs ?? DEFAULT_BACKOFF_INITIAL_MS, 1);
  const maxMs = checkDelay('backoff.maxMs', backoff.maxMs ?? Math.max(DEFAULT_BACKOFF_MAX_MS, initialMs), initialMs);
  const { clock = performance.now.bind(performance), random = Math.random } = options;
  checkFunction('clock', clock, 'a function returning milliseconds');
  checkFunction('random', random, 'a function returning numbers in [0, 1)');
  const allowed = checkAllowAddresses(options.allowAddresses, []);
  const credentials = findCredentials(options.kubeConfig);

  const config: WatchConfig = { service, namespace, port, stallTimeoutMs, initialMs, maxMs, credentials, clock, random, allowed };
  return {
    kind: 'kubernetes',
    watch(sink) {
      return new EndpointSliceWatch(config, sink);
    },
  };
}

interface WatchConfig {
  readonly service: string;
  readonly namespace: string;
  readonly port: string | number;
  readonly stallTimeoutMs: number;
  readonly initialMs: number;
  readonly maxMs: number;
  readonly credentials: Credentials;
  readonly clock: () => number;
  readonly random: () => number;
  readonly allowed: ReadonlySet<AddressRange>;
}

/** Why a session ended badly: what the operator reads, and the original error. */
interface Failure {
  readonly message: string;
  readonly cause?: unknown;
}

interface SessionEnd {
  /** The watch delivered at least one event or bookmark: the API server is healthy. */
  readonly progressed: boolean;
  readonly failure?: Failure;
}

/**
 * One running discovery: list the slices, watch them from the list's resourceVersion, and start
 * over (re-watch, or relist after 410 Gone, an error status or an event it could not read) with
 * backoff, until closed.
 *
 * What the server sends is checked, never trusted: a list without items, a line that is not an
 * event, an object that is no EndpointSlice end the session with `PODPOOL_DISCOVERY_FAILED` and a
 * relist; an endpoint that can't be dialled is skipped and reported as `PODPOOL_INVALID_ENDPOINT`.
 * Neither ever removes what was known: a slice that can't be read as a whole keeps its last good
 * version.
 */
class EndpointSliceWatch implements SourceWatch {
  readonly #config: WatchConfig;
  readonly #sink: SourceSink;
  readonly #closing = new AbortController();
  readonly #labelSelector: string;
  readonly #path: string;
  readonly #name: string;
  readonly #done: Promise<void>;
  readonly #merge = new EndpointSliceMerge();
  /** The problems last reported for each slice, so the same ones are not reported again. */
  readonly #reported = new Map<string, string>();
  #reportTokens = REPORT_BURST;
  #reportsRefilledAt: number;
  #reportsHeld = 0;
  #client: Client | undefined;
  #resourceVersion = '';
  #needList = true;
  #listed = false;
  #flushTimer: NodeJS.Immediate | undefined;

  constructor(config: WatchConfig, sink: SourceSink) {
    this.#config = config;
    this.#sink = sink;
    this.#labelSelector = `kubernetes.io/service-name=${config.service}`;
    this.#path = `/apis/discovery.k8s.io/v1/namespaces/${config.namespace}/endpointslices`;
    this.#name = `${config.namespace}/${config.service}`;
    this.#reportsRefilledAt = config.clock();
    this.#done = this.#run();
  }

  async close(): Promise<void> {
    this.#closing.abort();
    clearImmediate(this.#flushTimer);
    this.#flushTimer = undefined;
    await this.#done;
  }

  async #run(): Promise<void> {
    const { signal } = this.#closing;
    const { initialMs, maxMs, clock, random } = this.#config;
    let failures = 0;
    // Each turn waits on the API server or sleeps; close() ends the loop at either.
    while (!signal.aborted) {
      const started = clock();
      let end: SessionEnd;
      try {
        end = await this.#session();
      } catch (error) {
        // A fault of ours must not end discovery for good: start again from a fresh list.
        this.#needList = true;
        end = { progressed: false, failure: { message: `discovery failed unexpectedly: ${messageOf(error)}`, cause: error } };
      }
      if (signal.aborted) return;
      if (end.progressed) failures = 0;
      // A watch that ran a while and ended cleanly (the server's timeout) restarts at once;
      // anything else waits, and each turn without a single event doubles the wait.
      if (end.failure === undefined && end.progressed && clock() - started >= initialMs) {
        debug('kubernetes %s: watch ended, restarting it', this.#name);
        continue;
      }
      failures += 1;
      const delay = Math.round(backoffMs({ minMs: initialMs, maxMs, factor: 2 }, failures, random));
      if (end.failure === undefined) {
        debug('kubernetes %s: watch ended without progress, restarting in %d ms', this.#name, delay);
      } else {
        const server = this.#client === undefined ? '' : ` at ${this.#client.server}`;
        const keeping = this.#listed ? 'keeping the last endpoints' : 'no endpoints known yet';
        const message = `kubernetes discovery of Service ${this.#name} through the API server${server}: ${end.failure.message}; ${keeping}, retrying in ${delay} ms${this.#needList && this.#listed ? ' with a fresh list' : ''}`;
        debug('%s', message);
        this.#sink.error(new DiscoveryFailedError(message, { cause: end.failure.cause }));
      }
      try {
        await sleep(delay, undefined, { signal });
      } catch {
        return;
      }
    }
  }

  /** One list (when needed) and one watch. */
  async #session(): Promise<SessionEnd> {
    let client: Client;
    try {
      client = this.#client ??= await connect(this.#config.credentials);
    } catch (error) {
      return { progressed: false, failure: { message: `could not load the Kubernetes client configuration: ${messageOf(error)}`, cause: error } };
    }
    if (this.#needList) {
      let list: { slices: ParsedSlice[]; resourceVersion: string };
      try {
        list = await this.#list(client);
      } catch (error) {
        return { progressed: false, failure: { message: `listing EndpointSlices failed: ${explain(error, this.#config.namespace)}`, cause: error } };
      }
      if (this.#closing.signal.aborted) return { progressed: false };
      // Only a complete list replaces the picture, all at once: a relist leaves no ghosts, and a
      // failed one leaves the last good picture standing.
      const names = new Set(list.slices.map((s) => s.name));
      for (const name of [...this.#merge.names()]) if (!names.has(name)) this.#delete(name);
      for (const slice of list.slices) this.#set(slice);
      this.#resourceVersion = list.resourceVersion;
      this.#needList = false;
      this.#listed = true;
      debug('kubernetes %s: listed %d slices at resourceVersion %s', this.#name, list.slices.length, list.resourceVersion);
      this.#flush();
      // The sink may have closed us from inside that snapshot; a watch started now would hold
      // close() until the server ends it, minutes later.
      if (this.#closing.signal.aborted) return { progressed: false };
    }
    return this.#watch(client);
  }

  /** Every page of the list, read and checked; throws when any page is not a list of EndpointSlices. */
  async #list(client: Client): Promise<{ slices: ParsedSlice[]; resourceVersion: string }> {
    const { stallTimeoutMs, port, allowed } = this.#config;
    // A server that never answers must not hold discovery.
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), stallTimeoutMs);
    const signal = AbortSignal.any([this.#closing.signal, deadline.signal]);
    try {
      const slices: ParsedSlice[] = [];
      let resourceVersion = '';
      let next: string | undefined;
      for (let page = 0; page < MAX_LIST_PAGES; page++) {
        const query = { labelSelector: this.#labelSelector, limit: LIST_PAGE_SIZE, continue: next };
        const text = await readText(await client.get(this.#path, query, signal), MAX_LIST_PAGE_BYTES);
        let list: unknown;
        try {
          list = JSON.parse(text);
        } catch {
          throw new Error(`the answer is not JSON: ${excerpt(text)}`);
        }
        const { items, metadata } = (list ?? {}) as { items?: unknown; metadata?: { resourceVersion?: unknown; continue?: unknown } };
        // `{}` or `"items": null` is not an empty Service (that is `"items": []`): taking it for one
        // would empty the pool.
        if (list === null || typeof list !== 'object' || !Array.isArray(items)) {
          throw new Error(`the answer is not a list of EndpointSlices (items is ${items === null ? 'null' : Array.isArray(list) ? 'a bare list' : typeof items})`);
        }
        for (const item of items as unknown[]) {
          const slice = readSlice(item, port, allowed);
          if (typeof slice === 'string') throw new Error(`the list holds something that is no EndpointSlice: ${slice}`);
          slices.push(slice);
        }
        const meta = metadata !== null && typeof metadata === 'object' ? metadata : {};
        resourceVersion = typeof meta.resourceVersion === 'string' ? meta.resourceVersion : '';
        next = typeof meta.continue === 'string' && meta.continue !== '' ? meta.continue : undefined;
        if (next === undefined) return { slices, resourceVersion };
      }
      throw new Error(`the list did not end after ${MAX_LIST_PAGES} pages`);
    } catch (error) {
      if (deadline.signal.aborted && !this.#closing.signal.aborted) {
        throw new Error(`no answer within ${stallTimeoutMs} ms`, { cause: error });
      }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** One watch, until the server ends it, it fails, goes silent, or sends what can't be applied. */
  async #watch(client: Client): Promise<SessionEnd> {
    const { stallTimeoutMs, random, namespace } = this.#config;
    // The stall timer covers the wait for the response headers and each silence after them.
    const stall = new AbortController();
    const timer = setTimeout(() => stall.abort(), stallTimeoutMs);
    const signal = AbortSignal.any([this.#closing.signal, stall.signal]);
    let progressed = false;
    let streaming = false;
    const query = {
      watch: true,
      labelSelector: this.#labelSelector,
      resourceVersion: this.#resourceVersion || undefined,
      allowWatchBookmarks: true,
      timeoutSeconds: MIN_WATCH_TIMEOUT_S + Math.floor(jitterOf(random) * MIN_WATCH_TIMEOUT_S),
    };
    debug('kubernetes %s: watching from resourceVersion %s', this.#name, this.#resourceVersion);
    try {
      const body = await client.get(this.#path, query, signal);
      streaming = true;
      timer.refresh();
      const lines = new LineSplitter();
      for await (const chunk of body as AsyncIterable<Buffer>) {
        timer.refresh();
        let complete: string[];
        try {
          complete = lines.push(chunk);
        } catch (error) {
          body.destroy();
          this.#needList = true;
          return { progressed, failure: { message: `watching EndpointSlices failed: ${messageOf(error)}`, cause: error } };
        }
        for (const line of complete) {
          const outcome = this.#apply(line);
          if (outcome === 'progress') {
            progressed = true;
            continue;
          }
          if (outcome === 'ignored') continue;
          // Gone, an ERROR event, or an event that could not be read: what the server meant is
          // unknown from here on, and only a fresh list tells.
          body.destroy();
          this.#needList = true;
          if (outcome === 'gone') debug('kubernetes %s: resourceVersion %s is gone (410), relisting', this.#name, this.#resourceVersion);
          return outcome === 'gone' ? { progressed } : { progressed, failure: outcome };
        }
      }
      if (lines.pending > 0 && !this.#closing.signal.aborted) {
        this.#needList = true;
        return { progressed, failure: { message: `watching EndpointSlices failed: the watch ended in the middle of an event (${lines.pending} bytes of a line cut short)` } };
      }
      return { progressed };
    } catch (error) {
      if (this.#closing.signal.aborted) return { progressed };
      if (stall.signal.aborted) {
        return { progressed, failure: { message: `the watch brought no event nor bookmark for ${stallTimeoutMs} ms`, cause: error } };
      }
      const status = httpStatus(error);
      if (status === 410) {
        debug('kubernetes %s: watch answered 410 Gone, relisting', this.#name);
        this.#needList = true;
        return { progressed };
      }
      // An error status says the server's view of us changed; start again from a fresh list. A
      // broken connection only needs the watch again: the server replays from our resourceVersion.
      if (status !== undefined) this.#needList = true;
      return { progressed, failure: { message: `watching EndpointSlices failed: ${explain(error, namespace, { streaming })}`, cause: error } };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Applies one line of the watch; says what it meant for the watch. */
  #apply(line: string): 'progress' | 'gone' | 'ignored' | Failure {
    const event = parseWatchLine(line);
    if (event === undefined) return 'ignored';
    if ('problem' in event) return { message: `watching EndpointSlices failed: ${event.problem}` };
    const { type, object } = event;
    if (type === 'ERROR') {
      const { code, reason, message } = object;
      if (code === 410) return 'gone';
      const words = [code, reason, message].filter((w) => typeof w === 'string' || typeof w === 'number').map((w) => excerpt(String(w), 200));
      return { message: `the watch sent an error: ${words.join(' ').replace(/\s+/g, ' ').trim()}` };
    }
    const metadata = object.metadata;
    const resourceVersion = metadata !== null && typeof metadata === 'object' ? (metadata as { resourceVersion?: unknown }).resourceVersion : undefined;
    if (typeof resourceVersion !== 'string' || resourceVersion === '') {
      return { message: `watching EndpointSlices failed: a ${type} event has no metadata.resourceVersion` };
    }
    if (type === 'BOOKMARK') {
      this.#resourceVersion = resourceVersion;
      return 'progress';
    }
    // An event whose slice can't be named can't be applied to any slice: nothing is removed, and
    // the relist that follows finds out what changed. A deleted slice needs nothing but its name.
    const name = sliceName(object);
    if (name === undefined) return { message: `watching EndpointSlices failed: a ${type} event carries no usable object: ${noSlice(object)}` };
    if (type === 'DELETED') this.#delete(name);
    else this.#set(readSlice(object, this.#config.port, this.#config.allowed) as ParsedSlice);
    this.#resourceVersion = resourceVersion;
    // Events that arrive together (a pod moving from one slice to another is a removal and an
    // addition) are folded into one snapshot, so a pod does not blink out between them.
    this.#flushTimer ??= setImmediate(() => {
      this.#flushTimer = undefined;
      this.#flush();
    });
    return 'progress';
  }

  /** Takes a new version of a slice, unless it can't be read as a whole and a good one is known. */
  #set(slice: ParsedSlice): void {
    const previous = this.#merge.get(slice.name);
    const keep = slice.unusable && previous !== undefined && !previous.unusable;
    this.#reportProblems(slice, keep);
    if (!keep) this.#merge.set(slice);
  }

  #delete(name: string): void {
    this.#merge.delete(name);
    this.#reported.delete(name);
  }

  /** Reports what a slice version skipped, unless the same was reported for its last version. */
  #reportProblems(slice: ParsedSlice, kept: boolean): void {
    if (slice.problems.length === 0) {
      this.#reported.delete(slice.name);
      return;
    }
    const signature = slice.problems.join('\n');
    if (this.#reported.get(slice.name) === signature) return;
    this.#reported.set(slice.name, signature);
    const { problems } = slice;
    const shown = problems.slice(0, PROBLEMS_SHOWN).join('; ');
    const more = problems.length > PROBLEMS_SHOWN ? `; and ${problems.length - PROBLEMS_SHOWN} more` : '';
    const outcome = !slice.unusable
      ? `its ${slice.candidates.length} other endpoints are used`
      : kept
        ? 'nothing in it is usable, so its last good version stands'
        : 'nothing in it is usable, and no good version of it is known';
    let message = `kubernetes discovery of Service ${this.#name}: EndpointSlice ${slice.name}: ${shown}${more} (${outcome})`;
    debug('%s', message);
    if (!this.#takeReportToken()) {
      this.#reportsHeld += 1;
      return;
    }
    if (this.#reportsHeld > 0) {
      message += `; ${this.#reportsHeld} such reports were held back before this one (NODE_DEBUG=podpool logs each)`;
      this.#reportsHeld = 0;
    }
    this.#sink.error(new InvalidEndpointError(message));
  }

  /** A token bucket: {@link REPORT_BURST} reports at once, then one per {@link REPORT_INTERVAL_MS}. */
  #takeReportToken(): boolean {
    const now = this.#config.clock();
    const earned = Math.floor((now - this.#reportsRefilledAt) / REPORT_INTERVAL_MS);
    if (earned > 0) {
      this.#reportTokens = Math.min(REPORT_BURST, this.#reportTokens + earned);
      this.#reportsRefilledAt += earned * REPORT_INTERVAL_MS;
    }
    if (this.#reportTokens === 0) return false;
    this.#reportTokens -= 1;
    return true;
  }

  #flush(): void {
    clearImmediate(this.#flushTimer);
    this.#flushTimer = undefined;
    if (this.#closing.signal.aborted || !this.#listed) return;
    const next = this.#merge.snapshot();
    if (next === undefined) return;
    debug('kubernetes %s: %d endpoints', this.#name, next.size);
    this.#sink.snapshot(next);
  }
}
