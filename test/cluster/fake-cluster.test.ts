/**
 * The fake cluster that `podpool bench --cluster` is tested against, through the real
 * @kubernetes/client-node clients: its REST and RBAC, and its control plane running `podpool pod`
 * as real processes on loopback (Deployment, rolling update, scale, pod deletion, EndpointSlices,
 * kube-proxy on a ClusterIP, cluster DNS, Jobs, logs, namespace deletion).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { Resolver } from 'node:dns/promises';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import {
  ApiException,
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  DiscoveryV1Api,
  KubeConfig,
  Log,
  PatchStrategy,
  RbacAuthorizationV1Api,
  Watch,
  setHeaderOptions,
  type V1Deployment,
  type V1EndpointSlice,
  type V1Job,
} from '@kubernetes/client-node';
import { ADMIN_USER } from '../../testkit/fake-apiserver.ts';
import { FakeCluster, type KubeObject, type PodEvent } from '../../testkit/fake-cluster.ts';

const NS = 'bench-a';
const VERSION = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version as string;
const SELECTOR = { 'app.kubernetes.io/component': 'backend' };
const SLICE_LABEL = 'kubernetes.io/service-name=backend-headless';

function deployment(replicas: number): V1Deployment {
  return {
    metadata: { name: 'backend', labels: { 'app.kubernetes.io/managed-by': 'podpool-bench' } },
    spec: {
      replicas,
      selector: { matchLabels: SELECTOR },
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: {
        metadata: { labels: SELECTOR },
        spec: {
          automountServiceAccountToken: false,
          terminationGracePeriodSeconds: 15,
          containers: [
            {
              name: 'pod',
              image: 'podpool:test',
              args: ['pod', '--concurrency', '4', '--service-ms', '1', '--pre-stop-ms', '0', '--grace-ms', '2000'],
              env: [
                { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
              ],
              ports: [
                { name: 'http', containerPort: 8080 },
                { name: 'control', containerPort: 9901 },
              ],
              readinessProbe: { httpGet: { path: '/ready', port: 9901 }, periodSeconds: 1, failureThreshold: 1 },
            },
          ],
        },
      },
    },
  };
}

function job(name: string, args: string[], serviceAccountName = 'default'): V1Job {
  return {
    metadata: { name },
    spec: {
      backoffLimit: 0,
      template: { spec: { serviceAccountName, restartPolicy: 'Never', containers: [{ name: 'client', image: 'podpool:test', args }] } },
    },
  };
}

/** GET / over a new connection (no keep-alive): the body, which `podpool pod` makes its name. */
function get(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path: '/', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve(body));
    });
    req.once('error', reject);
    req.end();
  });
}

async function status(promise: Promise<unknown>): Promise<{ code: number; body: { reason?: string; message?: string } }> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ApiException, `expected an ApiException, got ${error}`);
    return { code: error.code, body: typeof error.body === 'string' ? JSON.parse(error.body) : error.body };
  }
  assert.fail('the request succeeded');
}

