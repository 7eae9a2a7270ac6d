/**
 * `podpool bench <scenario> --cluster`: the command's side of a run on Kubernetes. It creates the
 * objects of objects.ts through `@kubernetes/client-node`, waits for the backend pods, starts the
 * client Job, follows the Job pod's log, does what the runner asks (scale, restart, delete a
 * pod: its ServiceAccount may only read EndpointSlices), takes the runner's report, says where it
 * ran, and deletes everything it created: on success, on failure and on Ctrl-C. Objects a run
 * could not delete (a second Ctrl-C, a crash) are swept by a later run once their deadline passed.
 *
 * `podpool bench collect` is the follow-and-serve part alone, for objects applied by hand from
 * `podpool bench manifests`.
 */
import { Writable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { setTimeout as delay } from 'node:timers/promises';
import {
  ApiException,
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  KubeConfig,
  Log,
  PatchStrategy,
  RbacAuthorizationV1Api,
  VersionApi,
  setHeaderOptions,
  type KubernetesObject,
  type V1Pod,
} from '@kubernetes/client-node';
import { ErrorCode, PodpoolError } from '../../../src/errors.ts';
import { clearProgress, note, progress } from '../progress.ts';
import type { ScenarioOptions, ScenarioOutput } from '../scenarios/options.ts';
import { benchSpec } from './manifests.ts';
import { benchObjects, creationOrder, rfc3339 } from './objects.ts';
import { CONTAINERS, DEADLINE_ANNOTATION, LABELS, LineSplitter, MANAGED_BY, NAMES, parseEvent, type RunnerEvent, type RunnerRequest } from './protocol.ts';

/** The flags of `--cluster` (and of `collect`): which cluster, which image, which namespace. */
export interface ClusterFlags {
  /** A kubeconfig file; else `KUBECONFIG`, `~/.kube/config` or the in-cluster account, as kubectl does. */
  kubeconfig?: string;
  /** A context of the kubeconfig other than its current one. */
  context?: string;
  /** The podpool image the pods and the Job run (its ENTRYPOINT is `podpool`). */
  image: string;
  /** A namespace to use as it is; without it, the run creates `podpool-bench-<runId>` and deletes it. */
  namespace?: string;
}

/** Where a run ran: `report.cluster`. */
export interface ClusterInfo {
  serverVersion: string;
  /** The node count, or why it is unknown. */
  nodes: number | string;
  /** kube-proxy's mode (`iptables`, `ipvs`, `nftables`), or why it is unknown. */
  kubeProxyMode: string;
  /** Backend pods per node name, when the run ended. */
  podsPerNode: Record<string, number>;
  namespace: string;
  image: string;
}

/** A refused or failed Kubernetes API request: the message names the verb, the object and the API server's answer. */
const API_FAILED = ErrorCode.CLUSTER_REQUEST_FAILED;

/** How long the backend pods and the Job's pod may take to be ready and to start: image pulls, scheduling. */
const START_TIMEOUT_MS = 5 * 60_000;
/** How often the waits look again (a handful of GETs a second at most, for a few seconds). */
const POLL_MS = 500;
/** Lines of the runner's log kept to show when it dies without saying why. */
const LAST_LINES = 20;

/**
 * Runs `scenario` on the cluster and resolves with the runner's report, `report.cluster` and
 * `report.standIn: 'kubernetes'` added. Everything it created is deleted before it settles. On
 * SIGINT or SIGTERM it deletes them and exits (130, 143); a second signal exits at once, leaving
 * the objects to the next run's sweep. `signal` aborts the run as a first SIGINT does, and then
 * rejects with `PODPOOL_ABORTED` instead of exiting.
 */
export async function runOnCluster(
  scenario: string,
  options: ScenarioOptions,
  flags: ClusterFlags,
  runnerArgs: string[],
  signal?: AbortSignal,
): Promise<ScenarioOutput> {
  const kc = loadKubeConfig(flags);
  const api = clients(kc);
  const run = new AbortController();
  let signalled: NodeJS.Signals | undefined;
  const onSignal = (name: NodeJS.Signals): void => {
    if (signalled) {
      note(`${name} again: exiting without deleting; the next run's sweep deletes what is left once its deadline passed`);
      process.exit(exitCodeOf(name));
    }
    signalled = name;
    note(`${name}: deleting what this run created (${name} again exits at once)`);
    run.abort(new PodpoolError(ErrorCode.ABORTED, `the run was interrupted (${name})`));
  };
  const onAbort = (): void => run.abort(new PodpoolError(ErrorCode.ABORTED, 'the run was aborted', { cause: signal?.reason }));
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  signal?.addEventListener('abort', onAbort, { once: true });
  if (signal?.aborted) onAbort();

  const created: Created[] = [];
  let output: ScenarioOutput | undefined;
  let failure: unknown;
  try {
    await sweep(api, flags.namespace);
    run.signal.throwIfAborted();
    const where = await whereItRuns(api);
    const spec = benchSpec(scenario, options, flags, runnerArgs);
    note(
      `podpool bench ${scenario} on Kubernetes ${where.serverVersion} (${nodesText(where.nodes)}, kube-proxy ${where.kubeProxyMode}): ` +
        `run ${spec.runId} in namespace ${spec.namespace}${spec.ownNamespace ? ' (its own)' : ''}, image ${spec.image}`,
    );
    const objects = benchObjects(spec);
    let clusterIp: string | undefined;
    for (const object of creationOrder(objects)) {
      if (object === objects.job) break;
      const body = await create(api, object);
      created.push(deletion(api, object));
      if (object === objects.service) clusterIp = (body as typeof objects.service).spec?.clusterIP;
      run.signal.throwIfAborted();
    }
    if (!clusterIp || clusterIp === 'None') {
      throw new PodpoolError(API_FAILED, `the API server created Service ${spec.namespace}/${NAMES.service} without a spec.clusterIP`);
    }
    await waitForBackend(api, spec.namespace, spec.runId, spec.pods, run.signal);
    const { job } = benchObjects({ ...spec, clusterIp });
    await create(api, job);
    created.push(deletion(api, job));
    const pod = await waitForRunnerPod(api, spec.namespace, spec.runId, run.signal);
    output = await follow(kc, api, spec.namespace, pod, run.signal);
    const cluster: ClusterInfo = { ...where, podsPerNode: await podsPerNode(api, spec.namespace, spec.runId), namespace: spec.namespace, image: spec.image };
    stamp(output, cluster);
  } catch (error) {
    failure = run.signal.aborted ? run.signal.reason : error;
  }
  let left: string[];
  try {
    // Not aborted by the signal: deleting is what the signal asks for. The handlers stay, so
    // that a first Ctrl-C while deleting lets the deletes finish, and a second one exits.
    left = await deleteAll(created);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    signal?.removeEventListener('abort', onAbort);
  }
  clearProgress();
  if (signalled) {
    if (left.length === 0) note(`${signalled}: deleted everything this run created`);
    process.exit(exitCodeOf(signalled));
  }
  if (failure !== undefined) throw failure;
  if (left.length > 0) {
    throw new PodpoolError(API_FAILED, `the run finished, but deleting what it created failed: ${left.join('; ')}`);
  }
  return output!;
}

/**
 * `podpool bench collect <scenario> --namespace N`: for objects applied by hand from `manifests`,
 * follows the client Job's pod, does what its runner asks, and resolves with its report. It
 * deletes nothing (the user applied the objects, and deletes them as the header of `manifests`
 * says).
 */
export async function collect(scenario: string, flags: Omit<ClusterFlags, 'image'> & { namespace: string }, signal?: AbortSignal): Promise<ScenarioOutput> {
  const kc = loadKubeConfig(flags);
  const api = clients(kc);
  const namespace = flags.namespace;
  const where = await whereItRuns(api);
  const pod = await waitForRunnerPod(api, namespace, undefined, signal);
  const runId = pod.metadata?.labels?.[LABELS.run] ?? '';
  const image = pod.spec?.containers.find((c) => c.name === CONTAINERS.client)?.image ?? 'unknown';
  const ran = pod.spec?.containers.find((c) => c.name === CONTAINERS.client)?.args?.[1];
  if (ran !== undefined && ran !== scenario) {
    throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `the Job in namespace ${namespace} runs scenario ${ran}, not ${scenario}`);
  }
  note(`collecting run ${runId || '(unlabelled)'} in namespace ${namespace} on Kubernetes ${where.serverVersion}`);
  const output = await follow(kc, api, namespace, pod, signal);
  stamp(output, { ...where, podsPerNode: await podsPerNode(api, namespace, runId || undefined), namespace, image });
  return output;
}

