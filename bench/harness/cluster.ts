/**
 * The stand-in cluster: one headless Service (`backend`) with a ClusterIP in front of it, its pods
 * (in the pods process), cluster DNS answering the headless name with one A record per ready pod,
 * and kube-proxy's share (iptables rules or the userspace proxy). Scenarios add, slow down and
 * replace pods through it; it keeps DNS and the ClusterIP in step, as the control plane would.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { DnsServer } from '../../testkit/dns-server.ts';
import { FakeApiServer, endpointSlice } from '../../testkit/fake-apiserver.ts';
import { kubernetesEndpoints } from '../../src/discovery/kubernetes.ts';
import type { AddressRange, EndpointSource } from '../../src/index.ts';
import { PodFleet, POD_PORTS, type KillResult, type PodCounts, type Protocol, type Recycling } from './pods.ts';
import { clusterDnsTarget } from './grpc-resolver.ts';
import {
  UserspaceProxy,
  addAddresses,
  applyRules,
  currentNamespace,
  detectStandIn,
  kubeProxyRules,
  type ProxyTarget,
  type ServicePort,
  type StandIn,
} from './standin.ts';

export const SERVICE = 'default/backend';
/** The headless Service's DNS name. */
export const HEADLESS_NAME = 'backend.default.svc.cluster.local';
const CLUSTER_IP = '10.96.0.10';

/** The ClusterIP's ports, by the protocol they carry. */
const SERVICE_PORTS: Record<'http' | 'grpc' | 'ws', ServicePort> = {
  http: { name: 'http', port: 80, targetPort: POD_PORTS.http },
  grpc: { name: 'grpc', port: 50051, targetPort: POD_PORTS.grpc },
  ws: { name: 'ws', port: 8081, targetPort: POD_PORTS.ws },
};

export interface ClusterOptions {
  /** Pods at start. */
  pods: number;
  /** Protocols every pod serves. Default http, grpc, ws. */
  protocols?: readonly Protocol[];
  /** Requests a pod serves at once. Default 4. */
  concurrency?: number;
  /** Service time of one request, ms. Default 10. */
  serviceMs?: number;
  /** How the pods' HTTP servers recycle keep-alive connections; none unless given (see {@link Cluster.setRecycling}). */
  recycling?: Recycling;
}

/** A pod as the control plane sees it. */
export interface PodInfo {
  readonly name: string;
  readonly address: string;
  /** Taking new work (in DNS and behind the ClusterIP). */
  ready: boolean;
  /** Gone for good. */
  gone: boolean;
  /** Its process died ({@link Cluster.killPod}); it may still be listed until removed. */
  killed?: boolean;
}

/** Where a client dials the ClusterIP for one protocol. */
export interface ClusterAddress {
  readonly host: string;
  readonly port: number;
}

/**
 * What a scenario runs against: the stand-in ({@link Cluster}) on this machine, or a real cluster
 * seen from a pod inside it (`KubeCluster`, kube/in-cluster.ts). Scenarios, client modes and
 * `measure` know only this, so the stand-in and a real cluster run one code path: the only
 * difference is where the pods, the ClusterIP and the DNS server come from, and who adds, removes
 * and restarts pods.
 */
