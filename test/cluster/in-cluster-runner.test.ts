/**
 * The client Job's runner (`podpool bench <scenario> --in-cluster`) in the fake cluster, started
 * by the fake's kubelet from the Job's own spec, with nobody but this test around: no `--cluster`
 * command. What it shows:
 * - the runner and the stand-in are one code path: the same scenario with the same flags gives
 *   the same rows (clients, groups, connections), each podpool row spread over every pod;
 * - it needs nothing beyond the least-privilege Role: its ServiceAccount's token is refused
 *   anything else (the fake enforces RBAC), and every request it made was a get, list or watch
 *   of EndpointSlices;
 * - the per-pod figures come from the pods themselves (their control endpoints), by pod name.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { AppsV1Api, BatchV1Api, CoreV1Api, KubeConfig, RbacAuthorizationV1Api, type KubernetesObject } from '@kubernetes/client-node';
import { FakeCluster } from '../../testkit/fake-cluster.ts';
import { benchObjects, creationOrder } from '../../bench/harness/kube/objects.ts';
import { CONTAINERS, LineSplitter, NAMES, parseEvent, type RunnerEvent } from '../../bench/harness/kube/protocol.ts';
import type { ScenarioReport } from '../../bench/harness/report.ts';

const NODE = join(import.meta.dirname, '..', '..', 'node_modules', '.bin', 'node');
const MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');
/** The scenario's flags, the same for the runner and the stand-in. */
const FLAGS = ['--transport', 'http', '--pods', '3', '--clients', '2', '--duration', '0.2', '--inflight', '4'];

let fake: FakeCluster;
let results: string;

before(async () => {
  fake = await FakeCluster.start();
  results = await mkdtemp(join(tmpdir(), 'podpool-runner-'));
});

after(async () => {
  await fake?.close();
  await rm(results, { recursive: true, force: true });
});

function admin(): { core: CoreV1Api; apps: AppsV1Api; rbac: RbacAuthorizationV1Api; batch: BatchV1Api } {
  const kc = new KubeConfig();
  kc.loadFromFile(fake.kubeconfigPath);
  return { core: kc.makeApiClient(CoreV1Api), apps: kc.makeApiClient(AppsV1Api), rbac: kc.makeApiClient(RbacAuthorizationV1Api), batch: kc.makeApiClient(BatchV1Api) };
}

/** Creates one typed object through its own client, as `--cluster` does; resolves with what the API returned. */
async function create(object: KubernetesObject): Promise<KubernetesObject> {
  const api = admin();
  const namespace = object.metadata!.namespace!;
  const body = object as never;
  switch (object.kind) {
    case 'Namespace':
      return api.core.createNamespace({ body });
    case 'ServiceAccount':
      return api.core.createNamespacedServiceAccount({ namespace, body });
    case 'Role':
      return api.rbac.createNamespacedRole({ namespace, body });
    case 'RoleBinding':
      return api.rbac.createNamespacedRoleBinding({ namespace, body });
    case 'Service':
      return api.core.createNamespacedService({ namespace, body });
    case 'Deployment':
      return api.apps.createNamespacedDeployment({ namespace, body });
    case 'Job':
      return api.batch.createNamespacedJob({ namespace, body });
    default:
      throw new Error(`unexpected kind ${object.kind}`);
  }
}

