/**
 * A fake Kubernetes cluster for the `podpool bench --cluster` tests: the FakeApiServer (whose
 * EndpointSlice list and watch the discovery tests know) grown into an API server for every kind
 * the flow uses, with RBAC for ServiceAccount tokens, and a control plane that runs the pods as
 * local processes on loopback addresses (127.253.x.y), a kube-proxy on ClusterIPs (127.254.x.y)
 * and a cluster DNS. Everything speaks the real protocols to the real `@kubernetes/client-node`,
 * real HTTP to the pods, real DNS; nothing leaves loopback and nothing here sleeps.
 *
 * What it does not do: ReplicaSets are folded into the Deployment controller (pods carry their
 * `pod-template-hash` and a ReplicaSet owner reference, no ReplicaSet object is stored), no
 * Events, no server-side apply, no admission beyond what is checked below, one container a pod.
 */
import { EventEmitter } from 'node:events';
import { debuglog } from 'node:util';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADMIN_USER, FakeApiServer, type RequestRecord } from './fake-apiserver.ts';
import { DnsServer } from './dns-server.ts';
import { Controllers } from './fake-cluster/controllers.ts';
import { Kubelet } from './fake-cluster/kubelet.ts';
import {
  ApiError,
  RESOURCES,
  Store,
  apiVersion,
  jsonPatch,
  mergePatch,
  now,
  parseSelector,
  qualified,
  type Change,
  type KubeObject,
  type Resource,
} from './fake-cluster/store.ts';

export type { KubeObject } from './fake-cluster/store.ts';

const trace = debuglog('podpool:fake-cluster');

const NAMESPACES = RESOURCES.get('/namespaces')!;
const NODES = RESOURCES.get('/nodes')!;
const PODS = RESOURCES.get('/pods')!;
const SERVICES = RESOURCES.get('/services')!;
const SERVICE_ACCOUNTS = RESOURCES.get('/serviceaccounts')!;
const CONFIG_MAPS = RESOURCES.get('/configmaps')!;
const DEPLOYMENTS = RESOURCES.get('apps/deployments')!;
const JOBS = RESOURCES.get('batch/jobs')!;
const ROLES = RESOURCES.get('rbac.authorization.k8s.io/roles')!;
const ROLE_BINDINGS = RESOURCES.get('rbac.authorization.k8s.io/rolebindings')!;
/** Served by the FakeApiServer itself; named here for RBAC only. */
const ENDPOINT_SLICES: Resource = { name: 'endpointslices', group: 'discovery.k8s.io', version: 'v1', kind: 'EndpointSlice', namespaced: true };

const REPO = fileURLToPath(new URL('..', import.meta.url));
/** The namespaces a cluster starts with; they can't be deleted. */
const SYSTEM_NAMESPACES = ['default', 'kube-system', 'kube-public'];
/** Paths every authenticated user may read (system:public-info-viewer and discovery). */
const PUBLIC_PATHS = new Set(['/version', '/api', '/apis', '/healthz', '/livez', '/readyz']);

/** Addresses in use by clusters of this process; a process's clusters share one /24 of each. */
const used = new Set<string>();
function allocate(prefix: string): string {
  for (let n = 1; n < 255; n++) {
    const ip = `${prefix}.${process.pid % 250}.${n}`;
    if (used.has(ip)) continue;
    used.add(ip);
    return ip;
  }
  throw new ApiError(500, `the fake cluster ran out of addresses in ${prefix}.${process.pid % 250}.0/24`);
}

/** Options of {@link FakeCluster.start}. */
export interface FakeClusterOptions {
  /** How many fake nodes pods are spread over (round-robin); default 2. */
  nodes?: number;
  /** kube-proxy's mode in kube-system/kube-proxy's `config.conf`; null: no such ConfigMap. Default `iptables`. */
  kubeProxyMode?: string | null;
  /** `/version`'s gitVersion; default `v1.31.0-fake`. */
  version?: string;
}

/**
 * An object created or deleted, and who did it: a client's user name, or `system:controller` for
 * the control plane (a Deployment's pods, a cascade). A deletion is recorded when the object is
 * gone (a pod after its process exited), by whoever asked for it.
 */
export interface ObjectRecord {
  readonly kind: string;
  readonly namespace: string | undefined;
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly by: string;
}

/** What happened to a pod's container or a Job, for tests to wait on. */
export interface PodEvent {
  readonly namespace: string;
  readonly name: string;
  readonly pod: KubeObject;
  readonly detail: Readonly<Record<string, unknown>>;
}

type Events = {
  created: [ObjectRecord];
  deleted: [ObjectRecord];
  'pod-started': [PodEvent];
  'pod-exited': [PodEvent];
  'pod-ready': [PodEvent];
  'pod-unready': [PodEvent];
  'pod-gone': [PodEvent];
  /** A Job's pod started its container (`name` is the Job's). */
  'job-started': [PodEvent];
  /** A Job became Complete or Failed (`pod` is the Job; `detail.condition` which). */
  'job-finished': [PodEvent];
};

interface Route {
  resource: Resource;
  namespace: string | undefined;
  name: string | undefined;
  sub: string | undefined;
}

