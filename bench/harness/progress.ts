/**
 * One progress line on stderr while a bench runs, only when stderr is a terminal: stdout stays
 * clean for the table and the `--json` line. In the client Job's pod (`--in-cluster`) progress
 * and notes go to a sink instead, as event lines for the command that draws them.
 */
const WIDTH = 24;
let shown = false;

let lastLabel = '';

/** Where progress and notes go instead of stderr (see {@link sendProgressTo}). */
export interface ProgressSink {
  progress(label: string, fraction: number): void;
  note(message: string): void;
}

let sink: ProgressSink | undefined;
/** A sink's progress at most this often per phase: a log line per tick would flood the Job's log. */
const SINK_EVERY_MS = 500;
let sentAt = 0;

/** Sends progress and notes to `to` from now on (`undefined`: back to stderr). */
export function sendProgressTo(to: ProgressSink | undefined): void {
  sink = to;
  lastLabel = '';
}

export function progress(label: string, fraction: number): void {
  if (sink !== undefined) {
    const now = performance.now();
    if (label === lastLabel && now - sentAt < SINK_EVERY_MS) return;
    lastLabel = label;
    sentAt = now;
    sink.progress(label, Math.round(Math.max(0, Math.min(1, fraction)) * 1000) / 1000);
    return;
  }
  if (!process.stderr.isTTY) {
    // Off a terminal, one line per phase when asked (PODPOOL_BENCH_TRACE=1), for logs.
    if (process.env.PODPOOL_BENCH_TRACE && label !== lastLabel) process.stderr.write(`${label}\n`);
    lastLabel = label;
    return;
  }
  const done = Math.round(Math.max(0, Math.min(1, fraction)) * WIDTH);
  const line = `  [${'#'.repeat(done)}${' '.repeat(WIDTH - done)}] ${label}`;
  const columns = process.stderr.columns || 80;
  process.stderr.write(`\r${line.slice(0, columns - 1).padEnd(columns - 1)}`);
  shown = true;
}

/** Clears the progress line before something else is printed. */
export function clearProgress(): void {
  if (!shown || !process.stderr.isTTY) return;
  process.stderr.write(`\r${' '.repeat((process.stderr.columns || 80) - 1)}\r`);
  shown = false;
}

/** A note on stderr (the stand-in, a phase), kept apart from the progress line. */
export function note(message: string): void {
  if (sink !== undefined) return sink.note(message);
  clearProgress();
  process.stderr.write(`${message}\n`);
}
