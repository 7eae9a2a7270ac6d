/**
 * Smoke test of the bench: every scenario at a tiny size, through the real `podpool bench`
 * command (so the namespace's life cycle is tested too). It asserts what is deterministic, never
 * timings: kube-proxy's C single-connection clients reach at most C pods, podpool reaches all N,
 * a pod added mid-run is reached by podpool, a broadcast reaches every pod, and no namespace is
 * left behind.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NETNS_PREFIX, benchNamespaces, detectStandIn, kubeProxyRules } from '../bench/standin.ts';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const expected = detectStandIn();
// Results of the smoke runs go to a temporary directory, not over the user's bench/results.
const resultsDir = mkdtempSync(join(tmpdir(), 'podpool-bench-'));
after(() => rmSync(resultsDir, { recursive: true, force: true }));

interface Row {
  client: string;
  transport: string;
  podsUsed: number;
  pods: number;
  perPod: Record<string, number>;
  errors: number;
  [figure: string]: unknown;
}

interface Report {
  scenario: string;
  standIn: string;
  results: Row[];
  [figure: string]: unknown;
}

async function bench(scenario: string, flags: string[], env: NodeJS.ProcessEnv = {}): Promise<Report> {
  const { stdout } = await run(
    process.execPath,
    ['--conditions=podpool-source', CLI, 'bench', scenario, '--json', ...flags],
    { timeout: 60_000, maxBuffer: 16 << 20, env: { ...process.env, PODPOOL_BENCH_RESULTS: resultsDir, ...env } },
  );
  const last = stdout.trimEnd().split('\n').at(-1)!;
  assert.ok(stdout.includes(`results: ${resultsDir}/${scenario}.json`));
  const report = JSON.parse(last) as Report;
  assert.equal(report.scenario, scenario);
  const standIn = env.PODPOOL_BENCH_STANDIN ?? expected.standIn;
  assert.equal(report.standIn, standIn, `expected the ${standIn} stand-in (${expected.reason})`);
  assert.ok(report.results.length > 0);
  return report;
}

/** The run's own namespace is gone (other runs, in parallel, may hold theirs). */
function assertNoNamespaceLeft(report: Report): void {
  if (expected.standIn !== 'iptables') return;
  assert.match(String(report.namespace), new RegExp(`^${NETNS_PREFIX}\\d+$`));
  assert.ok(!benchNamespaces().includes(report.namespace as string), `${report.namespace} is left behind`);
}

test('the ClusterIP rules are kube-proxy\'s: 1/(n-i) per endpoint, the last unconditional', () => {
  const rules = kubeProxyRules('default/backend', '10.96.0.10', [{ name: 'http', port: 80, targetPort: 8080 }], ['10.244.1.1', '10.244.1.2', '10.244.1.3']);
  const svc = rules.split('\n').filter((l) => l.startsWith('-A KUBE-SVC-'));
  assert.equal(svc.length, 3);
  assert.match(svc[0]!, /--probability 0\.33333333333 -j KUBE-SEP-/);
  assert.match(svc[1]!, /--probability 0\.50000000000 -j KUBE-SEP-/);
  assert.doesNotMatch(svc[2]!, /statistic/);
  assert.match(rules, /-A KUBE-SERVICES -d 10\.96\.0\.10\/32 -p tcp .* --dport 80 -j KUBE-SVC-/);
  assert.equal(rules.match(/DNAT --to-destination 10\.244\.1\.\d:8080/g)?.length, 3);
});

test('balance: kube-proxy reaches at most C pods, podpool every pod', { timeout: 90_000 }, async () => {
  const clients = 2;
  const pods = 4;
  // A namespace left by a crashed run (its pid is gone) is removed by the next one.
  const stale = `${NETNS_PREFIX}${2 ** 22 + 1}`;
  if (expected.standIn === 'iptables') await run('ip', ['netns', 'add', stale]);
  const report = await bench('balance', ['--pods', String(pods), '--clients', String(clients), '--duration', '0.4']);
  const wires = new Set(report.results.map((r) => r.transport));
  assert.deepEqual([...wires].sort(), ['grpc', 'http', 'ws']);
  for (const row of report.results) {
    assert.equal(row.pods, pods, `${row.transport} ${row.client}`);
    assert.equal(row.errors, 0, `${row.transport} ${row.client}: ${JSON.stringify(row.errorSamples)}`);
    if (row.client === 'kube-proxy') assert.ok(row.podsUsed >= 1 && row.podsUsed <= clients, `${row.transport} kube-proxy used ${row.podsUsed}`);
    if (row.client.startsWith('podpool')) assert.equal(row.podsUsed, pods, `${row.transport} ${row.client}`);
  }
  assert.ok(report.results.some((r) => r.client.startsWith('podpool') && r.transport === 'http'));
  assertNoNamespaceLeft(report);
  assert.ok(!benchNamespaces().includes(stale), 'the stale namespace was removed');
});

