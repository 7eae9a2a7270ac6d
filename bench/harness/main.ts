/**
 * `podpool bench <scenario>` and `podpool demo`: flags, the stand-in (re-running inside a network
 * namespace when it can), the table on stdout, results and charts under bench/results, and with
 * `--json` one JSON object as the last line of stdout.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Cluster } from './cluster.ts';
import { KubeCluster } from './kube/in-cluster.ts';
import { formatEvent, type RunnerEvent } from './kube/protocol.ts';
import { clearProgress, note, sendProgressTo } from './progress.ts';
import { version } from '../../src/cli/version.ts';
import { RESULTS_DIR, renderSvg, writeResults, type ScenarioReport } from './report.ts';
import { balance } from './scenarios/balance.ts';
import type { ScenarioOptions, ScenarioOutput } from './scenarios/options.ts';
import { SCENARIO_DEFAULTS, SCENARIOS } from './scenarios/index.ts';
import { currentNamespace, detectStandIn, runInNamespace } from './standin.ts';
import type { Wire } from './client-modes.ts';

export const USAGE = `usage:
  podpool demo [--quick]            balance (gRPC, WebSocket, HTTP) and slow-pod at a small size; writes an HTML page
      --quick                       the smallest demo (3 pods, short runs): a few seconds, for a first look or a test
  podpool bench <scenario> [--pods N] [--clients C] [--duration S] [--json]
      scenarios: ${Object.keys(SCENARIOS).join(', ')}
      --transport http,grpc,ws   wire protocols to compare (balance, overhead)
      --inflight K               requests in flight per client (default 16)
      --concurrency K            requests a pod serves at once (default 4)
      --service-ms MS            a pod's service time per request (default 10)
  podpool bench <scenario> --cluster [--kubeconfig F] [--context C] [--image I] [--namespace N] [flags]
      the scenario on a real cluster: creates the backend Deployment, the Services, RBAC and a
      client Job (in namespace N, or a new one), collects the results, deletes what it created
      --image I                  the podpool image pods and the Job run (default podpool:<version>)
  podpool bench manifests <scenario> [--image I] [--namespace N] [flags]
      prints the same objects as YAML, for kubectl apply -f -
  podpool bench collect <scenario> --namespace N [--kubeconfig F] [--context C]
      follows the client Job of applied manifests, serves its requests, writes the results
  podpool bench <scenario> --in-cluster [flags]
      what the client Job's pod runs (bench --cluster starts it)`;

const DEFAULTS = { pods: 5, clients: 2, durationS: 3, inflight: 16, concurrency: 4, serviceMs: 10 };

function scenarioOptions(values: Record<string, string | boolean | undefined>, defaults: Partial<ScenarioOptions>): ScenarioOptions {
  const number = (name: string, fallback: number, min: number): number => {
    const raw = values[name];
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min) throw new UsageError(`--${name} must be a number ≥ ${min}, got ${JSON.stringify(raw)}`);
    return n;
  };
  const wires = typeof values.transport === 'string' ? (values.transport.split(',') as Wire[]) : defaults.wires;
  for (const w of wires ?? []) if (!['http', 'grpc', 'ws'].includes(w)) throw new UsageError(`--transport takes http, grpc, ws; got ${w}`);
  return {
    pods: Math.round(number('pods', defaults.pods ?? DEFAULTS.pods, 1)),
    podsGiven: values.pods !== undefined,
    clients: Math.round(number('clients', defaults.clients ?? DEFAULTS.clients, 1)),
    durationS: number('duration', defaults.durationS ?? DEFAULTS.durationS, 0.1),
    inflight: Math.round(number('inflight', defaults.inflight ?? DEFAULTS.inflight, 1)),
    concurrency: Math.round(number('concurrency', defaults.concurrency ?? DEFAULTS.concurrency, 1)),
    serviceMs: number('service-ms', defaults.serviceMs ?? DEFAULTS.serviceMs, 0),
    ...(wires && { wires }),
  };
}

export class UsageError extends Error {
  override name = 'UsageError';
}

const FLAGS = {
  pods: { type: 'string' },
  clients: { type: 'string' },
  duration: { type: 'string' },
  inflight: { type: 'string' },
  concurrency: { type: 'string' },
  'service-ms': { type: 'string' },
  transport: { type: 'string' },
  json: { type: 'boolean' },
  quick: { type: 'boolean' },
  'in-cluster': { type: 'boolean' },
  cluster: { type: 'boolean' },
  kubeconfig: { type: 'string' },
  context: { type: 'string' },
  image: { type: 'string' },
  namespace: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/**
 * Runs `bench …` or `demo` with the arguments after the command name. In the iptables stand-in
 * the first call creates the namespace and runs the same command again inside it.
 */
