/**
 * `podpool pod` as a container runs it: the command started as a process on an address of its
 * own in 127/8, talked to over real HTTP, gRPC, WebSocket and UDP, driven through its control
 * endpoint with pod-control.ts (what the in-cluster runner uses), and stopped with SIGTERM.
 * Nothing here is timed: waits are for a line, a count or an exit.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Client, request } from 'undici';
import { createPool, staticEndpoints, udpTransport, webSocketTransport, type UdpClient, type WebSocketClient } from '../../src/index.ts';
import { killPod, podCounts, recyclePod, slowPod, type PodControlCounts } from '../../bench/harness/pod-control.ts';
import { EchoClient, POD_PORTS, type EchoClientInstance } from '../../bench/harness/pods.ts';
import { CONTROL_PORT } from '../../bench/harness/kube/protocol.ts';

const MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');

// Every pod of this run gets an address of its own: 127/8 is all loopback on Linux, and the
// pid keeps parallel runs (and the fake cluster's 127.253/127.254) apart.
let next = 0;
const prefix = `127.${150 + (process.pid % 50)}.${(process.pid >> 6) % 250}.`;
const address = (): string => `${prefix}${++next}`;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts `podpool pod --host <address> …`; resolves once it printed its ready line. */
async function startPod(t: TestContext, args: string[] = []) {
  const host = address();
  const child = spawn(process.execPath, ['--conditions=podpool-source', MAIN, 'pod', '--host', host, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const waiters: (() => void)[] = [];
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
    for (const wake of waiters.splice(0)) wake();
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = once(child, 'exit').then(([code]) => {
    for (const wake of waiters.splice(0)) wake();
    return { code: code as number | null, stdout, stderr } satisfies Run;
  });
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  while (!stdout.includes('\n')) {
    if (child.exitCode !== null) assert.fail(`podpool pod exited ${child.exitCode}: ${stderr}`);
    await new Promise<void>((resolve) => waiters.push(resolve));
  }
  return { host, child, exited, firstLine: stdout.split('\n')[0]! };
}

/** Runs `podpool pod …` to its end (for flags it refuses). */
async function runPod(args: string[]): Promise<Run> {
  const child = spawn(process.execPath, ['--conditions=podpool-source', MAIN, 'pod', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}

/** Reads the pod's counts until `test` holds: each read is a round trip, so this waits on the pod, not on a clock. */
async function countsUntil(host: string, test: (c: PodControlCounts) => boolean): Promise<PodControlCounts> {
  for (;;) {
    const counts = await podCounts(host);
    if (test(counts)) return counts;
  }
}

async function httpGet(host: string, path = '/'): Promise<{ status: number; body: string }> {
  const res = await request(`http://${host}:${POD_PORTS.http}${path}`, { reset: true });
  return { status: res.statusCode, body: await res.body.text() };
}

async function control(host: string, method: string, path: string, body?: string): Promise<{ status: number; body: string }> {
  const res = await request(`http://${host}:${CONTROL_PORT}${path}`, { method, ...(body !== undefined && { body }), reset: true });
  return { status: res.statusCode, body: await res.body.text() };
}

describe('podpool pod', { timeout: 60_000 }, () => {
  it('says it is ready on every port, and serves HTTP, gRPC, WebSocket and UDP, each counted', async (t) => {
    const pod = await startPod(t, ['--name', 'pod-a', '--service-ms', '1']);
    assert.equal(pod.firstLine, `podpool pod pod-a ready on ${pod.host}: http 8080, grpc 50051, ws 8081, udp 9090, control 9901`);
    assert.deepEqual(JSON.parse((await control(pod.host, 'GET', '/ready')).body), { name: 'pod-a', state: 'serving' });

    assert.deepEqual(await httpGet(pod.host, '/work'), { status: 200, body: 'pod-a' });

    // gRPC: an ipv4: target, so no resolver runs.
    const echo = new EchoClient(`ipv4:${pod.host}:${POD_PORTS.grpc}`, grpc.credentials.createInsecure()) as EchoClientInstance;
    t.after(() => echo.close());
    const grpcReply = await new Promise<Buffer>((resolve, reject) => echo.call(Buffer.from('hi'), (e, r) => (e ? reject(e) : resolve(r!))));
    assert.equal(grpcReply.toString(), 'pod-a');

    // WebSocket and UDP through podpool's transports, as the bench's clients use them.
    const ws = createPool<WebSocketClient>({ source: staticEndpoints([{ address: pod.host, port: POD_PORTS.ws }]), transport: webSocketTransport() });
    t.after(() => ws.close());
    await ws.ready({ minEndpoints: 1 });
    assert.equal(await ws.use((client) => client.request({ kind: 'work' })), 'pod-a');
    assert.equal(await ws.use((client) => client.request({ kind: 'broadcast' })), 'pod-a');
    const udp = createPool<UdpClient>({ source: staticEndpoints([{ address: pod.host, port: POD_PORTS.udp }]), transport: udpTransport() });
    t.after(() => udp.close());
    await udp.ready({ minEndpoints: 1 });
    const sent = await udp.broadcast((client, _endpoint, delivery) => client.send('hello', delivery));
    assert.equal(sent.failed.length, 0);

    const { name, counts, factor, pending } = await countsUntil(pod.host, (c) => c.counts.udp > 0);
    assert.equal(name, 'pod-a');
    assert.equal(factor, 1);
    assert.equal(pending, 0);
    assert.deepEqual(
      { http: counts.http, grpc: counts.grpc, ws: counts.ws, wsBroadcasts: counts.wsBroadcasts, udp: counts.udp, wsSockets: counts.wsSockets },
      { http: 1, grpc: 1, ws: 1, wsBroadcasts: 1, udp: 1, wsSockets: 1 },
    );
  });

  it('serves only the protocols asked for; names itself from POD_NAME and binds POD_IP', async (t) => {
    const host = address();
    const child = spawn(process.execPath, ['--conditions=podpool-source', MAIN, 'pod', '--protocols', 'http'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, POD_NAME: 'from-env', POD_IP: host },
    });
    t.after(() => child.kill('SIGKILL'));
    const [line] = (await once(child.stdout.setEncoding('utf8'), 'data')) as [string];
    assert.equal(line, `podpool pod from-env ready on ${host}: http 8080, control 9901\n`);
    assert.equal((await httpGet(host)).body, 'from-env');
    await assert.rejects(request(`http://${host}:${POD_PORTS.ws}/`), { code: 'ECONNREFUSED' });
  });

  it('/slow: the factor is reported and a request is held for the slow service time; /kill: what it held is reported unanswered', async (t) => {
    const pod = await startPod(t, ['--service-ms', '10']);
    await slowPod(pod.host, 2.5);
    assert.equal((await podCounts(pod.host)).factor, 2.5);
    assert.equal((await httpGet(pod.host)).status, 200, 'a slowed pod still answers');
    // Slowed a million-fold, a request is taken (pending) and held, not answered.
    await slowPod(pod.host, 1e6);
    const held = httpGet(pod.host).then(
      () => 'answered',
      (error: NodeJS.ErrnoException) => error.code,
    );
    const counts = await countsUntil(pod.host, (c) => c.pending === 1);
    assert.equal(counts.counts.http, 1, 'the held request was not served');
    // Killed, the pod resets the held request's connection and says it left it unanswered.
    assert.deepEqual(await killPod(pod.host), { unanswered: 1 });
    assert.equal(await held, 'ECONNRESET');
  });

  it('/recycle: with maxRequestsPerSocket 1 every request takes a new connection; null restores keep-alive', async (t) => {
    const pod = await startPod(t, ['--service-ms', '0', '--name', 'recycler']);
    const sockets = async (): Promise<number> => (await podCounts(pod.host)).counts.httpSockets;
    const threeRequests = async (): Promise<number> => {
      const before = await sockets();
      const client = new Client(`http://${pod.host}:${POD_PORTS.http}`);
      try {
        for (let i = 0; i < 3; i++) assert.equal(await (await client.request({ path: '/', method: 'GET' })).body.text(), 'recycler');
      } finally {
        await client.close();
      }
      return (await sockets()) - before;
    };
    assert.equal(await threeRequests(), 1, 'kept alive: one connection');
    await recyclePod(pod.host, { keepAliveTimeoutMs: 60_000, maxRequestsPerSocket: 1 });
    assert.equal(await threeRequests(), 3, 'one request per connection');
    await recyclePod(pod.host, undefined);
    assert.equal(await threeRequests(), 1, 'kept alive again');
  });

  it('/kill: the pod refuses connections and is not ready; its control endpoint still answers', async (t) => {
    const pod = await startPod(t);
    await httpGet(pod.host);
    assert.deepEqual(await killPod(pod.host), { unanswered: 0 });
    await assert.rejects(httpGet(pod.host), { code: 'ECONNREFUSED' });
    await assert.rejects(request(`http://${pod.host}:${POD_PORTS.ws}/`), { code: 'ECONNREFUSED' });
    const ready = await control(pod.host, 'GET', '/ready');
    assert.equal(ready.status, 503);
    assert.equal(JSON.parse(ready.body).state, 'killed');
    assert.equal((await podCounts(pod.host)).counts.http, 1);
    // Killed and then terminated, as a kubelet would after a crash: it still exits 0.
    pod.child.kill('SIGTERM');
    assert.equal((await pod.exited).code, 0);
  });

  it('SIGTERM: the request in flight on a keep-alive connection answered with Connection: close, then exit 0', async (t) => {
    // A grace far beyond the test's timeout: the pod must end when its work is done, not when the grace is.
    const pod = await startPod(t, ['--service-ms', '2000', '--pre-stop-ms', '0', '--grace-ms', '600000', '--name', 'ending']);
    const client = new Client(`http://${pod.host}:${POD_PORTS.http}`);
    t.after(() => client.destroy());
    const answered = client.request({ path: '/', method: 'GET' }).then(async (res) => ({
      status: res.statusCode,
      connection: res.headers.connection,
      body: await res.body.text(),
    }));
    await countsUntil(pod.host, (c) => c.pending === 1);
    pod.child.kill('SIGTERM');
    assert.deepEqual(await answered, { status: 200, connection: 'close', body: 'ending' });
    const run = await pod.exited;
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /podpool pod ending: SIGTERM, not ready/);
  });

  it('SIGTERM with --pre-stop-ms: /ready says 503 while the pod still serves', async (t) => {
    const pod = await startPod(t, ['--service-ms', '0', '--pre-stop-ms', '60000']);
    pod.child.kill('SIGTERM');
    // The pod turns not ready as soon as it has the signal; until then /ready says 200.
    let ready: { status: number; body: string };
    do ready = await control(pod.host, 'GET', '/ready');
    while (ready.status === 200);
    assert.equal(ready.status, 503);
    assert.equal(JSON.parse(ready.body).state, 'terminating');
    assert.equal((await httpGet(pod.host)).status, 200, 'still serving during the pre-stop time');
  });

  it('answers bad control requests with 400, 404 or 405 and says why', async (t) => {
    const pod = await startPod(t);
    const cases: [string, string, string | undefined, number, RegExp][] = [
      ['POST', '/slow', '{"factor":0}', 400, /factor.*> 0/],
      ['POST', '/slow', '{"factor":"fast"}', 400, /factor/],
      ['POST', '/slow', 'not json', 400, /not JSON/],
      ['POST', '/recycle', '{"keepAliveTimeoutMs":-1,"maxRequestsPerSocket":1}', 400, /keepAliveTimeoutMs/],
      ['POST', '/recycle', '{"keepAliveTimeoutMs":1000,"maxRequestsPerSocket":1.5}', 400, /maxRequestsPerSocket/],
      ['POST', '/recycle', '[]', 400, /recycle takes null/],
      ['GET', '/nothing', undefined, 404, /no \/nothing/],
      ['POST', '/counts', '{}', 405, /\/counts takes GET/],
      ['GET', '/kill', undefined, 405, /\/kill takes POST/],
    ];
    for (const [method, path, body, status, message] of cases) {
      const res = await control(pod.host, method, path, body);
      assert.equal(res.status, status, `${method} ${path} ${body}`);
      assert.match(JSON.parse(res.body).error, message, `${method} ${path} ${body}`);
    }
    // None of them changed the pod.
    const { factor } = await podCounts(pod.host);
    assert.equal(factor, 1);
    assert.equal((await control(pod.host, 'GET', '/ready')).status, 200);
    // pod-control refuses a bad factor before sending, and reports a refusal naming the pod.
    await assert.rejects(slowPod(pod.host, Number.NaN), { code: 'PODPOOL_INVALID_ARGUMENT' });
  });

  it('listens on an IPv6 address (UDP too), and pod-control reaches it bracketed', async (t) => {
    const child = spawn(process.execPath, ['--conditions=podpool-source', MAIN, 'pod', '--host', '::1', '--name', 'six', '--protocols', 'http,udp'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    t.after(() => child.kill('SIGKILL'));
    const [line] = (await once(child.stdout.setEncoding('utf8'), 'data')) as [string];
    assert.equal(line, 'podpool pod six ready on ::1: http 8080, udp 9090, control 9901\n');
    assert.equal(await (await request(`http://[::1]:${POD_PORTS.http}/`, { reset: true })).body.text(), 'six');
    const udp = createPool<UdpClient>({ source: staticEndpoints([{ address: '::1', port: POD_PORTS.udp }]), transport: udpTransport() });
    t.after(() => udp.close());
    await udp.ready({ minEndpoints: 1 });
    assert.equal((await udp.broadcast((client, _endpoint, delivery) => client.send('hello', delivery))).failed.length, 0);
    const counts = await countsUntil('::1', (c) => c.counts.udp > 0);
    assert.deepEqual([counts.name, counts.counts.http, counts.counts.udp], ['six', 1, 1]);
  });

  it('pod-control: a pod that does not answer is a PodpoolError naming its address', async (t) => {
    const nobody = address();
    await assert.rejects(podCounts(nobody), (error: Error & { code?: string }) => {
      assert.equal(error.code, 'PODPOOL_CONNECT_FAILED');
      assert.match(error.message, new RegExp(`pod ${nobody.replaceAll('.', '\\.')} `));
      return true;
    });
    await assert.rejects(killPod('::1', { port: 1 }), (error: Error & { code?: string }) => {
      assert.equal(error.code, 'PODPOOL_CONNECT_FAILED');
      assert.match(error.message, /http:\/\/\[::1\]:1\/kill/, 'an IPv6 address is bracketed');
      return true;
    });
    // A pod that takes the connection and never answers: the call's timeout ends it.
    const silent = createNetServer(() => {});
    const host = address();
    silent.listen(0, host);
    await once(silent, 'listening');
    t.after(() => silent.close());
    const { port } = silent.address() as AddressInfo;
    await assert.rejects(slowPod(host, 2, { port, timeoutMs: 50 }), (error: Error & { code?: string }) => {
      assert.equal(error.code, 'PODPOOL_TIMEOUT');
      assert.match(error.message, new RegExp(`pod ${host.replaceAll('.', '\\.')} .* did not answer within 50 ms`));
      return true;
    });
  });

  it('refuses bad flags with exit 2, naming the flag', async () => {
    const host = address();
    const cases: [string[], RegExp][] = [
      [['--concurrency', '0'], /--concurrency must be an integer from 1/],
      [['--concurrency', '2.5'], /--concurrency/],
      [['--service-ms', 'slow'], /--service-ms must be a number/],
      [['--protocols', 'http,smtp'], /--protocols takes http, grpc, ws, udp; got "smtp"/],
      [['--protocols', 'http,http'], /--protocols lists each/],
      [['--control-port', '70000'], /--control-port must be an integer from 1 to 65535/],
      [['--control-port', '8080'], /--control-port 8080 is the http port/],
      [['--pre-stop-ms', '-1'], /--pre-stop-ms/],
      [['--grace-ms', ''], /--grace-ms/],
      [['--host', 'backend.example'], /--host must be an IP address/],
      [['--bogus'], /Unknown option '--bogus'/],
    ];
    for (const [args, message] of cases) {
      const run = await runPod(args[0] === '--host' ? args : ['--host', host, ...args]);
      assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
      assert.match(run.stderr, message, args.join(' '));
      assert.match(run.stderr, /usage: podpool pod/, 'with the usage');
    }
    const help = await runPod(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--pre-stop-ms MS/);
  });
});
