/**
 * The package as users get it: `npm pack` (whose `prepack` builds dist/), the tarball installed
 * into an empty project, and everything below run from that project with none of this
 * repository's sources in reach: a plain JavaScript program, a TypeScript consumer compiled with
 * `skipLibCheck: false`, the `podpool` command (its version, help, and the demo inside a network
 * namespace holding only `lo`), an install without the optional packages, and an older Node.
 *
 * Installing needs the npm registry (or npm's cache: `--prefer-offline`). Every other child
 * talks to loopback only. The tests' timeouts guard against hangs; nothing here is timed.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { unsupportedNode } from '../src/node-version.ts';
import { startHttpPods } from '../testkit/http-pods.ts';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const { version: VERSION } = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string };
/** The Node 22 binary of the `node22` dev dependency: the other Node the package supports. */
const NODE22 = join(REPO, 'node_modules/node22/bin/node');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * The environment of a child in the installed project: this Node (24) first on PATH, so that
 * `npx podpool`'s `#!/usr/bin/env node` runs it whatever the system Node is; none of the npm_*
 * variables of an enclosing `npm test`; no update check.
 */
function projectEnv(nodeDir = dirname(process.execPath), extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) if (!/^npm_/i.test(name)) env[name] = value;
  return { ...env, PATH: `${nodeDir}${delimiter}${process.env.PATH ?? ''}`, npm_config_update_notifier: 'false', ...extra };
}

/** Runs a command to its end; ending the test (or its timeout) kills it. */
function run(t: TestContext | undefined, file: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { cwd: options.cwd, env: options.env ?? projectEnv(), maxBuffer: 64 * 1024 * 1024, ...(t && { signal: t.signal }) },
      (error, stdout, stderr) => resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

async function ok(t: TestContext | undefined, file: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<Run> {
  const out = await run(t, file, args, options);
  assert.equal(out.code, 0, `${file} ${args.join(' ')} exited ${out.code}\n${out.stdout}\n${out.stderr}`);
  return out;
}

/** An empty project with the tarball installed (`flags`: more `npm install` flags). */
async function installInto(dir: string, tarball: string, flags: string[] = []): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'podpool-consumer', private: true, type: 'module' }));
  await ok(undefined, 'npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', ...flags, tarball], { cwd: dir });
  return dir;
}

async function kilobytes(dir: string): Promise<number> {
  return Number(execFileSync('du', ['-sk', dir], { encoding: 'utf8' }).split('\t')[0]);
}

/** A Node on this machine older than `engines` allows (the system Node, often), if any. */
function olderNode(): { path: string; version: string } | undefined {
  const which = spawnSync('which', ['-a', 'node'], { encoding: 'utf8' });
  const candidates = new Set([...(which.stdout ?? '').split('\n').filter(Boolean), '/usr/bin/node', '/usr/local/bin/node']);
  for (const path of candidates) {
    if (!existsSync(path)) continue;
    const version = spawnSync(path, ['-p', 'process.versions.node'], { encoding: 'utf8' }).stdout?.trim();
    if (version && unsupportedNode(version) !== undefined) return { path, version };
  }
  return undefined;
}

/** What a user writes: a pool over HTTP pods, fetch through the pool, a broadcast, close. */
const PROGRAM = `
import { createPool, httpDispatcher, httpTransport, staticEndpoints } from 'podpool';

const pods = JSON.parse(process.argv[2]);
const pool = createPool({ source: staticEndpoints(pods), transport: httpTransport() });
await pool.ready({ minEndpoints: pods.length, timeoutMs: 10_000 });

const dispatcher = httpDispatcher(pool);
const served = [];
for (let i = 0; i < 2 * pods.length; i++) {
  const res = await fetch('http://backend.default.svc.cluster.local/who', { dispatcher });
  served.push(await res.text());
}

const result = await pool.broadcast(async (client) => {
  const res = await client.request({ method: 'POST', path: '/invalidate' });
  return res.body.text();
});
await pool.close();
// No process.exit: the program ends only if close() left nothing behind.
console.log(JSON.stringify({
  served,
  delivered: result.delivered.map((d) => d.value),
  failed: result.failed.map((f) => f.endpoint.key + ': ' + f.error.message),
}));
`;

