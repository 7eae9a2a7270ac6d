/**
 * The fake cluster's control plane, event-driven off the store's changes: the Deployment
 * controller (ReplicaSets folded in: pods named `<deploy>-<hash>-<xxxxx>`, rolling updates by
 * maxSurge/maxUnavailable), the Job controller (one pod at a time, backoffLimit,
 * activeDeadlineSeconds, Complete/Failed), the EndpointSlice controller (published through the
 * FakeApiServer, so the watch protocol the tests know serves them), cluster DNS, and kube-proxy
 * (a listener on each ClusterIP port that sends each new connection to a random ready endpoint).
 */
import { createHash } from 'node:crypto';
import { UserspaceProxy, type ProxyTarget } from '../../bench/harness/standin.ts';
import type { EndpointSliceObject, FakeApiServer } from '../fake-apiserver.ts';
import type { DnsRecords, DnsServer } from '../dns-server.ts';
import { resolvePort } from './kubelet.ts';
import { RESOURCES, canonical, now, randomSuffix, selects, type Change, type KubeObject, type Resource, type Store } from './store.ts';

const PODS = RESOURCES.get('/pods')!;
const SERVICES = RESOURCES.get('/services')!;
const NAMESPACES = RESOURCES.get('/namespaces')!;
const DEPLOYMENTS = RESOURCES.get('apps/deployments')!;
const JOBS = RESOURCES.get('batch/jobs')!;
const RESOURCE_OF_KIND = new Map([...RESOURCES.values()].map((r) => [r.kind, r]));

/** A pod that has not been deleted and has not finished: what controllers count. */
export function isActive(pod: KubeObject): boolean {
  return pod.metadata.deletionTimestamp === undefined && pod.status?.phase !== 'Succeeded' && pod.status?.phase !== 'Failed';
}

export function isPodReady(pod: KubeObject): boolean {
  return pod.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True') ?? false;
}

function podTemplateHash(template: unknown): string {
  const digest = createHash('sha256').update(canonical(template)).digest();
  const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
  let out = '';
  for (let i = 0; i < 10; i++) out += alphabet[digest[i] % alphabet.length];
  return out;
}

/** maxSurge / maxUnavailable: an integer, or a percentage of `replicas` rounded as Kubernetes rounds each. */
function intOrPercent(value: number | string | undefined, fallback: string, replicas: number, round: (n: number) => number): number {
  const v = value ?? fallback;
  if (typeof v === 'number') return v;
  const m = /^(\d+)%$/.exec(v);
  return m === null ? Number(v) : round((Number(m[1]) * replicas) / 100);
}

export interface ControllerOptions {
  readonly store: Store;
  readonly api: FakeApiServer;
  readonly dns: DnsServer;
  /** Creates `object` as the control plane does (recorded as such). */
  readonly create: (resource: Resource, namespace: string, object: KubeObject) => KubeObject;
  /** Deletes a pod as the control plane does, with its own grace period. */
  readonly deletePod: (pod: KubeObject, gracePeriodSeconds?: number) => void;
  readonly onError: (error: unknown) => void;
}

interface Published {
  name: string;
  text: string;
}

interface Proxy {
  /** One listener per TCP port of the Service. */
  readonly listeners: UserspaceProxy[];
  /** `ip` of every ready endpoint with its target port by the Service's port. */
  ready: { ip: string; ports: Map<number, number> }[];
}

export class Controllers {
  readonly #options: ControllerOptions;
  readonly #slices = new Map<string, Published>();
  readonly #dnsNames = new Map<string, Set<string>>();
  readonly #proxies = new Map<string, Proxy>();
  readonly #deadlines = new Map<string, NodeJS.Timeout>();
  /** Jobs whose activeDeadlineSeconds passed, by uid. */
  readonly #expired = new Set<string>();
  /** When each Job's first pod was created (ms), by uid. */
  readonly #startedAt = new Map<string, number>();
  readonly #dirty = new Set<string>();
  #scheduled = false;
  #closed = false;

