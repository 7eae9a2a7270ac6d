/**
 * The bench's cluster as the client Job's pod sees a real one: {@link KubeCluster}, the same
 * {@link BenchCluster} the stand-in is, so `podpool bench <scenario> --in-cluster` runs the
 * scenarios' own code. What differs is where things come from:
 * - the pods: the headless Service's EndpointSlices, through podpool's own Kubernetes source (with
 *   the Job's ServiceAccount, which may only get, list and watch them);
 * - the ClusterIP: the Service the command created (its address in the Job's environment);
 * - DNS: the pod's resolver (or the server the fake cluster names);
 * - what a pod served, and slowing, recycling or killing one: each pod's control endpoint
 *   (`podpool pod`, port {@link CONTROL_PORT});
 * - adding, removing and restarting pods: asked of the command that started the run, in a log
 *   line ({@link RunnerRequest}), and seen done in the EndpointSlices.
 */
import { kubernetesEndpoints } from '../../../src/discovery/kubernetes.ts';
import { ErrorCode, PodpoolError } from '../../../src/errors.ts';
import type { AddressRange, Endpoint, EndpointSet, EndpointSource, SourceWatch } from '../../../src/index.ts';
import type { BenchCluster, ClusterAddress, PodInfo, RollingRestartOptions } from '../cluster.ts';
import { clusterDnsTarget } from '../grpc-resolver.ts';
import { killPod, podCounts, recyclePod, slowPod } from '../pod-control.ts';
import { POD_PORTS, type KillResult, type PodCounts, type Recycling } from '../pods.ts';
import { ENV, type RunnerEvent, type RunnerRequest } from './protocol.ts';

/** What the runner reads from its environment (the Job sets it; see {@link ENV}). */
export interface RunnerEnvironment {
  readonly namespace: string;
  /** The headless Service. */
  readonly service: string;
  readonly dnsName: string;
  readonly clusterIp: string;
  readonly dnsServer: string | undefined;
  readonly allowAddresses: readonly AddressRange[];
}

/**
 * Kubernetes' service-link variable for the ClusterIP Service `podpool-backend`: set in every pod
 * started after the Service, so a Job applied by hand (`bench manifests`) finds the ClusterIP too.
 */
const SERVICE_LINK = 'PODPOOL_BACKEND_SERVICE_HOST';

const RANGES: readonly AddressRange[] = ['unspecified', 'loopback', 'link-local', 'multicast', 'broadcast'];

/**
 * Reads and checks the runner's environment. Off a pod (no `KUBERNETES_SERVICE_HOST`) it insists
 * on a DNS server: the headless name must never go to this machine's resolver.
 */