/**
 * Deletes what earlier runs left behind (they crashed, or were killed twice) once their deadline
 * passed: own namespaces cluster-wide when this identity may list namespaces, and the objects of
 * every kind in `namespace` when one was given. A run still going keeps its objects. Resolves
 * with what it deleted (`kind namespace/name`).
 */
export async function sweep(api: Clients, namespace: string | undefined, now = new Date()): Promise<string[]> {
  const selector = `${LABELS.managedBy}=${MANAGED_BY}`;
  const expired = (object: KubernetesObject): boolean => {
    const deadline = Date.parse(object.metadata?.annotations?.[DEADLINE_ANNOTATION] ?? '');
    // Without a deadline nobody can tell whether its run is over: kept.
    return Number.isFinite(deadline) && deadline < now.getTime() && object.metadata?.deletionTimestamp === undefined;
  };
  const swept: string[] = [];
  const remove = async (kind: string, ns: string | undefined, name: string, call: () => Promise<unknown>): Promise<void> => {
    const what = `${kind} ${ns ? `${ns}/` : ''}${name}`;
    try {
      await call();
      swept.push(what);
    } catch (error) {
      if (statusOf(error) !== 404) throw apiError('delete', what, error);
    }
  };
  try {
    const namespaces = kindApi(api, 'Namespace');
    for (const object of (await namespaces.list(undefined, selector)).filter(expired)) {
      const name = object.metadata!.name!;
      await remove('Namespace', undefined, name, () => namespaces.remove(undefined, name));
    }
  } catch (error) {
    // A user allowed one namespace only may not list namespaces: their own leftovers are in it.
    if (statusOf(error) !== 403 && statusOf(error) !== 401) throw apiError('list', 'Namespaces', error);
  }
  if (namespace !== undefined) {
    // Namespaced kinds, the Job first: its pods go with it.
    for (const kind of CREATION_ORDER.toReversed()) {
      if (kind === 'Namespace') continue;
      const verbs = kindApi(api, kind);
      let items: KubernetesObject[];
      try {
        items = await verbs.list(namespace, selector);
      } catch (error) {
        throw apiError('list', `${kind}s in namespace ${namespace}`, error);
      }
      for (const object of items.filter(expired)) {
        const name = object.metadata!.name!;
        await remove(kind, namespace, name, () => verbs.remove(namespace, name));
      }
    }
  }
  if (swept.length > 0) note(`deleted what earlier runs left behind (their deadline passed): ${swept.join(', ')}`);
  return swept;
}