export interface BenchCluster {
  readonly standIn: StandIn;
  readonly standInReason: string;
  /** The headless Service's DNS name. */
  readonly headlessName: string;
  /**
   * `ip:port` of the DNS server that answers {@link headlessName}; `undefined` in a real cluster,
   * where the pod's own resolver does.
   */
  readonly dnsServer: string | undefined;
  /** Address ranges podpool's DNS and Kubernetes sources must accept here (loopback pods). */
  readonly allowAddresses: readonly AddressRange[];
  /** The grpc-js target that resolves the headless name for `port` (round_robin's row). */
  grpcDnsTarget(port?: number): string;
  /** Where clients dial the Service's ClusterIP for `protocol`. */
  clusterAddress(protocol: 'http' | 'grpc' | 'ws'): ClusterAddress;
  /** Every pod seen so far, in the order first seen; `gone` once it left for good. */
  readonly pods: readonly PodInfo[];
  readyPods(): PodInfo[];
  readyAddresses(): string[];
  /** Brings the ready pods to `count` (up or down); resolves with the pods added, once they are ready. */
  scale(count: number): Promise<PodInfo[]>;
  /** One pod more; resolves once it is ready. */
  addPod(): Promise<PodInfo>;
  /** Replaces every pod once under load, as a Deployment's rolling update does. */
  rollingRestart(options: RollingRestartOptions): Promise<{ replaced: number }>;
  /** The pod's process dies (connections reset, its address refuses); it stays listed until {@link removeFromSource}. */
  killPod(name: string): Promise<KillResult>;
  /** The control plane takes the pod out (deleted), whether it still serves or died. */
  removeFromSource(name: string): Promise<void>;
  /** How every pod's HTTP server recycles keep-alive connections (`undefined`: never). */
  setRecycling(recycling: Recycling | undefined): Promise<void>;
  /** Multiplies the pod's service time by `factor` (1 restores it). */
  slowPod(name: string, factor: number): Promise<void>;
  /** What each pod served so far, by pod name. */
  counts(): Promise<PodCounts>;
  /** podpool's Kubernetes source for the headless Service's port `port` (a pod port number). */
  kubernetesSource(port: number): Promise<EndpointSource>;
  /** Resolves once every change so far reached the sources' watches. */
  published(): Promise<unknown>;
  close(): Promise<void>;
}

/** How a rolling restart goes: the stand-in paces it over the load; a Deployment paces itself. */
export interface RollingRestartOptions {
  /** Stops starting replacements (the load is over). */
  readonly signal: AbortSignal;
  /** The load's planned length: the stand-in spreads the N replacements over it. */
  readonly durationMs: number;
  /** How long a terminating pod may finish in-flight work. */
  readonly graceMs: number;
  /** The pods' `preStop` sleep: endpoints change first, the pod stops accepting this much later. */
  readonly preStopMs: number;
}

export class Cluster implements BenchCluster {
  readonly standIn: StandIn;
  readonly standInReason: string;
  readonly #fleet: PodFleet;
  readonly #dns: DnsServer;
  readonly #proxies = new Map<string, UserspaceProxy>();
  readonly #pods: PodInfo[] = [];
  readonly #protocols: readonly Protocol[];
  readonly #concurrency: number;
  readonly #serviceMs: number;
  #next = 0;
  #api: FakeApiServer | undefined;
  #apiPublished: Promise<unknown> = Promise.resolve();

  private constructor(standIn: StandIn, reason: string, fleet: PodFleet, dns: DnsServer, options: ClusterOptions) {
    this.standIn = standIn;
    this.standInReason = reason;
    this.#fleet = fleet;
    this.#dns = dns;
    this.#protocols = options.protocols ?? ['http', 'grpc', 'ws'];
    this.#concurrency = options.concurrency ?? 4;
    this.#serviceMs = options.serviceMs ?? 10;
  }

  /**
   * Starts the pods process, DNS and the ClusterIP, then `options.pods` pods. The `iptables`
   * stand-in needs this process to run inside the bench's namespace ({@link runInNamespace}).
   */
  static async start(options: ClusterOptions): Promise<Cluster> {
    const detected = detectStandIn();
    const standIn: StandIn = currentNamespace() ? 'iptables' : 'userspace';
    const reason = standIn === detected.standIn ? detected.reason : `${detected.reason}, but not inside the bench's namespace`;
    // On 127.0.0.1 in both stand-ins, and every client is told where: nothing asks the system's
    // resolver (its resolv.conf, getaddrinfo) about the bench's names.
    const dns = await DnsServer.start({ host: '127.0.0.1' });
    const fleet = await PodFleet.start();
    const cluster = new Cluster(standIn, reason, fleet, dns, options);
    try {
      if (options.recycling) await fleet.recycle(options.recycling);
      if (standIn === 'iptables') {
        addAddresses([CLUSTER_IP]);
      } else {
        for (const [protocol, port] of Object.entries(SERVICE_PORTS)) {
          const targets = (): ProxyTarget[] => cluster.readyAddresses().map((host) => ({ host, port: port.targetPort }));
          cluster.#proxies.set(protocol, await UserspaceProxy.start(targets));
        }
      }
      await cluster.scale(options.pods);
    } catch (error) {
      await cluster.close();
      throw error;
    }
    return cluster;
  }

  readonly headlessName = HEADLESS_NAME;

  /** `host:port` of the DNS server that answers {@link HEADLESS_NAME}. */
  get dnsServer(): string {
    return this.#dns.address;
  }

