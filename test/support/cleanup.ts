import type { TestContext } from 'node:test';

/** Runs the cleanups after the test, last registered first. */
export function cleanupAfter(t: TestContext): { push(...more: (() => Promise<void>)[]): void } {
  const steps: (() => Promise<void>)[] = [];
  t.after(async () => {
    for (const step of steps.reverse()) await step();
  });
  return { push: (...more: (() => Promise<void>)[]) => void steps.push(...more) };
}
