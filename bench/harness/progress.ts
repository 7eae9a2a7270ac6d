/**
 * One progress line on stderr while a bench runs, only when stderr is a terminal: stdout stays
 * clean for the table and the `--json` line.
 */
const WIDTH = 24;
let shown = false;

let lastLabel = '';

export function progress(label: string, fraction: number): void {
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
  clearProgress();
  process.stderr.write(`${message}\n`);
}
