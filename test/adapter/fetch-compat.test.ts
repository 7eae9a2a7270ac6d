/**
 * httpDispatcher with the fetch and request users already have: Node's built-in fetch (Node 24
 * here, Node 22 in a child process; undici 7 and 6 inside them), and undici 6, 7 and 8's own
 * `fetch` and `request`. undici ≤ 7 hand a dispatcher handlers of the legacy API (onConnect,
 * onHeaders, …), undici 8 the new one (onRequestStart, onResponseStart, …): every scenario runs
 * with each of them.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { before, describe, it } from 'node:test';
import { fetch as fetch8, request as request8 } from 'undici';
import { fetch as fetch6, request as request6 } from 'undici6';
import { fetch as fetch7, request as request7 } from 'undici7';
import { fetchCaller, requestCaller, scenarios, type HttpCaller } from './fetch-compat-scenarios.ts';

/** Every wait is on an event; this only turns a broken feature's endless wait into a failure. */
const events = { timeout: 20_000 };

type AnyFetch = Parameters<typeof fetchCaller>[1];
type AnyRequest = Parameters<typeof requestCaller>[1];

const callers: HttpCaller[] = [
  fetchCaller(`Node ${process.version} built-in fetch (undici ${process.versions.undici})`, globalThis.fetch as unknown as AnyFetch),
  fetchCaller('undici 6 fetch', fetch6 as unknown as AnyFetch),
  requestCaller('undici 6 request', request6 as unknown as AnyRequest),
  fetchCaller('undici 7 fetch', fetch7 as unknown as AnyFetch),
  requestCaller('undici 7 request', request7 as unknown as AnyRequest),
  fetchCaller('undici 8 fetch', fetch8 as unknown as AnyFetch),
  requestCaller('undici 8 request', request8 as unknown as AnyRequest),
];

for (const caller of callers) {
  describe(`httpDispatcher with ${caller.name}`, () => {
    for (const [name, scenario] of Object.entries(scenarios)) it(name, events, () => scenario(caller));
  });
}

describe('httpDispatcher with Node 22’s built-in fetch (a child process)', () => {
  const node22 = fileURLToPath(new URL('../../node_modules/node22/bin/node', import.meta.url));
  const child = fileURLToPath(new URL('./fetch-compat-node22.ts', import.meta.url));
  const outcomes = new Map<string, { runtime: string; undici?: string; failure?: string }>();

  before(async () => {
    const { stdout } = await promisify(execFile)(node22, ['--conditions=podpool-source', child], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      timeout: 120_000,
    });
    for (const line of stdout.split('\n').filter(Boolean)) {
      const { name, ...outcome } = JSON.parse(line) as { name: string; runtime: string; undici?: string; failure?: string };
      outcomes.set(name, outcome);
    }
  });

  for (const name of Object.keys(scenarios)) {
    it(name, () => {
      const outcome = outcomes.get(name);
      assert.ok(outcome, `the Node 22 child did not report "${name}"`);
      assert.match(outcome.runtime, /^v22\./);
      assert.equal(outcome.failure, undefined, outcome.failure);
    });
  }
});
