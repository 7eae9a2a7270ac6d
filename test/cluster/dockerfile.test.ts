/**
 * The image (Dockerfile and .dockerignore at the repository's root), without a Docker engine:
 * the Dockerfile is read for what a cluster relies on (pinned bases, a numeric non-root user, no
 * dev dependencies, `podpool` as the entrypoint), and then what its stages do is done for real:
 * the build context as .dockerignore leaves it, the build stage's COPY lines into an empty
 * directory, its `npm pack` (whose prepack compiles dist/), the runtime stage's `npm install` of
 * that tarball, and the installed `podpool pod` serving on loopback until SIGTERM.
 *
 * Two steps differ from a docker build, so that nothing leaves this machine: `npm ci` is this
 * checkout's node_modules (linked, not installed), and the install reads npm's cache first
 * (`--prefer-offline`), as test/package.test.ts does.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, matchesGlob, relative } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { loadAllYaml, type V1Deployment } from '@kubernetes/client-node';
import { request } from 'undici';

const REPO = join(import.meta.dirname, '..', '..');
const { version: VERSION } = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string };

interface Instruction {
  readonly keyword: string;
  readonly args: string;
}

/** A Dockerfile's instructions, stage by stage: comments gone, continuation lines joined. */
function parseDockerfile(text: string): Instruction[][] {
  const stages: Instruction[][] = [];
  const logical = text
    .split('\n')
    .filter((line) => !/^\s*#/.test(line))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean);
  for (const line of logical) {
    const [, keyword, args] = /^(\w+)\s+(.*)$/.exec(line) ?? assert.fail(`not an instruction: ${line}`);
    const instruction = { keyword: keyword!.toUpperCase(), args: args!.trim() };
    if (instruction.keyword === 'FROM') stages.push([]);
    assert.ok(stages.length > 0 || instruction.keyword === 'ARG', `${line} before the first FROM`);
    stages.at(-1)?.push(instruction);
  }
  return stages;
}

/** The files `docker build .` would send: every file of the checkout that .dockerignore leaves. */
async function buildContext(patterns: string[]): Promise<string[]> {
  // Docker's rules: a pattern matches a path or any directory above it; the last match wins; `!` keeps.
  const ignored = (path: string): boolean => {
    let result = false;
    const parts = path.split('/');
    for (const raw of patterns) {
      const keep = raw.startsWith('!');
      const pattern = (keep ? raw.slice(1) : raw).replace(/^\/+|\/+$/g, '');
      for (let i = 1; i <= parts.length; i++) if (matchesGlob(parts.slice(0, i).join('/'), pattern)) result = !keep;
    }
    return result;
  };
  const files: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(join(REPO, dir), { withFileTypes: true })) {
      const path = dir === '' ? entry.name : `${dir}/${entry.name}`;
      // A directory is skipped whole only when no `!` pattern could take something back in it.
      if (ignored(path) && (entry.isFile() || !patterns.some((p) => p.startsWith('!')))) continue;
      if (entry.isDirectory()) await walk(path);
      else if (entry.isFile()) files.push(path);
    }
  };
  await walk('');
  return files;
}

function run(file: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd, env, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) =>
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** This Node (24, the base image's major) first on PATH; none of an enclosing `npm test`'s npm_* variables. */
function buildEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) if (!/^npm_/i.test(name)) env[name] = value;
  return { ...env, PATH: `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ''}`, npm_config_update_notifier: 'false' };
}

