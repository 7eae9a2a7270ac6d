/**
 * `podpool top <url>`: a live table of a running service's pools, read from the JSON that
 * `podpoolDebugServer()` serves. Per pod: its state, its share of the requests since the last
 * refresh, p50/p99 when the service's podpool reports them, in-flight calls and ejections.
 *
 * The JSON may come from another version of podpool than this command's, so every field is read
 * as optional: a missing one shows as `-`, never as a crash.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

export const TOP_USAGE = `podpool top <url> flags:
  <url>               a service's podpoolDebugServer() endpoint, e.g. http://127.0.0.1:9464/podpool
  --interval <ms>     how often to read it (default 1000, at least 100)
  --once              print one frame and exit (1 if the endpoint could not be read)
  --help              this text
  Keys: q or Ctrl-C quits.`;

const HIDE_CURSOR = '\x1b[?25l';
const SHOW_CURSOR = '\x1b[?25h';
/** Home, then each line erased to its end and everything below erased: a redraw without a blank flash. */
const HOME = '\x1b[H';
const ERASE_LINE = '\x1b[K';
const ERASE_BELOW = '\x1b[J';
const CTRL_C = 0x03;

/** What this command reads of a member; everything optional (see the module comment). */
interface MemberView {
  key?: string;
  podName?: string;
  state?: string;
  requests?: number;
  failures?: number;
  inFlight?: number;
  ejections?: number;
  latency?: { p50Ms?: number; p99Ms?: number; samples?: number };
}

interface PoolView {
  connectivity?: string;
  endpoints?: number;
  ready?: number;
  balancer?: string;
  source?: string;
  transport?: string;
  members?: MemberView[];
}

interface View {
  time?: string;
  pools: Record<string, PoolView>;
}

/** Requests per pod at the last frame, to turn totals into the share since then. */
type Counts = Map<string, number>;

function usage(message: string): Error {
  const error = new Error(`${message}\n${TOP_USAGE}`);
  error.name = 'UsageError';
  return error;
}