/** Loads the library and lists every module it loaded, through Node's module hooks. */
// A service that turns metrics on without installing prom-client.
const METRICS_WITHOUT_PROM_CLIENT = `
import { createPool, podpoolMetrics, staticEndpoints, udpTransport } from 'podpool';
const pool = createPool({ source: staticEndpoints([]), transport: udpTransport() });
try {
  podpoolMetrics(pool);
  console.log(JSON.stringify({ code: 'none', message: 'no error' }));
} catch (error) {
  console.log(JSON.stringify({ code: error.code, message: error.message }));
}
await pool.close();
`;

const LOADED = `
import { registerHooks } from 'node:module';
const loaded = [];
registerHooks({ resolve(specifier, context, next) { const r = next(specifier, context); loaded.push(r.url); return r; } });
const podpool = await import('podpool');
console.log(JSON.stringify({ exports: Object.keys(podpool).length, loaded }));
`;

/** A TypeScript service's view of the types: what a consumer compiles against dist/*.d.ts. */
const CONSUMER_TS = `
import { createPool, httpDispatcher, httpTransport, kubernetesEndpoints, leastLoaded, webSocketTransport, ErrorCode, type StateChange, type WebSocketClient } from 'podpool';

const pool = createPool({
  source: kubernetesEndpoints({ service: 'backend', namespace: 'default', port: 'http' }),
  transport: httpTransport({ connections: 2 }),
  balancer: leastLoaded(),
});
pool.on('state', (change: StateChange) => {
  // The error of a state change is the PodpoolError it is: its code can be branched on.
  if (change.error?.code === ErrorCode.CONNECTION_LOST) console.log(change.endpoint.key, change.error.message);
});
const dispatcher = httpDispatcher(pool);
const status: number = await pool.use(async (client) => (await client.request({ method: 'GET', path: '/' })).statusCode);

const sockets = createPool({
  source: kubernetesEndpoints({ service: 'events', namespace: 'default', port: 'ws' }),
  transport: webSocketTransport({ path: '/events' }),
});
const states: number[] = (await sockets.broadcast((ws: WebSocketClient) => ws.socket.readyState)).delivered.map((d) => d.value);
console.log(dispatcher, status, states);
await Promise.all([pool.close(), sockets.close()]);
`;

const CONSUMER_TSCONFIG = {
  compilerOptions: {
    module: 'nodenext',
    target: 'es2022',
    lib: ['es2022'],
    types: ['node'],
    strict: true,
    skipLibCheck: false,
    noEmit: true,
  },
  files: ['consumer.ts'],
};