describe('the Dockerfile', () => {
  let stages: Instruction[][];
  let runtime: Instruction[];
  const all = (stage: Instruction[], keyword: string): string[] => stage.filter((i) => i.keyword === keyword).map((i) => i.args);

  before(async () => {
    stages = parseDockerfile(await readFile(join(REPO, 'Dockerfile'), 'utf8'));
    runtime = stages.at(-1)!;
  });

  it('pins every base image to an exact version, the same in every stage', () => {
    const bases = stages.map((stage) => stage[0]!.args.split(/\s+/)[0]!);
    assert.ok(bases.length >= 2, 'a build stage and a runtime stage');
    for (const base of bases) {
      assert.match(base, /^node:\d+\.\d+\.\d+-[a-z]+(-slim)?(@sha256:[0-9a-f]{64})?$/, `${base}: an exact version, not latest or a bare major`);
    }
    assert.equal(new Set(bases).size, 1, 'the build and the runtime run the same Node');
    assert.equal(bases[0]!.split(/[:.-]/)[1], '24', 'the Node the repository pins for its scripts');
  });

  it('runs the runtime stage as a numeric non-root user, with podpool as its entrypoint', () => {
    const users = all(runtime, 'USER');
    assert.equal(users.length, 1);
    const [uid, gid] = users[0]!.split(':');
    assert.match(uid!, /^\d+$/, 'numeric, so runAsNonRoot can check it');
    assert.notEqual(Number(uid), 0);
    if (gid !== undefined) assert.match(gid, /^\d+$/);
    // USER comes before ENTRYPOINT: nothing after it runs as root.
    assert.ok(runtime.findIndex((i) => i.keyword === 'USER') > runtime.findLastIndex((i) => i.keyword === 'RUN'));
    const entrypoint = JSON.parse(all(runtime, 'ENTRYPOINT')[0] ?? 'null') as string[] | null;
    assert.ok(Array.isArray(entrypoint), 'ENTRYPOINT in exec form (signals reach podpool, not a shell)');
    assert.match(entrypoint[0]!, /(^|\/)podpool$/);
  });

  it('installs the packed tarball without dev dependencies, and copies no sources into the runtime', () => {
    const installs = all(runtime, 'RUN').filter((r) => /npm (install|i|ci)\b/.test(r));
    assert.equal(installs.length, 1);
    assert.match(installs[0]!, /--omit=dev/);
    assert.doesNotMatch(installs[0]!, /--omit=optional/, 'the bench needs its optional packages');
    assert.match(installs[0]!, /\.tgz/);
    for (const copy of all(runtime, 'COPY')) assert.match(copy, /^--from=build\b/, `runtime stage: COPY ${copy}`);
    const build = stages[0]!;
    assert.match(build[0]!.args, /\bAS build$/i);
    assert.ok(all(build, 'RUN').some((r) => /\bnpm ci\b/.test(r)), 'the build installs from the lockfile');
    assert.ok(all(build, 'RUN').some((r) => /\bnpm pack\b/.test(r)));
  });
});