/**
 * The fake cluster. {@link FakeCluster.start} it, point `@kubernetes/client-node` at
 * `kubeconfigPath` (the admin), and wait on its events or {@link FakeCluster.waitFor}.
 */
export class FakeCluster extends EventEmitter<Events> {
  /** A kubeconfig file for the admin user (may do anything). */
  readonly kubeconfigPath: string;
  /** The API server underneath: its `requests`, `slices()`, faults. */
  readonly api: FakeApiServer;
  /** The cluster DNS (`<svc>.<ns>.svc.cluster.local`). */
  readonly dns: DnsServer;
  /** Every object created so far (any kind but EndpointSlice), oldest first. */
  readonly created: ObjectRecord[] = [];
  /** Every object deleted so far, in order. */
  readonly deleted: ObjectRecord[] = [];
  /** What the fake's controllers threw: a bug of the fake; a test may assert there is none. */
  readonly errors: unknown[] = [];

  readonly #dir: string;
  readonly #store: Store;
  readonly #kubelet: Kubelet;
  readonly #controllers: Controllers;
  readonly #options: Required<FakeClusterOptions>;
  /** ServiceAccount tokens: token → `namespace/name`, and back. */
  readonly #tokens = new Map<string, string>();
  readonly #kubeconfigs = new Map<string, string>();
  readonly #watches = new Set<ServerResponse>();
  readonly #waiters = new Set<() => void>();
  readonly #finishedJobs = new Set<string>();
  /** Who asked for an object's deletion (by uid), for the record made when it is finally gone. */
  readonly #deleters = new Map<string, string>();
  #actor = 'system:controller';
  #closed = false;
  /**
   * A test process that exits without close() (a failed assertion in a hook, a timeout) leaves
   * no pod listening on loopback and no temp files behind it.
   */
  readonly #onExit = () => {
    this.#kubelet.killAll();
    rmSync(this.#dir, { recursive: true, force: true });
  };

