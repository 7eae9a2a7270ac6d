/**
 * What a scenario leaves behind: a table on stdout, `bench/results/<scenario>.json`, a chart
 * (SVG drawn by vega-lite) beside it, and with `--json` one JSON object as the last line of stdout.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as vega from 'vega';
import * as vegaLite from 'vega-lite';
import type { ModeResult } from './measure.ts';
import type { StandIn } from './standin.ts';

/**
 * Where results go: `PODPOOL_BENCH_RESULTS` when set (the smoke tests write elsewhere); else
 * bench/results when running from the repository's sources, and ./podpool-results in the current
 * directory when running from the installed package (never inside node_modules).
 */
export const RESULTS_DIR = process.env.PODPOOL_BENCH_RESULTS
  ? `${process.env.PODPOOL_BENCH_RESULTS.replace(/\/$/, '')}/`
  : import.meta.url.endsWith('.ts')
    ? fileURLToPath(new URL('../results/', import.meta.url))
    : `${join(process.cwd(), 'podpool-results')}/`;

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

/**
 * Where a report ran, for titles: `iptables stand-in`, or `Kubernetes v1.31.2, 3 nodes, kube-proxy
 * ipvs` (the command's `standInReason` for a real cluster).
 */
export function ranOn(report: Pick<ScenarioReport, 'standIn' | 'standInReason'>): string {
  return report.standIn === 'kubernetes' ? report.standInReason : `${report.standIn} stand-in`;
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

/** The colour of each kind of client, the same on every chart. */
export const KIND_COLOURS = {
  scale: { domain: ['kube-proxy', 'podpool', 'client-side'], range: ['#e45756', '#4c78a8', '#54a24b'] },
  legend: { title: 'who balances', orient: 'top', labelExpr: "datum.label === 'client-side' ? 'other client-side balancer' : datum.label === 'kube-proxy' ? 'kube-proxy (ClusterIP)' : datum.label" },
} as const;

/**
 * Per-pod load and throughput, one row of panels per comparison group (kube-proxy first), the
 * group's throughput bars beside its panels. Every panel shares one y scale and every throughput
 * chart one x scale: a client that served less must look smaller, not re-scaled.
 */
export function balanceChart(report: ScenarioReport, title: string): ChartSpec {
  const groups = [...new Set(report.results.map((r) => r.group ?? r.transport))];
  const maxServed = Math.max(1, ...report.results.flatMap((r) => Object.values(r.perPod)));
  const maxThroughput = Math.max(1, ...report.results.map((r) => r.throughput));
  const colour = { field: 'kind', type: 'nominal', ...KIND_COLOURS };
  const rows = groups.map((group) => {
    const results = report.results.filter((r) => (r.group ?? r.transport) === group);
    const order = results.map((r) => r.client);
    const perPod = results.flatMap((r) => Object.entries(r.perPod).map(([pod, served]) => ({ client: r.client, kind: r.kind, pod, served })));
    const throughput = results.map((r) => ({ client: r.client, kind: r.kind, throughput: r.throughput }));
    const kube = results.find((r) => r.kind === 'kube-proxy');
    const other = results.find((r) => r.kind !== 'kube-proxy');
    const connections = [kube && `kube-proxy ${kube.connections}`, other && `the others ${other.connections}`].filter(Boolean).join(', ');
    // Throughput first, so that every group's bars line up whatever its number of panels.
    const throughputChart = {
      data: { values: throughput },
      width: 170,
      height: { step: 22 },
      title: { text: 'throughput', fontSize: 11, fontWeight: 'normal' },
      encoding: {
        y: { field: 'client', type: 'nominal', sort: order, title: null, axis: { labelLimit: 200 } },
        x: { field: 'throughput', type: 'quantitative', title: 'requests / s', scale: { domain: [0, maxThroughput * 1.2] } },
      },
      layer: [
        { mark: 'bar', encoding: { color: colour } },
        { mark: { type: 'text', align: 'left', dx: 3, fontSize: 10 }, encoding: { text: { field: 'throughput', type: 'quantitative', format: ',' } } },
      ],
    };
    return {
      title: { text: `${group}: connections per client, ${connections}`, anchor: 'start', fontSize: 13 },
      hconcat: [
        throughputChart,
        {
          data: { values: perPod },
          facet: { column: { field: 'client', sort: order, header: { title: null, labelLimit: 0, labelFontSize: 11 } } },
          spec: {
            width: 120,
            height: 90,
            mark: 'bar',
            encoding: {
              x: { field: 'pod', type: 'nominal', title: null, axis: { labelAngle: -45 } },
              y: { field: 'served', type: 'quantitative', title: 'requests served', scale: { domain: [0, maxServed] } },
              color: colour,
            },
          },
        },
      ],
    };
  });
  return {
    title: { text: title, subtitle: `${report.clients} clients, ${report.pods} pods, ${ranOn(report)}; each row: the same connections per client` },
    vconcat: rows,
    spacing: 24,
    resolve: { scale: { color: 'shared' }, legend: { color: 'shared' } },
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
    title: { text: title, subtitle: `${report.clients} clients, ${report.pods} pods, ${ranOn(report)}` },
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

/**
 * slow-pod: each client's expected p99 (a bar, coloured by who balances) and each connection
 * draw's p99 (a circle, as large as the draw is likely), on a log scale.
 */
export function slowPodChart(report: ScenarioReport, title: string): ChartSpec {
  const order = report.results.map((r) => r.client);
  const bars = report.results.map((r) => ({ client: r.client, kind: r.kind, ms: Math.max(1, r.p99Ms) }));
  const draws = report.results.flatMap((r) =>
    ((r.draws as { k: number; probability: number; p99Ms: number }[] | undefined) ?? []).map((d) => ({
      client: r.client,
      ms: Math.max(1, d.p99Ms),
      probability: d.probability,
      draw: `k=${d.k}`,
    })),
  );
  const y = { field: 'client', type: 'nominal', sort: order, title: null, axis: { labelLimit: 220 } };
  // The axis ends on a power of ten above every bar and circle, so none is cut at the edge.
  const top = Math.max(10, ...bars.map((b) => b.ms), ...draws.map((d) => d.ms));
  const x = { field: 'ms', type: 'quantitative', scale: { type: 'log', domain: [1, 10 ** Math.ceil(Math.log10(top * 1.05))] }, title: 'p99 latency (ms, log scale)' };
  return {
    title: { text: title, subtitle: `${report.clients} clients, ${report.pods} pods, ${ranOn(report)}; bar: expected p99 over connection draws, circles: each draw (size = its probability)` },
    width: 520,
    height: { step: 30 },
    layer: [
      // A log scale has no 0: the bars grow from 1 ms, or vega draws none of them.
      { data: { values: bars }, mark: 'bar', encoding: { y, x, x2: { datum: 1 }, color: { field: 'kind', type: 'nominal', ...KIND_COLOURS } } },
      {
        data: { values: draws },
        mark: { type: 'point', filled: false, color: '#222', strokeWidth: 1.5 },
        encoding: { y, x, size: { field: 'probability', type: 'quantitative', scale: { domain: [0, 1], range: [20, 400] }, legend: { title: 'draw probability', orient: 'top' } } },
      },
    ],
  };
}

/** Throughput bars per client. */
export function throughputChart(report: ScenarioReport, title: string): ChartSpec {
  return {
    title: { text: title, subtitle: `${report.clients} clients, ${report.pods} pods, ${ranOn(report)}` },
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
  ['conns/client', (r) => r.connections ?? ''],
  ['sockets seen', (r) => (r.socketsSeen === undefined ? '-' : String(r.socketsSeen))],
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
    cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  // Rows of one comparison group (the same connections per client) under its name.
  const body: string[] = [];
  report.results.forEach((r, i) => {
    if (r.group !== undefined && r.group !== report.results[i - 1]?.group) body.push(`-- ${r.group}`);
    body.push(line(rows[i]!));
  });
  const size =
    report.scenario === 'broadcast'
      ? `N = ${(report.sizes as number[] | undefined)?.join(', ') ?? report.pods} pods`
      : `${report.clients} clients × ${report.pods} pods, ${report.durationS} s per client`;
  const pods = report.serviceMs === 0 ? 'pods answer at once' : `pods serve ${report.podConcurrency} at a time × ${report.serviceMs} ms`;
  const title = `${report.scenario}: ${size}, ${pods}; ${report.standIn === 'kubernetes' ? `on ${report.standInReason}` : `stand-in: ${report.standIn} (${report.standInReason})`}`;
  const hung = report.results
    .filter((r) => typeof r.closeTimedOut === 'number')
    .map((r) => `  ! ${r.transport} ${r.client}: close() of ${r.closeTimedOut} client(s) did not finish within 3 s`);
  return [
    title,
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...body,
    ...(report.notes ?? []).map((n) => `  ${n}`),
    ...hung,
  ].join('\n');
}
