/**
 * Smoke test of the bench: every scenario at a tiny size, and the demo, through the real
 * `podpool` command (so the namespace's life cycle is tested too). It asserts what is
 * deterministic, never timings: kube-proxy's C single-connection clients reach at most C pods,
 * podpool reaches all N, rows of a comparison hold the same connections, slow-pod's connection
 * draws land as they say (and every row carries its healthy baseline), a pod added mid-run is
 * reached by podpool, podpool loses no call through a rolling restart, servers that recycle
 * their connections or a killed pod (idempotent calls; the others lose at most what was in
 * flight on it), a broadcast reaches every pod, and no namespace is left behind. test/bench-netns.test.ts runs this file again in a
 * network namespace holding only loopback, on the userspace stand-in.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NETNS_PREFIX, benchNamespaces, detectStandIn, kubeProxyRules } from '../bench/harness/standin.ts';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const expected = detectStandIn();
// Results of the smoke runs go to a temporary directory, not over the user's bench/results.
const resultsDir = mkdtempSync(join(tmpdir(), 'podpool-bench-'));
after(() => rmSync(resultsDir, { recursive: true, force: true }));

interface Row {
  client: string;
  kind?: string;
  group?: string;
  connections?: string;
  socketsSeen?: number;
  errorSamples?: string[];
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

test('balance: kube-proxy reaches at most C pods on one connection; every row of a group holds the same connections', { timeout: 90_000 }, async () => {
  const clients = 2;
  const pods = 4;
  // A namespace left by a crashed run (its pid is gone) is removed by the next one.
  const stale = `${NETNS_PREFIX}${2 ** 22 + 1}`;
  if (expected.standIn === 'iptables') await run('ip', ['netns', 'add', stale]);
  const report = await bench('balance', ['--pods', String(pods), '--clients', String(clients), '--duration', '0.4']);
  const groups = [...new Set(report.results.map((r) => r.group))];
  // 16 in flight over 4 pods: an agent of 16 sockets per client, 4 to each pod client-side.
  assert.deepEqual(groups, ['http · 1 connection', 'http · 16 sockets', 'grpc · 1 connection', 'ws · 1 connection']);
  for (const group of groups) {
    const rows = report.results.filter((r) => r.group === group);
    assert.equal(rows[0]!.kind, 'kube-proxy', `${group}: kube-proxy comes first`);
    const agent = group.endsWith('sockets');
    for (const row of rows) {
      const name = `${group} ${row.client}`;
      assert.equal(row.pods, pods, name);
      assert.equal(row.errors, 0, `${name}: ${JSON.stringify(row.errorSamples)}`);
      if (row.kind === 'kube-proxy') {
        assert.equal(row.connections, agent ? '16' : '1', name);
        if (!agent) assert.ok(row.podsUsed >= 1 && row.podsUsed <= clients, `${name} used ${row.podsUsed}`);
      } else {
        assert.equal(row.connections, agent ? '4 per pod (16)' : `1 per pod (${pods})`, name);
        if (row.kind === 'podpool') assert.equal(row.podsUsed, pods, name);
      }
      // What the pods accepted: never more sockets than the row says a client holds.
      if (row.transport !== 'grpc') {
        const limit = agent ? 16 : row.kind === 'kube-proxy' ? 1 : pods;
        assert.ok(typeof row.socketsSeen === 'number' && row.socketsSeen >= 1 && row.socketsSeen <= limit, `${name}: ${row.socketsSeen} sockets per client`);
      }
    }
  }
  // One pipelined connection each: kube-proxy's pods saw exactly one socket per client.
  assert.equal(report.results.find((r) => r.group === 'http · 1 connection' && r.kind === 'kube-proxy')!.socketsSeen, 1);
  assertNoNamespaceLeft(report);
  assert.ok(!benchNamespaces().includes(stale), 'the stale namespace was removed');
});

test('slow-pod: every row runs one connection draw per k, and kube-proxy\'s draws land as they say', { timeout: 120_000 }, async () => {
  const clients = 2;
  const report = await bench('slow-pod', ['--pods', '3', '--clients', String(clients), '--duration', '0.3']);
  assert.deepEqual(report.results.map((r) => r.client), [
    'kube-proxy',
    'podpool round-robin',
    'podpool least-loaded',
    'podpool peak-ewma',
    'podpool peak-ewma, hedged at p95',
    'grpc-js round_robin',
  ]);
  const weights = (report.draws as { k: number; probability: number }[]).map((d) => d.probability);
  // binomial(2, 1/3): 4/9, 4/9, 1/9.
  assert.deepEqual(weights, [0.4444, 0.4444, 0.1111]);
  for (const row of report.results) {
    const draws = row.draws as { k: number; probability: number; slowPodShare: number; podsUsed: number; errors: number }[];
    assert.deepEqual(draws.map((d) => d.k), [0, 1, 2], row.client);
    assert.deepEqual(draws.map((d) => d.probability), weights, `${row.client} got the same draws`);
    assert.equal(row.errors, 0, row.client);
    // Every row carries the same client's run with all pods healthy, and the ratios to it.
    const healthy = row.healthy as { requests: number; errors: number; p99Ms: number };
    assert.ok(healthy.requests > 0, `${row.client}: a healthy baseline ran`);
    assert.equal(healthy.errors, 0, row.client);
    assert.equal(row.p99Ratio, Math.round((row.p99Ms as number / healthy.p99Ms) * 100) / 100, row.client);
    assert.equal(typeof row.p999Ratio, 'number', row.client);
    if (row.kind === 'kube-proxy') {
      assert.equal(row.connections, '1');
      for (const d of draws) {
        assert.ok(d.podsUsed <= clients, `draw k=${d.k} used ${d.podsUsed} pods`);
        // Draw k pins exactly k clients' connections to the slow pod: none for k = 0.
        if (d.k === 0) assert.equal(d.slowPodShare, 0, 'k=0: no request reached the slow pod');
        else assert.ok(d.slowPodShare > 0, `k=${d.k}: the slow pod served`);
      }
    } else {
      assert.equal(row.connections, '1 per pod (3)', row.client);
      for (const d of draws) assert.equal(d.podsUsed, 3, `${row.client} k=${d.k}`);
    }
  }
  // The hedged row says how many hedges its pools sent; the others send none.
  const hedged = report.results.find((r) => r.client.endsWith('hedged at p95'))!;
  assert.equal(typeof hedged.hedges, 'number', 'the hedged row counts its hedges');
  assert.equal(hedged.hedgeRate, Math.round(((hedged.hedges as number) / ((hedged.requests as number) + hedged.errors)) * 1e4) / 1e4);
  for (const row of report.results.filter((r) => r.kind === 'podpool' && r !== hedged)) assert.equal(row.hedges ?? 0, 0, row.client);
  assertNoNamespaceLeft(report);
});

test('balance on the userspace stand-in too', { timeout: 60_000 }, async () => {
  const report = await bench('balance', ['--pods', '3', '--clients', '1', '--duration', '0.3', '--transport', 'http,grpc'], {
    PODPOOL_BENCH_STANDIN: 'userspace',
  });
  for (const row of report.results) {
    if (row.kind === 'kube-proxy' && row.connections === '1') assert.equal(row.podsUsed, 1, `${row.group}`);
    if (row.kind !== 'kube-proxy') assert.equal(row.podsUsed, 3, `${row.group} ${row.client}`);
  }
  assert.ok(report.results.some((r) => r.client === 'grpc-js round_robin' && r.errors === 0), 'grpc-js round_robin resolved the headless name');
});

test('demo --quick: one page, kube-proxy first in every comparison, the summary on stdout', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'podpool-demo-'));
  try {
    const { stdout } = await run(process.execPath, ['--conditions=podpool-source', CLI, 'demo', '--quick', '--json'], {
      timeout: 100_000,
      maxBuffer: 16 << 20,
      env: { ...process.env, PODPOOL_BENCH_RESULTS: dir },
    });
    assert.match(stdout, /^summary$/m);
    assert.match(stdout, /grpc · 1 connection: kube-proxy \(1\/client\) used [12]\/3 pods/);
    assert.match(stdout, /expected p99 over connection draws: kube-proxy \d+ ms/);
    const json = JSON.parse(stdout.trimEnd().split('\n').at(-1)!) as { results: Row[] };
    assert.ok(json.results.every((r) => r.errors === 0), JSON.stringify(json.results.filter((r) => r.errors > 0).map((r) => r.errorSamples)));
    const page = readFileSync(join(dir, 'demo.html'), 'utf8');
    assert.equal(page.match(/<svg/g)?.length, 2, 'the balance chart and the slow-pod chart');
    for (const text of ['who balances', 'throughput', 'http · 1 connection', 'expected value over those draws']) assert.ok(page.includes(text), text);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bench --help and demo --help print the usage and succeed', async () => {
  for (const command of ['bench', 'demo']) {
    const { stdout } = await run(process.execPath, ['--conditions=podpool-source', CLI, command, '--help'], { timeout: 30_000 });
    assert.match(stdout, /podpool demo \[--quick\]/, command);
  }
});

test('scale-up: podpool reaches the added pod; kube-proxy clients never do', { timeout: 90_000 }, async () => {
  const report = await bench('scale-up', ['--pods', '3', '--clients', '2', '--duration', '1.2']);
  const k8s = report.results.find((r) => r.client === 'podpool round-robin (kubernetes)');
  assert.ok(k8s, 'podpool with the Kubernetes source ran');
  assert.equal(typeof k8s.firstRequestMs, 'number', 'podpool (kubernetes) sent the added pod a request');
  assert.ok(k8s.perPod[k8s.addedPod as string]! > 0);
  for (const row of report.results.filter((r) => r.client === 'kube-proxy' || r.client === 'grpc-js round_robin')) {
    // Connections opened before the pod existed can't reach it, and grpc-js resolves again only
    // when a connection fails (at most once in 30 s): none did.
    assert.equal(row.firstRequestMs, null, `${row.transport} ${row.client}`);
    assert.equal(row.connections, row.client === 'kube-proxy' ? '1' : '1 per pod (3)');
  }
  assertNoNamespaceLeft(report);
});

test('rolling-restart: every pod is replaced under load in every mode; podpool with idempotent calls loses none', { timeout: 120_000 }, async () => {
  // Not smaller: the DNS source polls every second (±20 %), and a pool must learn of a new pod
  // before every pod it knows is gone, or a call that never reached a pod has no other to go to.
  // Here the 3 pods take ~1.6 s to replace; at 2 pods in 0.6 s the DNS rows failed now and then.
  // With retries off, the HTTP row with the DNS source fails here (1.2–1.6 % of calls).
  const report = await bench('rolling-restart', ['--pods', '3', '--clients', '2', '--duration', '2.5']);
  for (const row of report.results) assert.equal(row.replaced, 3, `${row.transport} ${row.client}`);
  const podpool = report.results.filter((r) => r.kind === 'podpool');
  // HTTP and gRPC, each with the DNS and the Kubernetes source.
  assert.deepEqual(podpool.map((r) => `${r.transport} ${r.client}`), [
    'http podpool round-robin, idempotent retry (dns)',
    'http podpool round-robin, idempotent retry (kubernetes)',
    'grpc podpool round-robin, idempotent retry (dns)',
    'grpc podpool round-robin, idempotent retry (kubernetes)',
  ]);
  for (const row of podpool) {
    assert.ok(row.requests as number > 0, `${row.transport} ${row.client}`);
    assert.equal(row.errors, 0, `${row.transport} ${row.client}: ${JSON.stringify(row.errorSamples)}`);
  }
  assertNoNamespaceLeft(report);
});

test('server-recycles: podpool loses nothing and uses every pod whether the servers recycle connections or not', { timeout: 90_000 }, async () => {
  const report = await bench('server-recycles', ['--pods', '3', '--clients', '2', '--duration', '0.5']);
  assert.deepEqual(report.results.map((r) => `${r.client} ${r.recycling ? 'on' : 'off'}`), [
    'kube-proxy off',
    'kube-proxy on',
    'podpool round-robin off',
    'podpool round-robin on',
    'undici BalancedPool off',
    'undici BalancedPool on',
  ]);
  for (const row of report.results) {
    // Recycling on: the pods accepted more connections than the clients hold (they were closed and
    // replaced); off, no more than the clients hold.
    const held = Number(/\((\d+)\)$/.exec(row.connections!)?.[1] ?? row.connections);
    if (row.recycling) assert.ok(row.socketsSeen! > held, `${row.client}: ${row.socketsSeen} sockets seen, ${held} held`);
    else assert.ok(row.socketsSeen! <= held, `${row.client}: ${row.socketsSeen} sockets seen, ${held} held`);
    if (row.recycling) assert.equal(typeof row.throughputRatio, 'number', row.client);
    if (row.kind !== 'podpool') continue;
    assert.equal(row.errors, 0, `${row.client} recycling ${row.recycling}: ${JSON.stringify(row.errorSamples)}`);
    assert.equal(row.podsUsed, 3, `${row.client} recycling ${row.recycling}`);
  }
  assertNoNamespaceLeft(report);
});

test('killed-pod: idempotent calls never fail; others fail at most as many as were on the pod as it died', { timeout: 120_000 }, async () => {
  const report = await bench('killed-pod', ['--pods', '3', '--clients', '2', '--duration', '0.6']);
  assert.deepEqual(report.results.map((r) => `${r.transport} ${r.client}`), [
    'http kube-proxy',
    'http podpool round-robin',
    'http podpool round-robin, idempotent retry',
    'grpc kube-proxy',
    'grpc podpool round-robin',
    'grpc podpool round-robin, idempotent retry',
  ]);
  const killed = new Set<string>();
  for (const row of report.results) {
    const name = `${row.transport} ${row.client}`;
    killed.add(row.killed as string);
    if (row.kind !== 'podpool') continue;
    // The kill caught calls: the clients had calls in flight on the pod (the pod itself may not
    // have read them yet on a busy machine, so its own count can be 0).
    assert.ok((row.inFlightAtKill as number) > 0, `${name}: no call was in flight on the pod when it was killed`);
    if (row.client.endsWith('idempotent retry')) {
      assert.equal(row.errors, 0, `${name}: ${JSON.stringify(row.errorSamples)}`);
    } else {
      // On the pod as it died: in flight at the kill, or sent to it before the client heard of it
      // (a gRPC call written to a connection the kernel had already reset may have reached it).
      const onThePod = (row.inFlightAtKill as number) + (row.sentToDeadPod as number);
      assert.ok(row.errors <= onThePod, `${name}: ${row.errors} failed, ${row.inFlightAtKill} in flight + ${row.sentToDeadPod} sent to the dead pod: ${JSON.stringify(row.errorSamples)}`);
    }
    // No call started between the pools' count and the kill: every call the pod held was counted.
    assert.ok((row.podUnanswered as number) <= (row.inFlightAtKill as number), `${name}: the pod held ${row.podUnanswered}, ${row.inFlightAtKill} counted`);
  }
  // Each row killed a pod of its own (the next row starts with a replacement).
  assert.equal(killed.size, report.results.length);
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
    'http podpool round-robin, metrics',
    'grpc plain grpc-js',
    'grpc podpool round-robin',
    'grpc podpool round-robin, metrics',
  ]);
  for (const row of report.results) {
    assert.equal(row.podsUsed, 2);
    assert.equal(row.errors, 0);
    assert.equal(typeof row.throughputRatio, 'number');
  }
  assertNoNamespaceLeft(report);
});

test('subset: deterministic subsets give every pod ⌊C·k/N⌋..⌈C·k/N⌉ clients, with the connections of random subsets and a fifth of full mesh\'s', { timeout: 90_000 }, async () => {
  // 3 clients × 6 pods, subsets of ⌈6/5⌉ = 2: C·k/N = 1, so exactly one client per pod.
  const report = await bench('subset', ['--pods', '6', '--clients', '3', '--duration', '0.3']);
  assert.deepEqual(report.results.map((r) => r.client), [
    'podpool round-robin, full mesh',
    'podpool round-robin, random subsets of 2',
    'podpool round-robin, deterministic subsets of 2',
  ]);
  const [mesh, random, deterministic] = report.results as [Row, Row, Row];
  for (const row of report.results) {
    assert.equal(row.errors, 0, `${row.client}: ${JSON.stringify(row.errorSamples)}`);
    assert.equal(row.pods, 6, row.client);
    // What the pods accepted: never more sockets than the pools hold.
    assert.ok(typeof row.socketsSeen === 'number' && row.socketsSeen <= (row === mesh ? 6 : 2), `${row.client}: ${row.socketsSeen} sockets per client`);
  }
  assert.equal(mesh.connections, '1 per pod (6)');
  assert.equal(mesh.connectionsTotal, 18);
  assert.deepEqual(mesh.clientsPerPod, { min: 3, max: 3 });
  assert.equal(random.connections, '2 of 6');
  assert.equal(random.connectionsTotal, 6);
  assert.equal(deterministic.connections, '2 of 6');
  assert.equal(deterministic.connectionsTotal, 6);
  assert.deepEqual(deterministic.clientsPerPod, { min: 1, max: 1 });
  // Each pod's one client sends it half its calls: every pod serves.
  assert.equal(deterministic.podsUsed, 6);
  assert.ok((report.churnOnePodAdded as { maxPerClient: number }).maxPerClient <= 2);
  assertNoNamespaceLeft(report);
});
