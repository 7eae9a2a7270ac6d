/**
 * `podpool bench <scenario> --cluster` end to end, as a user runs it: the CLI as a child process,
 * pointed with `--kubeconfig` at the fake cluster (testkit/fake-cluster.ts: the real REST
 * protocol to the real `@kubernetes/client-node`, RBAC for the runner's ServiceAccount, the pods
 * and the client Job's runner as local processes on loopback). What is checked is what a user
 * relies on: the exit code, the results file and where it says it ran, the runner's requests done
 * through the API, and that nothing the run created is left, also after a failure and a Ctrl-C.
 * Waits are for an exit, a line or a change of the cluster; nothing is timed.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { AppsV1Api, BatchV1Api, CoreV1Api, KubeConfig, RbacAuthorizationV1Api, loadAllYaml } from '@kubernetes/client-node';
import { ADMIN_USER } from '../../testkit/fake-apiserver.ts';
import { FakeCluster, type ObjectRecord } from '../../testkit/fake-cluster.ts';
import { DEADLINE_ANNOTATION, LABELS, MANAGED_BY, NAMES } from '../../bench/harness/kube/protocol.ts';
import type { ScenarioReport } from '../../bench/harness/report.ts';

const MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface Started {
  child: ChildProcess;
  exited: Promise<Run>;
  stderr(): string;
}

let fake: FakeCluster;
let results: string;

/** `podpool bench …` against the fake cluster (unless given another kubeconfig), its results in a directory of the test's. */
function bench(t: TestContext, args: string[]): Started {
  const env: NodeJS.ProcessEnv = { ...process.env, PODPOOL_BENCH_RESULTS: results };
  // Only what the test names: no kubeconfig of the machine's, no trace that changes stderr.
  delete env.KUBECONFIG;
  delete env.PODPOOL_BENCH_TRACE;
  const kubeconfig = args.includes('--kubeconfig') ? [] : ['--kubeconfig', fake.kubeconfigPath];
  const child = spawn(process.execPath, ['--conditions=podpool-source', MAIN, 'bench', ...args, ...kubeconfig], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = once(child, 'close').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null, stdout, stderr }));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return { child, exited, stderr: () => stderr };
}

/** The run's id and namespace, from the Namespace it created. */
function runOf(records: readonly ObjectRecord[]): { runId: string; namespace: string } {
  const ns = records.find((r) => r.kind === 'Namespace' && r.by === ADMIN_USER && r.name.startsWith(NAMES.namespacePrefix));
  assert.ok(ns, 'the run created its own namespace');
  return { runId: ns.labels[LABELS.run]!, namespace: ns.name };
}

/**
 * Everything the command created (as the admin user) was deleted (acknowledged before it
 * exited), and then everything of the run, the pods its controllers made included, goes.
 */
async function assertAllDeleted(runId: string): Promise<void> {
  const mine = fake.created.filter((r) => r.by === ADMIN_USER && r.labels[LABELS.run] === runId);
  assert.deepEqual(
    mine.map((r) => r.kind).toSorted(),
    ['Deployment', 'Job', 'Namespace', 'Role', 'RoleBinding', 'Service', 'Service', 'ServiceAccount'],
    'the command created these',
  );
  for (const record of mine) {
    assert.ok(
      fake.deleted.some((d) => d.kind === record.kind && d.namespace === record.namespace && d.name === record.name) ||
        (record.kind === 'Namespace' && fake.get('Namespace', undefined, record.name)?.metadata.deletionTimestamp !== undefined),
      `${record.kind} ${record.namespace ?? ""}/${record.name} was deleted: ${JSON.stringify(fake.get(record.kind, record.namespace, record.name)?.metadata)} ${JSON.stringify(fake.deleted.filter((d) => d.by === ADMIN_USER))}`,
    );
  }
  const order = fake.deleted.filter((d) => d.by === ADMIN_USER && d.labels[LABELS.run] === runId && d.kind !== 'Pod').map((d) => d.kind);
  assert.deepEqual(order.slice(0, 2), ['Job', 'Deployment'], 'deleted in the reverse order of creation: the Job first');
  await fake.waitFor((cluster) => cluster.objects().every((o) => o.metadata.labels?.[LABELS.run] !== runId));
}

