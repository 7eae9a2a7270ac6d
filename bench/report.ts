/**
 * What a scenario leaves behind: a table on stdout, `bench/results/<scenario>.json`, a chart
 * (SVG drawn by vega-lite) beside it, and with `--json` one JSON object as the last line of stdout.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as vega from 'vega';
import * as vegaLite from 'vega-lite';
import type { ModeResult } from './measure.ts';
import type { StandIn } from './standin.ts';

/** bench/results, or `PODPOOL_BENCH_RESULTS` (the smoke test writes elsewhere). */
export const RESULTS_DIR = process.env.PODPOOL_BENCH_RESULTS
  ? `${process.env.PODPOOL_BENCH_RESULTS.replace(/\/$/, '')}/`
  : fileURLToPath(new URL('./results/', import.meta.url));

export interface ScenarioReport {
  scenario: string;
  standIn: StandIn;
  /** Why this stand-in ran. */
  standInReason: string;
  pods: number;
  clients: number;
  durationS: number;
  /** Pods' capacity: requests at once, and service time. */
  podConcurrency: number;
  serviceMs: number;
  results: ModeResult[];
  /** Short sentences on what the numbers say, for the table's footer. */
  notes?: string[];
  [figure: string]: unknown;
}

/** What every load scenario's report starts with: the stand-in that ran and the run's shape. */
export function reportHead(
  scenario: string,
  cluster: { readonly standIn: StandIn; readonly standInReason: string },
  options: { pods: number; clients: number; durationS: number; concurrency: number; serviceMs: number; inflight: number },
): Pick<ScenarioReport, 'scenario' | 'standIn' | 'standInReason' | 'pods' | 'clients' | 'durationS' | 'podConcurrency' | 'serviceMs'> & {
  inflightPerClient: number;
} {
  return {
    scenario,
    standIn: cluster.standIn,
    standInReason: cluster.standInReason,
    pods: options.pods,
    clients: options.clients,
    durationS: options.durationS,
    podConcurrency: options.concurrency,
    serviceMs: options.serviceMs,
    inflightPerClient: options.inflight,
  };
}

/** A vega-lite spec (loosely typed: vega-lite's own types are broad and deep). */
export type ChartSpec = Record<string, unknown>;

