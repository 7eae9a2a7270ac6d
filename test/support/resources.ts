/** Leak checks: `close()` leaves nothing behind, so what is alive after a test was alive before it. */
import assert from 'node:assert/strict';

/** How many handles of each kind are alive now (the test runner's own Immediates left out). */
export function activeResources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of process.getActiveResourcesInfo()) if (r !== 'Immediate') counts.set(r, (counts.get(r) ?? 0) + 1);
  return counts;
}

/** Asserts that nothing alive now was not alive at `before`. */
export function assertNothingLeft(before: Map<string, number>): void {
  for (const [kind, n] of activeResources()) {
    assert.ok(n <= (before.get(kind) ?? 0), `${n - (before.get(kind) ?? 0)} ${kind} left behind`);
  }
}

/** The kinds of the process's active handles and timers, one entry each, sorted. */
export function resourceNames(): string[] {
  return process.getActiveResourcesInfo().sort();
}