/** A TCP proxy on loopback to `target` whose `cut()` breaks every connection through it (and says how many). */
async function cuttingProxy(target: URL): Promise<{ url: string; cut(): number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `${target.protocol}//127.0.0.1:${port}`,
    cut: () => {
      const n = sockets.size;
      for (const socket of sockets) socket.destroy();
      return n;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

describe('podpool bench --cluster against a fake cluster', { concurrency: false }, () => {
  before(async () => {
    fake = await FakeCluster.start({ nodes: 2 });
    results = await mkdtemp(join(tmpdir(), 'podpool-flow-'));
  });
  after(async () => {
    await fake?.close();
    if (results) await rm(results, { recursive: true, force: true });
  });

  it('runs balance in the cluster: exit 0, the results say where, every pod served, nothing left', async (t) => {
    const run = bench(t, ['balance', '--cluster', '--image', 'podpool:test', '--pods', '3', '--clients', '2', '--duration', '0.3', '--transport', 'http', '--json']);
    const { code, stdout, stderr } = await run.exited;
    assert.equal(code, 0, stderr);
    const report = JSON.parse(await readFile(join(results, 'balance.json'), 'utf8')) as ScenarioReport;
    assert.deepEqual(JSON.parse(stdout.trim().split('\n').at(-1)!), report, '--json prints the report it wrote');
    const { runId, namespace } = runOf(fake.created);
    assert.equal(report.standIn, 'kubernetes');
    assert.equal(report.standInReason, 'Kubernetes v1.31.0-fake, 2 nodes, kube-proxy iptables');
    const cluster = report.cluster as Record<string, unknown>;
    assert.equal(cluster.serverVersion, 'v1.31.0-fake');
    assert.equal(cluster.nodes, 2);
    assert.equal(cluster.kubeProxyMode, 'iptables');
    assert.equal(cluster.namespace, namespace);
    assert.equal(cluster.image, 'podpool:test');
    const perNode = cluster.podsPerNode as Record<string, number>;
    assert.deepEqual(Object.keys(perNode).toSorted(), ['fake-node-1', 'fake-node-2'], 'the pods were spread over both nodes');
    assert.equal(Object.values(perNode).reduce((a, b) => a + b, 0), 3);

    const pods = fake.created.filter((r) => r.kind === 'Pod' && r.namespace === namespace && r.labels[LABELS.component] === 'backend').map((r) => r.name);
    assert.equal(pods.length, 3, 'the Deployment made 3 pods');
    const podpoolRows = report.results.filter((r) => r.kind === 'podpool');
    assert.ok(podpoolRows.length > 0 && report.results.some((r) => r.kind === 'kube-proxy'), 'podpool and kube-proxy rows');
    for (const row of podpoolRows) {
      assert.deepEqual(Object.keys(row.perPod).toSorted(), pods.toSorted(), `${row.client}: counted on the Deployment's pods`);
      for (const pod of pods) assert.ok(row.perPod[pod]! > 0, `${row.client}: ${pod} served requests`);
    }
    const job = fake.created.find((r) => r.kind === 'Job' && r.namespace === namespace);
    assert.equal(job?.by, ADMIN_USER);
    assert.match(stderr, new RegExp(`run ${runId} in namespace ${namespace}`), 'says where it runs');
    await assertAllDeleted(runId);
  });

  it("scale-up: the runner's scale requests are done through the API, once each although the log broke off and was read again", async (t) => {
    const before = fake.created.length;
    // The command talks to the API server through a proxy that breaks every connection once,
    // while the runner runs: its log's stream with them.
    const proxy = await cuttingProxy(new URL(fake.api.url));
    t.after(() => proxy.close());
    const dir = await mkdtemp(join(tmpdir(), 'podpool-flow-proxy-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const kubeconfig = join(dir, 'kubeconfig');
    const config = JSON.parse(await readFile(fake.kubeconfigPath, 'utf8'));
    config.clusters[0].cluster.server = proxy.url;
    await writeFile(kubeconfig, JSON.stringify(config));
    let armed = false;
    let cut = 0;
    const onStarted = (): void => void (armed = true);
    // A new backend pod ready: the runner asked for it, its scale request was answered long ago.
    const onReady = (event: { pod: { metadata: { labels?: Record<string, string> } } }): void => {
      if (!armed || cut > 0 || event.pod.metadata.labels?.[LABELS.component] !== 'backend') return;
      cut = proxy.cut();
    };
    fake.on('job-started', onStarted);
    fake.on('pod-ready', onReady);
    t.after(() => {
      fake.off('job-started', onStarted);
      fake.off('pod-ready', onReady);
    });
    const logs = fake.api.requests.length;
    const run = bench(t, ['scale-up', '--cluster', '--image', 'podpool:test', '--pods', '2', '--clients', '1', '--duration', '1', '--kubeconfig', kubeconfig]);
    const { code, stderr } = await run.exited;
    assert.equal(code, 0, stderr);
    assert.ok(cut > 0, 'connections were broken while the runner ran');
    const follows = fake.api.requests.slice(logs).filter((r) => r.path.endsWith('/log') && r.query.follow === 'true');
    assert.ok(follows.length >= 2, `the log was followed again (${follows.length} times)`);
    const report = JSON.parse(await readFile(join(results, 'scale-up.json'), 'utf8')) as ScenarioReport;
    const { runId, namespace } = runOf(fake.created.slice(before));
    const backend = fake.created.slice(before).filter((r) => r.kind === 'Pod' && r.namespace === namespace && r.labels[LABELS.component] === 'backend').map((r) => r.name);
    const [first, second] = backend;
    assert.equal(report.standIn, 'kubernetes');
    assert.equal(report.results.length, 5, 'every row of scale-up ran');
    for (const row of report.results) {
      const added = row.addedPod as string;
      assert.ok(backend.includes(added) && added !== first && added !== second, `${row.client}: the pod it was given came from scaling the Deployment`);
    }
    // podpool hears of the new pod from the EndpointSlice watch and sends it requests; the load
    // goes on until the pod had its share of the run, however long it took to start.
    const watched = report.results.find((r) => r.client === 'podpool round-robin (kubernetes)');
    assert.equal(typeof watched?.firstRequestMs, 'number', 'the added pod served podpool\'s requests');
    // One scale up and one back down per row, each done once although the log may be read twice.
    assert.equal(stderr.match(/scaled podpool-backend to 3 pods, as the runner asked/g)?.length, 5);
    assert.equal(stderr.match(/scaled podpool-backend to 2 pods, as the runner asked/g)?.length, 5);
    await assertAllDeleted(runId);
  });

  it("rolling-restart and killed-pod: the runner's restart and delete-pod requests done as kubectl would", async (t) => {
    const before = fake.created.length;
    const seq = fake.api.requests.length;
    const restart = bench(t, ['rolling-restart', '--cluster', '--image', 'podpool:test', '--pods', '2', '--clients', '1', '--duration', '1', '--transport', 'http']);
    const restarted = await restart.exited;
    const first = runOf(fake.created.slice(before));
    const patches = fake.api.requests.slice(seq).filter((r) => r.method === 'PATCH' && r.path === `/apis/apps/v1/namespaces/${first.namespace}/deployments/${NAMES.deployment}`);
    assert.ok(patches.length > 0 && patches.every((r) => r.status === 200), 'the Deployment was patched');
    const hashes = new Set(fake.created.slice(before).filter((r) => r.kind === 'Pod' && r.namespace === first.namespace && r.labels[LABELS.component] === 'backend').map((r) => r.labels['pod-template-hash']));
    assert.ok(hashes.size >= 2, 'the patch changed the pod template: new pods rolled out (kubectl rollout restart)');
    await assertAllDeleted(first.runId);

    const middle = fake.created.length;
    const seq2 = fake.api.requests.length;
    const kill = bench(t, ['killed-pod', '--cluster', '--image', 'podpool:test', '--pods', '2', '--clients', '1', '--duration', '1', '--transport', 'http']);
    const killed = await kill.exited;
    const second = runOf(fake.created.slice(middle));
    const deletes = fake.api.requests.slice(seq2).filter((r) => r.method === 'DELETE' && r.path.startsWith(`/api/v1/namespaces/${second.namespace}/pods/`));
    assert.ok(deletes.length > 0, 'a pod was deleted');
    for (const request of deletes) assert.deepEqual([request.query.gracePeriodSeconds, request.status], ['0', 200], 'at once, as the control plane does to a pod that died');
    await assertAllDeleted(second.runId);
    assert.equal(restarted.code, 0, restarted.stderr);
    assert.equal(killed.code, 0, killed.stderr);
  });

  it('collect: manifests applied by hand are followed, served and reported; collect deletes nothing', async (t) => {
    const { benchSpec, manifests } = await import('../../bench/harness/kube/manifests.ts');
    const options = { pods: 2, clients: 1, durationS: 0.1, inflight: 4, concurrency: 4, serviceMs: 1 };
    const spec = benchSpec('balance', options, { image: 'podpool:test' }, ['--pods', '2', '--clients', '1', '--duration', '0.1', '--transport', 'http']);
    // What `kubectl apply -f -` does with the YAML: each object created, in order.
    const kc = new KubeConfig();
    kc.loadFromFile(fake.kubeconfigPath);
    const core = kc.makeApiClient(CoreV1Api);
    const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
    const apps = kc.makeApiClient(AppsV1Api);
    const batch = kc.makeApiClient(BatchV1Api);
    for (const body of loadAllYaml(manifests(spec))) {
      const namespace = spec.namespace;
      if (body.kind === 'Namespace') await core.createNamespace({ body });
      else if (body.kind === 'ServiceAccount') await core.createNamespacedServiceAccount({ namespace, body });
      else if (body.kind === 'Role') await rbac.createNamespacedRole({ namespace, body });
      else if (body.kind === 'RoleBinding') await rbac.createNamespacedRoleBinding({ namespace, body });
      else if (body.kind === 'Service') await core.createNamespacedService({ namespace, body });
      else if (body.kind === 'Deployment') await apps.createNamespacedDeployment({ namespace, body });
      else if (body.kind === 'Job') await batch.createNamespacedJob({ namespace, body });
      else assert.fail(`manifests printed a ${body.kind}`);
    }
    const run = bench(t, ['collect', 'balance', '--namespace', spec.namespace]);
    const { code, stderr } = await run.exited;
    assert.equal(code, 0, stderr);
    const report = JSON.parse(await readFile(join(results, 'balance.json'), 'utf8')) as ScenarioReport;
    assert.equal(report.standIn, 'kubernetes');
    assert.equal((report.cluster as Record<string, unknown>).namespace, spec.namespace);
    assert.equal((report.cluster as Record<string, unknown>).image, 'podpool:test');
    assert.match(stderr, new RegExp(`collecting run ${spec.runId} in namespace ${spec.namespace}`));
    // Without PODPOOL_BENCH_CLUSTER_IP the runner dialled the ClusterIP of the service-link variable.
    assert.ok(report.results.some((r) => r.kind === 'kube-proxy' && r.throughput > 0), 'the kube-proxy rows reached the ClusterIP');
    assert.ok(fake.get('Deployment', spec.namespace, NAMES.deployment), 'collect deleted nothing');
    await core.deleteNamespace({ name: spec.namespace });
    await fake.waitFor((cluster) => cluster.objects().every((o) => o.metadata.labels?.[LABELS.run] !== spec.runId));
  });

  it('an identity that may not create the objects: exit 1, the verb, the object and the API server\'s words, no token, nothing created', async (t) => {
    // The `default` ServiceAccount of `default`: authenticated, allowed nothing.
    const token = fake.tokenOf('default', 'default');
    assert.ok(token);
    const dir = await mkdtemp(join(tmpdir(), 'podpool-flow-sa-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const kubeconfig = await fake.api.writeKubeconfig(dir, { token });
    const before = fake.created.length;
    const run = bench(t, ['balance', '--cluster', '--image', 'podpool:test', '--kubeconfig', kubeconfig]);
    const { code, stderr } = await run.exited;
    assert.equal(code, 1);
    assert.match(stderr, /cannot create Namespace podpool-bench-[0-9a-f]{6}: HTTP 403: .*forbidden.*\(PODPOOL_CLUSTER_REQUEST_FAILED\)/s);
    assert.match(stderr, /Kubernetes v1\.31\.0-fake \(nodes unknown, kube-proxy unknown \(cannot read ConfigMap kube-system\/kube-proxy: HTTP 403/, 'what it may not read is said, not fatal');
    assert.ok(!stderr.includes(token), 'the token is never printed');
    assert.equal(fake.created.slice(before).length, 0, 'nothing was created');
  });

  it('a kubeconfig that is not there, or a context it does not have: a usage error (exit 2) naming it, nothing sent', async (t) => {
    const seq = fake.api.requests.length;
    const missing = await bench(t, ['balance', '--cluster', '--kubeconfig', join(results, 'no-such-kubeconfig')]).exited;
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /^podpool: cannot load the kubeconfig \S*no-such-kubeconfig \(ENOENT\)\n/);
    const context = await bench(t, ['balance', '--cluster', '--context', 'prod']).exited;
    assert.equal(context.code, 2);
    assert.match(context.stderr, /^podpool: --context prod: the kubeconfig has no such context \(it has fake\)\n/);
    assert.equal(fake.api.requests.length, seq, 'no request reached the API server');
  });

  it('a runner that fails: rejected with its last words, everything deleted', async () => {
    // The image's podpool refuses a flag the command passed on: what happens when the command
    // and the image are of different versions. Called in-process: the CLI checks the flags first.
    const { runOnCluster } = await import('../../bench/harness/kube/orchestrate.ts');
    const before = fake.created.length;
    const options = { pods: 1, clients: 1, durationS: 0.1, inflight: 1, concurrency: 1, serviceMs: 1 };
    await assert.rejects(
      runOnCluster('balance', options, { kubeconfig: fake.kubeconfigPath, image: 'podpool:test' }, ['--no-such-flag']),
      (error: Error & { code?: string }) => {
        assert.match(error.message, /^the client Job's pod podpool-bench-client-\S+ ended \(Failed: BackoffLimitExceeded[^)]*\) without a result: podpool: Unknown option '--no-such-flag'/, "the Job's reason and the runner's own words");
        assert.match(error.message, /; its last lines:\n/);
        assert.equal(error.code, 'PODPOOL_CONNECTION_LOST');
        return true;
      },
    );
    await assertAllDeleted(runOf(fake.created.slice(before)).runId);
  });

  it('SIGINT once the runner started: exit 130 and everything the run created deleted', async (t) => {
    const started = new Promise<{ namespace: string }>((resolve) => fake.once('job-started', (event) => resolve(event)));
    const run = bench(t, ['balance', '--cluster', '--image', 'podpool:test', '--pods', '2', '--clients', '1', '--duration', '30', '--transport', 'http']);
    const { namespace } = await started;
    // The runner is running: what the command does with a Ctrl-C now is the point.
    run.child.kill('SIGINT');
    const { code, stderr } = await run.exited;
    assert.equal(code, 130, stderr);
    assert.match(stderr, /SIGINT: deleting what this run created/);
    const runId = fake.created.find((r) => r.kind === 'Namespace' && r.name === namespace)!.labels[LABELS.run]!;
    await assertAllDeleted(runId);
  });

  it("sweeps a crashed run's leftovers once their deadline passed, and keeps a live run's", async (t) => {
    const kc = new KubeConfig();
    kc.loadFromFile(fake.kubeconfigPath);
    const core = kc.makeApiClient(CoreV1Api);
    const leftover = (name: string, deadline: Date) =>
      core.createNamespace({
        body: {
          metadata: {
            name,
            labels: { [LABELS.managedBy]: MANAGED_BY, [LABELS.run]: name.slice(-6) },
            annotations: { [DEADLINE_ANNOTATION]: deadline.toISOString() },
          },
        },
      });
    await leftover('podpool-bench-dead01', new Date(Date.now() - 60_000));
    await leftover('podpool-bench-live01', new Date(Date.now() + 3_600_000));
    // And one in a namespace the user names (--namespace), where a run looks by kind.
    await core.createNamespace({ body: { metadata: { name: 'team-a' } } });
    await core.createNamespacedServiceAccount({
      namespace: 'team-a',
      body: { metadata: { name: 'old', labels: { [LABELS.managedBy]: MANAGED_BY, [LABELS.run]: 'old001' }, annotations: { [DEADLINE_ANNOTATION]: new Date(Date.now() - 1000).toISOString() } } },
    });
    const before = fake.created.length;
    const run = bench(t, ['balance', '--cluster', '--image', 'podpool:test', '--namespace', 'team-a', '--pods', '1', '--clients', '1', '--duration', '0.1', '--transport', 'http']);
    const { code, stderr } = await run.exited;
    assert.equal(code, 0, stderr);
    const gone = (kind: string, namespace: string | undefined, name: string) =>
      fake.deleted.some((d) => d.kind === kind && d.namespace === namespace && d.name === name) ||
      fake.get(kind, namespace, name)?.metadata.deletionTimestamp !== undefined;
    assert.ok(gone('Namespace', undefined, 'podpool-bench-dead01'), 'the expired namespace was deleted');
    assert.ok(!gone('Namespace', undefined, 'podpool-bench-live01'), "the live run's namespace was kept");
    assert.ok(gone('ServiceAccount', 'team-a', 'old'), 'the expired object in the given namespace was deleted');
    assert.ok(fake.get('Namespace', undefined, 'team-a'), 'the given namespace is kept: the run did not create it');
    assert.match(stderr, /deleted what earlier runs left behind \(their deadline passed\): Namespace podpool-bench-dead01, ServiceAccount team-a\/old/);
    // A run in a namespace it was given creates no namespace, and deletes what it created there.
    const mine = fake.created.slice(before).filter((r) => r.by === ADMIN_USER && r.labels[LABELS.run] !== undefined && r.labels[LABELS.run] !== 'old001');
    assert.ok(mine.length > 0 && mine.every((r) => r.namespace === 'team-a'), 'everything in team-a, no namespace');
    const runId = mine[0]!.labels[LABELS.run]!;
    for (const record of mine) {
      assert.ok(fake.deleted.some((d) => d.kind === record.kind && d.namespace === 'team-a' && d.name === record.name), `${record.kind} ${record.name} deleted`);
    }
    await fake.waitFor((cluster) => cluster.objects().every((o) => o.metadata.labels?.[LABELS.run] !== runId));
  });
});