/** The API clients a run uses. */
export interface Clients {
  core: CoreV1Api;
  apps: AppsV1Api;
  batch: BatchV1Api;
  rbac: RbacAuthorizationV1Api;
  version: VersionApi;
}

export function clients(kc: KubeConfig): Clients {
  return {
    core: kc.makeApiClient(CoreV1Api),
    apps: kc.makeApiClient(AppsV1Api),
    batch: kc.makeApiClient(BatchV1Api),
    rbac: kc.makeApiClient(RbacAuthorizationV1Api),
    version: kc.makeApiClient(VersionApi),
  };
}

/** The kubeconfig as kubectl would pick it, with `--kubeconfig` and `--context` applied. */
export function loadKubeConfig(flags: Pick<ClusterFlags, 'kubeconfig' | 'context'>): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (flags.kubeconfig !== undefined) kc.loadFromFile(flags.kubeconfig);
    else kc.loadFromDefault();
  } catch (error) {
    // The file's text stays out of the message: a kubeconfig holds credentials.
    const detail = (error as NodeJS.ErrnoException).code ?? (error as Error).name;
    throw new PodpoolError(ErrorCode.INVALID_OPTION, `cannot load the kubeconfig${flags.kubeconfig ? ` ${flags.kubeconfig}` : ''} (${detail})`, { cause: error });
  }
  if (flags.context !== undefined) {
    if (!kc.getContextObject(flags.context)) {
      throw new PodpoolError(ErrorCode.INVALID_OPTION, `--context ${flags.context}: the kubeconfig has no such context (it has ${kc.getContexts().map((c) => c.name).join(', ') || 'none'})`);
    }
    kc.setCurrentContext(flags.context);
  }
  if (!kc.getCurrentCluster()) {
    throw new PodpoolError(ErrorCode.INVALID_OPTION, 'no Kubernetes cluster configured: pass --kubeconfig, set KUBECONFIG, or run where ~/.kube/config names one');
  }
  return kc;
}

/** One object created by this run, and how to delete it. */
interface Created {
  what: string;
  remove(): Promise<unknown>;
}

/** The kinds a run creates, in the order it creates them. */
const CREATION_ORDER = ['Namespace', 'ServiceAccount', 'Role', 'RoleBinding', 'Service', 'Deployment', 'Job'] as const;
type Kind = (typeof CREATION_ORDER)[number];

/** What a run does with each kind: create it, list it by label, delete it. */
interface KindApi {
  create(namespace: string | undefined, body: KubernetesObject): Promise<KubernetesObject>;
  list(namespace: string | undefined, labelSelector: string): Promise<KubernetesObject[]>;
  remove(namespace: string | undefined, name: string): Promise<unknown>;
}