export async function main(command: 'bench' | 'demo', args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: FLAGS, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let scenario = 'demo';
  let verb: 'run' | 'manifests' | 'collect' = 'run';
  if (command === 'bench') {
    if (positionals[0] === 'manifests' || positionals[0] === 'collect') verb = positionals.shift() as 'manifests' | 'collect';
    scenario = positionals[0] ?? '';
    if (!(scenario in SCENARIOS)) throw new UsageError(`unknown scenario ${JSON.stringify(scenario)}\n${USAGE}`);
  }
  const onCluster = values.cluster === true || verb !== 'run';
  for (const flag of ['kubeconfig', 'context', 'image', 'namespace'] as const) {
    if (values[flag] !== undefined && !onCluster) throw new UsageError(`--${flag} goes with --cluster, manifests or collect`);
  }
  if (command === 'demo' && (onCluster || values['in-cluster'])) throw new UsageError('demo runs on the stand-in only; on a cluster, run bench <scenario> --cluster');
  if (values['in-cluster']) {
    if (onCluster) throw new UsageError('--in-cluster is what the client Job runs; it goes with none of --cluster, manifests, collect');
    return runInCluster(scenario, scenarioOptions(values, SCENARIO_DEFAULTS[scenario] ?? {}));
  }
  if (onCluster) return clusterCommand(verb, scenario, values);
  if (!currentNamespace() && detectStandIn().standIn === 'iptables') return runInNamespace();
  if (command === 'demo') return demo(values);
  const output = await SCENARIOS[scenario]!(scenarioOptions(values, SCENARIO_DEFAULTS[scenario] ?? {}));
  await emit(output, values.json === true);
  return 0;
}

/** The scenario's flags as the user gave them, for the client Job's command line. */
const SCENARIO_FLAGS = ['pods', 'clients', 'duration', 'inflight', 'concurrency', 'service-ms', 'transport'] as const;

/** `bench <scenario> --cluster`, `bench manifests <scenario>` and `bench collect <scenario>`. */
async function clusterCommand(verb: 'run' | 'manifests' | 'collect', scenario: string, values: Record<string, string | boolean | undefined>): Promise<number> {
  const options = scenarioOptions(values, SCENARIO_DEFAULTS[scenario] ?? {});
  const runnerArgs = SCENARIO_FLAGS.flatMap((flag) => (typeof values[flag] === 'string' ? [`--${flag}`, values[flag] as string] : []));
  const image = typeof values.image === 'string' ? values.image : `podpool:${version()}`;
  const namespace = typeof values.namespace === 'string' ? values.namespace : undefined;
  const cluster = {
    image,
    ...(namespace !== undefined && { namespace }),
    ...(typeof values.kubeconfig === 'string' && { kubeconfig: values.kubeconfig }),
    ...(typeof values.context === 'string' && { context: values.context }),
  };
  // Loaded only here: the stand-in never needs the orchestration code.
  const { manifests, benchSpec } = await import('./kube/manifests.ts');
  const { runOnCluster, collect } = await import('./kube/orchestrate.ts');
  if (verb === 'manifests') {
    process.stdout.write(manifests(benchSpec(scenario, options, cluster, runnerArgs)));
    return 0;
  }
  if (verb === 'collect' && namespace === undefined) throw new UsageError('collect needs --namespace: the one the manifests were applied to');
  const output = verb === 'collect' ? await collect(scenario, { ...cluster, namespace: namespace! }) : await runOnCluster(scenario, options, cluster, runnerArgs);
  await emit(output, values.json === true);
  return 0;
}

/**
 * `bench <scenario> --in-cluster`: the client Job's pod. The scenario runs as on the stand-in,
 * against the cluster its pod is in ({@link KubeCluster}); what it has to say goes to stdout as
 * event lines for the command that started it (which follows the pod's log), the report last.
 */