test('slow-pod: every mode runs without errors', { timeout: 90_000 }, async () => {
  const report = await bench('slow-pod', ['--pods', '3', '--clients', '2', '--duration', '0.4']);
  const clients = report.results.map((r) => r.client);
  for (const name of ['kube-proxy', 'podpool round-robin', 'podpool least-loaded', 'podpool peak-ewma', 'undici BalancedPool']) {
    assert.ok(clients.includes(name), `missing ${name}`);
  }
  for (const row of report.results) {
    assert.equal(row.errors, 0, `${row.client}`);
    if (row.client === 'kube-proxy') assert.ok(row.podsUsed <= 2);
  }
  assertNoNamespaceLeft(report);
});

test('balance on the userspace stand-in too', { timeout: 60_000 }, async () => {
  const report = await bench('balance', ['--pods', '3', '--clients', '1', '--duration', '0.3', '--transport', 'http'], {
    PODPOOL_BENCH_STANDIN: 'userspace',
  });
  for (const row of report.results) {
    if (row.client === 'kube-proxy') assert.equal(row.podsUsed, 1);
    if (row.client.startsWith('podpool')) assert.equal(row.podsUsed, 3);
  }
});

test('scale-up: podpool reaches the added pod; kube-proxy clients never do', { timeout: 90_000 }, async () => {
  const report = await bench('scale-up', ['--pods', '3', '--clients', '2', '--duration', '1.2']);
  const k8s = report.results.find((r) => r.client === 'podpool round-robin (kubernetes)');
  assert.ok(k8s, 'podpool with the Kubernetes source ran');
  assert.equal(typeof k8s.firstRequestMs, 'number', 'podpool (kubernetes) sent the added pod a request');
  assert.ok(k8s.perPod[k8s.addedPod as string]! > 0);
  for (const row of report.results.filter((r) => r.client === 'kube-proxy')) {
    // Connections opened before the pod existed can't reach it.
    assert.equal(row.firstRequestMs, null, `${row.transport} kube-proxy`);
  }
  assertNoNamespaceLeft(report);
});

test('rolling-restart: every pod is replaced under load in every mode', { timeout: 120_000 }, async () => {
  const report = await bench('rolling-restart', ['--pods', '2', '--clients', '1', '--duration', '0.6']);
  for (const row of report.results) assert.equal(row.replaced, 2, `${row.transport} ${row.client}`);
  assert.ok(report.results.some((r) => r.client.startsWith('podpool') && r.transport === 'grpc'));
  assertNoNamespaceLeft(report);
});

test('broadcast: every transport reaches every pod', { timeout: 90_000 }, async () => {
  const report = await bench('broadcast', ['--pods', '4']);
  const transports = report.results.map((r) => `${r.transport} ${r.client}`).sort();
  assert.deepEqual(transports, ['http list + loop', 'http podpool broadcast', 'udp podpool broadcast', 'ws podpool broadcast']);
  for (const row of report.results) {
    assert.equal(row.reachedAll, true, `${row.transport} ${row.client}: ${JSON.stringify(row.perPod)}`);
    assert.equal(row.podsUsed, 4);
    assert.equal(row.errors, 0);
  }
  assertNoNamespaceLeft(report);
});

test('overhead: podpool and the plain client serve the same pods', { timeout: 90_000 }, async () => {
  const report = await bench('overhead', ['--pods', '2', '--clients', '1', '--duration', '0.4']);
  assert.deepEqual(report.results.map((r) => `${r.transport} ${r.client}`), [
    'http plain undici',
    'http podpool round-robin',
    'grpc plain grpc-js',
    'grpc podpool round-robin',
  ]);
  for (const row of report.results) {
    assert.equal(row.podsUsed, 2);
    assert.equal(row.errors, 0);
    assert.equal(typeof row.throughputRatio, 'number');
  }
  assertNoNamespaceLeft(report);
});
