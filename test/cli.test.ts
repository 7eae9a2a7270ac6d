import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { DnsServer } from './support/dns-server.ts';

const run = promisify(execFile);
const main = new URL('../src/cli/main.ts', import.meta.url).pathname;

/** Runs the podpool command with this Node; resolves with its exit code and output. */
async function podpool(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [main, ...args], { timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('podpool endpoints', () => {
  it('prints what DNS discovery finds, as a table and as JSON', async (t) => {
    const dns = await DnsServer.start();
    t.after(() => dns.close());
    dns.set('backend.default.svc.cluster.local', { A: ['10.1.0.7', '10.1.0.3'] });
    const args = ['endpoints', '--dns', 'backend.default.svc.cluster.local', '--port', '8080', '--server', `127.0.0.1:${dns.port}`];

    const table = await podpool(...args);
    assert.equal(table.code, 0, table.stderr);
    assert.deepEqual(
      table.stdout.trim().split('\n').map((line) => line.split(/\s+/).slice(0, 3).join(' ')),
      ['ADDRESS PORT CONDITION', '10.1.0.3 8080 ready', '10.1.0.7 8080 ready'],
    );

    const json = await podpool(...args, '--json');
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(
      (JSON.parse(json.stdout) as { key: string; ready: boolean }[]).map((e) => [e.key, e.ready]),
      [
        ['10.1.0.3:8080', true],
        ['10.1.0.7:8080', true],
      ],
    );
  });

  it('says why it found nothing, and exits 1', async (t) => {
    const dns = await DnsServer.start();
    t.after(() => dns.close());
    dns.fail('servfail');
    const out = await podpool('endpoints', '--dns', 'backend.default.svc.cluster.local', '--port', '8080', '--server', `127.0.0.1:${dns.port}`, '--timeout', '1');
    assert.equal(out.code, 1);
    assert.match(out.stderr, /PODPOOL_DISCOVERY_FAILED/);
    assert.match(out.stderr, /no snapshot from dns discovery after 1 s/);
  });

  it('answers a usage mistake with exit code 2 and the usage', async () => {
    const missing = await podpool('endpoints', '--dns', 'backend.default.svc.cluster.local');
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--port is required/);
    const unknown = await podpool('nonsense');
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown command "nonsense"/);
  });
});
