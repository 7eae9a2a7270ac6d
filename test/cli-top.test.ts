import assert from 'node:assert/strict';
import { execFile, spawn, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { stripVTControlCharacters } from 'node:util';
import { podpoolDebugServer } from '../src/observe/debug-server.ts';
import { ringHash } from '../src/balance/ring-hash.ts';
import { harness } from './support/pool-harness.ts';
import { pod } from './support/manual-source.ts';

const main = new URL('../src/cli/main.ts', import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the podpool command (not in a terminal); the test's timeout is the hang guard. */
function podpool(t: TestContext, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [main, ...args], { signal: t.signal }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** A pool of two pods named backend-0 and backend-1, ring-hashed so a key sends every call to one pod, behind a debug server. */
async function service(t: TestContext) {
  const { source, pool } = harness(t, { balancer: ringHash() });
  source.set([pod(1, { podName: 'backend-0' }), pod(2, { podName: 'backend-1' })]);
  await pool.ready({ minEndpoints: 2 });
  const server = await podpoolDebugServer({ pools: { backend: pool } });
  t.after(() => server.close());
  return { pool, server };
}

/** A loopback port nothing listens on: one the kernel gave us, then closed. */
async function closedPort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

/**
 * Starts `command` and collects its output; `until(test)` resolves once the output passes the
 * test, checked at each chunk (no polling, no sleep). Killed after the test if still running.
 */
function watched(t: TestContext, command: string, args: string[], options: SpawnOptions = {}) {
  const child = spawn(command, args, { ...options, stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => child.kill());
  let output = '';
  const waiters: (() => void)[] = [];
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    output += chunk;
    for (const wake of waiters.splice(0)) wake();
  });
  const until = async (test: (output: string) => boolean): Promise<void> => {
    while (!test(output)) await new Promise<void>((resolve) => waiters.push(resolve));
  };
  const exited = once(child, 'exit') as Promise<[number | null]>;
  return { child, until, exited, output: () => output };
}

/** `podpool top` on a pseudo-terminal: script(1) (util-linux) passes its stdin to it as typed keys, so \x03 is a Ctrl-C there. */
function inTerminal(t: TestContext, args: string[]) {
  return watched(t, 'script', ['-qfec', [process.execPath, main, 'top', ...args].join(' '), '/dev/null'], { env: { ...process.env, TERM: 'xterm' } });
}

describe('podpool top', () => {
  it('--once prints one frame: each pod, its state and its share of the requests so far', async (t) => {
    const { pool, server } = await service(t);
    for (let i = 0; i < 3; i++) await pool.use(() => 'ok', { key: 'user-1' });
    const run = await podpool(t, ['top', server.url, '--once']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, stripVTControlCharacters(run.stdout), 'no escape codes outside a live view');
    assert.match(run.stdout, /^podpool top {2}http:\/\/127\.0\.0\.1:\d+\/podpool {2}\d{4}-\d\d-\d\dT/);
    assert.match(run.stdout, /backend {2}ready {2}· {2}2\/2 ready {2}· {2}ring-hash, \w+ discovery, memory {2}· {2}share of 3 requests so far/);
    const rows = run.stdout.split('\n').filter((line) => /^ {2}backend-\d/.test(line)).map((line) => line.trim().split(/\s+/));
    assert.equal(rows.length, 2, run.stdout);
    assert.deepEqual(rows.map((r) => r.slice(0, 3)), [
      ['backend-0', '10.0.0.1:80', 'ready'],
      ['backend-1', '10.0.0.2:80', 'ready'],
    ]);
    // All three calls had the same key: one pod took them all.
    assert.deepEqual(rows.map((r) => r[3]).sort(), ['0.0%', '100.0%']);
    // P50 and P99 from the member's recent latency: the pod that answered has them, the other none yet.
    assert.match(run.stdout, /P50 ms +P99 ms/);
    const [busy, idle] = rows[0]![3] === '100.0%' ? [rows[0]!, rows[1]!] : [rows[1]!, rows[0]!];
    assert.match(busy[4]!, /^\d+\.\d+$/);
    assert.match(busy[5]!, /^\d+\.\d+$/);
    assert.deepEqual(idle.slice(4, 6), ['-', '-']);
    assert.deepEqual(rows.map((r) => r.slice(6)), [['0', '0', '0'], ['0', '0', '0']]);
  });

  it('--once shows an endpoint it cannot reach and exits 1, without a stack', async (t) => {
    const url = `http://127.0.0.1:${await closedPort()}/podpool`;
    const run = await podpool(t, ['top', url, '--once']);
    assert.equal(run.code, 1);
    assert.match(run.stdout, new RegExp(`cannot read ${url.replaceAll('.', '\\.')}: .*ECONNREFUSED`));
    assert.equal(run.stderr, '');
  });

  it('--once says when the URL does not serve podpool’s JSON', async (t) => {
    const { server } = await service(t);
    const run = await podpool(t, ['top', server.url.replace('/podpool', '/nothing'), '--once']);
    assert.equal(run.code, 1);
    assert.match(run.stdout, /cannot read .*: HTTP 404/);
  });

  it('refuses a missing or bad URL and a bad --interval with its usage, exit 2', async (t) => {
    for (const args of [['top'], ['top', 'not a url'], ['top', 'ftp://127.0.0.1/podpool'], ['top', 'http://127.0.0.1:1/podpool', '--interval', '5'], ['top', 'http://127.0.0.1:1/', '--bogus']]) {
      const run = await podpool(t, args);
      assert.equal(run.code, 2, args.join(' '));
      assert.match(run.stderr, /podpool top <url> flags:/, args.join(' '));
    }
    const help = await podpool(t, ['top', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--interval <ms>/);
  });

  it('outside a terminal: prints frame after frame without escape codes, and exits 0 on SIGINT', { timeout: 30_000 }, async (t) => {
    const { server } = await service(t);
    const top = watched(t, process.execPath, [main, 'top', server.url, '--interval', '100']);
    await top.until((output) => output.split('podpool top ').length > 2);
    top.child.kill('SIGINT');
    const [code] = await top.exited;
    const output = top.output();
    assert.equal(code, 0, output);
    assert.equal(output, stripVTControlCharacters(output));
    assert.match(output, /share of 0 requests so far[\s\S]*share of 0 requests since the last refresh/);
  });

  it('in a terminal: redraws in place with the share since the last refresh, and exits 0 on Ctrl-C with the cursor back', { timeout: 30_000 }, async (t) => {
    const { pool, server } = await service(t);
    const top = inTerminal(t, [server.url, '--interval', '100']);
    // Each redraw starts at home: a frame is what follows one \x1b[H.
    const frames = () => top.output().split('\x1b[H').slice(1).map(stripVTControlCharacters);

    await top.until(() => frames().some((f) => f.includes('backend-1')));
    assert.ok(top.output().includes('\x1b[?25l'), 'hides the cursor while it draws');
    assert.match(frames()[0]!, /share of 0 requests so far/);
    // Four calls in one turn of the event loop, so they all fall between two reads of the endpoint.
    await Promise.all(Array.from({ length: 4 }, () => pool.use(() => 'ok', { key: 'user-1' })));
    // A frame is whole once the next one has begun: the last may still be arriving.
    const whole = () => frames().slice(0, -1);
    await top.until(() => whole().some((f) => f.includes('share of 4 requests since the last refresh')));
    const frame = whole().find((f) => f.includes('share of 4 requests since the last refresh'))!;
    assert.deepEqual(
      frame.split('\n').filter((line) => /^ {2}backend-\d/.test(line)).map((line) => line.trim().split(/\s+/)[3]).sort(),
      ['0.0%', '100.0%'],
    );
    // The next refresh has no new request: no share to show.
    await top.until(() => frames().slice(frames().indexOf(frame) + 1).some((f) => f.includes('share of 0 requests since the last refresh')));

    top.child.stdin.write('\x03');
    const [code] = await top.exited;
    assert.equal(code, 0, top.output());
    assert.ok(top.output().includes('\x1b[?25h'), 'shows the cursor again');
  });

  it('in a terminal: q quits', { timeout: 30_000 }, async (t) => {
    const { server } = await service(t);
    const top = inTerminal(t, [server.url]);
    await top.until((output) => stripVTControlCharacters(output).includes('backend-1'));
    top.child.stdin.write('q');
    const [code] = await top.exited;
    assert.equal(code, 0, top.output());
    assert.ok(top.output().includes('\x1b[?25h'));
  });
});