export function runnerEnvironment(env: NodeJS.ProcessEnv = process.env): RunnerEnvironment {
  const need = (name: string, value = env[name]): string => {
    if (value === undefined || value === '') {
      throw new PodpoolError(ErrorCode.INVALID_OPTION, `bench --in-cluster runs in the client Job's pod, which sets ${name}; it is not set here`);
    }
    return value;
  };
  const dnsServer = env[ENV.dnsServer] || undefined;
  if (dnsServer === undefined && !env.KUBERNETES_SERVICE_HOST) {
    throw new PodpoolError(
      ErrorCode.INVALID_OPTION,
      `bench --in-cluster outside a pod (no KUBERNETES_SERVICE_HOST) needs ${ENV.dnsServer}: the headless name is not asked of this machine's resolver`,
    );
  }
  const allowAddresses = (env[ENV.allowAddresses] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  for (const range of allowAddresses) {
    if (!RANGES.includes(range as AddressRange)) {
      throw new PodpoolError(ErrorCode.INVALID_OPTION, `${ENV.allowAddresses} takes ${RANGES.join(', ')}; got ${JSON.stringify(range)}`);
    }
  }
  return {
    namespace: need(ENV.namespace),
    service: need(ENV.service),
    dnsName: need(ENV.dnsName),
    clusterIp: need(ENV.clusterIp, env[ENV.clusterIp] || env[SERVICE_LINK]),
    dnsServer,
    allowAddresses: allowAddresses as AddressRange[],
  };
}

/** How long the runner waits for the command to do what it asked (a pod's image pull, a rollout). */
const REQUEST_TIMEOUT_MS = 10 * 60_000;
/** How long it waits for the first complete list of pods. */
const FIRST_LIST_TIMEOUT_MS = 60_000;

/** `Omit` over each member of a union, so each keeps its own fields. */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

interface Waiter {
  readonly done: () => boolean;
  readonly resolve: () => void;
}

/** The pod a backend endpoint is: its name from the slice's `targetRef`, else its address. */
function podName(endpoint: Endpoint): string {
  return endpoint.podName ?? endpoint.address;
}

export class KubeCluster implements BenchCluster {
  readonly standIn = 'kubernetes';
  readonly standInReason: string;
  readonly headlessName: string;
  readonly dnsServer: string | undefined;
  readonly allowAddresses: readonly AddressRange[];
  readonly #env: RunnerEnvironment;
  readonly #emit: (event: RunnerEvent) => void;
  readonly #pods: PodInfo[] = [];
  readonly #byName = new Map<string, PodInfo>();
  /** What each pod last said it served: a pod that left keeps its last figures. */
  readonly #counts = new Map<string, PodCounts[string]>();
  #waiters: Waiter[] = [];
  #watch: SourceWatch | undefined;
  #listed = false;
  #lastError: PodpoolError | undefined;
  #nextRequest = 0;
  #recycling: Recycling | undefined;

  private constructor(env: RunnerEnvironment, emit: (event: RunnerEvent) => void) {
    this.#env = env;
    this.#emit = emit;
    this.headlessName = env.dnsName;
    this.dnsServer = env.dnsServer;
    this.allowAddresses = env.allowAddresses;
    this.standInReason = `in-cluster runner in namespace ${env.namespace}`;
  }

  /**
   * Starts watching the headless Service's EndpointSlices and waits for `pods` ready pods (the
   * command started the client Job once the Deployment was ready; a pod may still be settling).
   * `emit` writes one event line for the command.
   */
  static async connect(pods: number, emit: (event: RunnerEvent) => void, env: RunnerEnvironment = runnerEnvironment()): Promise<KubeCluster> {
    const cluster = new KubeCluster(env, emit);
    const source = kubernetesEndpoints({ service: env.service, namespace: env.namespace, port: 'http', allowAddresses: env.allowAddresses });
    cluster.#watch = source.watch({
      snapshot: (set) => cluster.#update(set),
      error: (error) => {
        cluster.#lastError = error;
        emit({ event: 'note', message: `EndpointSlice watch: ${error.message} (${error.code}); retrying` });
      },
    });
    try {
      await cluster.#until(() => cluster.#listed && cluster.readyPods().length >= pods, `${pods} ready pods of ${env.service}`, FIRST_LIST_TIMEOUT_MS);
    } catch (error) {
      await cluster.close();
      throw error;
    }
    return cluster;
  }

  #update(set: EndpointSet): void {
    this.#listed = true;
    const seen = new Set<string>();
    for (const endpoint of set) {
      const name = podName(endpoint);
      seen.add(name);
      let pod = this.#byName.get(name);
      if (pod === undefined) {
        pod = { name, address: endpoint.address, ready: endpoint.ready, gone: false };
        this.#byName.set(name, pod);
        this.#pods.push(pod);
        if (this.#recycling !== undefined) this.#recycle(pod, this.#recycling);
      } else {
        // Leaving (terminating, or failing its probe): read its figures while it still answers.
        if (pod.ready && !endpoint.ready) void this.#read(pod);
        pod.ready = endpoint.ready;
      }
    }
    for (const pod of this.#pods) {
      if (!pod.gone && !seen.has(pod.name)) {
        pod.gone = true;
        pod.ready = false;
      }
    }
    const waiting = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiting) {
      if (waiter.done()) waiter.resolve();
      else this.#waiters.push(waiter);
    }
  }

  /** Resolves once `done()` holds after a snapshot (or now); a PODPOOL_TIMEOUT naming `what` after `ms`. */
  #until(done: () => boolean, what: string, ms: number): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        done,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        const last = this.#lastError ? `; the watch's last error: ${this.#lastError.message}` : '';
        reject(new PodpoolError(ErrorCode.TIMEOUT, `waited ${ms / 1000} s for ${what} in the EndpointSlices of ${this.#env.service}${last}`));
      }, ms);
      this.#waiters.push(waiter);
    });
  }

  #request(request: DistributiveOmit<RunnerRequest, 'event' | 'id'>): void {
    this.#emit({ event: 'request', id: ++this.#nextRequest, ...request } as RunnerRequest);
  }

  grpcDnsTarget(port: number = POD_PORTS.grpc): string {
    // grpc-js's own dns: resolver in a pod (its resolver knows the cluster's names).
    return this.dnsServer === undefined ? `dns:///${this.headlessName}:${port}` : clusterDnsTarget(this.dnsServer, this.headlessName, port);
  }

  clusterAddress(protocol: 'http' | 'grpc' | 'ws'): ClusterAddress {
    // The ClusterIP Service's ports are the pods' own numbers (protocol.ts).
    return { host: this.#env.clusterIp, port: POD_PORTS[protocol] };
  }

  get pods(): readonly PodInfo[] {
    return this.#pods;
  }

  readyPods(): PodInfo[] {
    return this.#pods.filter((p) => p.ready);
  }

  readyAddresses(): string[] {
    return this.readyPods().map((p) => p.address);
  }

  /** Asks for `count` replicas; resolves once exactly `count` pods are listed, all ready. */
  async scale(count: number): Promise<PodInfo[]> {
    const before = new Set(this.readyPods().map((p) => p.name));
    const settled = (): boolean => {
      const listed = this.#pods.filter((p) => !p.gone);
      return listed.length === count && listed.every((p) => p.ready);
    };
    if (!settled()) {
      this.#request({ op: 'scale', replicas: count });
      await this.#until(settled, `${count} ready pods and no other`, REQUEST_TIMEOUT_MS);
    }
    return this.readyPods().filter((p) => !before.has(p.name));
  }

  async addPod(): Promise<PodInfo> {
    const [pod] = await this.scale(this.readyPods().length + 1);
    if (pod === undefined) throw new PodpoolError(ErrorCode.TIMEOUT, 'the Deployment scaled up, but no new pod is listed');
    return pod;
  }

  /**
   * `kubectl rollout restart`: the Deployment replaces its pods at its own pace (surge 1, none
   * unavailable). `replaced` counts the pods replaced while the load ran (until `signal`); the
   * call resolves only once the rollout is over (every pod listed at the start gone, as many
   * ready), so that the next row starts on a settled Deployment.
   */
  async rollingRestart({ signal }: RollingRestartOptions): Promise<{ replaced: number; rolloutMs: number }> {
    const old = this.#pods.filter((p) => !p.gone);
    const wanted = old.length;
    const started = performance.now();
    let replaced: number | undefined;
    const onEnd = (): void => {
      replaced = old.filter((p) => p.gone).length;
    };
    signal.addEventListener('abort', onEnd, { once: true });
    this.#request({ op: 'restart' });
    try {
      await this.#until(() => old.every((p) => p.gone) && this.readyPods().length === wanted, `every one of ${wanted} pods replaced`, REQUEST_TIMEOUT_MS);
    } finally {
      signal.removeEventListener('abort', onEnd);
    }
    return { replaced: replaced ?? wanted, rolloutMs: Math.round(performance.now() - started) };
  }

  async killPod(name: string): Promise<KillResult> {
    const pod = this.#live(name);
    const result = await killPod(pod.address);
    pod.killed = true;
    return result;
  }

  /** Asks for the pod's deletion (grace 0); resolves once it left the EndpointSlices. */
  async removeFromSource(name: string): Promise<void> {
    const pod = this.#byName.get(name);
    if (pod === undefined || pod.gone) return;
    this.#request({ op: 'delete-pod', pod: name });
    await this.#until(() => pod.gone, `pod ${name} to leave`, REQUEST_TIMEOUT_MS);
  }

  async setRecycling(recycling: Recycling | undefined): Promise<void> {
    this.#recycling = recycling;
    await Promise.all(this.#pods.filter((p) => !p.gone && !p.killed).map((p) => recyclePod(p.address, recycling)));
  }

  /** A pod that turns up while recycling is set gets it too; a failure is said, not thrown (the row shows it). */
  #recycle(pod: PodInfo, recycling: Recycling): void {
    recyclePod(pod.address, recycling).catch((error: unknown) =>
      this.#emit({ event: 'note', message: `could not set recycling on ${pod.name}: ${error instanceof Error ? error.message : String(error)}` }),
    );
  }

  async slowPod(name: string, factor: number): Promise<void> {
    await slowPod(this.#live(name).address, factor);
  }

  /**
   * Every listed pod's counts, read from its control endpoint at once. A pod can go at any
   * moment (deleted, replaced, still starting): one that does not answer keeps the last figures
   * it gave, and a note says so once, since what it served since then is not counted.
   */
  async counts(): Promise<PodCounts> {
    // A pod not ready yet and never read is starting: it served nothing and may not listen yet.
    await Promise.all(this.#pods.filter((p) => !p.gone && (p.ready || this.#counts.has(p.name))).map((p) => this.#read(p)));
    return Object.fromEntries(this.#counts);
  }

  readonly #unread = new Set<string>();

  async #read(pod: PodInfo): Promise<void> {
    try {
      this.#counts.set(pod.name, (await podCounts(pod.address)).counts);
    } catch (error) {
      if (this.#unread.has(pod.name)) return;
      this.#unread.add(pod.name);
      const kept = this.#counts.has(pod.name) ? 'its last figures are kept' : 'it has no figures yet';
      this.#emit({ event: 'note', message: `pod ${pod.name} did not give its counts (${error instanceof Error ? error.message : String(error)}); ${kept}` });
    }
  }

  kubernetesSource(port: number): Promise<EndpointSource> {
    const name = (Object.entries(POD_PORTS).find(([, p]) => p === port)?.[0]) ?? port;
    return Promise.resolve(kubernetesEndpoints({ service: this.#env.service, namespace: this.#env.namespace, port: name, allowAddresses: this.allowAddresses }));
  }

  published(): Promise<unknown> {
    return Promise.resolve();
  }

  #live(name: string): PodInfo {
    const pod = this.#byName.get(name);
    if (pod === undefined || pod.gone) throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `no live pod ${name}`);
    return pod;
  }

  async close(): Promise<void> {
    const watch = this.#watch;
    this.#watch = undefined;
    await watch?.close();
  }
}
