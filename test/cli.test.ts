import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { PodpoolError } from '../src/errors.ts';
import { MINIMUM_NODE, unsupportedNode } from '../src/node-version.ts';
import { DnsServer } from '../testkit/dns-server.ts';
import { FakeApiServer, endpointSlice } from '../testkit/fake-apiserver.ts';

const main = new URL('../src/cli/main.ts', import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the podpool command with this Node and resolves with its exit code and output. It does not
 * time out: the test's own `timeout` is the hang guard, and ending the test kills the command.
 */
function podpool(t: TestContext, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [main, ...args], { env: { ...process.env, ...env }, signal: t.signal }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** A fake API server holding one slice of Service `backend`, and a kubeconfig pointing at it. */
async function apiServer(t: TestContext): Promise<{ api: FakeApiServer; env: NodeJS.ProcessEnv }> {
  const api = await FakeApiServer.start();
  const dir = await mkdtemp(join(tmpdir(), 'podpool-cli-'));
  t.after(async () => {
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });
  await api.apply(endpointSlice({ name: 'backend-a', service: 'backend', endpoints: [{ ip: '10.1.0.3', pod: 'backend-0' }] }));
  // Not a pod: the source must take KUBECONFIG, whatever the machine running the tests is.
  return { api, env: { KUBECONFIG: await api.writeKubeconfig(dir), KUBERNETES_SERVICE_HOST: '' } };
}

const columns = (stdout: string): string[] => stdout.trim().split('\n').map((line) => line.split(/\s+/).slice(0, 4).join(' '));

describe('podpool endpoints', () => {
  it('prints what DNS discovery finds, as a table and as JSON', async (t) => {
    const dns = await DnsServer.start();
    t.after(() => dns.close());
    dns.set('backend.default.svc.cluster.local', { A: ['10.1.0.7', '10.1.0.3'] });
    const args = ['endpoints', '--dns', 'backend.default.svc.cluster.local', '--port', '8080', '--server', `127.0.0.1:${dns.port}`];

    const table = await podpool(t, args);
    assert.equal(table.code, 0, table.stderr);
    assert.deepEqual(
      table.stdout.trim().split('\n').map((line) => line.split(/\s+/).slice(0, 3).join(' ')),
      ['ADDRESS PORT CONDITION', '10.1.0.3 8080 ready', '10.1.0.7 8080 ready'],
    );

    const json = await podpool(t, [...args, '--json']);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(
      (JSON.parse(json.stdout) as { key: string; ready: boolean }[]).map((e) => [e.key, e.ready]),
      [
        ['10.1.0.3:8080', true],
        ['10.1.0.7:8080', true],
      ],
    );
  });

  it('reports addresses it refuses, and lists them with --allow-addresses', async (t) => {
    const dns = await DnsServer.start();
    t.after(() => dns.close());
    dns.set('backend.default.svc.cluster.local', { A: ['10.1.0.7', '127.0.0.5', '0.0.0.0'] });
    const args = ['endpoints', '--dns', 'backend.default.svc.cluster.local', '--port', '8080', '--server', `127.0.0.1:${dns.port}`];

    const refused = await podpool(t, args);
    assert.equal(refused.code, 0, refused.stderr);
    assert.deepEqual(columns(refused.stdout).slice(1).map((row) => row.split(' ')[0]), ['10.1.0.7']);
    assert.match(refused.stderr, /PODPOOL_INVALID_ENDPOINT: .*127\.0\.0\.5 is a loopback address/);
    assert.match(refused.stderr, /PODPOOL_INVALID_ENDPOINT: .*0\.0\.0\.0 is an unspecified address/);

    const allowed = await podpool(t, [...args, '--allow-addresses', 'loopback']);
    assert.equal(allowed.code, 0, allowed.stderr);
    assert.deepEqual(columns(allowed.stdout).slice(1).map((row) => row.split(' ')[0]), ['10.1.0.7', '127.0.0.5']);
    assert.doesNotMatch(allowed.stderr, /127\.0\.0\.5/);

    const bad = await podpool(t, [...args, '--allow-addresses', 'localhost']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--allow-addresses takes unspecified, loopback, link-local, multicast, broadcast, got "localhost"/);
  });

  it('says why it found nothing, and exits 1', async (t) => {
    const dns = await DnsServer.start();
    t.after(() => dns.close());
    dns.fail('servfail');
    const out = await podpool(t, ['endpoints', '--dns', 'backend.default.svc.cluster.local', '--port', '8080', '--server', `127.0.0.1:${dns.port}`, '--timeout', '1']);
    assert.equal(out.code, 1);
    assert.match(out.stderr, /PODPOOL_DISCOVERY_FAILED/);
    assert.match(out.stderr, /no snapshot from dns discovery after 1 s/);
  });

  // It used to print, then hang until the API server ended the watch (minutes): the watch started
  // after the first snapshot had already closed the source. The timeout only guards a hang.
  it('prints the EndpointSlices of a Service and exits by itself', { timeout: 60_000 }, async (t) => {
    const { env } = await apiServer(t);
    const out = await podpool(t, ['endpoints', '--kubernetes', 'backend', '--namespace', 'default', '--port', 'http'], env);
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual(columns(out.stdout), ['ADDRESS PORT CONDITION POD', '10.1.0.3 8080 ready backend-0']);
  });

  it('with --watch, prints each new snapshot until Ctrl-C, then exits 0', { timeout: 60_000 }, async (t) => {
    const { api, env } = await apiServer(t);
    const child = spawn(process.execPath, [main, 'endpoints', '--kubernetes', 'backend', '--namespace', 'default', '--port', 'http', '--watch'], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: t.signal,
    });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
    // Each snapshot ends with an empty line.
    const snapshots = async (count: number): Promise<void> => {
      while (stdout.split('\n\n').length <= count) stdout += String((await once(child.stdout, 'data'))[0]);
    };
    await snapshots(1);
    await api.apply(endpointSlice({ name: 'backend-b', service: 'backend', endpoints: [{ ip: '10.1.0.4', pod: 'backend-1' }] }));
    await snapshots(2);
    child.kill('SIGINT');
    const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    assert.deepEqual([code, signal], [0, null], stderr);
    const [first, second] = stdout.split('\n\n').map(columns);
    assert.deepEqual(first, ['ADDRESS PORT CONDITION POD', '10.1.0.3 8080 ready backend-0']);
    assert.deepEqual(second, ['ADDRESS PORT CONDITION POD', '10.1.0.3 8080 ready backend-0', '10.1.0.4 8080 ready backend-1']);
  });
});

describe('podpool', () => {
  it('prints its version with --version and -v', async (t) => {
    const { version } = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    for (const flag of ['--version', '-v']) {
      const out = await podpool(t, [flag]);
      assert.deepEqual(out, { code: 0, stdout: `${version}\n`, stderr: '' });
    }
  });

  it('answers --help for itself and every command, on stdout, with exit code 0', async (t) => {
    const cases: [string[], RegExp][] = [
      [['--help'], /usage: podpool <command>[\s\S]*demo[\s\S]*bench[\s\S]*endpoints/],
      [['help'], /usage: podpool <command>/],
      [['endpoints', '--help'], /--kubernetes <service> --namespace <ns>/],
      [['help', 'endpoints'], /--kubernetes <service> --namespace <ns>/],
      [['bench', '--help'], /podpool bench <scenario>[\s\S]*scenarios: .*balance/],
      [['demo', '--help'], /podpool demo/],
    ];
    for (const [args, usage] of cases) {
      const out = await podpool(t, args);
      assert.equal(out.code, 0, `podpool ${args.join(' ')}: ${out.stderr}`);
      assert.match(out.stdout, usage, `podpool ${args.join(' ')}`);
    }
  });

  it('answers a usage mistake with exit code 2 and the usage', async (t) => {
    const cases: [string[], RegExp, RegExp][] = [
      [[], /^/, /usage: podpool <command>/],
      [['nonsense'], /unknown command "nonsense"/, /usage: podpool <command>/],
      [['--nonsense'], /unknown option "--nonsense"/, /usage: podpool <command>/],
      [['endpoints', '--dns', 'backend.default.svc.cluster.local'], /--port is required/, /podpool endpoints flags/],
      [['endpoints', '--nonsense'], /Unknown option '--nonsense'/, /podpool endpoints flags/],
      [['endpoints', '--dns', 'backend', '--port', '80'], /option host must be a fully qualified name/, /podpool endpoints flags/],
      [['endpoints', '--dns', 'http://backend', '--port', '80'], /option host must be a DNS name, not a URL/, /podpool endpoints flags/],
      [['bench', 'balance', '--nonsense'], /Unknown option '--nonsense'/, /podpool bench <scenario>/],
      [['bench', 'nonsense'], /unknown scenario "nonsense"/, /podpool bench <scenario>/],
      [['demo', '--nonsense'], /Unknown option '--nonsense'/, /podpool demo/],
    ];
    for (const [args, problem, usage] of cases) {
      const out = await podpool(t, args);
      assert.equal(out.code, 2, `podpool ${args.join(' ')}: ${out.stderr}`);
      assert.match(out.stderr, problem, `podpool ${args.join(' ')}`);
      assert.match(out.stderr, usage, `podpool ${args.join(' ')}`);
      assert.equal(out.stdout, '');
    }
  });
});

describe('the Node version check', () => {
  it('refuses Node versions older than engines allows, naming the one needed', () => {
    for (const old of ['20.20.2', '22.18.9', '18.0.0', '22.9.0']) {
      const error = unsupportedNode(old);
      assert.ok(error instanceof PodpoolError, old);
      assert.equal(error.code, 'PODPOOL_UNSUPPORTED_NODE');
      assert.equal(error.message, `podpool needs Node.js 22.19.0 or newer; this is Node.js ${old}. Upgrade Node.js to use it.`);
    }
    for (const current of ['22.19.0', '22.20.1', '23.0.0', '24.21.0', '25.1.0', process.versions.node]) {
      assert.equal(unsupportedNode(current), undefined, current);
    }
  });

  it('agrees with package.json engines', async () => {
    const { engines } = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { engines: { node: string } };
    assert.equal(engines.node, `>=${MINIMUM_NODE.replace(/\.0$/, '')}`);
  });
});