const readyPods = (cluster: FakeCluster, namespace: string) =>
  cluster
    .objects()
    .filter((o) => o.kind === 'Pod' && o.metadata.namespace === namespace && o.metadata.deletionTimestamp === undefined)
    .filter((o) => o.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True'));

const podsOf = (cluster: FakeCluster, namespace: string) => cluster.objects().filter((o) => o.kind === 'Pod' && o.metadata.namespace === namespace);

/** The deployment has `replicas` ready pods, all of the current template, and nothing else left. */
function rolledOut(cluster: FakeCluster, replicas: number): KubeObject[] | undefined {
  const d = cluster.get('Deployment', NS, 'backend');
  const pods = podsOf(cluster, NS).filter((p) => p.metadata.labels?.['app.kubernetes.io/component'] === 'backend');
  const ready = readyPods(cluster, NS);
  const s = d?.status ?? {};
  const done =
    s.observedGeneration === d?.metadata.generation && s.replicas === replicas && s.readyReplicas === replicas && s.updatedReplicas === replicas && pods.length === replicas && ready.length === replicas;
  return done ? ready : undefined;
}

function readyIn(slice: V1EndpointSlice | undefined): string[] {
  return (slice?.endpoints ?? []).filter((e) => e.conditions?.ready === true).map((e) => e.addresses[0]).sort();
}

describe('FakeCluster', { timeout: 120_000 }, () => {
  let cluster: FakeCluster;
  let admin: KubeConfig;
  let sa: KubeConfig;
  let core: CoreV1Api;
  let apps: AppsV1Api;
  let batch: BatchV1Api;

  before(async () => {
    cluster = await FakeCluster.start({ nodes: 2 });
    admin = new KubeConfig();
    admin.loadFromFile(cluster.kubeconfigPath);
    core = admin.makeApiClient(CoreV1Api);
    apps = admin.makeApiClient(AppsV1Api);
    batch = admin.makeApiClient(BatchV1Api);
    const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
    await core.createNamespace({ body: { metadata: { name: NS } } });
    await core.createNamespacedServiceAccount({ namespace: NS, body: { metadata: { name: 'client' }, automountServiceAccountToken: true } });
    await rbac.createNamespacedRole({
      namespace: NS,
      body: { metadata: { name: 'client' }, rules: [{ apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] }] },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: NS,
      body: {
        metadata: { name: 'client' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'client' },
        subjects: [{ kind: 'ServiceAccount', name: 'client', namespace: NS }],
      },
    });
    await apps.createNamespacedDeployment({ namespace: NS, body: deployment(2) });
    const ports = [{ name: 'http', port: 8080, targetPort: 8080 }];
    await core.createNamespacedService({ namespace: NS, body: { metadata: { name: 'backend-headless' }, spec: { clusterIP: 'None', selector: SELECTOR, ports } } });
    await core.createNamespacedService({ namespace: NS, body: { metadata: { name: 'backend' }, spec: { type: 'ClusterIP', selector: SELECTOR, ports } } });
    sa = cluster.api.kubeConfig({ token: cluster.tokenOf(NS, 'client')! });
    await cluster.waitFor((c) => rolledOut(c, 2));
  });

  after(async () => {
    await cluster?.close();
    assert.deepEqual(cluster.errors, []);
  });

  test('create: 201 with uid, resourceVersion, creationTimestamp, generation; 409 AlreadyExists; 404 NotFound as Status objects', async () => {
    const d = await apps.readNamespacedDeployment({ name: 'backend', namespace: NS });
    assert.match(d.metadata?.uid ?? '', /^[0-9a-f-]{36}$/);
    assert.match(d.metadata?.resourceVersion ?? '', /^\d+$/);
    assert.ok(d.metadata?.creationTimestamp instanceof Date);
    assert.equal(d.metadata?.generation, 1);
    const exists = await status(apps.createNamespacedDeployment({ namespace: NS, body: deployment(1) }));
    assert.equal(exists.code, 409);
    assert.equal(exists.body.reason, 'AlreadyExists');
    assert.equal(exists.body.message, 'deployments.apps "backend" already exists');
    const missing = await status(core.readNamespacedConfigMap({ name: 'nope', namespace: NS }));
    assert.equal(missing.code, 404);
    assert.equal(missing.body.reason, 'NotFound');
    const noNamespace = await status(core.createNamespacedServiceAccount({ namespace: 'no-such-ns', body: { metadata: { name: 'x' } } }));
    assert.equal(noNamespace.code, 404);
    // The image's ENTRYPOINT is podpool: a command would run something the fake can't.
    const withCommand = deployment(1);
    withCommand.metadata!.name = 'with-command';
    withCommand.spec!.template.spec!.containers[0].command = ['sh'];
    assert.equal((await status(apps.createNamespacedDeployment({ namespace: NS, body: withCommand }))).code, 422);
  });

  test('patch: json-patch, strategic-merge and merge patches change metadata without a new generation; an unknown type is 415', async () => {
    const patch = (body: unknown, type: string) =>
      apps.patchNamespacedDeployment({ name: 'backend', namespace: NS, body }, setHeaderOptions('Content-Type', type));
    const json = await patch([{ op: 'add', path: '/metadata/annotations', value: { 'example.com/a': '1' } }], PatchStrategy.JsonPatch);
    assert.equal(json.metadata?.annotations?.['example.com/a'], '1');
    const strategic = await patch({ metadata: { annotations: { 'example.com/b': '2' } } }, PatchStrategy.StrategicMergePatch);
    assert.deepEqual({ ...strategic.metadata?.annotations }, { 'example.com/a': '1', 'example.com/b': '2' });
    const merged = await patch({ metadata: { annotations: { 'example.com/a': null } } }, PatchStrategy.MergePatch);
    assert.deepEqual({ ...merged.metadata?.annotations }, { 'example.com/b': '2' });
    assert.equal(merged.metadata?.generation, 1, 'metadata is not the spec');
    assert.ok(Number(merged.metadata?.resourceVersion) > Number(json.metadata?.resourceVersion));
    const failedTest = await status(patch([{ op: 'test', path: '/spec/replicas', value: 7 }], PatchStrategy.JsonPatch));
    assert.equal(failedTest.code, 422);
    assert.equal((await status(patch({}, 'application/apply-patch+yaml'))).code, 415);
  });

  test('where it runs: /version, the nodes, the kube-proxy ConfigMap', async () => {
    const { VersionApi } = await import('@kubernetes/client-node');
    assert.equal((await admin.makeApiClient(VersionApi).getCode()).gitVersion, 'v1.31.0-fake');
    assert.equal((await core.listNode()).items.length, 2);
    const config = await core.readNamespacedConfigMap({ name: 'kube-proxy', namespace: 'kube-system' });
    assert.match(config.data?.['config.conf'] ?? '', /^mode: iptables$/m);
    const pods = (await core.listNamespacedPod({ namespace: NS, labelSelector: 'app.kubernetes.io/component=backend' })).items;
    assert.deepEqual(new Set(pods.map((p) => p.spec?.nodeName)), new Set(['fake-node-1', 'fake-node-2']));
  });

  test('the pods serve real HTTP at their IPs; the SA lists their slice ready; the ClusterIP reaches them; DNS answers', async () => {
    const pods = (await core.listNamespacedPod({ namespace: NS, labelSelector: 'app.kubernetes.io/component=backend' })).items;
    assert.equal(pods.length, 2);
    for (const pod of pods) {
      assert.match(pod.metadata!.name!, /^backend-[a-z0-9]{10}-[a-z0-9]{5}$/);
      assert.match(pod.status!.podIP!, /^127\.253\.\d+\.\d+$/);
      assert.equal(pod.status?.phase, 'Running');
      // POD_NAME and POD_IP reached the process: it listens on its IP and answers with its name.
      assert.equal(await get(pod.status!.podIP!, 8080), pod.metadata!.name);
    }
    const ips = pods.map((p) => p.status!.podIP!).sort();

    const slices = await sa.makeApiClient(DiscoveryV1Api).listNamespacedEndpointSlice({ namespace: NS, labelSelector: SLICE_LABEL });
    assert.equal(slices.items.length, 1);
    assert.deepEqual(readyIn(slices.items[0]), ips);
    assert.deepEqual(slices.items[0].ports?.map((p) => ({ ...p })), [{ name: 'http', port: 8080, protocol: 'TCP' }]);
    assert.deepEqual(new Set(slices.items[0].endpoints?.map((e) => e.targetRef?.name)), new Set(pods.map((p) => p.metadata!.name)));

    const service = await core.readNamespacedService({ name: 'backend', namespace: NS });
    const clusterIp = service.spec!.clusterIP!;
    assert.match(clusterIp, /^127\.254\.\d+\.\d+$/);
    // kube-proxy picks a pod per connection: enough connections reach both (a 2^-39 chance not to).
    const seen = new Set<string>();
    for (let i = 0; i < 40 && seen.size < 2; i++) seen.add(await get(clusterIp, 8080));
    assert.deepEqual(seen, new Set(pods.map((p) => p.metadata!.name)));

    const resolver = new Resolver();
    resolver.setServers([cluster.dns.address]);
    assert.deepEqual((await resolver.resolve4(`backend-headless.${NS}.svc.cluster.local`)).sort(), ips);
    assert.deepEqual(await resolver.resolve4(`backend.${NS}.svc.cluster.local`), [clusterIp]);
  });

  test('a pod with the SA token runs with KUBECONFIG of that token, and the fake DNS: podpool endpoints lists the pods through both', async () => {
    const ips = readyPods(cluster, NS).map((p) => p.status.podIP).sort();
    const common = ['--port', 'http', '--allow-addresses', 'loopback', '--json', '--timeout', '20'];
    await batch.createNamespacedJob({ namespace: NS, body: job('slices', ['endpoints', '--kubernetes', 'backend-headless', '--namespace', NS, ...common], 'client') });
    await batch.createNamespacedJob({
      namespace: NS,
      body: job('dns', ['endpoints', '--dns', `backend-headless.${NS}.svc.cluster.local`, '--server', '$(PODPOOL_BENCH_DNS_SERVER)', '--port', '8080', '--allow-addresses', 'loopback', '--json', '--timeout', '20']),
    });
    for (const name of ['slices', 'dns']) {
      const done = await cluster.waitFor((c) => c.get('Job', NS, name)?.status?.conditions?.[0]);
      const pod = podsOf(cluster, NS).find((p) => p.metadata.labels?.['job-name'] === name)!;
      const log = await core.readNamespacedPodLog({ name: pod.metadata.name, namespace: NS, container: 'client' });
      assert.equal(done.type, 'Complete', `${name}: ${log}`);
      const listed = (JSON.parse(log.trim().split('\n')[0]) as { address: string }[]).map((e) => e.address).sort();
      assert.deepEqual(listed, ips);
    }
    // The same program under the namespace's default ServiceAccount: no Role, so the list is refused.
    await batch.createNamespacedJob({ namespace: NS, body: job('refused', ['endpoints', '--kubernetes', 'backend-headless', '--namespace', NS, ...common.slice(0, -2), '--timeout', '3']) });
    const refused = await cluster.waitFor((c) => c.get('Job', NS, 'refused')?.status?.conditions?.[0]);
    assert.equal(refused.type, 'Failed');
    const forbidden = cluster.api.requests.filter((r) => r.status === 403 && r.token === cluster.tokenOf(NS, 'default'));
    assert.ok(forbidden.length > 0, 'the default ServiceAccount asked and was refused');
    for (const name of ['slices', 'dns', 'refused']) await batch.deleteNamespacedJob({ name, namespace: NS, propagationPolicy: 'Background' });
    await cluster.waitFor((c) => podsOf(c, NS).every((p) => p.metadata.labels?.['job-name'] === undefined));
  });

  test('the SA token: endpointslices get/list/watch only; pods, deployments, secrets and other namespaces are 403 with Kubernetes wording', async () => {
    const discovery = sa.makeApiClient(DiscoveryV1Api);
    const all = await discovery.listNamespacedEndpointSlice({ namespace: NS });
    assert.deepEqual(all.items.map((s) => s.metadata?.labels?.['kubernetes.io/service-name']).sort(), ['backend', 'backend-headless']);
    const pod = readyPods(cluster, NS)[0].metadata.name;
    const user = `system:serviceaccount:${NS}:client`;
    const getPod = await status(sa.makeApiClient(CoreV1Api).readNamespacedPod({ name: pod, namespace: NS }));
    assert.equal(getPod.code, 403);
    assert.equal(getPod.body.reason, 'Forbidden');
    assert.equal(getPod.body.message, `pods "${pod}" is forbidden: User "${user}" cannot get resource "pods" in API group "" in the namespace "${NS}"`);
    const create = await status(sa.makeApiClient(AppsV1Api).createNamespacedDeployment({ namespace: NS, body: deployment(1) }));
    assert.equal(create.code, 403);
    assert.equal(create.body.message, `deployments.apps is forbidden: User "${user}" cannot create resource "deployments" in API group "apps" in the namespace "${NS}"`);
    assert.equal((await status(sa.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: NS }))).code, 403);
    const scale = await status(sa.makeApiClient(AppsV1Api).readNamespacedDeploymentScale({ name: 'backend', namespace: NS }));
    assert.match(scale.body.message ?? '', /cannot get resource "deployments\/scale"/);
    const elsewhere = await status(discovery.listNamespacedEndpointSlice({ namespace: 'default' }));
    assert.equal(elsewhere.code, 403);
    assert.match(elsewhere.body.message ?? '', /cannot list resource "endpointslices" in API group "discovery.k8s.io" in the namespace "default"/);
    assert.equal((await status(discovery.listEndpointSliceForAllNamespaces())).code, 403);
    // A token nobody issued is no user at all.
    assert.equal((await status(cluster.api.kubeConfig({ token: 'made-up' }).makeApiClient(CoreV1Api).listNamespace())).code, 401);
  });

  test('a follow=true log streams lines as the process writes them and ends when it exits', async () => {
    const pod = readyPods(cluster, NS)[0];
    const exited = new Promise<boolean>((resolve) => cluster.on('pod-exited', (e) => e.name === pod.metadata.name && resolve(true)));
    let hasExited = false;
    void exited.then(() => (hasExited = true));
    const sink = new PassThrough();
    sink.setEncoding('utf8');
    let text = '';
    const firstLine = new Promise<void>((resolve) =>
      sink.on('data', (chunk: string) => {
        text += chunk;
        if (text.includes('\n')) resolve();
      }),
    );
    const ended = once(sink, 'end');
    await new Log(admin).log(NS, pod.metadata.name, 'pod', sink, { follow: true });
    await firstLine;
    assert.match(text, new RegExp(`^podpool pod ${pod.metadata.name} ready on ${pod.status.podIP.replaceAll('.', '\\.')}`));
    assert.equal(hasExited, false, 'the first line came while the process still ran');
    await core.deleteNamespacedPod({ name: pod.metadata.name, namespace: NS });
    await ended;
    assert.equal(hasExited, true, 'the stream ended after the process exited');
    // What it wrote on SIGTERM came through the same stream.
    assert.match(text.split('\n')[1] ?? '', /not ready; serving 0 ms more/);
    await cluster.waitFor((c) => rolledOut(c, 2));
  });

  test('rolling restart (restartedAt patch): every pod replaced, never fewer than 2 ready endpoints on the slice watch', async () => {
    const before = new Set(readyPods(cluster, NS).map((p) => p.metadata.name));
    const counts: number[] = [];
    let seen = 0;
    let caughtUp: { rv: number; resolve: () => void } | undefined;
    const watching = new Promise<void>((resolve) => {
      void new Watch(sa).watch(`/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`, { labelSelector: SLICE_LABEL }, (_type, slice: V1EndpointSlice) => {
        counts.push(readyIn(slice).length);
        seen = Number(slice.metadata?.resourceVersion);
        if (caughtUp !== undefined && seen >= caughtUp.rv) caughtUp.resolve();
        resolve();
      }, () => {}).then((controller) => after(() => controller.abort()));
    });
    await watching;
    const generation = cluster.get('Deployment', NS, 'backend')!.metadata.generation!;
    await apps.patchNamespacedDeployment(
      { name: 'backend', namespace: NS, body: { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': new Date().toISOString() } } } } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    const after_ = await cluster.waitFor((c) => {
      const pods = rolledOut(c, 2);
      return pods !== undefined && pods.every((p) => !before.has(p.metadata.name)) ? pods : undefined;
    });
    assert.equal(cluster.get('Deployment', NS, 'backend')!.metadata.generation, generation + 1);
    assert.equal(after_.length, 2);
    // The watch saw every version of the slice up to the last (a new pod ready, an old one out…).
    const last = Number(cluster.api.slices().find((s) => s.metadata.labels?.['kubernetes.io/service-name'] === 'backend-headless')!.metadata.resourceVersion);
    if (seen < last) await new Promise<void>((resolve) => (caughtUp = { rv: last, resolve }));
    assert.ok(counts.includes(3), `a surge pod was ready beside the old ones: ${counts}`);
    assert.ok(Math.min(...counts) >= 2, `ready endpoints during the rollout: ${counts}`);
  });

  test('scale to 3 through the scale subresource: 3 ready endpoints; then back to 2: the newest goes', async () => {
    // A pod watch from the list's resourceVersion sees the new pod come and run.
    const listed = await core.listNamespacedPod({ namespace: NS, labelSelector: 'app.kubernetes.io/component=backend' });
    const events: string[] = [];
    let running: (name: string) => void = () => {};
    const runningSeen = new Promise<string>((resolve) => (running = resolve));
    const controller = await new Watch(admin).watch(
      `/api/v1/namespaces/${NS}/pods`,
      { labelSelector: 'app.kubernetes.io/component=backend', resourceVersion: listed.metadata!.resourceVersion },
      (type, pod: { metadata: { name: string }; status?: { phase?: string } }) => {
        events.push(`${type} ${pod.metadata.name} ${pod.status?.phase ?? '-'}`);
        if (type === 'MODIFIED' && pod.status?.phase === 'Running') running(pod.metadata.name);
      },
      () => {},
    );
    after(() => controller.abort());
    const scale = await apps.replaceNamespacedDeploymentScale({ name: 'backend', namespace: NS, body: { metadata: { name: 'backend', namespace: NS }, spec: { replicas: 3 } } });
    assert.equal(scale.spec?.replicas, 3);
    await cluster.waitFor((c) => rolledOut(c, 3));
    const slices = await sa.makeApiClient(DiscoveryV1Api).listNamespacedEndpointSlice({ namespace: NS, labelSelector: SLICE_LABEL });
    assert.equal(readyIn(slices.items[0]).length, 3);
    assert.equal((await apps.readNamespacedDeploymentScale({ name: 'backend', namespace: NS })).status?.replicas, 3);
    const added = readyPods(cluster, NS).find((p) => !listed.items.some((l) => l.metadata?.name === p.metadata.name))!;
    assert.equal(await runningSeen, added.metadata.name);
    assert.equal(events.find((e) => e.includes(added.metadata.name)), `ADDED ${added.metadata.name} -`);
    controller.abort();

    const newest = readyPods(cluster, NS).sort((a, b) => Number(b.metadata.resourceVersion) - Number(a.metadata.resourceVersion));
    const created = cluster.created.filter((r) => r.kind === 'Pod' && r.namespace === NS).map((r) => r.name);
    const last = created.filter((n) => newest.some((p) => p.metadata.name === n)).at(-1)!;
    await apps.patchNamespacedDeploymentScale({ name: 'backend', namespace: NS, body: { spec: { replicas: 2 } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    const left = await cluster.waitFor((c) => rolledOut(c, 2));
    assert.ok(!left.some((p) => p.metadata.name === last), `the newest pod ${last} went`);
  });

  test('a pod that fails its readiness probe leaves the ready endpoints, kube-proxy and DNS; deleted with grace 0: SIGKILL at once, replaced', async () => {
    const [victim, survivor] = readyPods(cluster, NS);
    // Killed through its control endpoint: it stops serving, /ready answers 503, the process stays.
    await new Promise<void>((resolve, reject) =>
      request({ host: victim.status.podIP, port: 9901, path: '/kill', method: 'POST', agent: false }, (res) => res.resume().once('end', resolve)).once('error', reject).end(),
    );
    const headless = (c: FakeCluster) => c.api.slices().find((s) => s.metadata.labels?.['kubernetes.io/service-name'] === 'backend-headless') as V1EndpointSlice;
    await cluster.waitFor((c) => !readyIn(headless(c)).includes(victim.status.podIP));
    const entry = headless(cluster).endpoints?.find((e) => e.addresses[0] === victim.status.podIP);
    assert.deepEqual({ ...entry?.conditions }, { ready: false, serving: false, terminating: false });
    // Every new connection to the ClusterIP goes to the ready pod: one to the dead one would fail.
    const clusterIp = (await core.readNamespacedService({ name: 'backend', namespace: NS })).spec!.clusterIP!;
    for (let i = 0; i < 20; i++) assert.equal(await get(clusterIp, 8080), survivor.metadata.name);
    const resolver = new Resolver();
    resolver.setServers([cluster.dns.address]);
    assert.deepEqual(await resolver.resolve4(`backend-headless.${NS}.svc.cluster.local`), [survivor.status.podIP]);

    const killed = new Promise<Record<string, unknown>>((resolve) => cluster.on('pod-exited', (e) => e.name === victim.metadata.name && resolve(e.detail)));
    await core.deleteNamespacedPod({ name: victim.metadata.name, namespace: NS, gracePeriodSeconds: 0 });
    assert.equal((await killed).signal, 'SIGKILL');
    const pods = await cluster.waitFor((c) => {
      const ready = rolledOut(c, 2);
      return ready?.every((p) => p.metadata.name !== victim.metadata.name) ? ready : undefined;
    });
    assert.equal(pods.length, 2);
    assert.equal(cluster.deleted.find((r) => r.name === victim.metadata.name)?.by, ADMIN_USER);
    assert.ok(!headless(cluster).endpoints?.some((e) => e.targetRef?.name === victim.metadata.name), 'gone from the slice');
  });

  test('a pod terminating on a long grace period is cut short by a delete with grace 0', async () => {
    const body = job('slow-stop', ['pod', '--protocols', 'http', '--pre-stop-ms', '600000']);
    body.spec!.template.spec!.containers[0].env = [{ name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } }];
    const started = new Promise<PodEvent>((resolve) => cluster.on('job-started', (e) => e.name === 'slow-stop' && resolve(e)));
    await batch.createNamespacedJob({ namespace: NS, body });
    const pod = (await started).pod.metadata.name;
    const sink = new PassThrough().setEncoding('utf8');
    let text = '';
    const lines = (n: number) => new Promise<void>((resolve) => sink.on('data', (chunk: string) => (text += chunk).split('\n').length > n && resolve()));
    const ready = lines(1);
    await new Log(admin).log(NS, pod, 'client', sink, { follow: true });
    await ready;
    const exited = new Promise<PodEvent>((resolve) => cluster.on('pod-exited', (e) => e.name === pod && resolve(e)));
    const terminating = lines(2);
    await core.deleteNamespacedPod({ name: pod, namespace: NS, gracePeriodSeconds: 600 });
    await terminating;
    assert.match(text.split('\n')[1], /not ready; serving 600000 ms more/, 'it heard SIGTERM and keeps serving for its pre-stop time');
    const again = await core.deleteNamespacedPod({ name: pod, namespace: NS, gracePeriodSeconds: 0 });
    assert.ok(again.metadata?.deletionTimestamp !== undefined || again.kind === 'Status');
    assert.equal((await exited).detail.signal, 'SIGKILL');
    await batch.deleteNamespacedJob({ name: 'slow-stop', namespace: NS, propagationPolicy: 'Background' });
  });

  test('a Job runs its pod to Succeeded: the log holds what it wrote, the Job is Complete; a failing one is Failed', async () => {
    const started = new Promise((resolve) => cluster.once('job-started', resolve));
    await batch.createNamespacedJob({ namespace: NS, body: job('version', ['--version']) });
    await started;
    const done = await cluster.waitFor((c) => c.get('Job', NS, 'version')?.status?.conditions?.[0]);
    assert.equal(done.type, 'Complete');
    const read = await batch.readNamespacedJob({ name: 'version', namespace: NS });
    assert.equal(read.status?.succeeded, 1);
    const pods = (await core.listNamespacedPod({ namespace: NS, labelSelector: 'job-name=version' })).items;
    assert.equal(pods.length, 1);
    assert.match(pods[0].metadata!.name!, /^version-[a-z0-9]{5}$/);
    assert.equal(pods[0].metadata?.labels?.['batch.kubernetes.io/job-name'], 'version');
    assert.equal(pods[0].status?.phase, 'Succeeded');
    assert.equal(await core.readNamespacedPodLog({ name: pods[0].metadata!.name!, namespace: NS, container: 'client' }), `${VERSION}\n`);

    await batch.createNamespacedJob({ namespace: NS, body: job('broken', ['no-such-command']) });
    const failed = await cluster.waitFor((c) => c.get('Job', NS, 'broken')?.status?.conditions?.[0]);
    assert.equal(failed.type, 'Failed');
    assert.equal(failed.reason, 'BackoffLimitExceeded');
    // batch/v1 orphans a Job's pods unless told otherwise; Background takes them along.
    await batch.deleteNamespacedJob({ name: 'broken', namespace: NS, propagationPolicy: 'Background' });
    await batch.deleteNamespacedJob({ name: 'version', namespace: NS });
    await cluster.waitFor((c) => !podsOf(c, NS).some((p) => p.metadata.labels?.['job-name'] === 'broken'));
    // The garbage collector deleted that pod, not the user who deleted the Job.
    assert.deepEqual(
      cluster.deleted.filter((r) => r.labels['job-name'] === 'broken').map((r) => `${r.kind} by ${r.by}`),
      [`Job by ${ADMIN_USER}`, 'Pod by system:controller'],
    );
    assert.equal(podsOf(cluster, NS).filter((p) => p.metadata.labels?.['job-name'] === 'version').length, 1, 'the orphaned pod stays');
  });

  test('a Job past its activeDeadlineSeconds is Failed (DeadlineExceeded) and its pod stopped', async () => {
    const body = job('forever', ['endpoints', '--kubernetes', 'backend-headless', '--namespace', NS, '--port', 'http', '--allow-addresses', 'loopback', '--watch'], 'client');
    body.spec!.activeDeadlineSeconds = 1;
    const started = new Promise((resolve) => cluster.on('job-started', (e) => e.name === 'forever' && resolve(e)));
    await batch.createNamespacedJob({ namespace: NS, body });
    await started;
    const failed = await cluster.waitFor((c) => c.get('Job', NS, 'forever')?.status?.conditions?.[0]);
    assert.equal(failed.reason, 'DeadlineExceeded');
    await cluster.waitFor((c) => !podsOf(c, NS).some((p) => p.metadata.labels?.['job-name'] === 'forever' && p.status?.phase === 'Running'));
    await batch.deleteNamespacedJob({ name: 'forever', namespace: NS, propagationPolicy: 'Background' });
  });

  test('namespace delete: every object and process in it gone; the records say who created and deleted what', async () => {
    const exits: number[] = [];
    cluster.on('pod-exited', (e) => e.namespace === NS && exits.push(e.detail.pid as number));
    const started = cluster.created.filter((r) => r.kind === 'Pod' && r.namespace === NS).length;
    const live = podsOf(cluster, NS).filter((p) => p.status?.phase === 'Running').length;
    await core.deleteNamespace({ name: NS });
    const terminating = await status(core.createNamespacedServiceAccount({ namespace: NS, body: { metadata: { name: 'late' } } }));
    assert.equal(terminating.code, 403);
    await cluster.waitFor((c) => c.get('Namespace', undefined, NS) === undefined);
    assert.deepEqual(cluster.objects().filter((o) => o.metadata.namespace === NS), []);
    assert.equal(exits.length, live, 'every running process of the namespace exited');
    assert.equal(cluster.api.slices().filter((s) => s.metadata.namespace === NS).length, 0);
    assert.equal((await status(core.readNamespace({ name: NS }))).code, 404);
    const resolver = new Resolver();
    resolver.setServers([cluster.dns.address]);
    await assert.rejects(resolver.resolve4(`backend-headless.${NS}.svc.cluster.local`), { code: 'ENOTFOUND' });
    assert.ok(started > 0);
    const byAdmin = cluster.created.filter((r) => r.namespace === NS && r.by !== 'system:controller').map((r) => `${r.kind}/${r.name}`);
    assert.ok(byAdmin.includes('Deployment/backend') && !byAdmin.some((n) => n.startsWith('Pod/')), byAdmin.join(' '));
    const createdHere = new Set(cluster.created.filter((r) => r.namespace === NS).map((r) => `${r.kind}/${r.name}`));
    const deletedHere = new Set(cluster.deleted.filter((r) => r.namespace === NS).map((r) => `${r.kind}/${r.name}`));
    assert.deepEqual(deletedHere, createdHere);
    assert.equal(cluster.deleted.find((r) => r.kind === 'Namespace' && r.name === NS)?.by, ADMIN_USER);
    assert.deepEqual(new Set(cluster.deleted.filter((r) => r.namespace === NS && r.kind === 'Deployment').map((r) => r.by)), new Set(['system:controller']), 'the namespace controller deleted its contents');
  });
});

describe('FakeCluster.close', () => {
  test('kills every process mid-run, ends log streams and watches, frees its addresses and temp files, leaves no handle', async () => {
    const kinds = () => process.getActiveResourcesInfo().filter((k) => k === 'ProcessWrap' || k === 'UDPWrap' || k === 'Timeout' || k === 'TCPServerWrap');
    const before = kinds();
    const cluster = await FakeCluster.start({ kubeProxyMode: null });
    const admin = new KubeConfig();
    admin.loadFromFile(cluster.kubeconfigPath);
    const core = admin.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: NS } } });
    const started = new Promise<number>((resolve) => cluster.once('pod-started', (e) => resolve(e.detail.pid as number)));
    await admin.makeApiClient(AppsV1Api).createNamespacedDeployment({ namespace: NS, body: deployment(1) });
    const service = await core.createNamespacedService({
      namespace: NS,
      body: { metadata: { name: 'backend' }, spec: { selector: SELECTOR, ports: [{ name: 'http', port: 8080 }] } },
    });
    const [pod] = await cluster.waitFor((c) => (readyPods(c, NS).length === 1 ? readyPods(c, NS) : undefined));
    const pid = await started;
    assert.equal(await get(service.spec!.clusterIP!, 8080), pod.metadata.name);
    // No kube-proxy ConfigMap when told so (the report then says the mode is unknown).
    assert.equal((await status(core.readNamespacedConfigMap({ name: 'kube-proxy', namespace: 'kube-system' }))).code, 404);

    const sink = new PassThrough();
    sink.resume();
    const logEnded = once(sink, 'end');
    await new Log(admin).log(NS, pod.metadata.name, 'pod', sink, { follow: true });
    const watchEnded = new Promise<void>((resolve) => void new Watch(admin).watch(`/api/v1/namespaces/${NS}/pods`, {}, () => {}, () => resolve()));

    await cluster.close();
    await Promise.all([logEnded, watchEnded]);
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'the pod process is gone');
    await assert.rejects(get(service.spec!.clusterIP!, 8080), { code: 'ECONNREFUSED' });
    await assert.rejects(get(pod.status.podIP, 8080), { code: 'ECONNREFUSED' });
    assert.equal(existsSync(cluster.kubeconfigPath), false, 'the temp files are gone');
    assert.deepEqual(kinds(), before);
  });
});