  private constructor(dir: string, api: FakeApiServer, dns: DnsServer, kubeconfigPath: string, options: Required<FakeClusterOptions>) {
    super();
    this.#dir = dir;
    this.api = api;
    this.dns = dns;
    this.kubeconfigPath = kubeconfigPath;
    this.#options = options;
    this.#store = new Store((error) => this.#error(error));
    const nodes = Array.from({ length: options.nodes }, (_, i) => `fake-node-${i + 1}`);
    this.#kubelet = new Kubelet({
      store: this.#store,
      repo: REPO,
      node: join(REPO, 'node_modules/.bin/node'),
      nodes,
      dnsServer: dns.address,
      kubeconfigFor: (namespace, name) => this.#kubeconfigs.get(`${namespace}/${name}`),
      allocateIp: () => allocate('127.253'),
      releaseIp: (ip) => used.delete(ip),
      emit: (event, pod, detail = {}) => this.#podEvent(event, pod, detail),
    });
    this.#controllers = new Controllers({
      store: this.#store,
      api,
      dns,
      create: (resource, namespace, object) => this.#store.create(resource, namespace, object),
      deletePod: (pod, grace) => this.#deletePod(pod, grace),
      onError: (error) => this.#error(error),
    });
    this.#store.onChange((change) => this.#changed(change));
    api.extend({
      authenticate: (token) => {
        const account = this.#tokens.get(token);
        return account === undefined ? undefined : `system:serviceaccount:${account.replace('/', ':')}`;
      },
      authorize: (user, verb, namespace) => this.#authorize(user, verb, ENDPOINT_SLICES, namespace, undefined, undefined),
      handle: (req, res, user, record) => void this.#handle(req, res, user, record),
    });
    this.#seed(nodes);
    process.on('exit', this.#onExit);
  }

  /** Starts the API server, the DNS server and the control plane, on loopback. */
  static async start(options: FakeClusterOptions = {}): Promise<FakeCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'podpool-fake-cluster-'));
    const api = await FakeApiServer.start();
    const dns = await DnsServer.start();
    const kubeconfigPath = await api.writeKubeconfig(dir);
    return new FakeCluster(dir, api, dns, kubeconfigPath, {
      nodes: options.nodes ?? 2,
      kubeProxyMode: options.kubeProxyMode === undefined ? 'iptables' : options.kubeProxyMode,
      version: options.version ?? 'v1.31.0-fake',
    });
  }

  /** Copies of every live object of every kind (EndpointSlices are the API server's: `api.slices()`). */
  objects(): KubeObject[] {
    return this.#store.all().map((o) => structuredClone(o));
  }

  /** A copy of one object, or undefined. */
  get(kind: string, namespace: string | undefined, name: string): KubeObject | undefined {
    const resource = [...RESOURCES.values()].find((r) => r.kind === kind);
    if (resource === undefined) throw new Error(`the fake cluster has no kind ${kind}`);
    const object = this.#store.get(resource, namespace, name);
    return object === undefined ? undefined : structuredClone(object);
  }

  /** The ServiceAccount's token (what the kubelet puts in its pods' kubeconfig). */
  tokenOf(namespace: string, serviceAccount: string): string | undefined {
    for (const [token, account] of this.#tokens) if (account === `${namespace}/${serviceAccount}`) return token;
    return undefined;
  }

  /**
   * Resolves with the first truthy value `check` returns, tried now and after every change to the
   * cluster (objects, containers, readiness). No polling: a test times out rather than sleeps.
   */
  waitFor<T>(check: (cluster: this) => T | undefined | null | false, { signal }: { signal?: AbortSignal } = {}): Promise<T> {
    return new Promise((resolve, reject) => {
      const first = check(this);
      if (first) return resolve(first);
      const onAbort = () => {
        this.#waiters.delete(waiter);
        reject(signal!.reason);
      };
      const waiter = () => {
        let value: T | undefined | null | false;
        try {
          value = check(this);
        } catch (error) {
          this.#waiters.delete(waiter);
          signal?.removeEventListener('abort', onAbort);
          return reject(error);
        }
        if (!value) return;
        this.#waiters.delete(waiter);
        signal?.removeEventListener('abort', onAbort);
        resolve(value);
      };
      this.#waiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Kills every process, closes every listener and stream, removes the temp files. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    process.off('exit', this.#onExit);
    for (const res of this.#watches) res.end();
    this.#watches.clear();
    await this.#kubelet.close();
    await this.#controllers.close();
    for (const object of this.#store.list(PODS)) if (typeof object.status?.podIP === 'string') used.delete(object.status.podIP);
    for (const object of this.#store.list(SERVICES)) if (typeof object.spec?.clusterIP === 'string') used.delete(object.spec.clusterIP);
    await this.dns.close();
    await this.api.close();
    await rm(this.#dir, { recursive: true, force: true });
  }

  // --- The cluster as it starts -------------------------------------------------------------

  #seed(nodes: string[]): void {
    for (const name of SYSTEM_NAMESPACES) this.#createNamespace({ apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    for (const name of nodes) {
      this.#store.create(NODES, undefined, {
        apiVersion: 'v1',
        kind: 'Node',
        metadata: { name, labels: { 'kubernetes.io/hostname': name, 'kubernetes.io/os': 'linux' } },
        spec: {},
        status: {
          addresses: [{ type: 'InternalIP', address: '127.0.0.1' }],
          conditions: [{ type: 'Ready', status: 'True' }],
          nodeInfo: { kubeletVersion: this.#options.version, kubeProxyVersion: this.#options.version, operatingSystem: 'linux', architecture: process.arch === 'x64' ? 'amd64' : process.arch },
        },
      });
    }
    if (this.#options.kubeProxyMode !== null) {
      this.#store.create(CONFIG_MAPS, 'kube-system', {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'kube-proxy', labels: { app: 'kube-proxy' } },
        data: { 'config.conf': `apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ${this.#options.kubeProxyMode}\n` },
      });
    }
  }

  /** A namespace comes with its `default` ServiceAccount, as the ServiceAccount controller makes it. */
  #createNamespace(body: KubeObject): KubeObject {
    const ns = this.#store.create(NAMESPACES, undefined, { ...body, status: { phase: 'Active' } });
    this.#createServiceAccount(ns.metadata.name, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default' } }, 'system:controller');
    return ns;
  }

  #createServiceAccount(namespace: string, body: KubeObject, by: string): KubeObject {
    const previous = this.#actor;
    this.#actor = by;
    try {
      const sa = this.#store.create(SERVICE_ACCOUNTS, namespace, body);
      const token = `fake-sa-token-${namespace}-${sa.metadata.name}-${Math.random().toString(36).slice(2)}`;
      this.#tokens.set(token, `${namespace}/${sa.metadata.name}`);
      // Written lazily: the kubelet asks only for pods that mount a token.
      this.#kubeconfigs.set(`${namespace}/${sa.metadata.name}`, join(this.#dir, 'sa', namespace, sa.metadata.name, 'kubeconfig'));
      void this.#writeServiceAccountKubeconfig(namespace, sa.metadata.name, token);
      return sa;
    } finally {
      this.#actor = previous;
    }
  }

  async #writeServiceAccountKubeconfig(namespace: string, name: string, token: string): Promise<void> {
    const dir = join(this.#dir, 'sa', namespace, name);
    await mkdir(dir, { recursive: true });
    await this.api.writeKubeconfig(dir, { token });
  }

  // --- What changed ---------------------------------------------------------------------------

  #changed(change: Change): void {
    const { object, resource } = change;
    if (change.type !== 'MODIFIED') {
      const record: ObjectRecord = {
        kind: object.kind,
        namespace: object.metadata.namespace,
        name: object.metadata.name,
        labels: { ...object.metadata.labels },
        by: (change.type === 'DELETED' ? this.#deleters.get(object.metadata.uid!) : undefined) ?? this.#actor,
      };
      if (change.type === 'DELETED') this.#deleters.delete(object.metadata.uid!);
      (change.type === 'ADDED' ? this.created : this.deleted).push(record);
      this.emit(change.type === 'ADDED' ? 'created' : 'deleted', record);
    }
    if (change.type === 'DELETED' && resource === SERVICE_ACCOUNTS) {
      for (const [token, account] of this.#tokens) if (account === `${object.metadata.namespace}/${object.metadata.name}`) this.#tokens.delete(token);
    }
    if (change.type === 'DELETED' && resource === SERVICES && typeof object.spec?.clusterIP === 'string') used.delete(object.spec.clusterIP);
    if (resource === JOBS && change.type === 'MODIFIED') {
      const condition = object.status?.conditions?.find((c: { type: string; status: string }) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');
      if (condition !== undefined && !this.#finishedJobs.has(object.metadata.uid!)) {
        this.#finishedJobs.add(object.metadata.uid!);
        this.emit('job-finished', { namespace: object.metadata.namespace!, name: object.metadata.name, pod: object, detail: { condition: condition.type, reason: condition.reason } });
      }
    }
    this.#wake();
  }

  #podEvent(event: 'pod-started' | 'pod-exited' | 'pod-ready' | 'pod-unready' | 'pod-gone', pod: KubeObject, detail: Record<string, unknown>): void {
    trace('%s %s/%s %o', event, pod.metadata.namespace, pod.metadata.name, detail);
    const payload: PodEvent = { namespace: pod.metadata.namespace!, name: pod.metadata.name, pod: structuredClone(pod), detail };
    this.emit(event, payload);
    const job = pod.metadata.ownerReferences?.find((o) => o.kind === 'Job');
    if (event === 'pod-started' && job !== undefined) this.emit('job-started', { ...payload, name: job.name });
    this.#wake();
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }

  #error(error: unknown): void {
    trace('controller error %o', error);
    this.errors.push(error);
  }

  // --- Authorization ----------------------------------------------------------------------------

  /**
   * RBAC for ServiceAccount users: the Roles their RoleBindings in `namespace` grant (ClusterRoles
   * are not modelled, so nothing cluster-wide is granted). Undefined when allowed, else the message
   * the API server gives.
   */
  #authorize(user: string, verb: string, resource: Resource, namespace: string | undefined, name: string | undefined, sub: string | undefined): string | undefined {
    if (user === ADMIN_USER) return undefined;
    const account = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(user);
    const resourceName = sub === undefined ? resource.name : `${resource.name}/${sub}`;
    if (account !== null && namespace !== undefined) {
      for (const binding of this.#store.list(ROLE_BINDINGS, namespace)) {
        const bound = (binding.subjects as { kind: string; name: string; namespace?: string }[] | undefined)?.some(
          (s) => s.kind === 'ServiceAccount' && s.name === account[2] && (s.namespace ?? namespace) === account[1],
        );
        const roleRef = binding.roleRef as { kind?: string; name?: string } | undefined;
        if (!bound || roleRef?.kind !== 'Role' || roleRef.name === undefined) continue;
        const role = this.#store.get(ROLES, namespace, roleRef.name);
        const rules = (role?.rules ?? []) as { apiGroups?: string[]; resources?: string[]; verbs?: string[]; resourceNames?: string[] }[];
        const allowed = rules.some(
          (rule) =>
            (rule.apiGroups ?? []).some((g) => g === '*' || g === resource.group) &&
            (rule.resources ?? []).some((r) => r === '*' || r === resourceName) &&
            (rule.verbs ?? []).some((v) => v === '*' || v === verb) &&
            (rule.resourceNames === undefined || rule.resourceNames.length === 0 || (name !== undefined && rule.resourceNames.includes(name))),
        );
        if (allowed) return undefined;
      }
    }
    const what = name === undefined ? qualified(resource) : `${qualified(resource)} "${name}"`;
    const where = namespace === undefined ? 'at the cluster scope' : `in the namespace "${namespace}"`;
    return `${what} is forbidden: User "${user}" cannot ${verb} resource "${resourceName}" in API group "${resource.group}" ${where}`;
  }

  // --- REST -----------------------------------------------------------------------------------

  async #handle(req: IncomingMessage, res: ServerResponse, user: string, record: RequestRecord): Promise<void> {
    const answer = (status: number, body: unknown) => {
      record.status = status;
      if (res.headersSent) return void res.end();
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    try {
      const url = new URL(req.url ?? '/', this.api.url);
      const query = Object.fromEntries(url.searchParams);
      const body = req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH' || req.method === 'DELETE' ? await readBody(req) : undefined;
      if (this.#closed) throw new ApiError(503, 'the fake cluster is closed');
      if (PUBLIC_PATHS.has(url.pathname)) return answer(200, this.#public(url.pathname));
      const route = parseRoute(url.pathname);
      if (route === undefined) throw new ApiError(404, 'the server could not find the requested resource');
      const verb = verbOf(req.method ?? 'GET', route, query);
      const denied = this.#authorize(user, verb, route.resource, route.namespace, route.name, route.sub);
      if (denied !== undefined) {
        throw new ApiError(403, denied, { details: { ...(route.name !== undefined && { name: route.name }), group: route.resource.group, kind: route.resource.name } });
      }
      if (route.resource.namespaced && route.namespace === undefined && verb !== 'list' && verb !== 'watch') {
        throw new ApiError(404, 'the server could not find the requested resource');
      }
      if (verb === 'watch') return this.#watch(route, query, res, record);
      if (route.sub === 'log' && route.resource === PODS) return this.#log(route, query, res, record);
      // Whatever the request creates or deletes synchronously is the user's doing (controllers
      // run in later microtasks, as the control plane's).
      let served: [number, unknown];
      this.#actor = user;
      try {
        served = this.#serve(verb, route, query, body, req.headers['content-type']);
      } finally {
        this.#actor = 'system:controller';
      }
      const [status, result] = served;
      if (route.resource === SERVICES && verb === 'create') {
        const service = result as KubeObject;
        try {
          await this.#controllers.openProxy(service);
        } catch (error) {
          this.#store.remove(SERVICES, service);
          throw new ApiError(500, (error as Error).message);
        }
      }
      answer(status, result);
    } catch (error) {
      if (error instanceof ApiError) return answer(error.code, error.status());
      this.#error(error);
      answer(500, new ApiError(500, (error as Error).message).status());
    }
  }

  #public(path: string): unknown {
    if (path === '/version') {
      const [major, minor] = this.#options.version.replace(/^v/, '').split('.');
      return { major, minor, gitVersion: this.#options.version, gitCommit: 'fake', gitTreeState: 'clean', buildDate: '2026-01-01T00:00:00Z', goVersion: 'go1.22.0', compiler: 'gc', platform: 'linux/amd64' };
    }
    if (path === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] };
    if (path === '/apis') {
      const groups = [...new Set([...RESOURCES.values()].map((r) => r.group).filter((g) => g !== '')), 'discovery.k8s.io'];
      return { kind: 'APIGroupList', apiVersion: 'v1', groups: groups.map((name) => ({ name, versions: [{ groupVersion: `${name}/v1`, version: 'v1' }], preferredVersion: { groupVersion: `${name}/v1`, version: 'v1' } })) };
    }
    return 'ok';
  }

  #serve(verb: string, route: Route, query: Record<string, string>, body: unknown, contentType: string | undefined): [number, unknown] {
    const { resource, namespace, name, sub } = route;
    const store = this.#store;
    if (sub !== undefined && !(resource === DEPLOYMENTS && sub === 'scale')) {
      throw new ApiError(404, 'the server could not find the requested resource');
    }
    switch (verb) {
      case 'list': {
        const selector = parseSelector(query.labelSelector ?? '');
        const fields = fieldSelector(query.fieldSelector ?? '');
        const items = store.list(resource, namespace, selector).filter(fields);
        return [200, { kind: `${resource.kind}List`, apiVersion: apiVersion(resource), metadata: { resourceVersion: String(store.resourceVersion) }, items }];
      }
      case 'get': {
        const object = store.read(resource, namespace, name!);
        return [200, sub === 'scale' ? scaleOf(object) : object];
      }
      case 'create':
        return [201, this.#create(resource, namespace, body as KubeObject)];
      case 'update': {
        const current = store.read(resource, namespace, name!);
        if (sub === 'scale') return [200, scaleOf(this.#scale(current, body))];
        const next = body as KubeObject;
        if (next?.metadata?.name !== name) throw new ApiError(400, `the name of the object (${next?.metadata?.name}) does not match the name on the URL (${name})`);
        validate(resource, next);
        return [200, store.update(resource, { ...next, metadata: { ...next.metadata, namespace } })];
      }
      case 'patch': {
        const current = store.read(resource, namespace, name!);
        const patched = applyPatch(sub === 'scale' ? scaleOf(current) : current, body, contentType) as KubeObject;
        if (sub === 'scale') return [200, scaleOf(this.#scale(current, patched))];
        validate(resource, patched);
        return [200, store.update(resource, { ...patched, metadata: { ...patched.metadata, name: name!, namespace } })];
      }
      case 'delete':
        return this.#delete(resource, store.read(resource, namespace, name!), deleteOptions(query, body));
      case 'deletecollection': {
        const selector = parseSelector(query.labelSelector ?? '');
        const items = store.list(resource, namespace, selector);
        const options = deleteOptions(query, body);
        for (const object of items) this.#delete(resource, object, options);
        return [200, { kind: `${resource.kind}List`, apiVersion: apiVersion(resource), metadata: { resourceVersion: String(store.resourceVersion) }, items }];
      }
      default:
        throw new ApiError(405, `${verb} is not supported on ${qualified(resource)}`);
    }
  }

  #create(resource: Resource, namespace: string | undefined, input: KubeObject): KubeObject {
    if (typeof input !== 'object' || input === null || typeof input.metadata !== 'object' || input.metadata === null) {
      throw new ApiError(400, `the body of a ${resource.kind} must be an object with metadata`);
    }
    if (resource.namespaced) {
      const ns = this.#store.get(NAMESPACES, undefined, namespace!);
      if (ns === undefined) throw new ApiError(404, `namespaces "${namespace}" not found`, { details: { name: namespace, kind: 'namespaces' } });
      if (ns.metadata.deletionTimestamp !== undefined) {
        throw new ApiError(403, `${qualified(resource)} "${input.metadata.name ?? ''}" is forbidden: unable to create new content in namespace ${namespace} because it is being terminated`, {
          details: { name: input.metadata.name, group: resource.group, kind: resource.name },
        });
      }
    }
    validate(resource, input);
    const object = structuredClone(input);
    if (resource === NAMESPACES) return this.#createNamespace(object);
    if (resource === SERVICE_ACCOUNTS) return this.#createServiceAccount(namespace!, object, this.#actor);
    if (resource === SERVICES) {
      const spec = (object.spec ??= {});
      spec.type ??= 'ClusterIP';
      if (spec.type !== 'ClusterIP') throw new ApiError(422, `Service "${object.metadata.name}" is invalid: spec.type: Unsupported value: "${spec.type}": the fake cluster has ClusterIP Services only`);
      spec.ports = (spec.ports ?? []).map((p: { protocol?: string; targetPort?: unknown; port: number }) => ({ ...p, protocol: p.protocol ?? 'TCP', targetPort: p.targetPort ?? p.port }));
      if (spec.clusterIP !== 'None') spec.clusterIP = allocate('127.254');
      spec.clusterIPs = [spec.clusterIP];
      spec.ipFamilies = ['IPv4'];
      spec.ipFamilyPolicy = 'SingleStack';
      spec.sessionAffinity ??= 'None';
      spec.internalTrafficPolicy ??= 'Cluster';
    }
    if (resource === DEPLOYMENTS) {
      object.spec.replicas ??= 1;
      object.spec.strategy ??= { type: 'RollingUpdate', rollingUpdate: { maxSurge: '25%', maxUnavailable: '25%' } };
      object.spec.revisionHistoryLimit ??= 10;
      object.spec.progressDeadlineSeconds ??= 600;
    }
    const created = this.#store.create(resource, namespace, object);
    if (resource === JOBS) {
      // The API server's defaults: a selector on the Job's own uid, and its labels on the template.
      const uid = created.metadata.uid!;
      const labels = { 'batch.kubernetes.io/controller-uid': uid, 'batch.kubernetes.io/job-name': created.metadata.name, 'controller-uid': uid, 'job-name': created.metadata.name };
      return this.#store.modify(JOBS, created, (job) => {
        job.spec.completions ??= 1;
        job.spec.parallelism ??= 1;
        job.spec.backoffLimit ??= 6;
        job.spec.selector ??= { matchLabels: { 'batch.kubernetes.io/controller-uid': uid } };
        job.spec.template.metadata = { ...job.spec.template.metadata, labels: { ...job.spec.template.metadata?.labels, ...labels } };
        job.metadata.labels = { ...labels, ...job.metadata.labels };
      });
    }
    return created;
  }

  #scale(deployment: KubeObject, scale: unknown): KubeObject {
    const replicas = (scale as { spec?: { replicas?: unknown } } | null)?.spec?.replicas;
    if (!Number.isSafeInteger(replicas) || (replicas as number) < 0) {
      throw new ApiError(422, `Scale.autoscaling "${deployment.metadata.name}" is invalid: spec.replicas: Invalid value: ${JSON.stringify(replicas)}: must be greater than or equal to 0`);
    }
    return this.#store.modify(DEPLOYMENTS, deployment, (d) => (d.spec.replicas = replicas));
  }

  #delete(resource: Resource, object: KubeObject, options: { gracePeriodSeconds?: number; propagationPolicy?: string }): [number, unknown] {
    const gone = (): [number, unknown] => [200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name: object.metadata.name, group: resource.group, kind: resource.name, uid: object.metadata.uid } }];
    if (resource === PODS) {
      this.#deletePod(object, options.gracePeriodSeconds);
      const left = this.#store.get(PODS, object.metadata.namespace, object.metadata.name);
      return left === undefined ? gone() : [200, left];
    }
    if (resource === NAMESPACES) {
      if (SYSTEM_NAMESPACES.includes(object.metadata.name)) throw new ApiError(403, `namespaces "${object.metadata.name}" is forbidden: this namespace may not be deleted`);
      if (object.metadata.deletionTimestamp === undefined) this.#deleters.set(object.metadata.uid!, this.#actor);
      const terminating = this.#store.modify(NAMESPACES, object, (ns) => {
        ns.metadata.deletionTimestamp ??= now();
        ns.status = { phase: 'Terminating' };
      });
      return [200, terminating];
    }
    // Deployments default to Background; batch/v1 Jobs, for history's sake, to Orphan.
    const policy = options.propagationPolicy ?? (resource === JOBS ? 'Orphan' : 'Background');
    const dependents = resource === DEPLOYMENTS ? this.#controllers.podsOf(object) : resource === JOBS ? this.#controllers.podsOfJob(object) : [];
    this.#store.remove(resource, object);
    // The dependents are the garbage collector's to delete, not the user's.
    const user = this.#actor;
    this.#actor = 'system:controller';
    try {
      for (const pod of dependents) {
        if (policy === 'Orphan') this.#store.modify(PODS, pod, (p) => delete p.metadata.ownerReferences);
        else this.#deletePod(pod);
      }
    } finally {
      this.#actor = user;
    }
    return gone();
  }

  /** Marks a pod deleted; the kubelet stops it (grace 0: SIGKILL at once) and then removes it. */
  #deletePod(pod: KubeObject, gracePeriodSeconds?: number): void {
    const current = this.#store.get(PODS, pod.metadata.namespace, pod.metadata.name);
    if (current === undefined) return;
    const grace = gracePeriodSeconds ?? current.spec.terminationGracePeriodSeconds ?? 30;
    // Deleting a pod already going changes nothing, unless it asks for less time (as the API server does).
    if (current.metadata.deletionTimestamp !== undefined && grace >= (current.metadata.deletionGracePeriodSeconds ?? 30)) return;
    if (current.metadata.deletionTimestamp === undefined) this.#deleters.set(current.metadata.uid!, this.#actor);
    this.#store.modify(PODS, current, (p) => {
      p.metadata.deletionTimestamp ??= now();
      p.metadata.deletionGracePeriodSeconds = grace;
    });
  }

  #log(route: Route, query: Record<string, string>, res: ServerResponse, record: RequestRecord): void {
    const pod = this.#store.read(PODS, route.namespace, route.name!);
    const containers = (pod.spec.containers as { name: string }[]).map((c) => c.name);
    const container = query.container ?? (containers.length === 1 ? containers[0] : undefined);
    if (container === undefined) throw new ApiError(400, `a container name must be specified for pod ${pod.metadata.name}, choose one of: [${containers.join(' ')}]`);
    if (!containers.includes(container)) throw new ApiError(400, `container ${container} is not valid for pod ${pod.metadata.name}`);
    if (!this.#kubelet.started(pod)) throw new ApiError(400, `container "${container}" in pod "${pod.metadata.name}" is waiting to start: ContainerCreating`);
    record.status = 200;
    this.#kubelet.log(pod, res, query.follow === 'true' || query.follow === '1');
  }

  /** A watch of any kind but EndpointSlices: the current objects as ADDED (or the changes since `resourceVersion`), then every change. */
  #watch(route: Route, query: Record<string, string>, res: ServerResponse, record: RequestRecord): void {
    const selector = parseSelector(query.labelSelector ?? '');
    const fields = fieldSelector(query.fieldSelector ?? '');
    const matches = (object: KubeObject) =>
      object.kind === route.resource.kind && (route.namespace === undefined || object.metadata.namespace === route.namespace) && selector(object.metadata.labels) && fields(object);
    record.status = 200;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const from = query.resourceVersion;
    const initial =
      from === undefined || from === '' || from === '0'
        ? this.#store.list(route.resource, route.namespace).filter(matches).map((object) => ({ type: 'ADDED', object }))
        : this.#store.since(Number(from)).filter((c) => matches(c.object)).map((c) => ({ type: c.type, object: c.object }));
    if (initial.length > 0) res.write(initial.map((e) => `${JSON.stringify(e)}\n`).join(''));
    const stop = this.#store.onChange((change) => {
      if (matches(change.object)) res.write(`${JSON.stringify({ type: change.type, object: change.object })}\n`);
    });
    this.#watches.add(res);
    const timeoutSeconds = Number(query.timeoutSeconds);
    const timer = Number.isFinite(timeoutSeconds) && timeoutSeconds > 0 ? setTimeout(() => res.end(), timeoutSeconds * 1000) : undefined;
    res.once('close', () => {
      stop();
      clearTimeout(timer);
      this.#watches.delete(res);
    });
  }
}