async function runInCluster(scenario: string, options: ScenarioOptions): Promise<number> {
  const send = (event: RunnerEvent): void => {
    process.stdout.write(formatEvent(event));
  };
  sendProgressTo({ progress: (label, fraction) => send({ event: 'progress', label, fraction }), note: (message) => send({ event: 'note', message }) });
  let cluster: KubeCluster | undefined;
  try {
    cluster = await KubeCluster.connect(options.pods, send);
    send({ event: 'hello', scenario, pods: cluster.readyPods().length, version: version() });
    const output = await SCENARIOS[scenario]!(options, cluster);
    send({ event: 'result', report: output.report, ...(output.chart && { chart: output.chart }), table: output.table });
    return 0;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    send({ event: 'error', message: error instanceof Error ? error.message : String(error), ...(typeof code === 'string' && { code }) });
    return 1;
  } finally {
    await cluster?.close();
    sendProgressTo(undefined);
  }
}

async function emit(output: ScenarioOutput, json: boolean): Promise<void> {
  clearProgress();
  const namespace = currentNamespace();
  if (namespace) output.report.namespace = namespace;
  const { json: jsonPath, svg } = await writeResults(output.report, output.chart);
  process.stdout.write(`${output.table}\n`);
  process.stdout.write(`results: ${jsonPath}${svg ? `\nchart:   ${svg}` : ''}\n`);
  if (json) process.stdout.write(`${JSON.stringify(output.report)}\n`);
}

/** `podpool demo`: the picture in under a minute; `--quick`, in a few seconds. */
async function demo(values: Record<string, string | boolean | undefined>): Promise<number> {
  const quick = values.quick === true;
  const options = scenarioOptions(values, { pods: quick ? 3 : 5, clients: 2, durationS: quick ? 0.2 : 1.2, wires: ['grpc', 'ws', 'http'] });
  const started = performance.now();
  const cluster = await Cluster.start({ pods: options.pods, concurrency: options.concurrency, serviceMs: options.serviceMs });
  note(`podpool demo${quick ? ' --quick' : ''}: ${options.clients} clients, ${options.pods} pods; stand-in: ${cluster.standIn} (${cluster.standInReason})`);
  let outputs: ScenarioOutput[];
  try {
    const balanced = await balance({ ...options, balancers: ['round-robin', 'least-loaded'] }, cluster);
    const slow = await SCENARIOS['slow-pod']!(options, cluster);
    outputs = [balanced, slow];
  } finally {
    await cluster.close();
  }
  clearProgress();
  const [balanced, slow] = outputs as [ScenarioOutput, ScenarioOutput];
  await writeResults(balanced.report, balanced.chart, 'demo-balance');
  await writeResults(slow.report, slow.chart, 'demo-slow-pod');
  const summary = summaryTable([balanced.report, slow.report]);
  process.stdout.write(`${balanced.table}\n\n${slow.table}\n\n${summary}\n`);
  const html = await demoPage(balanced, slow, summary);
  const page = `${RESULTS_DIR}demo.html`;
  writeFileSync(page, html);
  process.stdout.write(`\ndemo page: ${page}  (${((performance.now() - started) / 1000).toFixed(1)} s)\n`);
  if (values.json) process.stdout.write(`${JSON.stringify({ scenario: 'demo', standIn: balanced.report.standIn, results: [...balanced.report.results, ...slow.report.results.map((r) => ({ ...r, scenario: 'slow-pod' }))] })}\n`);
  return 0;
}

/**
 * One line per comparison group (the same connections per client): what kube-proxy used and did,
 * against podpool's best and the other client-side balancers; then slow-pod's expected p99s.
 */