export async function renderSvg(spec: ChartSpec): Promise<string> {
  // Client names are long ("http · podpool round-robin (kubernetes)"): cut, two read the same.
  const config = { axis: { labelLimit: 320 }, legend: { labelLimit: 320 } };
  const compiled = vegaLite.compile({ $schema: 'https://vega.github.io/schema/vega-lite/v6.json', config, ...spec } as never).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Per-pod load bars: one panel per client, one bar per pod. */
export function perPodChart(report: ScenarioReport, title: string): ChartSpec {
  const values = report.results.flatMap((r) =>
    Object.entries(r.perPod).map(([pod, served]) => ({ client: `${r.transport} · ${r.client}`, pod, served })),
  );
  return {
    title: { text: title, subtitle: `${report.clients} clients, ${report.pods} pods, ${report.standIn} stand-in` },
    data: { values },
    mark: 'bar',
    width: 150,
    height: 110,
    encoding: {
      facet: { field: 'client', type: 'nominal', columns: 4, title: null, sort: null },
      x: { field: 'pod', type: 'nominal', title: null, axis: { labelAngle: -45 } },
      y: { field: 'served', type: 'quantitative', title: 'requests served' },
      color: { field: 'client', type: 'nominal', legend: null },
    },
    // One y scale for every panel: a client that served less must look smaller, not re-scaled.
  };
}

/** Latency percentiles per client (log scale: a slow pod's tail is orders above the median). */
export function percentileChart(report: ScenarioReport, title: string): ChartSpec {
  const values = report.results.flatMap((r) =>
    (['p50Ms', 'p99Ms', 'p999Ms'] as const).map((p) => ({
      client: `${r.transport} · ${r.client}`,
      percentile: p.replace('Ms', '').replace('p999', 'p99.9'),
      ms: Math.max(1, r[p]),
    })),
  );
  return {
    title: { text: title, subtitle: `${report.clients} clients, ${report.pods} pods, ${report.standIn} stand-in` },
    data: { values },
    mark: 'bar',
    width: 360,
    height: 160,
    encoding: {
      y: { field: 'client', type: 'nominal', title: null, sort: null },
      yOffset: { field: 'percentile', type: 'nominal', sort: ['p50', 'p99', 'p99.9'] },
      x: { field: 'ms', type: 'quantitative', scale: { type: 'log', domainMin: 1 }, title: 'latency (ms, log scale)' },
      // A log scale has no 0: the bars grow from 1 ms, or vega draws none of them.
      x2: { datum: 1 },
      color: { field: 'percentile', type: 'nominal', sort: ['p50', 'p99', 'p99.9'] },
    },
  };
}

/** Throughput bars per client. */
export function throughputChart(report: ScenarioReport, title: string): ChartSpec {
  return {
    title: { text: title, subtitle: `${report.clients} clients, ${report.pods} pods, ${report.standIn} stand-in` },
    data: { values: report.results.map((r) => ({ client: `${r.transport} · ${r.client}`, throughput: r.throughput })) },
    mark: 'bar',
    width: 360,
    height: { step: 18 },
    encoding: {
      y: { field: 'client', type: 'nominal', title: null, sort: null },
      x: { field: 'throughput', type: 'quantitative', title: 'requests / s' },
      color: { field: 'client', type: 'nominal', legend: null },
    },
  };
}

/** Writes `<scenario>.json` and `<scenario>.svg` under bench/results; returns their paths. */
export async function writeResults(report: ScenarioReport, chart: ChartSpec | undefined, name = report.scenario): Promise<{ json: string; svg?: string }> {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const json = `${RESULTS_DIR}${name}.json`;
  writeFileSync(json, `${JSON.stringify(report, null, 2)}\n`);
  if (chart === undefined) return { json };
  const svg = `${RESULTS_DIR}${name}.svg`;
  writeFileSync(svg, await renderSvg(chart));
  return { json, svg };
}

/** The columns every scenario shows; a scenario adds its own figures after them. */
const COLUMNS: [string, (r: ModeResult) => string][] = [
  ['transport', (r) => r.transport],
  ['client', (r) => r.client],
  ['pods used', (r) => `${r.podsUsed}/${r.pods}`],
  ['cv', (r) => r.cv.toFixed(2)],
  ['req/s', (r) => String(r.throughput)],
  ['p50 ms', (r) => r.p50Ms.toFixed(1)],
  ['p99 ms', (r) => r.p99Ms.toFixed(1)],
  ['errors', (r) => String(r.errors)],
];

export function formatTable(report: ScenarioReport, extra: [string, (r: ModeResult) => string][] = []): string {
  const columns = [...COLUMNS, ...extra];
  const rows = report.results.map((r) => columns.map(([, f]) => f(r)));
  const header = columns.map(([h]) => h);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  const size =
    report.scenario === 'broadcast'
      ? `N = ${(report.sizes as number[] | undefined)?.join(', ') ?? report.pods} pods`
      : `${report.clients} clients × ${report.pods} pods, ${report.durationS} s per client`;
  const pods = report.podConcurrency === 0 ? 'pods answer at once' : `pods serve ${report.podConcurrency} at a time × ${report.serviceMs} ms`;
  const title = `${report.scenario}: ${size}, ${pods}; stand-in: ${report.standIn} (${report.standInReason})`;
  const hung = report.results
    .filter((r) => typeof r.closeTimedOut === 'number')
    .map((r) => `  ! ${r.transport} ${r.client}: close() of ${r.closeTimedOut} client(s) did not finish within 3 s`);
  return [
    title,
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...rows.map(line),
    ...(report.notes ?? []).map((n) => `  ${n}`),
    ...hung,
  ].join('\n');
}