describe('the installed package', { timeout: 600_000 }, () => {
  let work: string;
  let tarball: string;
  let project: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'podpool-package-'));
    await ok(undefined, 'npm', ['pack', '--pack-destination', work], { cwd: REPO, env: projectEnv(dirname(process.execPath)) });
    const name = (await readdir(work)).find((f) => f.endsWith('.tgz'));
    assert.ok(name, 'npm pack wrote no tarball');
    tarball = join(work, name);
    project = await installInto(join(work, 'project'), tarball);
    console.log(
      `# tarball ${(await stat(tarball)).size} bytes; installed project ${await kilobytes(join(project, 'node_modules'))} KB of node_modules`,
    );
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('runs a plain JavaScript program on Node 24 and 22: fetch through httpDispatcher, a broadcast, close', async (t) => {
    const pods = await startHttpPods(3, { first: 81 });
    t.after(() => Promise.all(pods.map((p) => p.kill())));
    await writeFile(join(project, 'program.mjs'), PROGRAM);
    const endpoints = JSON.stringify(pods.map((p) => ({ address: p.address, port: p.port })));
    for (const node of [process.execPath, NODE22]) {
      const before = pods.map((p) => p.requests);
      const out = await ok(t, node, ['program.mjs', endpoints], { cwd: project });
      const result = JSON.parse(out.stdout) as { served: string[]; delivered: string[]; failed: string[] };
      const keys = pods.map((p) => p.key).sort();
      // Round-robin: every pod served two of the six requests, then got the broadcast.
      assert.deepEqual([...result.served].sort(), [...keys, ...keys].sort(), node);
      assert.deepEqual([...result.delivered].sort(), keys, node);
      assert.deepEqual(result.failed, []);
      assert.deepEqual(
        pods.map((p, i) => p.requests - before[i]!),
        [3, 3, 3],
        `${node}: what each pod served`,
      );
    }
  });

  it('loads neither the bench nor its packages with import "podpool"', async (t) => {
    const out = await ok(t, process.execPath, ['--input-type=module', '-e', LOADED], { cwd: project });
    const { exports, loaded } = JSON.parse(out.stdout) as { exports: number; loaded: string[] };
    assert.ok(exports > 0);
    assert.ok(loaded.some((url) => url.endsWith('/node_modules/podpool/dist/src/index.js')), 'the library came from dist/src');
    assert.deepEqual(
      loaded.filter((url) => /\/podpool\/dist\/(bench|testkit|test)\/|\/node_modules\/(vega|vega-lite|dns-packet)\//.test(url)),
      [],
    );
  });

  it('podpoolMetrics() without prom-client (an optional peer, not installed here) says what to install', async (t) => {
    assert.equal(existsSync(join(project, 'node_modules/prom-client')), false, 'npm does not install an optional peer');
    const out = await ok(t, process.execPath, ['--input-type=module', '-e', METRICS_WITHOUT_PROM_CLIENT], { cwd: project });
    const { code, message } = JSON.parse(out.stdout) as { code: string; message: string };
    assert.equal(code, 'PODPOOL_NOT_SUPPORTED');
    assert.match(message, /npm install prom-client/);
  });

  it('compiles a TypeScript consumer with skipLibCheck false, target and lib es2022', async (t) => {
    await writeFile(join(project, 'consumer.ts'), CONSUMER_TS);
    await writeFile(join(project, 'tsconfig.json'), JSON.stringify(CONSUMER_TSCONFIG, null, 2));
    const out = await run(t, join(REPO, 'node_modules/.bin/tsc'), ['-p', project], { cwd: project });
    assert.deepEqual({ code: out.code, output: out.stdout + out.stderr }, { code: 0, output: '' });
  });

  it('npx podpool: --version, --help for every command, exit 2 on a mistake', async (t) => {
    assert.equal((await ok(t, 'npx', ['podpool', '--version'], { cwd: project })).stdout, `${VERSION}\n`);
    for (const command of [[], ['endpoints'], ['bench'], ['demo'], ['top'], ['pod']]) {
      const out = await ok(t, 'npx', ['podpool', ...command, '--help'], { cwd: project });
      assert.match(out.stdout, /usage|flags/, command.join(' '));
    }
    const wrong = await run(t, 'npx', ['podpool', 'bench', 'balance', '--nonsense'], { cwd: project });
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /Unknown option '--nonsense'[\s\S]*podpool bench <scenario>/);
  });

  it('npx podpool bench manifests: the objects of a cluster run, from the installed package', async (t) => {
    const out = await ok(t, 'npx', ['podpool', 'bench', 'manifests', 'balance', '--pods', '2', '--image', 'registry.example/podpool:1'], { cwd: project });
    type Workload = { kind: string; spec?: { replicas?: number; template?: { spec?: { containers?: { image?: string }[] } } } };
    const objects = parseAllDocuments(out.stdout).map((d) => d.toJS() as Workload);
    assert.deepEqual(objects.map((o) => o.kind), ['Namespace', 'ServiceAccount', 'Role', 'RoleBinding', 'Service', 'Service', 'Deployment', 'Job']);
    assert.equal(objects.find((o) => o.kind === 'Deployment')?.spec?.replicas, 2);
    for (const kind of ['Deployment', 'Job']) {
      assert.deepEqual(objects.find((o) => o.kind === kind)?.spec?.template?.spec?.containers?.map((c) => c.image), ['registry.example/podpool:1'], kind);
    }
  });

  it('npx podpool demo --quick runs from the package, in a network namespace holding only lo', async (t) => {
    const env = projectEnv(dirname(process.execPath), { PODPOOL_BENCH_STANDIN: 'userspace' });
    // Nothing the demo sends can leave loopback in there; where unshare is not allowed, the
    // userspace stand-in still keeps everything on 127/8.
    const isolated = spawnSync('unshare', ['--net', 'ip', 'link', 'set', 'lo', 'up']).status === 0;
    if (!isolated) t.diagnostic('unshare --net is not allowed here: the demo runs on this machine\'s loopback');
    const command = 'ip link set lo up && exec npx podpool demo --quick';
    const out = isolated
      ? await ok(t, 'unshare', ['--net', 'sh', '-c', command], { cwd: project, env })
      : await ok(t, 'npx', ['podpool', 'demo', '--quick'], { cwd: project, env });
    assert.match(out.stdout, /^summary$/m);
    assert.match(out.stdout, /stand-in: userspace|userspace/);
    const page = /demo page: (\S+)/.exec(out.stdout)?.[1];
    assert.ok(page, out.stdout);
    // Results go to the user's directory, not into node_modules.
    assert.equal(dirname(page), join(project, 'podpool-results'));
    const html = await readFile(page, 'utf8');
    assert.match(html, /<svg/, 'the page has the charts vega drew');
  });

  it('without the optional packages: the library works, and the demo says what to install', async (t) => {
    const lean = await installInto(join(work, 'lean'), tarball, ['--omit=optional']);
    t.diagnostic(`node_modules with --omit=optional: ${await kilobytes(join(lean, 'node_modules'))} KB`);
    for (const name of ['vega', 'vega-lite', 'dns-packet']) assert.equal(existsSync(join(lean, 'node_modules', name)), false, name);
    await ok(t, process.execPath, ['--input-type=module', '-e', "const { createPool } = await import('podpool'); if (typeof createPool !== 'function') process.exit(3);"], {
      cwd: lean,
    });
    await ok(t, 'npx', ['podpool', 'endpoints', '--help'], { cwd: lean });
    const demo = await run(t, 'npx', ['podpool', 'demo'], { cwd: lean });
    assert.equal(demo.code, 1);
    assert.match(demo.stderr, /podpool demo needs dns-packet, vega, vega-lite.*npm install dns-packet vega vega-lite/s);
  });

  it('names the Node version it needs when run on an older Node', async (t) => {
    const old = olderNode();
    if (old === undefined) {
      t.skip('no Node older than 22.19 on this machine');
      return;
    }
    const imported = await run(t, old.path, ['--input-type=module', '-e', "await import('podpool')"], { cwd: project });
    assert.notEqual(imported.code, 0);
    assert.match(imported.stderr, /PODPOOL_UNSUPPORTED_NODE/);
    assert.ok(imported.stderr.includes(`podpool needs Node.js 22.19.0 or newer; this is Node.js ${old.version}.`), imported.stderr);
    assert.doesNotMatch(imported.stderr, /TypeError/);
    // The command, as a user with that Node first on PATH runs it: one line, no stack.
    const command = await run(t, 'npx', ['podpool', '--version'], { cwd: project, env: projectEnv(dirname(old.path)) });
    assert.equal(command.code, 1);
    assert.equal(command.stderr, `podpool: podpool needs Node.js 22.19.0 or newer; this is Node.js ${old.version}. Upgrade Node.js to use it.\n`);
  });
});
