import { setTimeout as sleep } from 'node:timers/promises';
import { debuglog } from 'node:util';
import type { KubeConfig } from '@kubernetes/client-node';
import { messageOf } from '../abort.ts';
import { backoffMs, jitterOf } from '../backoff.ts';
import type { EndpointSet } from '../endpoint.ts';
import { DiscoveryFailedError } from '../errors.ts';
import { checkDelay, checkFunction, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import { mergeEndpointSlices, type EndpointSliceLike } from './endpoint-slices.ts';
import { connect, explain, findCredentials, httpStatus, isTimeout, type Client, type Credentials } from './kubernetes-api.ts';
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
}

const DEFAULT_STALL_TIMEOUT_MS = 120_000;
const DEFAULT_BACKOFF_INITIAL_MS = 1_000;
const DEFAULT_BACKOFF_MAX_MS = 30_000;
// A Service has a handful of slices (100 endpoints each), so one page is the rule; the bound only
// stops a server that keeps handing out continue tokens.
const LIST_PAGE_SIZE = 500;
const MAX_LIST_PAGES = 1_000;
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
  const credentials = findCredentials(options.kubeConfig);

  const config: WatchConfig = { service, namespace, port, stallTimeoutMs, initialMs, maxMs, credentials, clock, random };
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
 * over (re-watch, or relist after 410 Gone or an error status) with backoff, until closed.
 */
class EndpointSliceWatch implements SourceWatch {
  readonly #config: WatchConfig;
  readonly #sink: SourceSink;
  readonly #closing = new AbortController();
  readonly #labelSelector: string;
  readonly #path: string;
  readonly #name: string;
  readonly #done: Promise<void>;
  #client: Client | undefined;
  #slices = new Map<string, EndpointSliceLike>();
  #resourceVersion = '';
  #needList = true;
  #listed = false;
  #last: EndpointSet | undefined;
  #flushTimer: NodeJS.Immediate | undefined;

