/**
 * `podpool bench <scenario>` and `podpool demo`: flags, the stand-in (re-running inside a network
 * namespace when it can), the table on stdout, results and charts under bench/results, and with
 * `--json` one JSON object as the last line of stdout.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Cluster } from './cluster.ts';
import { clearProgress, note } from './progress.ts';
import { RESULTS_DIR, perPodChart, percentileChart, renderSvg, writeResults, type ScenarioReport } from './report.ts';
import { balance } from './scenarios/balance.ts';
import type { ScenarioOptions, ScenarioOutput } from './scenarios/options.ts';
import { SCENARIOS } from './scenarios/index.ts';
import { currentNamespace, detectStandIn, runInNamespace } from './standin.ts';
import type { Wire } from './clients.ts';

export const USAGE = `usage:
  podpool demo                      balance (gRPC, WebSocket, HTTP) and slow-pod at a small size; writes an HTML page
  podpool bench <scenario> [--pods N] [--clients C] [--duration S] [--json]
      scenarios: ${Object.keys(SCENARIOS).join(', ')}
      --transport http,grpc,ws   wire protocols to compare (balance, overhead)
      --inflight K               requests in flight per client (default 16)
      --concurrency K            requests a pod serves at once (default 4)
      --service-ms MS            a pod's service time per request (default 10)`;

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
  if (command === 'bench') {
    scenario = positionals[0] ?? '';
    if (!(scenario in SCENARIOS)) throw new UsageError(`unknown scenario ${JSON.stringify(scenario)}\n${USAGE}`);
  }
  if (!currentNamespace() && detectStandIn().standIn === 'iptables') return runInNamespace();
  if (command === 'demo') return demo(values);
  const output = await SCENARIOS[scenario]!(scenarioOptions(values, {}));
  await emit(output, values.json === true);
  return 0;
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

/** `podpool demo`: the picture in under a minute. */
async function demo(values: Record<string, string | boolean | undefined>): Promise<number> {
  const options = scenarioOptions(values, { pods: 5, clients: 2, durationS: 1.5, wires: ['grpc', 'ws', 'http'] });
  const started = performance.now();
  const cluster = await Cluster.start({ pods: options.pods, concurrency: options.concurrency, serviceMs: options.serviceMs });
  note(`podpool demo: ${options.clients} clients, ${options.pods} pods; stand-in: ${cluster.standIn} (${cluster.standInReason})`);
  let outputs: ScenarioOutput[];
  try {
    const balanced = await balance({ ...options, balancers: ['round-robin', 'least-loaded'] }, cluster);
    const slow = await SCENARIOS['slow-pod']!({ ...options, durationS: Math.max(1, options.durationS) }, cluster);
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

/** One line per transport: what kube-proxy used and did, against podpool's best. */
export function summaryTable(reports: readonly ScenarioReport[]): string {
  const lines: string[] = ['summary'];
  const balanceReport = reports.find((r) => r.scenario === 'balance');
  if (balanceReport) {
    for (const wire of new Set(balanceReport.results.map((r) => r.transport))) {
      const rows = balanceReport.results.filter((r) => r.transport === wire);
      const kube = rows.find((r) => r.client === 'kube-proxy');
      const best = rows.filter((r) => r.client.startsWith('podpool')).sort((a, b) => b.throughput - a.throughput)[0];
      if (!kube || !best) continue;
      // The peer a user would otherwise pick, so the line does not flatter podpool.
      const peers = rows.filter((r) => r !== kube && !r.client.startsWith('podpool'));
      lines.push(
        `  ${wire.padEnd(5)} kube-proxy used ${kube.podsUsed}/${kube.pods} pods at ${kube.throughput} req/s; ` +
          `${best.client} used ${best.podsUsed}/${best.pods} at ${best.throughput} req/s (×${(best.throughput / Math.max(1, kube.throughput)).toFixed(1)})` +
          peers.map((p) => `; ${p.client} ${p.podsUsed}/${p.pods} at ${p.throughput} req/s`).join(''),
      );
    }
  }
  const slowReport = reports.find((r) => r.scenario === 'slow-pod');
  if (slowReport) {
    const rows = [...slowReport.results].sort((a, b) => a.p99Ms - b.p99Ms);
    lines.push(`  slow pod (one of ${slowReport.pods} pods 10× slower), p99: ${rows.map((r) => `${r.client} ${r.p99Ms.toFixed(0)} ms`).join(', ')}`);
  }
  return lines.join('\n');
}

async function demoPage(balanced: ScenarioOutput, slow: ScenarioOutput, summary: string): Promise<string> {
  const escape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const perPod = await renderSvg(perPodChart(balanced.report, 'Requests served per pod'));
  const latency = await renderSvg(slow.chart ?? percentileChart(slow.report, 'Latency with one slow pod'));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>podpool demo</title>
<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}pre{background:#f6f6f6;padding:1em;overflow:auto}</style>
</head><body>
<h1>podpool demo</h1>
<p>${balanced.report.clients} clients with long-lived connections, ${balanced.report.pods} pods behind a headless Service; stand-in: <b>${balanced.report.standIn}</b> (${escape(balanced.report.standInReason)}).
kube-proxy balances connections, so each client's one connection stays on the pod iptables picked; podpool picks a pod per request.</p>
<h2>Who served the requests</h2>
${perPod}
<h2>One pod turns 10× slower</h2>
${latency}
<h2>Numbers</h2>
<pre>${escape(summary)}\n\n${escape(balanced.table)}\n\n${escape(slow.table)}</pre>
</body></html>
`;
}