  constructor(options: ControllerOptions) {
    this.#options = options;
    options.store.onChange((change) => this.#changed(change));
  }

  /** Opens kube-proxy's listeners of a ClusterIP Service (before its create is answered, so it works at once). */
  async openProxy(service: KubeObject): Promise<void> {
    const ip = service.spec.clusterIP;
    if (typeof ip !== 'string' || ip === 'None') return;
    const proxy: Proxy = { listeners: [], ready: [] };
    this.#proxies.set(serviceKey(service), proxy);
    for (const port of service.spec.ports as { port: number; protocol?: string }[]) {
      if ((port.protocol ?? 'TCP') !== 'TCP') continue;
      // kube-proxy's choice: a random ready endpoint per connection, never one that is not ready.
      const targets = (): ProxyTarget[] => proxy.ready.map((e) => ({ host: e.ip, port: e.ports.get(port.port) ?? port.port }));
      try {
        proxy.listeners.push(await UserspaceProxy.start(targets, { host: ip, port: port.port }));
      } catch (error) {
        // Another process's cluster may hold the address (its pid shares our /24): say so.
        await this.#closeProxy(serviceKey(service));
        throw new Error(`kube-proxy of the fake cluster could not listen on ${ip}:${port.port}: ${(error as Error).message}`, { cause: error });
      }
    }
    this.#sync(service.metadata.namespace!);
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const timer of this.#deadlines.values()) clearTimeout(timer);
    await Promise.all([...this.#proxies.keys()].map((key) => this.#closeProxy(key)));
  }

  /** Every change makes its namespace's controllers run once, after the burst of changes it belongs to. */
  #changed(change: Change): void {
    if (this.#closed) return;
    const namespace = change.object.metadata.namespace;
    if (change.resource === SERVICES && change.type === 'DELETED') this.#serviceGone(change.object);
    if (change.resource === JOBS && change.type === 'DELETED') {
      const key = `${namespace}/${change.object.metadata.name}`;
      clearTimeout(this.#deadlines.get(key));
      this.#deadlines.delete(key);
      this.#startedAt.delete(change.object.metadata.uid!);
      this.#expired.delete(change.object.metadata.uid!);
    }
    const dirty = change.resource === NAMESPACES ? change.object.metadata.name : namespace;
    if (dirty === undefined) return;
    this.#dirty.add(dirty);
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      const namespaces = [...this.#dirty];
      this.#dirty.clear();
      for (const ns of namespaces) {
        try {
          this.#sync(ns);
        } catch (error) {
          this.#options.onError(error);
        }
      }
    });
  }

  #sync(namespace: string): void {
    if (this.#closed) return;
    const { store } = this.#options;
    const ns = store.get(NAMESPACES, undefined, namespace);
    if (ns?.metadata.deletionTimestamp !== undefined) return this.#finalize(ns);
    // Endpoints first: a pod's readiness reaches its slices before the Deployment controller acts
    // on it (a surge pod is seen ready beside the old ones), as with independent controllers.
    for (const service of store.list(SERVICES, namespace)) this.#endpoints(service);
    for (const deployment of store.list(DEPLOYMENTS, namespace)) this.#deployment(deployment);
    for (const job of store.list(JOBS, namespace)) this.#job(job);
  }

  /**
   * The namespace controller: a namespace being deleted loses everything in it, its pods the
   * kubelet's way (with their grace periods), and goes once the last pod is gone.
   */
  #finalize(ns: KubeObject): void {
    const { store } = this.#options;
    const name = ns.metadata.name;
    for (const object of store.all()) {
      if (object.metadata.namespace !== name || object.kind === 'Pod') continue;
      store.remove(RESOURCE_OF_KIND.get(object.kind)!, object);
    }
    const pods = store.list(PODS, name);
    for (const pod of pods) if (pod.metadata.deletionTimestamp === undefined) this.#options.deletePod(pod);
    if (pods.length === 0) store.remove(NAMESPACES, ns);
  }

  // --- Deployments -------------------------------------------------------------------------

  /** The pods of a Deployment's ReplicaSets (any template), deleted or not. */
  podsOf(deployment: KubeObject): KubeObject[] {
    const name = deployment.metadata.name;
    return this.#options.store
      .list(PODS, deployment.metadata.namespace)
      .filter((p) => {
        const owner = p.metadata.ownerReferences?.[0];
        return owner?.kind === 'ReplicaSet' && owner.name === `${name}-${p.metadata.labels?.['pod-template-hash']}` && selects(deployment.spec.selector?.matchLabels, p.metadata.labels);
      });
  }

  /** The pods a Job created. */
  podsOfJob(job: KubeObject): KubeObject[] {
    return this.#options.store.list(PODS, job.metadata.namespace).filter((p) => p.metadata.ownerReferences?.some((o) => o.uid === job.metadata.uid));
  }

  #deployment(deployment: KubeObject): void {
    const { store, create } = this.#options;
    if (deployment.metadata.deletionTimestamp !== undefined) return;
    const namespace = deployment.metadata.namespace!;
    const hash = podTemplateHash(deployment.spec.template);
    const owned = this.podsOf(deployment);
    const pods = owned.filter(isActive);
    const current = pods.filter((p) => p.metadata.labels?.['pod-template-hash'] === hash);
    const old = pods.filter((p) => p.metadata.labels?.['pod-template-hash'] !== hash);
    const replicas: number = deployment.spec.replicas ?? 1;
    const rolling = deployment.spec.strategy?.rollingUpdate ?? {};
    let surge = intOrPercent(rolling.maxSurge, '25%', replicas, Math.ceil);
    const unavailable = intOrPercent(rolling.maxUnavailable, '25%', replicas, Math.floor);
    if (surge === 0 && unavailable === 0) surge = 1;
    const oldestFirst = (list: KubeObject[]) => [...list].sort((a, b) => store.order(a) - store.order(b));
    // Scaling down takes the pods that are not ready first, then the newest, as the ReplicaSet controller does.
    const scaleDownOrder = (list: KubeObject[]) => [...list.filter((p) => !isPodReady(p)), ...oldestFirst(list.filter(isPodReady)).reverse()];
    const add = (n: number) => {
      for (let i = 0; i < n; i++) create(PODS, namespace, this.#podFrom(deployment, hash));
    };
    const remove = (victims: KubeObject[]) => {
      for (const pod of victims) this.#options.deletePod(pod);
    };
    if (deployment.spec.strategy?.type === 'Recreate') {
      if (old.length > 0) remove(old);
      else if (owned.every((p) => p.metadata.labels?.['pod-template-hash'] === hash)) {
        if (current.length < replicas) add(replicas - current.length);
        else if (current.length > replicas) remove(scaleDownOrder(current).slice(0, current.length - replicas));
      }
    } else if (old.length === 0) {
      if (current.length < replicas) add(replicas - current.length);
      else if (current.length > replicas) remove(scaleDownOrder(current).slice(0, current.length - replicas));
    } else {
      const canCreate = Math.min(replicas + surge - pods.length, replicas - current.length);
      if (canCreate > 0) add(canCreate);
      // Old pods that are not ready cost no availability; ready ones go while enough stay ready.
      remove(old.filter((p) => !isPodReady(p)));
      const canRemove = pods.filter(isPodReady).length - (replicas - unavailable);
      if (canRemove > 0) remove(oldestFirst(old.filter(isPodReady)).slice(0, canRemove));
    }
    const live = this.podsOf(deployment).filter(isActive);
    const ready = live.filter(isPodReady).length;
    const updated = live.filter((p) => p.metadata.labels?.['pod-template-hash'] === hash).length;
    const available = ready >= replicas - unavailable;
    store.modify(DEPLOYMENTS, deployment, (d) => {
      const condition = (type: string, status: boolean, reason: string) => {
        const text = status ? 'True' : 'False';
        const before = d.status?.conditions?.find((c: { type: string }) => c.type === type);
        return { type, status: text, reason, lastTransitionTime: before?.status === text ? before.lastTransitionTime : now() };
      };
      d.status = {
        observedGeneration: d.metadata.generation,
        replicas: live.length,
        updatedReplicas: updated,
        readyReplicas: ready,
        availableReplicas: ready,
        ...(replicas > ready && { unavailableReplicas: replicas - ready }),
        conditions: [
          condition('Available', available, available ? 'MinimumReplicasAvailable' : 'MinimumReplicasUnavailable'),
          condition('Progressing', true, updated === replicas && live.length === replicas ? 'NewReplicaSetAvailable' : 'ReplicaSetUpdated'),
        ],
      };
    });
  }

  #podFrom(deployment: KubeObject, hash: string): KubeObject {
    const template = structuredClone(deployment.spec.template);
    const name = deployment.metadata.name;
    return {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: `${name}-${hash}-${randomSuffix()}`,
        labels: { ...template.metadata?.labels, 'pod-template-hash': hash },
        ...(template.metadata?.annotations !== undefined && { annotations: template.metadata.annotations }),
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${name}-${hash}`, uid: `${deployment.metadata.uid}-${hash}`, controller: true }],
      },
      spec: podDefaults(template.spec, 'Always'),
    };
  }

  // --- Jobs --------------------------------------------------------------------------------

  #job(job: KubeObject): void {
    const { store, create } = this.#options;
    const namespace = job.metadata.namespace!;
    const finished = job.status?.conditions?.some((c: { type: string; status: string }) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');
    if (finished || job.spec.suspend === true) return;
    const pods = this.podsOfJob(job);
    const active = pods.filter(isActive);
    const succeeded = pods.filter((p) => p.status?.phase === 'Succeeded').length;
    const failed = pods.filter((p) => p.status?.phase === 'Failed').length;
    const completions: number = job.spec.completions ?? 1;
    const backoffLimit: number = job.spec.backoffLimit ?? 6;
    const key = `${namespace}/${job.metadata.name}`;
    const deadlineExceeded = this.#expired.has(job.metadata.uid!);
    let end: { type: 'Complete' | 'Failed'; reason: string; message: string } | undefined;
    if (succeeded >= completions) end = { type: 'Complete', reason: 'CompletionsReached', message: 'Reached expected number of succeeded pods' };
    else if (failed > backoffLimit) end = { type: 'Failed', reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit' };
    else if (deadlineExceeded) end = { type: 'Failed', reason: 'DeadlineExceeded', message: 'Job was active longer than specified deadline' };
    let startTime: string | undefined = job.status?.startTime;
    let startedAt = this.#startedAt.get(job.metadata.uid!);
    if (end === undefined && active.length < (job.spec.parallelism ?? 1) && succeeded + active.length < completions) {
      const serviceAccount = job.spec.template.spec.serviceAccountName ?? 'default';
      // As the ServiceAccount admission plugin does, the pod waits for its ServiceAccount to exist.
      if (store.get(RESOURCES.get('/serviceaccounts')!, namespace, serviceAccount) !== undefined) {
        create(PODS, namespace, this.#jobPod(job));
        startTime ??= now();
        // The deadline counts from here to the millisecond, not from startTime's whole second.
        if (startedAt === undefined) this.#startedAt.set(job.metadata.uid!, (startedAt = Date.now()));
      }
    }
    if (end !== undefined) {
      clearTimeout(this.#deadlines.get(key));
      this.#deadlines.delete(key);
      for (const pod of active) this.#options.deletePod(pod);
    } else if (startedAt !== undefined && job.spec.activeDeadlineSeconds !== undefined && !this.#deadlines.has(key)) {
      const left = startedAt + job.spec.activeDeadlineSeconds * 1000 - Date.now();
      this.#deadlines.set(
        key,
        setTimeout(() => {
          const latest = store.get(JOBS, namespace, job.metadata.name);
          if (latest === undefined || this.#closed) return;
          this.#expired.add(job.metadata.uid!);
          this.#sync(namespace);
        }, Math.max(0, left)),
      );
    }
    const stillActive = end === undefined ? this.podsOfJob(job).filter(isActive).length : 0;
    store.modify(JOBS, job, (j) => {
      j.status = {
        ...(startTime !== undefined && { startTime }),
        ...(stillActive > 0 && { active: stillActive }),
        ...(succeeded > 0 && { succeeded }),
        ...(failed > 0 && { failed }),
        ready: pods.filter(isPodReady).length,
        ...(end !== undefined && {
          ...(end.type === 'Complete' && { completionTime: now() }),
          conditions: [{ type: end.type, status: 'True', reason: end.reason, message: end.message, lastProbeTime: now(), lastTransitionTime: now() }],
        }),
      };
    });
  }

  #jobPod(job: KubeObject): KubeObject {
    const template = structuredClone(job.spec.template);
    return {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: `${job.metadata.name}-${randomSuffix()}`,
        labels: { ...template.metadata?.labels },
        ...(template.metadata?.annotations !== undefined && { annotations: template.metadata.annotations }),
        ownerReferences: [{ apiVersion: 'batch/v1', kind: 'Job', name: job.metadata.name, uid: job.metadata.uid!, controller: true }],
      },
      spec: podDefaults(template.spec, 'Never'),
    };
  }

  // --- EndpointSlices, DNS, kube-proxy ----------------------------------------------------

  #endpoints(service: KubeObject): void {
    const { store, api, dns } = this.#options;
    const namespace = service.metadata.namespace!;
    const selector = service.spec.selector as Record<string, string> | undefined;
    if (selector === undefined || Object.keys(selector).length === 0) return;
    const pods = store.list(PODS, namespace).filter((p) => selects(selector, p.metadata.labels) && typeof p.status?.podIP === 'string' && p.status.phase !== 'Succeeded' && p.status.phase !== 'Failed');
    const servicePorts = (service.spec.ports ?? []) as { name?: string; port: number; targetPort?: number | string; protocol?: string }[];
    const ports = servicePorts.map((p) => ({ name: p.name ?? '', port: resolvePort(pods[0], p.targetPort ?? p.port) ?? p.port, protocol: p.protocol ?? 'TCP' }));
    const endpoints = pods.map((p) => {
      const terminating = p.metadata.deletionTimestamp !== undefined;
      const ready = isPodReady(p);
      return {
        addresses: [p.status.podIP as string],
        conditions: { ready: ready && !terminating, serving: ready, terminating },
        targetRef: { kind: 'Pod', namespace, name: p.metadata.name, uid: p.metadata.uid },
        ...(p.spec.nodeName !== undefined && { nodeName: p.spec.nodeName }),
      };
    });
    const key = serviceKey(service);
    const name = this.#slices.get(key)?.name ?? `${service.metadata.name}-${randomSuffix()}`;
    const slice: EndpointSliceObject = {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name,
        namespace,
        labels: {
          ...service.metadata.labels,
          'kubernetes.io/service-name': service.metadata.name,
          'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io',
        },
        ownerReferences: [{ apiVersion: 'v1', kind: 'Service', name: service.metadata.name, uid: service.metadata.uid, controller: true }],
      },
      addressType: 'IPv4',
      endpoints,
      ports,
    };
    const text = canonical(slice);
    if (this.#slices.get(key)?.text !== text) {
      this.#slices.set(key, { name, text });
      void api.apply(slice);
    }
    const readyIps = endpoints.filter((e) => e.conditions.ready).map((e) => e.addresses[0]);
    const dnsName = `${service.metadata.name}.${namespace}.svc.cluster.local`;
    const names = new Map<string, DnsRecords>();
    if (service.spec.clusterIP === 'None') {
      // As CoreDNS answers a headless Service: its name lists the ready pods, each named by its
      // dashed address, and each named port has an SRV record per ready pod.
      names.set(dnsName, { A: readyIps });
      for (const ip of readyIps) names.set(`${ip.replaceAll('.', '-')}.${dnsName}`, { A: [ip] });
      servicePorts.forEach((p, i) => {
        if (p.name === undefined) return;
        names.set(`_${p.name}._${(p.protocol ?? 'TCP').toLowerCase()}.${dnsName}`, {
          SRV: readyIps.map((ip) => ({ target: `${ip.replaceAll('.', '-')}.${dnsName}`, port: ports[i].port })),
        });
      });
    } else {
      names.set(dnsName, { A: [service.spec.clusterIP] });
      const proxy = this.#proxies.get(key);
      if (proxy !== undefined) {
        proxy.ready = pods
          .filter((p) => isPodReady(p) && p.metadata.deletionTimestamp === undefined)
          .map((p) => ({ ip: p.status.podIP as string, ports: new Map(servicePorts.map((sp) => [sp.port, resolvePort(p, sp.targetPort ?? sp.port) ?? sp.port])) }));
      }
    }
    for (const stale of this.#dnsNames.get(key) ?? []) if (!names.has(stale)) dns.delete(stale);
    for (const [n, records] of names) dns.set(n, records);
    this.#dnsNames.set(key, new Set(names.keys()));
  }

  #serviceGone(service: KubeObject): void {
    const key = serviceKey(service);
    const published = this.#slices.get(key);
    this.#slices.delete(key);
    if (published !== undefined) void this.#options.api.remove(published.name, service.metadata.namespace);
    for (const name of this.#dnsNames.get(key) ?? []) this.#options.dns.delete(name);
    this.#dnsNames.delete(key);
    void this.#closeProxy(key).catch(this.#options.onError);
  }

  async #closeProxy(key: string): Promise<void> {
    const proxy = this.#proxies.get(key);
    if (proxy === undefined) return;
    this.#proxies.delete(key);
    await Promise.all(proxy.listeners.map((listener) => listener.close()));
  }
}

function serviceKey(service: KubeObject): string {
  return `${service.metadata.namespace}/${service.metadata.name}/${service.metadata.uid}`;
}

/** The defaults the API server fills into a pod spec. */
export function podDefaults(spec: any, restartPolicy: string): any {
  return {
    ...spec,
    restartPolicy: spec.restartPolicy ?? restartPolicy,
    terminationGracePeriodSeconds: spec.terminationGracePeriodSeconds ?? 30,
    serviceAccountName: spec.serviceAccountName ?? 'default',
    dnsPolicy: spec.dnsPolicy ?? 'ClusterFirst',
    schedulerName: spec.schedulerName ?? 'default-scheduler',
  };
}