export async function runTop(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      interval: { type: 'string' },
      once: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${TOP_USAGE}\n`);
    return 0;
  }
  if (positionals.length !== 1) throw usage(`podpool top takes one URL, got ${positionals.length}`);
  const url = urlOf(positionals[0]!);
  const intervalMs = values.interval === undefined ? 1000 : Number(values.interval);
  if (!Number.isInteger(intervalMs) || intervalMs < 100) throw usage(`--interval must be a whole number of ms, at least 100, got ${values.interval}`);

  if (values.once) {
    const read = await readView(url, AbortSignal.timeout(10_000));
    process.stdout.write(`${frame(url, intervalMs, read, undefined, false)}\n`);
    return read instanceof Error ? 1 : 0;
  }
  return live(url, intervalMs);
}

function urlOf(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw usage(`not a URL: ${JSON.stringify(text)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw usage(`the URL must be http: or https:, got ${url.protocol}`);
  return url;
}

/** Redraws a frame every `intervalMs` until q, Ctrl-C or SIGTERM; resolves with exit code 0. */
function live(url: URL, intervalMs: number): Promise<number> {
  const out = process.stdout;
  const tty = out.isTTY === true;
  const stdin = process.stdin;
  const raw = stdin.isTTY === true;
  const stop = new AbortController();
  return new Promise<number>((resolve) => {
    const finish = (): void => {
      if (stop.signal.aborted) return;
      stop.abort();
      process.off('SIGINT', finish);
      process.off('SIGTERM', finish);
      if (raw) {
        stdin.off('data', onKey);
        stdin.setRawMode(false);
        stdin.pause();
      }
      if (tty) out.write(`${SHOW_CURSOR}\n`);
      resolve(0);
    };
    // In raw mode Ctrl-C arrives as a byte, not as SIGINT: both end the same way.
    const onKey = (data: Buffer): void => {
      if (data.includes(CTRL_C) || data.includes(0x71) || data.includes(0x51)) finish();
    };
    process.on('SIGINT', finish);
    process.on('SIGTERM', finish);
    if (raw) {
      stdin.setRawMode(true);
      stdin.on('data', onKey);
      stdin.resume();
    }
    if (tty) out.write(HIDE_CURSOR);

    void (async () => {
      let previous: Counts = new Map();
      let first = true;
      while (!stop.signal.aborted) {
        const read = await readView(url, AbortSignal.any([stop.signal, AbortSignal.timeout(Math.max(intervalMs, 5_000))]));
        if (stop.signal.aborted) break;
        const counts: Counts = new Map();
        const text = frame(url, intervalMs, read, first ? undefined : previous, true, counts);
        if (!(read instanceof Error)) {
          previous = counts;
          first = false;
        }
        out.write(tty ? draw(text, out.columns) : `${text}\n\n`);
        try {
          await sleep(intervalMs, undefined, { signal: stop.signal });
        } catch {
          break;
        }
      }
    })();
  });
}

/** A frame drawn over the last one, each line cut to the terminal's width so none wraps. */
function draw(text: string, columns: number | undefined): string {
  // A terminal that never said its size reports 0 columns: draw the lines whole then.
  const lines = text.split('\n').map((line) => (columns !== undefined && columns > 0 && line.length > columns ? line.slice(0, columns) : line));
  return `${HOME}${lines.join(`${ERASE_LINE}\n`)}${ERASE_LINE}\n${ERASE_BELOW}`;
}

/** The endpoint's JSON, or the error that kept it from us (shown in the frame, not thrown). */
async function readView(url: URL, signal: AbortSignal): Promise<View | Error> {
  try {
    const response = await fetch(url, { signal, headers: { accept: 'application/json' } });
    const body = await response.text();
    if (!response.ok) return new Error(`HTTP ${response.status} from ${url.href}: ${body.slice(0, 200)}`);
    const view = JSON.parse(body) as unknown;
    if (view === null || typeof view !== 'object' || typeof (view as View).pools !== 'object' || (view as View).pools === null) {
      return new Error(`${url.href} did not answer with podpool's JSON (no "pools"): is it a podpoolDebugServer()?`);
    }
    return view as View;
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    const detail = cause?.code ?? cause?.message;
    const message = error instanceof Error ? error.message : String(error);
    return new Error(detail === undefined ? message : `${message} (${detail})`);
  }
}

/**
 * One frame's text. `previous` holds each pod's requests at the last frame (undefined on the
 * first, whose shares are of every request so far); `counts` receives this frame's.
 */
function frame(url: URL, intervalMs: number, read: View | Error, previous: Counts | undefined, live: boolean, counts: Counts = new Map()): string {
  const time = read instanceof Error ? new Date().toISOString() : (read.time ?? new Date().toISOString());
  const head = `podpool top  ${url.href}  ${time}${live ? `  every ${intervalMs} ms  (q or Ctrl-C quits)` : ''}`;
  if (read instanceof Error) return `${head}\n\ncannot read ${url.href}: ${read.message}${live ? `\nretrying every ${intervalMs} ms` : ''}`;
  const names = Object.keys(read.pools);
  if (names.length === 0) return `${head}\n\nno pools`;
  return [head, ...names.map((name) => poolTable(name, read.pools[name]!, previous, counts))].join('\n\n');
}

function poolTable(name: string, pool: PoolView, previous: Counts | undefined, counts: Counts): string {
  const members = Array.isArray(pool.members) ? pool.members : [];
  const deltas = members.map((m, i) => {
    const key = `${name}\0${m.key ?? i}`;
    const requests = num(m.requests) ?? 0;
    counts.set(key, requests);
    const before = previous === undefined ? 0 : (previous.get(key) ?? 0);
    // A pod replaced at the same address starts counting again from 0.
    return requests >= before ? requests - before : requests;
  });
  const total = deltas.reduce((sum, d) => sum + d, 0);
  const summary = [
    `${name}  ${pool.connectivity ?? '?'}`,
    `${num(pool.ready) ?? '?'}/${num(pool.endpoints) ?? '?'} ready`,
    [pool.balancer, pool.source && `${pool.source} discovery`, pool.transport].filter(Boolean).join(', '),
    `share of ${total} request${total === 1 ? '' : 's'} ${previous === undefined ? 'so far' : 'since the last refresh'}`,
  ].join('  ·  ');
  const header = ['POD', 'ENDPOINT', 'STATE', 'SHARE', 'P50 ms', 'P99 ms', 'IN-FLIGHT', 'EJECTIONS', 'FAILURES'];
  const rows = members.map((m, i) => {
    const latency = m.latency !== null && typeof m.latency === 'object' && (num(m.latency.samples) ?? 1) > 0 ? m.latency : undefined;
    return [
      m.podName ?? '-',
      m.key ?? '-',
      m.state ?? '-',
      total === 0 ? '-' : `${((100 * deltas[i]!) / total).toFixed(1)}%`,
      ms(latency?.p50Ms),
      ms(latency?.p99Ms),
      String(num(m.inFlight) ?? '-'),
      String(num(m.ejections) ?? '-'),
      String(num(m.failures) ?? '-'),
    ];
  });
  if (rows.length === 0) return `${summary}\n  no members`;
  // Numbers right-aligned, names left-aligned, as top and kubectl do.
  const right = new Set([3, 4, 5, 6, 7, 8]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => `  ${cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ')}`.trimEnd();
  return [summary, line(header), ...rows.map(line)].join('\n');
}

function num(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

function ms(value: unknown): string {
  const n = num(value);
  if (n === undefined) return '-';
  return n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0);
}
