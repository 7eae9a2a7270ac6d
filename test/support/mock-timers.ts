import { syncBuiltinESMExports } from 'node:module';
import type { TestContext } from 'node:test';

/** Node's mock timers for this test, also for `node:timers/promises` as the pool imports it. */
export function mockTimers(t: TestContext): TestContext['mock']['timers'] {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  // The pool imports `setTimeout` from node:timers/promises by name; re-sync the ESM bindings so
  // that name points at the mock (and back at the real one afterwards).
  syncBuiltinESMExports();
  t.after(() => {
    t.mock.timers.reset();
    syncBuiltinESMExports();
  });
  return t.mock.timers;
}