function parseRoute(path: string): Route | undefined {
  let group: string;
  let version: string;
  let rest: string;
  const core = /^\/api\/(v1)\/(.+)$/.exec(path);
  const named = /^\/apis\/([^/]+)\/([^/]+)\/(.+)$/.exec(path);
  if (core !== null) [, version, rest] = core as unknown as [string, string, string];
  else if (named !== null) [, group, version, rest] = named as unknown as [string, string, string, string];
  else return undefined;
  group ??= '';
  let segments = rest.split('/').map(decodeURIComponent);
  let namespace: string | undefined;
  if (segments[0] === 'namespaces' && segments.length >= 3) {
    namespace = segments[1];
    segments = segments.slice(2);
  }
  if (segments.length > 3) return undefined;
  const resource = RESOURCES.get(`${group}/${segments[0]}`);
  if (resource === undefined || resource.version !== version) return undefined;
  if (!resource.namespaced && namespace !== undefined) return undefined;
  return { resource, namespace, name: segments[1], sub: segments[2] };
}

function verbOf(method: string, route: Route, query: Record<string, string>): string {
  const named = route.name !== undefined;
  switch (method) {
    case 'GET':
      return named ? 'get' : query.watch === 'true' || query.watch === '1' ? 'watch' : 'list';
    case 'POST':
      if (named) throw new ApiError(405, 'POST on a named object is not allowed');
      return 'create';
    case 'PUT':
      return 'update';
    case 'PATCH':
      return 'patch';
    case 'DELETE':
      return named ? 'delete' : 'deletecollection';
    default:
      throw new ApiError(405, `${method} is not allowed`);
  }
}