function kindApi(api: Clients, kind: Kind): KindApi {
  const { core, rbac, apps, batch } = api;
  // `namespace!`: only the Namespace kind is cluster-scoped.
  switch (kind) {
    case 'Namespace':
      return {
        create: (_, body) => core.createNamespace({ body }),
        list: async (_, labelSelector) => (await core.listNamespace({ labelSelector })).items,
        remove: (_, name) => core.deleteNamespace({ name }),
      };
    case 'ServiceAccount':
      return {
        create: (namespace, body) => core.createNamespacedServiceAccount({ namespace: namespace!, body }),
        list: async (namespace, labelSelector) => (await core.listNamespacedServiceAccount({ namespace: namespace!, labelSelector })).items,
        remove: (namespace, name) => core.deleteNamespacedServiceAccount({ name, namespace: namespace! }),
      };
    case 'Role':
      return {
        create: (namespace, body) => rbac.createNamespacedRole({ namespace: namespace!, body: body as never }),
        list: async (namespace, labelSelector) => (await rbac.listNamespacedRole({ namespace: namespace!, labelSelector })).items,
        remove: (namespace, name) => rbac.deleteNamespacedRole({ name, namespace: namespace! }),
      };
    case 'RoleBinding':
      return {
        create: (namespace, body) => rbac.createNamespacedRoleBinding({ namespace: namespace!, body: body as never }),
        list: async (namespace, labelSelector) => (await rbac.listNamespacedRoleBinding({ namespace: namespace!, labelSelector })).items,
        remove: (namespace, name) => rbac.deleteNamespacedRoleBinding({ name, namespace: namespace! }),
      };
    case 'Service':
      return {
        create: (namespace, body) => core.createNamespacedService({ namespace: namespace!, body }),
        list: async (namespace, labelSelector) => (await core.listNamespacedService({ namespace: namespace!, labelSelector })).items,
        remove: (namespace, name) => core.deleteNamespacedService({ name, namespace: namespace! }),
      };
    case 'Deployment':
      return {
        create: (namespace, body) => apps.createNamespacedDeployment({ namespace: namespace!, body }),
        list: async (namespace, labelSelector) => (await apps.listNamespacedDeployment({ namespace: namespace!, labelSelector })).items,
        remove: (namespace, name) => apps.deleteNamespacedDeployment({ name, namespace: namespace! }),
      };
    case 'Job':
      return {
        create: (namespace, body) => batch.createNamespacedJob({ namespace: namespace!, body }),
        list: async (namespace, labelSelector) => (await batch.listNamespacedJob({ namespace: namespace!, labelSelector })).items,
        // Background: the Job's pods go with it (the API's default for Jobs orphans them).
        remove: (namespace, name) => batch.deleteNamespacedJob({ name, namespace: namespace!, propagationPolicy: 'Background' }),
      };
  }
}

function kindOf(object: KubernetesObject): Kind {
  const kind = CREATION_ORDER.find((k) => k === object.kind);
  if (kind === undefined) throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `a bench run creates no ${object.kind}`);
  return kind;
}

async function create(api: Clients, object: KubernetesObject): Promise<KubernetesObject> {
  const what = describe(object);
  try {
    return await kindApi(api, kindOf(object)).create(object.metadata!.namespace, object);
  } catch (error) {
    if (statusOf(error) === 409) {
      throw new PodpoolError(
        API_FAILED,
        `cannot create ${what}: it exists already, from another run still going or one not yet swept (its ${DEADLINE_ANNOTATION} annotation says until when); ` +
          'use another --namespace, or none (a run then creates its own)',
        { cause: error },
      );
    }
    throw apiError('create', what, error);
  }
}

function deletion(api: Clients, object: KubernetesObject): Created {
  const verbs = kindApi(api, kindOf(object));
  const { name, namespace } = object.metadata!;
  return { what: describe(object), remove: () => verbs.remove(namespace, name!) };
}

/**
 * Deletes in the reverse order of creation, each acknowledged before the next (not waiting for a
 * namespace to finish terminating); resolves with what could not be deleted, and says so.
 */
async function deleteAll(created: Created[]): Promise<string[]> {
  const left: string[] = [];
  const reversed = created.toReversed();
  for (const [index, object] of reversed.entries()) {
    progress(`deleting ${object.what}`, index / reversed.length);
    try {
      await object.remove();
    } catch (error) {
      if (statusOf(error) !== 404) left.push(`${object.what}: ${apiMessage(error)}`);
    }
  }
  if (left.length > 0) {
    note(`could not delete: ${left.join('; ')}. Delete them by hand, or a later run's sweep deletes them once their deadline passed`);
  }
  return left;
}