  /** Pods on 127.x where the stand-in has no namespace: podpool's sources refuse loopback unless told. */
  get allowAddresses(): readonly AddressRange[] {
    return this.standIn === 'userspace' ? ['loopback'] : [];
  }

  /**
   * The grpc-js target that resolves the headless name at the cluster's DNS server, with
   * grpc-js's own `dns:` resolver rules (see grpc-resolver.ts), in both stand-ins.
   */
  grpcDnsTarget(port: number = POD_PORTS.grpc): string {
    return clusterDnsTarget(this.#dns.address, HEADLESS_NAME, port);
  }

  /** Where clients dial the Service's ClusterIP for `protocol`. */
  clusterAddress(protocol: 'http' | 'grpc' | 'ws'): ClusterAddress {
    if (this.standIn === 'iptables') return { host: CLUSTER_IP, port: SERVICE_PORTS[protocol].port };
    return { host: '127.0.0.1', port: this.#proxies.get(protocol)!.port };
  }

  /** Every pod ever started, in start order. */
  get pods(): readonly PodInfo[] {
    return this.#pods;
  }

  readyPods(): PodInfo[] {
    return this.#pods.filter((p) => p.ready);
  }

  readyAddresses(): string[] {
    return this.readyPods().map((p) => p.address);
  }

  /**
   * Pod n's address: on the namespace's lo, or on loopback (all of 127/8 is loopback on Linux),
   * in a /16 picked by pid so that two runs at once rarely meet.
   */
  #address(n: number): string {
    const prefix = this.standIn === 'iptables' ? '10.244' : `127.${10 + (process.pid % 240)}`;
    return `${prefix}.${1 + Math.floor(n / 250)}.${1 + (n % 250)}`;
  }

  /**
   * Starts pods until `count` are ready, or takes the newest out (terminated at once, no grace)
   * until `count` are left.
   */
  async scale(count: number): Promise<PodInfo[]> {
    const added: PodInfo[] = [];
    const wanted = count - this.readyPods().length;
    if (wanted < 0) {
      for (const pod of this.readyPods().slice(count).reverse()) await this.terminatePod(pod.name, 0);
      return added;
    }
    if (wanted === 0) return added;
    const pods: PodInfo[] = [];
    for (let i = 0; i < wanted; i++) {
      const n = this.#next++;
      pods.push({ name: `backend-${n}`, address: this.#address(n), ready: false, gone: false });
    }
    if (this.standIn === 'iptables') addAddresses(pods.map((p) => p.address));
    // Start in small batches: hundreds of servers at once would only queue in the pods process.
    for (let i = 0; i < pods.length; i += 25) {
      await Promise.all(
        pods.slice(i, i + 25).map((p) =>
          this.#fleet.add({
            name: p.name,
            address: p.address,
            protocols: this.#protocols,
            concurrency: this.#concurrency,
            serviceMs: this.#serviceMs,
          }),
        ),
      );
    }
    for (const p of pods) {
      p.ready = true;
      this.#pods.push(p);
      added.push(p);
    }
    this.#publish();
    await this.#apiPublished;
    return added;
  }

  /** Adds one pod; it is in DNS and behind the ClusterIP when this resolves. */
  async addPod(): Promise<PodInfo> {
    const [pod] = await this.scale(this.readyPods().length + 1);
    return pod!;
  }

  /**
   * Takes a pod out as Kubernetes does: out of DNS and the ClusterIP at once (terminating), then
   * SIGTERM: it stops accepting, finishes in-flight work for up to `graceMs`, and is gone.
   * `preStopMs` is the `preStop` sleep pods use so that clients hear of the change before the
   * pod stops accepting.
   */
  async terminatePod(name: string, graceMs = 0, preStopMs = 0): Promise<void> {
    const pod = this.#pods.find((p) => p.name === name);
    if (!pod || pod.gone) return;
    pod.ready = false;
    this.#publish();
    if (preStopMs > 0) await sleep(preStopMs);
    await this.#fleet.terminate(name, graceMs);
    pod.gone = true;
    this.#publish();
  }

  /**
   * Replaces every pod once, one at a time, spread over the load: a new pod becomes ready, then
   * an old one turns terminating (out of DNS, the ClusterIP and the EndpointSlice's ready set),
   * sleeps its preStop, finishes its in-flight work within the grace period, and is gone.
   */
  async rollingRestart({ signal, durationMs, graceMs, preStopMs }: RollingRestartOptions): Promise<{ replaced: number }> {
    const old = this.readyPods();
    const step = durationMs / (old.length + 1);
    let replaced = 0;
    for (const pod of old) {
      await sleep(step * 0.6);
      if (signal.aborted) break;
      await this.addPod();
      await this.terminatePod(pod.name, graceMs, preStopMs);
      replaced++;
    }
    return { replaced };
  }

  /**
   * The pod's process dies (see {@link PodFleet.kill}): its address refuses connections (in the
   * iptables stand-in too: the address stays on the namespace's lo, so the kernel answers RST),
   * and it stays in DNS, the EndpointSlice and behind the ClusterIP until
   * {@link removeFromSource} takes it out, as a crashed pod stays until its readiness probe fails.
   */
  async killPod(name: string): Promise<KillResult> {
    const pod = this.#pods.find((p) => p.name === name);
    if (!pod || pod.gone || pod.killed) throw new Error(`no live pod ${name}`);
    const result = await this.#fleet.kill(name);
    pod.killed = true;
    return result;
  }

  /**
   * Takes a pod out of DNS, the ClusterIP and the EndpointSlice at once, as the control plane does
   * when a pod is deleted, without touching its server (whether it still serves or died).
   */
  async removeFromSource(name: string): Promise<void> {
    const pod = this.#pods.find((p) => p.name === name);
    if (!pod || pod.gone) return;
    pod.ready = false;
    pod.gone = true;
    this.#publish();
  }

  /**
   * Every pod's HTTP server, and every pod started from now on, recycles keep-alive connections
   * so (`undefined`: keeps them 2 min idle, any number of requests).
   */
  setRecycling(recycling: Recycling | undefined): Promise<void> {
    return this.#fleet.recycle(recycling);
  }

  slowPod(name: string, factor: number): Promise<void> {
    return this.#fleet.slow(name, factor);
  }

  /** What each pod served so far. */
  counts(): Promise<PodCounts> {
    return this.#fleet.counts();
  }

  /**
   * A Kubernetes source for `port` (a pod port number) through a fake API server that holds the
   * Service's EndpointSlice, kept in step with the pods from now on. The API server listens on
   * 127.0.0.1 (inside the namespace, in the iptables stand-in).
   */
  async kubernetesSource(port: number): Promise<EndpointSource> {
    if (this.#api === undefined) {
      this.#api = await FakeApiServer.start();
      this.#publish();
      await this.#apiPublished;
    }
    const name = (Object.entries(SERVICE_PORTS).find(([, p]) => p.targetPort === port)?.[0]) ?? port;
    // Pods on loopback where the stand-in has no namespace; a real cluster's slices never hold one.
    return kubernetesEndpoints({ service: 'backend', namespace: 'default', port: name, kubeConfig: this.#api.kubeConfig(), allowAddresses: ['loopback'] });
  }

  /** DNS, kube-proxy and the API server learn the ready (and terminating) pods. */
  #publish(): void {
    const addresses = this.readyAddresses();
    this.#dns.set(HEADLESS_NAME, { A: addresses });
    if (this.standIn === 'iptables') {
      applyRules(kubeProxyRules(SERVICE, CLUSTER_IP, Object.values(SERVICE_PORTS), addresses));
    }
    const api = this.#api;
    if (api !== undefined) {
      const slice = endpointSlice({
        name: 'backend-bench',
        service: 'backend',
        namespace: 'default',
        ports: Object.values(SERVICE_PORTS).map((p) => ({ name: p.name, port: p.targetPort, protocol: 'TCP' })),
        endpoints: this.#pods
          .filter((p) => !p.gone)
          .map((p) => ({ ip: p.address, pod: p.name, ready: p.ready, serving: p.ready || !p.gone, terminating: !p.ready })),
      });
      this.#apiPublished = this.#apiPublished.then(() => api.apply(slice)).catch(() => {});
    }
  }

  /** Resolves once every change so far reached the API server's watches. */
  published(): Promise<unknown> {
    return this.#apiPublished;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#proxies.values()].map((p) => p.close()));
    await this.#fleet.stop();
    await this.#dns.close();
    await this.#api?.close();
  }
}