/** What the fake refuses that a real cluster would run: it can only run the podpool image's ENTRYPOINT. */
function validate(resource: Resource, object: KubeObject): void {
  const spec = resource === PODS ? object.spec : resource === DEPLOYMENTS || resource === JOBS ? object.spec?.template?.spec : undefined;
  if (resource === DEPLOYMENTS && (object.spec?.selector?.matchLabels === undefined || object.spec?.template === undefined)) {
    throw new ApiError(422, `Deployment.apps "${object.metadata.name}" is invalid: spec.selector: Required value`);
  }
  if (resource === DEPLOYMENTS) {
    const labels = object.spec.template.metadata?.labels ?? {};
    const mismatch = Object.entries(object.spec.selector.matchLabels as Record<string, string>).some(([k, v]) => labels[k] !== v);
    if (mismatch) throw new ApiError(422, `Deployment.apps "${object.metadata.name}" is invalid: spec.template.metadata.labels: Invalid value: selector does not match template labels`);
  }
  if (resource === JOBS && !['Never', 'OnFailure'].includes(object.spec?.template?.spec?.restartPolicy)) {
    throw new ApiError(422, `Job.batch "${object.metadata.name}" is invalid: spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"`);
  }
  if (spec === undefined) return;
  const containers = spec.containers as { name?: string; command?: unknown; args?: unknown }[] | undefined;
  if (!Array.isArray(containers) || containers.length !== 1) {
    throw new ApiError(422, `${resource.kind} "${object.metadata.name}" is invalid: the fake cluster runs pods of exactly one container, got ${Array.isArray(containers) ? containers.length : 'none'}`);
  }
  if (containers[0].command !== undefined) {
    throw new ApiError(422, `${resource.kind} "${object.metadata.name}" is invalid: containers[0].command: the fake cluster runs the podpool image's ENTRYPOINT (podpool) with args only`);
  }
  if (containers[0].args !== undefined && (!Array.isArray(containers[0].args) || containers[0].args.some((a) => typeof a !== 'string'))) {
    throw new ApiError(422, `${resource.kind} "${object.metadata.name}" is invalid: containers[0].args must be strings`);
  }
}