  constructor(config: WatchConfig, sink: SourceSink) {
    this.#config = config;
    this.#sink = sink;
    this.#labelSelector = `kubernetes.io/service-name=${config.service}`;
    this.#path = `/apis/discovery.k8s.io/v1/namespaces/${config.namespace}/endpointslices`;
    this.#name = `${config.namespace}/${config.service}`;
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
      const end = await this.#session();
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
        const message = `kubernetes discovery of Service ${this.#name} through the API server${server}: ${end.failure.message}; ${keeping}, retrying in ${delay} ms`;
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

  /** One list (when needed) and one watch; never throws. */
  async #session(): Promise<SessionEnd> {
    let client: Client;
    try {
      client = this.#client ??= await connect(this.#config.credentials, this.#config.stallTimeoutMs);
    } catch (error) {
      return { progressed: false, failure: { message: `could not load the Kubernetes client configuration: ${messageOf(error)}`, cause: error } };
    }
    if (this.#needList) {
      let list: { slices: EndpointSliceLike[]; resourceVersion: string };
      try {
        list = await this.#list(client);
      } catch (error) {
        return { progressed: false, failure: { message: `listing EndpointSlices failed: ${explain(error, this.#config.namespace)}`, cause: error } };
      }
      if (this.#closing.signal.aborted) return { progressed: false };
      // Only a complete list replaces the picture, all at once: a relist leaves no ghosts, and a
      // failed one leaves the last good picture standing.
      this.#slices = new Map(list.slices.map((s) => [s.metadata?.name ?? '', s]));
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

  async #list(client: Client): Promise<{ slices: EndpointSliceLike[]; resourceVersion: string }> {
    // The client sets no deadline on a list; a server that never answers must not hold discovery.
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), this.#config.stallTimeoutMs);
    const signal = AbortSignal.any([this.#closing.signal, deadline.signal]);
    try {
      const slices: EndpointSliceLike[] = [];
      let resourceVersion = '';
      let next: string | undefined;
      for (let page = 0; page < MAX_LIST_PAGES; page++) {
        const list = await client.api.listNamespacedEndpointSlice(
          { namespace: this.#config.namespace, labelSelector: this.#labelSelector, limit: LIST_PAGE_SIZE, _continue: next },
          client.requestOptions(signal),
        );
        for (const slice of list.items ?? []) if (typeof slice.metadata?.name === 'string') slices.push(slice);
        resourceVersion = list.metadata?.resourceVersion ?? '';
        next = list.metadata?._continue || undefined;
        if (next === undefined) return { slices, resourceVersion };
      }
      throw new Error(`the list did not end after ${MAX_LIST_PAGES} pages`);
    } catch (error) {
      if (deadline.signal.aborted && !this.#closing.signal.aborted) {
        throw new Error(`no answer within ${this.#config.stallTimeoutMs} ms`, { cause: error });
      }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  #watch(client: Client): Promise<SessionEnd> {
    const { signal } = this.#closing;
    return new Promise<SessionEnd>((resolve) => {
      let progressed = false;
      let ended = false;
      let controller: AbortController | undefined;
      // Set when we end the watch ourselves, and why.
      let stopped: { gone: true } | { failure: Failure } | undefined;
      const stop = (why: NonNullable<typeof stopped>) => {
        stopped ??= why;
        controller?.abort();
      };
      const finish = (end: SessionEnd) => {
        if (ended) return;
        ended = true;
        signal.removeEventListener('abort', onClose);
        resolve(end);
      };
      // A watch still waiting for its response headers can't be aborted yet (the client hands out
      // its controller only once they arrive): close() does not wait for it, the `then` below
      // aborts it when it comes.
      const onClose = () => {
        controller?.abort();
        finish({ progressed });
      };
      signal.addEventListener('abort', onClose, { once: true });

      const onEvent = (type: string, object: unknown) => {
        if (ended || stopped !== undefined) return;
        const event = this.#apply(type, object);
        if (event === 'progress') progressed = true;
        else if (event === 'gone') stop({ gone: true });
        else if (event !== 'ignored') stop({ failure: event });
      };
      const onDone = (error: unknown) => {
        if (ended) return;
        if (signal.aborted) return finish({ progressed });
        if (stopped !== undefined) {
          if ('gone' in stopped) {
            debug('kubernetes %s: resourceVersion %s is gone (410), relisting', this.#name, this.#resourceVersion);
            this.#needList = true;
            return finish({ progressed });
          }
          this.#needList = true;
          return finish({ progressed, failure: stopped.failure });
        }
        if (error === null || error === undefined) return finish({ progressed });
        const status = httpStatus(error);
        if (status === 410) {
          debug('kubernetes %s: watch answered 410 Gone, relisting', this.#name);
          this.#needList = true;
          return finish({ progressed });
        }
        if (isTimeout(error)) {
          return finish({
            progressed,
            failure: { message: `the watch brought no event nor bookmark for ${this.#config.stallTimeoutMs} ms`, cause: error },
          });
        }
        // An error status says the server's view of us changed; start again from a fresh list.
        if (status !== undefined) this.#needList = true;
        finish({ progressed, failure: { message: `watching EndpointSlices failed: ${explain(error, this.#config.namespace)}`, cause: error } });
      };

      const query = {
        labelSelector: this.#labelSelector,
        resourceVersion: this.#resourceVersion || undefined,
        allowWatchBookmarks: true,
        timeoutSeconds: MIN_WATCH_TIMEOUT_S + Math.floor(jitterOf(this.#config.random) * MIN_WATCH_TIMEOUT_S),
      };
      debug('kubernetes %s: watching from resourceVersion %s', this.#name, this.#resourceVersion);
      client.watch.watch(this.#path, query, onEvent, onDone).then(
        (c) => {
          controller = c;
          if (ended || stopped !== undefined) c.abort();
        },
        onDone,
      );
    });
  }

  /** Applies one watch event to the slices; says what it meant for the watch. */
  #apply(type: string, object: unknown): 'progress' | 'gone' | 'ignored' | Failure {
    const o = (object ?? {}) as EndpointSliceLike & { code?: number; reason?: string; message?: string };
    if (type === 'ERROR') {
      if (o.code === 410) return 'gone';
      return { message: `the watch sent an error: ${o.code ?? ''} ${o.reason ?? ''} ${o.message ?? ''}`.replace(/\s+/g, ' ').trim() };
    }
    const name = o.metadata?.name;
    const resourceVersion = o.metadata?.resourceVersion;
    if (typeof resourceVersion === 'string' && resourceVersion !== '') this.#resourceVersion = resourceVersion;
    if (type === 'BOOKMARK') return 'progress';
    if (typeof name !== 'string') {
      debug('kubernetes %s: ignored a %s event without a name', this.#name, type);
      return 'ignored';
    }
    if (type === 'ADDED' || type === 'MODIFIED') this.#slices.set(name, o);
    else if (type === 'DELETED') this.#slices.delete(name);
    else return 'ignored';
    // Events that arrive together (a pod moving from one slice to another is a removal and an
    // addition) are folded into one snapshot, so a pod does not blink out between them.
    this.#flushTimer ??= setImmediate(() => {
      this.#flushTimer = undefined;
      this.#flush();
    });
    return 'progress';
  }

  #flush(): void {
    clearImmediate(this.#flushTimer);
    this.#flushTimer = undefined;
    if (this.#closing.signal.aborted || !this.#listed) return;
    const next = mergeEndpointSlices(this.#slices.values(), this.#config.port);
    if (this.#last !== undefined && next.equals(this.#last)) return;
    this.#last = next;
    debug('kubernetes %s: %d endpoints (%d ready)', this.#name, next.size, next.ready().length);
    this.#sink.snapshot(next);
  }
}