export function summaryTable(reports: readonly ScenarioReport[]): string {
  const lines: string[] = ['summary'];
  const balanceReport = reports.find((r) => r.scenario === 'balance');
  if (balanceReport) {
    for (const group of new Set(balanceReport.results.map((r) => r.group ?? r.transport))) {
      const rows = balanceReport.results.filter((r) => (r.group ?? r.transport) === group);
      const kube = rows.find((r) => r.kind === 'kube-proxy');
      const best = rows.filter((r) => r.kind === 'podpool').sort((a, b) => b.throughput - a.throughput)[0];
      if (!kube || !best) continue;
      // The peer a user would otherwise pick, so the line does not flatter podpool.
      const peers = rows.filter((r) => r.kind === 'client-side');
      lines.push(
        `  ${group}: kube-proxy (${kube.connections}/client) used ${kube.podsUsed}/${kube.pods} pods at ${kube.throughput} req/s; ` +
          `${best.client} (${best.connections}) used ${best.podsUsed}/${best.pods} at ${best.throughput} req/s (×${(best.throughput / Math.max(1, kube.throughput)).toFixed(1)})` +
          peers.map((p) => `; ${p.client} ${p.podsUsed}/${p.pods} at ${p.throughput} req/s`).join(''),
      );
    }
  }
  const slowReport = reports.find((r) => r.scenario === 'slow-pod');
  if (slowReport) {
    lines.push(
      `  slow pod (one of ${slowReport.pods} pods ${slowReport.slowFactor}× slower), expected p99 over connection draws: ` +
        slowReport.results.map((r) => `${r.client} ${r.p99Ms.toFixed(0)} ms`).join(', '),
    );
    const kube = slowReport.results.find((r) => r.kind === 'kube-proxy');
    const draws = (kube?.draws as { k: number; probability: number; p99Ms: number }[] | undefined) ?? [];
    if (draws.length > 0) {
      lines.push(`    kube-proxy's draws: ${draws.map((d) => `${d.k} of ${slowReport.clients} clients on the slow pod (p = ${(d.probability * 100).toFixed(1)} %): p99 ${d.p99Ms.toFixed(0)} ms`).join('; ')}`);
    }
  }
  return lines.join('\n');
}

async function demoPage(balanced: ScenarioOutput, slow: ScenarioOutput, summary: string): Promise<string> {
  const escape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const report = balanced.report;
  const perPod = await renderSvg(balanced.chart!);
  const latency = await renderSvg(slow.chart!);
  const draws = (slow.report.draws as { k: number; probability: number }[]).map((d) => `${d.k} (${(d.probability * 100).toFixed(1)} %)`).join(', ');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>podpool demo</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}
pre{background:#f6f6f6;padding:1em;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
.kind{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:baseline}
</style>
</head><body>
<h1>podpool demo</h1>
<p>${report.clients} client applications, ${report.pods} pods behind one Service; each pod serves ${report.podConcurrency} requests at a time, ${report.serviceMs} ms each; every client keeps ${report.inflightPerClient} requests in flight.
Stand-in: <b>${report.standIn}</b> (${escape(report.standInReason)}).</p>
<p>Colours say who balances:
<span class="kind" style="background:#e45756"></span>kube-proxy (through the ClusterIP, which balances connections, not requests),
<span class="kind" style="background:#4c78a8"></span>podpool (a connection to every pod, a pod picked per request),
<span class="kind" style="background:#54a24b"></span>another client-side balancer a user might pick instead.</p>
<h2>Who served the requests, and how fast</h2>
<p>Each row of panels is one comparison, kube-proxy first: every client in it holds the same connections.
<b>1 connection</b>: one long-lived connection per destination (gRPC's default): kube-proxy's goes to the ClusterIP and stays on the pod it was sent to; podpool and the others hold one to each pod. HTTP/1.1 answers a connection's requests in turn, so this row is slow for everyone.
<b>${escape(String(report.results.find((r) => r.transport === 'http' && r.kind === 'kube-proxy' && r.connections !== '1')?.connections ?? 'S'))} sockets</b>: an HTTP agent with that many sockets per client in every row; through the ClusterIP each socket is sent to a pod on its own, so kube-proxy spreads some.</p>
<figure>${perPod}</figure>
<h2>One pod turns ${String(slow.report.slowFactor)}× slower</h2>
<p>Where kube-proxy's connections land is luck: with ${slow.report.clients} clients and ${slow.report.pods} pods, none of them meets the slow pod in ${(((slow.report.draws as { probability: number }[])[0]?.probability ?? 0) * 100).toFixed(0)} % of runs.
So the page does not show one lucky or unlucky run: every row ran one draw per number of clients pinned to the slow pod, ${draws}, and shows the expected value over those draws (bars) and each draw (circles).
Every row got the same draws, connections (one per destination), load and weights; podpool connects to every pod, so its draws differ only by noise.</p>
<figure>${latency}</figure>
<h2>Numbers</h2>
<pre>${escape(summary)}\n\n${escape(balanced.table)}\n\n${escape(slow.table)}</pre>
</body></html>
`;
}