function scaleOf(deployment: KubeObject): KubeObject {
  const selector = Object.entries((deployment.spec.selector?.matchLabels ?? {}) as Record<string, string>)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  return {
    kind: 'Scale',
    apiVersion: 'autoscaling/v1',
    metadata: {
      name: deployment.metadata.name,
      namespace: deployment.metadata.namespace,
      uid: deployment.metadata.uid,
      resourceVersion: deployment.metadata.resourceVersion,
      creationTimestamp: deployment.metadata.creationTimestamp,
    },
    spec: { replicas: deployment.spec.replicas },
    status: { replicas: deployment.status?.replicas ?? 0, selector },
  };
}

function applyPatch(current: KubeObject, body: unknown, contentType: string | undefined): unknown {
  const type = (contentType ?? '').split(';')[0].trim();
  if (type === 'application/json-patch+json') return jsonPatch(current, body);
  if (type === 'application/merge-patch+json' || type === 'application/strategic-merge-patch+json') return mergePatch(current, body);
  throw new ApiError(415, `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got ${JSON.stringify(type)})`);
}

function deleteOptions(query: Record<string, string>, body: unknown): { gracePeriodSeconds?: number; propagationPolicy?: string } {
  const fromBody = (typeof body === 'object' && body !== null ? body : {}) as { gracePeriodSeconds?: number; propagationPolicy?: string; orphanDependents?: boolean };
  const grace = query.gracePeriodSeconds ?? fromBody.gracePeriodSeconds;
  const orphan = query.orphanDependents === 'true' || fromBody.orphanDependents === true;
  const policy = query.propagationPolicy ?? fromBody.propagationPolicy ?? (orphan ? 'Orphan' : undefined);
  if (policy !== undefined && !['Orphan', 'Background', 'Foreground'].includes(policy)) throw new ApiError(400, `unknown propagationPolicy ${JSON.stringify(policy)}`);
  return {
    ...(grace !== undefined && { gracePeriodSeconds: Number(grace) }),
    ...(policy !== undefined && { propagationPolicy: policy }),
  };
}

/** `metadata.name=x`, `metadata.namespace=x` and `status.phase=x` (`!=` too), as field selectors go. */
function fieldSelector(text: string): (object: KubeObject) => boolean {
  const terms = text
    .split(',')
    .filter((t) => t.trim() !== '')
    .map((term) => {
      const m = /^\s*([\w.]+)\s*(!=|==|=)\s*(.*?)\s*$/.exec(term);
      if (m === null || !['metadata.name', 'metadata.namespace', 'status.phase', 'spec.nodeName'].includes(m[1])) {
        throw new ApiError(400, `field label not supported: ${term.split(/[=!]/)[0]}`);
      }
      const [, field, op, value] = m;
      const read = (o: KubeObject) => field.split('.').reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], o);
      return (o: KubeObject) => (op === '!=' ? read(o) !== value : read(o) === value);
    });
  return (object) => terms.every((t) => t(object));
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(400, `the request body is not JSON: ${text.slice(0, 80)}`);
  }
}