/** Waits until the Deployment has `pods` ready replicas, drawing them; says why pods are not starting. */
async function waitForBackend(api: Clients, namespace: string, runId: string, pods: number, signal: AbortSignal): Promise<void> {
  const started = Date.now();
  for (;;) {
    let ready = 0;
    try {
      const deployment = await api.apps.readNamespacedDeployment({ name: NAMES.deployment, namespace });
      ready = deployment.status?.readyReplicas ?? 0;
    } catch (error) {
      throw apiError('get', `Deployment ${namespace}/${NAMES.deployment}`, error);
    }
    if (ready >= pods) {
      progress(`backend pods ready ${ready}/${pods}`, 1);
      return;
    }
    const waiting = await waitingReasons(api, namespace, `${LABELS.run}=${runId},${LABELS.component}=backend`);
    const fatal = waiting.find((w) => FATAL_WAITING.has(w.split(': ')[1] ?? ''));
    if (fatal) throw new PodpoolError(ErrorCode.INVALID_OPTION, `a backend pod cannot start: ${fatal}`);
    progress(`backend pods ready ${ready}/${pods}${waiting.length > 0 ? ` (${waiting.slice(0, 2).join(', ')})` : ''}`, ready / pods);
    if (Date.now() - started > START_TIMEOUT_MS) {
      throw new PodpoolError(
        ErrorCode.TIMEOUT,
        `the backend pods were not ready after ${START_TIMEOUT_MS / 60_000} minutes (${ready}/${pods} ready${waiting.length > 0 ? `; ${waiting.join(', ')}` : ''})`,
      );
    }
    await delay(POLL_MS, undefined, { signal });
  }
}

/** Waiting reasons that never resolve on their own: the image or the pod spec is wrong. */
const FATAL_WAITING = new Set(['ErrImageNeverPull', 'InvalidImageName', 'CreateContainerConfigError']);

/** `pod: reason` of every container of the selected pods that is waiting for something. */
async function waitingReasons(api: Clients, namespace: string, labelSelector: string): Promise<string[]> {
  let pods: V1Pod[];
  try {
    pods = (await api.core.listNamespacedPod({ namespace, labelSelector })).items;
  } catch {
    // Only the progress line's detail: the wait goes on without it.
    return [];
  }
  return pods.flatMap((pod) =>
    (pod.status?.containerStatuses ?? []).flatMap((status) => {
      const reason = status.state?.waiting?.reason;
      return reason && reason !== 'ContainerCreating' ? [`${pod.metadata?.name}: ${reason}`] : [];
    }),
  );
}

/**
 * The client Job's pod once its container started (its log can be read): of this run, or with
 * no run id (`collect`) the newest of the namespace's bench client pods.
 */
async function waitForRunnerPod(api: Clients, namespace: string, runId: string | undefined, signal: AbortSignal | undefined): Promise<V1Pod> {
  const labelSelector = `${LABELS.managedBy}=${MANAGED_BY},${LABELS.component}=client${runId ? `,${LABELS.run}=${runId}` : ''}`;
  const started = Date.now();
  for (;;) {
    let pods: V1Pod[];
    try {
      pods = (await api.core.listNamespacedPod({ namespace, labelSelector })).items;
    } catch (error) {
      throw apiError('list', `the client Job's pods in namespace ${namespace}`, error);
    }
    const pod = pods.toSorted((a, b) => time(b.metadata?.creationTimestamp) - time(a.metadata?.creationTimestamp))[0];
    const phase = pod?.status?.phase;
    if (pod && (phase === 'Running' || phase === 'Succeeded' || phase === 'Failed')) return pod;
    const waiting = pod?.status?.containerStatuses?.find((s) => s.state?.waiting?.reason)?.state?.waiting?.reason;
    if (waiting && FATAL_WAITING.has(waiting)) throw new PodpoolError(ErrorCode.INVALID_OPTION, `the client Job's pod ${pod!.metadata?.name} cannot start: ${waiting}`);
    progress(`starting the client Job${pod ? ` (pod ${pod.metadata?.name}: ${waiting ?? phase ?? 'pending'})` : ''}`, 0);
    if (Date.now() - started > START_TIMEOUT_MS) {
      throw new PodpoolError(ErrorCode.TIMEOUT, `the client Job's pod did not start within ${START_TIMEOUT_MS / 60_000} minutes${pod ? ` (${pod.metadata?.name}: ${waiting ?? phase})` : ' (no pod yet)'}`);
    }
    await delay(POLL_MS, undefined, { signal });
  }
}

