/**
 * Runs every fetch-compat scenario with Node 22's built-in `fetch` (undici 6 inside), for
 * `fetch-compat.test.ts`, which starts this with Node 22's binary. Prints one JSON line per
 * scenario: its name, and the failure if it failed.
 */
import { fetchCaller, scenarios } from './fetch-compat-scenarios.ts';

/** Only turns a broken scenario's endless wait into a reported failure. */
const GUARD_MS = 10_000;

const caller = fetchCaller(`Node ${process.version} built-in fetch`, (url, init) => fetch(url, init as RequestInit));
for (const [name, scenario] of Object.entries(scenarios)) {
  let guard: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    guard = setTimeout(() => reject(new Error(`did not finish within ${GUARD_MS} ms`)), GUARD_MS);
  });
  try {
    await Promise.race([scenario(caller), hung]);
    console.log(JSON.stringify({ name, runtime: process.version, undici: process.versions.undici }));
  } catch (error) {
    console.log(JSON.stringify({ name, runtime: process.version, failure: error instanceof Error ? error.stack : String(error) }));
  } finally {
    clearTimeout(guard);
  }
}
// A scenario that hung leaves its sockets behind; the report is complete.
process.exit(0);
