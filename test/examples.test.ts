// Every runnable example runs to the end and prints what its README promises, so the examples
// stay true as the code changes. Each starts its own pods on loopback.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function example(path: string): Promise<string> {
  const file = new URL(`../examples/${path}`, import.meta.url).pathname;
  const { stdout } = await run(process.execPath, ['--conditions=podpool-source', file], { timeout: 60_000 });
  return stdout;
}

describe('examples', () => {
  it('http-keepalive balances, dispatches and broadcasts over three pods', async () => {
    const out = await example('http-keepalive/main.ts');
    assert.match(out, /delivered to 3 pods, failed on 0/);
    assert.match(out, /requests served per pod: \{ (?:'127\.0\.0\.1[123]': \d+(?:, )?){3} \}/);
  });

  it('grpc-client balances unary calls and a stub, and survives a pod going down', async () => {
    const out = await example('grpc-client/main.ts');
    assert.match(out, /broadcast WhoAmI: +pod-11 pod-12 pod-13 \(0 failed\)/);
    assert.match(out, /pod-12 down, 6 calls: +((pod-11|pod-13) ?){6}\n/);
  });

  it('websocket-fanout reports the pod it lost in the second broadcast', async () => {
    const out = await example('websocket-fanout/main.ts');
    assert.match(out, /invalidated on 5 pods, failed on 0/);
    assert.match(out, /not on 127\.0\.0\.\d+:\d+: .*is not connected/);
  });

  it('cache-invalidation applies each update on every pod and refuses forged calls', async () => {
    const out = await example('cache-invalidation/main.ts');
    assert.match(out, /stale window: [\d.]+ ms/);
    assert.match(out, /refused by .*malformed: 1, signature: 2, replay: 1, stale: 1/);
  });

  it('loopback-broadcast reaches every receiver process once per message', { skip: process.platform !== 'linux' && 'Linux only' }, async () => {
    const out = await example('loopback-broadcast/main.ts');
    assert.match(out, /every receiver got all 5 broadcasts once/);
  });
});