/**
 * Follows the runner's log until its `result` (resolves) or `error` (rejects), doing what it
 * asks. A log stream that ends while the pod still runs is followed again from the start: lines
 * already handled are skipped (by count) and requests already done (by id) are not done twice.
 * A pod that ends without a result rejects with its last lines.
 */
async function follow(kc: KubeConfig, api: Clients, namespace: string, pod: V1Pod, signal: AbortSignal | undefined): Promise<ScenarioOutput> {
  const name = pod.metadata!.name!;
  const runner = new RunnerLog(api, namespace);
  const log = new Log(kc);
  for (;;) {
    signal?.throwIfAborted();
    const stream = runner.stream();
    let controller: AbortController;
    try {
      controller = await log.log(namespace, name, CONTAINERS.client, stream.sink, { follow: true });
    } catch (error) {
      throw apiError('follow the log of', `Pod ${namespace}/${name}`, error);
    }
    const stop = (): void => controller.abort();
    // The signal may have fired while the log's request was on its way.
    if (signal?.aborted) stop();
    signal?.addEventListener('abort', stop, { once: true });
    try {
      const outcome = await Promise.race([stream.ended, runner.outcome]);
      if (outcome !== undefined) return outcome;
    } finally {
      signal?.removeEventListener('abort', stop);
      controller.abort();
    }
    signal?.throwIfAborted();
    // The result may wait on requests read before it.
    await runner.served();
    if (runner.settled) return runner.outcome;
    // The stream ended without a result: the pod ended, or the API server closed a long stream.
    let phase: string | undefined;
    try {
      phase = (await api.core.readNamespacedPod({ name, namespace })).status?.phase;
    } catch (error) {
      throw apiError('get', `Pod ${namespace}/${name}`, error);
    }
    if (phase === 'Succeeded' || phase === 'Failed') {
      const lines = runner.lastLines();
      throw new PodpoolError(
        ErrorCode.CONNECTION_LOST,
        `the client Job's pod ${name} ended (${phase}${await jobFailure(api, namespace)}) without a result` +
          (runner.lastError ? `: ${runner.lastError}` : '') +
          (lines.length > 0 ? `; its last lines:\n${lines.join('\n')}` : ' and wrote nothing'),
      );
    }
    await delay(POLL_MS, undefined, signal && { signal });
  }
}

/** Why the Job failed, when it says (`: DeadlineExceeded, Job was active longer than …`); else nothing. */
async function jobFailure(api: Clients, namespace: string): Promise<string> {
  try {
    const job = await api.batch.readNamespacedJob({ name: NAMES.job, namespace });
    const failed = job.status?.conditions?.find((c) => c.type === 'Failed' && c.status === 'True');
    return failed ? `: ${[failed.reason, failed.message].filter(Boolean).join(', ')}` : '';
  } catch {
    // Only a detail of the message being made.
    return '';
  }
}

/** The runner's log as it is read: its lines, what it asks, and its outcome. */
class RunnerLog {
  readonly #api: Clients;
  readonly #namespace: string;
  /** Complete lines handled over every stream so far: a new stream skips as many. */
  #handled = 0;
  readonly #servedIds = new Set<number>();
  #queue: Promise<void> = Promise.resolve();
  readonly #last: string[] = [];
  #lastError: string | undefined;
  readonly #outcome = Promise.withResolvers<ScenarioOutput>();
  #settled = false;