describe('the image, built and run without Docker', { timeout: 600_000 }, () => {
  let work: string;
  /** The runtime stage's /app, with podpool installed in it. */
  let app: string;
  const env = buildEnv();
  let next = 0;
  const host = (): string => `127.${200 + (process.pid % 40)}.${(process.pid >> 6) % 250}.${++next}`;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'podpool-image-'));
    const stages = parseDockerfile(await readFile(join(REPO, 'Dockerfile'), 'utf8'));
    const patterns = (await readFile(join(REPO, '.dockerignore'), 'utf8'))
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    const context = await buildContext(patterns);
    for (const kept of ['package.json', 'package-lock.json', 'src/cli/main.ts', 'bench/harness/pod-server.ts']) assert.ok(context.includes(kept), kept);
    for (const left of context) assert.doesNotMatch(left, /^(node_modules|dist|\.git|test|bench\/results)\//, `${left} is not sent to the daemon`);

    // The build stage: its COPY lines, from the context only, into an empty directory.
    const src = join(work, 'src');
    await mkdir(src);
    for (const { keyword, args } of stages[0]!) {
      if (keyword === 'COPY') {
        const parts = args.split(/\s+/);
        const dest = parts.pop()!;
        for (const from of parts) {
          const files = context.filter((f) => f === from || f.startsWith(`${from}/`));
          assert.ok(files.length > 0, `COPY ${from}: not in the build context`);
          for (const f of files) {
            const target = dest.endsWith('/') || parts.length > 1 ? join(src, dest, relative(dirname(from), f)) : join(src, dest, relative(from, f));
            await mkdir(dirname(target), { recursive: true });
            await cp(join(REPO, f), target);
          }
        }
      } else if (keyword === 'RUN' && /\bnpm ci\b/.test(args)) {
        await symlink(join(REPO, 'node_modules'), join(src, 'node_modules'), 'dir');
      } else if (keyword === 'RUN' && /\bnpm pack\b/.test(args)) {
        const packed = await run('npm', ['pack', '--pack-destination', work], src, env);
        assert.equal(packed.code, 0, packed.stderr);
      }
    }
    const tarball = (await readdir(work)).find((f) => f.endsWith('.tgz'));
    assert.equal(tarball, `podpool-${VERSION}.tgz`);

    // The runtime stage's install, with its flags, into an empty /app.
    app = join(work, 'app');
    await mkdir(app);
    await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
    const install = stages.at(-1)!.find((i) => i.keyword === 'RUN' && /npm install/.test(i.args))!.args;
    const flags = install.split('&&')[0]!.split(/\s+/).filter((w) => w.startsWith('--'));
    const installed = await run('npm', ['install', ...flags, '--prefer-offline', join(work, tarball)], app, env);
    assert.equal(installed.code, 0, installed.stderr);
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Runs the installed command as the ENTRYPOINT does (`podpool`, found on the PATH the image sets). */
  async function entrypoint(t: TestContext, args: string[], extraEnv: NodeJS.ProcessEnv = {}) {
    const child = spawn('podpool', args, {
      cwd: app,
      env: { ...env, PATH: `${join(app, 'node_modules', '.bin')}${delimiter}${env.PATH}`, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
    t.after(() => child.kill('SIGKILL'));
    const [line] = (await Promise.race([once(child.stdout.setEncoding('utf8'), 'data'), exited.then(() => assert.fail(stderr))])) as [string];
    return { child, exited, line, stderr: () => stderr };
  }

  it('installs no dev dependencies and no sources, and keeps the optional packages', async () => {
    for (const dev of ['typescript', 'fast-check', 'prom-client']) {
      await assert.rejects(stat(join(app, 'node_modules', dev)), `${dev}, a dev dependency, is not installed`);
    }
    await stat(join(app, 'node_modules', 'vega'));
    await assert.rejects(stat(join(app, 'node_modules', 'podpool', 'src', 'index.ts')), 'no sources in the package');
  });

  it('runs podpool pod from the installed package: ready, serving, and exit 0 on SIGTERM', async (t) => {
    const address = host();
    const pod = await entrypoint(t, ['pod', '--host', address, '--name', 't', '--service-ms', '1']);
    assert.match(pod.line, new RegExp(`^podpool pod t ready on ${address.replaceAll('.', '\\.')}: http 8080, grpc 50051, ws 8081, udp 9090, control 9901\\n`));
    const ready = await request(`http://${address}:9901/ready`, { reset: true });
    assert.equal(ready.statusCode, 200);
    assert.equal(((await ready.body.json()) as { name: string }).name, 't');
    const served = await request(`http://${address}:8080/`, { reset: true });
    assert.equal(await served.body.text(), 't');
    pod.child.kill('SIGTERM');
    assert.deepEqual(await pod.exited, [0, null], pod.stderr());
  });

  it("runs examples/kubernetes' backend container as its manifest says, and its readiness probe passes", async (t) => {
    const example = await readFile(join(REPO, 'examples', 'kubernetes', 'Dockerfile'), 'utf8');
    assert.equal(parseDockerfile(example)[0]![0]!.args, `podpool:${VERSION}`, "the example's client builds on this image");
    const backend = loadAllYaml(await readFile(join(REPO, 'examples', 'kubernetes', 'backend.yaml'), 'utf8')).find((o) => o?.kind === 'Deployment') as V1Deployment;
    const [container] = backend.spec!.template.spec!.containers;
    assert.equal(container!.image, `podpool:${VERSION}`);
    assert.equal(container!.command, undefined, "args only: the image's ENTRYPOINT is podpool");
    // The env the kubelet resolves from the downward API.
    const address = host();
    const fieldRefs: Record<string, string> = { 'metadata.name': 'echo-7d9c5b6f4-2xkqp', 'status.podIP': address };
    const podEnv = Object.fromEntries(container!.env!.map((e) => [e.name, e.value ?? fieldRefs[e.valueFrom!.fieldRef!.fieldPath]]));
    const pod = await entrypoint(t, container!.args!, podEnv);
    assert.match(pod.line, /^podpool pod echo-7d9c5b6f4-2xkqp ready on /);
    const probe = container!.readinessProbe!.httpGet!;
    const port = container!.ports!.find((p) => p.name === probe.port || p.containerPort === probe.port)!.containerPort;
    const ready = await request(`http://${address}:${port}${probe.path}`, { reset: true });
    assert.equal(ready.statusCode, 200);
    await ready.body.dump();
    const http = container!.ports!.find((p) => p.name === 'http')!.containerPort;
    assert.equal(await (await request(`http://${address}:${http}/hostname`, { reset: true })).body.text(), 'echo-7d9c5b6f4-2xkqp');
    pod.child.kill('SIGTERM');
    assert.deepEqual(await pod.exited, [0, null], pod.stderr());
  });
});