/** The stand-in's report for `scenario` with {@link FLAGS} (userspace: no namespace, root or not). */
async function standIn(scenario: string): Promise<ScenarioReport> {
  const child = spawn(NODE, ['--conditions=podpool-source', MAIN, 'bench', scenario, ...FLAGS, '--json'], {
    env: { ...process.env, PODPOOL_BENCH_STANDIN: 'userspace', PODPOOL_BENCH_RESULTS: results },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, stderr);
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as ScenarioReport;
}

it('the runner runs the stand-in\'s scenario code against the cluster, with only get/list/watch on EndpointSlices', async () => {
  const namespace = 'podpool-bench-a1b2c3';
  const objects = benchObjects(spec(namespace));
  let clusterIp: string | undefined;
  for (const object of creationOrder(objects)) {
    if (object.kind === 'Job') continue;
    const created = await create(object);
    if (object.metadata!.name === NAMES.service && object.kind === 'Service') clusterIp = (created as { spec?: { clusterIP?: string } }).spec?.clusterIP;
  }
  assert.ok(clusterIp, 'the ClusterIP Service got an address');
  await fake.waitFor((c) => (c.get('Deployment', namespace, NAMES.deployment)?.status as { readyReplicas?: number } | undefined)?.readyReplicas === 3);
  // The Job as --cluster makes it: the ClusterIP it read from the Service's create.
  const built = benchObjects({ ...spec(namespace), clusterIp });
  await create(built.job);
  const finished = await fake.waitFor((c) => {
    const job = c.get('Job', namespace, NAMES.job) as { status?: { succeeded?: number; failed?: number } } | undefined;
    return (job?.status?.succeeded ?? 0) + (job?.status?.failed ?? 0) > 0 && job;
  });

  const runnerPod = fake.objects().find((o) => o.kind === 'Pod' && o.metadata?.labels?.['job-name'] === NAMES.job)!;
  const log = await admin().core.readNamespacedPodLog({ name: runnerPod.metadata!.name!, namespace, container: CONTAINERS.client });
  const events: RunnerEvent[] = [];
  const lines = new LineSplitter();
  for (const line of [...lines.push(log), ...lines.end()]) {
    const event = parseEvent(line);
    if (event) events.push(event);
  }
  const failure = events.find((e) => e.event === 'error');
  assert.equal(failure, undefined, JSON.stringify(failure));
  assert.equal((finished as { status?: { succeeded?: number } }).status?.succeeded, 1);

  const hello = events.find((e) => e.event === 'hello');
  assert.deepEqual(hello && { scenario: hello.scenario, pods: hello.pods }, { scenario: 'balance', pods: 3 });
  assert.ok(events.some((e) => e.event === 'progress'), 'the runner reports progress as events');
  const result = events.at(-1)!;
  assert.equal(result.event, 'result');
  const report = result.report;
  assert.equal(report.standIn, 'kubernetes');

  // One code path: the stand-in's run of the same scenario has the same rows, in the same order.
  const local = await standIn('balance');
  const shape = (r: ScenarioReport) => r.results.map((row) => ({ group: row.group, client: row.client, kind: row.kind, connections: row.connections }));
  assert.deepEqual(shape(report), shape(local));

  // The figures per pod are the Deployment's pods, by name, from their control endpoints.
  const podNames = fake
    .objects()
    .filter((o) => o.kind === 'Pod' && o.metadata?.labels?.[`app.kubernetes.io/component`] === 'backend')
    .map((o) => o.metadata!.name!)
    .sort();
  assert.equal(podNames.length, 3);
  for (const row of report.results.filter((r) => r.kind === 'podpool')) {
    assert.deepEqual(Object.keys(row.perPod).sort(), podNames);
    assert.equal(row.podsUsed, 3, `${row.group} ${row.client} used every pod`);
    assert.equal(row.errors, 0);
  }
  const kube = report.results.find((r) => r.kind === 'kube-proxy' && r.connections === '1')!;
  assert.ok(kube.requests > 0, 'kube-proxy\'s row went through the ClusterIP');
  assert.equal(kube.podsUsed <= 2, true, 'two clients with one connection each reach at most two pods');

  // Least privilege: everything the runner's ServiceAccount asked was a read of EndpointSlices.
  const token = fake.tokenOf(namespace, NAMES.serviceAccount)!;
  const asked = fake.api.requests.filter((r) => r.token === token);
  assert.ok(asked.length > 0, 'the runner talked to the API server with its own token');
  for (const request of asked) {
    assert.equal(request.method, 'GET');
    assert.match(request.path, /^\/apis\/discovery\.k8s\.io\/v1\/namespaces\/[^/]+\/endpointslices$/);
    assert.equal(request.status, 200, `${request.path} was allowed`);
  }
});

/** The run's objects as `--cluster` would make them for `balance` with {@link FLAGS}. */
function spec(namespace: string): Parameters<typeof benchObjects>[0] {
  return {
    runId: namespace.slice(-6),
    namespace,
    ownNamespace: true,
    image: 'podpool:test',
    scenario: 'balance',
    runnerArgs: FLAGS,
    pods: 3,
    concurrency: 4,
    serviceMs: 10,
    deadline: new Date(Date.now() + 600_000),
  };
}