  constructor(api: Clients, namespace: string) {
    this.#api = api;
    this.#namespace = namespace;
    // Settled on the `result` or `error` line, or on a request that failed.
    this.#outcome.promise.then(
      () => (this.#settled = true),
      () => (this.#settled = true),
    );
  }

  /** Whether the outcome is known (the result, the runner's error, or a failed request). */
  get settled(): boolean {
    return this.#settled;
  }

  get outcome(): Promise<ScenarioOutput> {
    return this.#outcome.promise;
  }

  lastLines(): string[] {
    return [...this.#last];
  }

  /** The last line of the command's own error format (`podpool: …`), which a usage may push out of the last lines. */
  get lastError(): string | undefined {
    return this.#lastError;
  }

  /** Resolves once every request read so far was done (or failed). */
  async served(): Promise<void> {
    await this.#queue;
  }

  /** A sink for one log stream, and a promise that resolves (undefined) when that stream is over. */
  stream(): { sink: Writable; ended: Promise<undefined> } {
    const splitter = new LineSplitter();
    const decoder = new StringDecoder('utf8');
    let index = 0;
    const over = Promise.withResolvers<undefined>();
    const handle = (lines: string[]): void => {
      for (const line of lines) {
        if (index++ < this.#handled) continue;
        this.#handled++;
        this.#line(line);
      }
    };
    const sink = new Writable({
      write: (chunk: Buffer, _encoding, callback) => {
        handle(splitter.push(decoder.write(chunk)));
        callback();
      },
      final: (callback) => {
        handle(splitter.push(decoder.end()));
        // Every event ends with a newline: a line without one was cut (the stream will be
        // followed again and the line read whole), or is the last words of a crash.
        for (const cut of splitter.end()) this.#keep(cut);
        callback();
      },
    });
    // client-node's Log pipes the response into the sink and leaves the response's errors
    // unhandled (an abort, a connection broken off): handled here, where they end this stream.
    sink.on('pipe', (source: NodeJS.ReadableStream) => source.on('error', () => over.resolve(undefined)));
    // `unpipe` comes on a normal end and when the response broke off (the pipe then does not
    // end its destination); either way this stream is over.
    sink.on('unpipe', () => setImmediate(() => over.resolve(undefined)));
    sink.on('finish', () => over.resolve(undefined));
    sink.on('error', () => over.resolve(undefined));
    return { sink, ended: over.promise };
  }

  #line(line: string): void {
    let event: RunnerEvent | undefined;
    try {
      event = parseEvent(line);
    } catch (error) {
      this.#outcome.reject(error);
      return;
    }
    if (event === undefined) {
      this.#keep(line);
      return;
    }
    switch (event.event) {
      case 'hello':
        note(`runner started: ${event.scenario}, ${event.pods} pods ready (podpool ${event.version})`);
        break;
      case 'progress':
        progress(event.label, event.fraction);
        break;
      case 'note':
        note(event.message);
        break;
      case 'request':
        if (this.#servedIds.has(event.id)) break;
        this.#servedIds.add(event.id);
        this.#queue = this.#queue.then(() => this.#serve(event)).catch((error: unknown) => this.#outcome.reject(error));
        break;
      case 'result':
        // After the requests before it: their failure would make the result a wrong one.
        void this.#queue.then(() => this.#outcome.resolve({ report: event.report, ...(event.chart && { chart: event.chart }), table: event.table }));
        break;
      case 'error':
        this.#outcome.reject(new PodpoolError(isErrorCode(event.code) ? event.code : ErrorCode.INVALID_ARGUMENT, `the runner failed: ${event.message}`));
        break;
    }
  }

  #keep(line: string): void {
    if (line.startsWith('podpool: ')) this.#lastError = line;
    this.#last.push(line);
    if (this.#last.length > LAST_LINES) this.#last.shift();
  }

  async #serve(request: RunnerRequest): Promise<void> {
    const namespace = this.#namespace;
    const name = NAMES.deployment;
    switch (request.op) {
      case 'scale':
        try {
          await this.#api.apps.patchNamespacedDeploymentScale(
            { name, namespace, body: { spec: { replicas: request.replicas } } },
            setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
          );
        } catch (error) {
          throw apiError(`scale to ${request.replicas} replicas`, `Deployment ${namespace}/${name}`, error);
        }
        note(`scaled ${name} to ${request.replicas} pods, as the runner asked`);
        return;
      case 'restart':
        try {
          // What `kubectl rollout restart` does: a new template, so a new rollout.
          await this.#api.apps.patchNamespacedDeployment(
            { name, namespace, body: { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': rfc3339(new Date()) } } } } } },
            setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
          );
        } catch (error) {
          throw apiError('restart', `Deployment ${namespace}/${name}`, error);
        }
        note(`restarted ${name} (a rolling restart), as the runner asked`);
        return;
      case 'delete-pod':
        try {
          await this.#api.core.deleteNamespacedPod({ name: request.pod, namespace, gracePeriodSeconds: 0 });
        } catch (error) {
          // Gone already (the Deployment replaced it meanwhile): what was asked for.
          if (statusOf(error) !== 404) throw apiError('delete', `Pod ${namespace}/${request.pod}`, error);
        }
        note(`deleted pod ${request.pod} at once, as the runner asked`);
        return;
    }
  }
}

/**
 * Where it ran: the server's version, the node count and kube-proxy's mode, each with why when it
 * cannot be read (an identity allowed one namespace cannot list nodes or read kube-system).
 */
async function whereItRuns(api: Clients): Promise<Omit<ClusterInfo, 'podsPerNode' | 'namespace' | 'image'>> {
  let serverVersion: string;
  try {
    serverVersion = (await api.version.getCode()).gitVersion;
  } catch (error) {
    // Not fatal: the creates that follow say better what is wrong with the cluster, if anything.
    serverVersion = `unknown (cannot read /version: ${apiMessage(error)})`;
  }
  let nodes: number | string;
  try {
    nodes = (await api.core.listNode()).items.length;
  } catch (error) {
    nodes = `unknown (cannot list nodes: ${apiMessage(error)})`;
  }
  let kubeProxyMode: string;
  try {
    const config = (await api.core.readNamespacedConfigMap({ name: 'kube-proxy', namespace: 'kube-system' })).data?.['config.conf'];
    const mode = config === undefined ? undefined : /^mode:[ \t]*["']?([\w-]*)["']?[ \t]*(?:#.*)?$/m.exec(config)?.[1];
    // An empty mode is kube-proxy's default, iptables on Linux.
    kubeProxyMode = config === undefined ? 'unknown (ConfigMap kube-system/kube-proxy has no config.conf)' : mode ? mode : 'iptables';
  } catch (error) {
    kubeProxyMode =
      statusOf(error) === 404
        ? 'unknown (no ConfigMap kube-system/kube-proxy: a managed control plane, or a kube-proxy replacement)'
        : `unknown (cannot read ConfigMap kube-system/kube-proxy: ${apiMessage(error)})`;
  }
  return { serverVersion, nodes, kubeProxyMode };
}

async function podsPerNode(api: Clients, namespace: string, runId: string | undefined): Promise<Record<string, number>> {
  const labelSelector = `${LABELS.component}=backend${runId ? `,${LABELS.run}=${runId}` : `,${LABELS.managedBy}=${MANAGED_BY}`}`;
  const counts: Record<string, number> = {};
  try {
    for (const pod of (await api.core.listNamespacedPod({ namespace, labelSelector })).items) {
      const node = pod.spec?.nodeName ?? '(not scheduled)';
      counts[node] = (counts[node] ?? 0) + 1;
    }
  } catch (error) {
    throw apiError('list', `the backend pods in namespace ${namespace}`, error);
  }
  return counts;
}

/** The report says where it ran. */
function stamp(output: ScenarioOutput, cluster: ClusterInfo): void {
  const nodes = nodesText(cluster.nodes);
  const mode = cluster.kubeProxyMode.startsWith('unknown') ? 'kube-proxy mode unknown' : `kube-proxy ${cluster.kubeProxyMode}`;
  output.report.standIn = 'kubernetes';
  output.report.standInReason = `Kubernetes ${cluster.serverVersion}, ${nodes}, ${mode}`;
  output.report.cluster = cluster;
}

function nodesText(nodes: number | string): string {
  return typeof nodes === 'number' ? `${nodes} node${nodes === 1 ? '' : 's'}` : 'nodes unknown';
}

function describe(object: KubernetesObject): string {
  const ns = object.metadata?.namespace;
  return `${object.kind} ${ns ? `${ns}/` : ''}${object.metadata?.name}`;
}

function statusOf(error: unknown): number | undefined {
  return error instanceof ApiException ? error.code : undefined;
}

/**
 * The API server's own words (its Status's message), or the network failure's code: never the
 * ApiException's text, which carries the response's headers and whole body.
 */
function apiMessage(error: unknown): string {
  if (error instanceof ApiException) {
    const body = error.body as { message?: unknown } | string | undefined;
    const message = typeof body === 'object' && body !== null && typeof body.message === 'string' ? body.message : typeof body === 'string' ? body.slice(0, 200) : undefined;
    return `HTTP ${error.code}${message ? `: ${message}` : ''}`;
  }
  const cause = (error as { cause?: { code?: unknown } } | undefined)?.cause;
  const code = (error as { code?: unknown } | undefined)?.code ?? cause?.code;
  const message = error instanceof Error ? error.message : String(error);
  return typeof code === 'string' ? `${code}: ${message}` : message;
}

function apiError(verb: string, what: string, error: unknown): PodpoolError {
  if (error instanceof PodpoolError) return error;
  const status = statusOf(error);
  const hint =
    status === 403
      ? ' (this identity lacks the RBAC permission; the README section "Run it on your cluster" lists what a run needs)'
      : status === 401
        ? ' (the API server refused the kubeconfig\'s credentials)'
        : '';
  return new PodpoolError(API_FAILED, `cannot ${verb} ${what}: ${apiMessage(error)}${hint}`, { cause: error });
}

const ERROR_CODES = new Set<string>(Object.values(ErrorCode));
function isErrorCode(code: string | undefined): code is ErrorCode {
  return code !== undefined && ERROR_CODES.has(code);
}

function exitCodeOf(signal: NodeJS.Signals): number {
  return signal === 'SIGTERM' ? 143 : 130;
}

function time(stamp: Date | string | undefined): number {
  return stamp === undefined ? 0 : new Date(stamp).getTime();
}

