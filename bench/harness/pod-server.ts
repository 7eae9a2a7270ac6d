/**
 * `podpool pod`: one of the bench's pods ({@link Pod}: bounded capacity, a service time, HTTP,
 * gRPC Echo, WebSocket requests and a UDP receiver, counts) as a program, the backend container
 * of `podpool bench --cluster`. Beside the pod's ports it serves a control endpoint over HTTP
 * (`CONTROL_PORT`) that the in-cluster runner drives through pod-control.ts, and that the
 * kubelet's readiness probe reads:
 *
 *   GET  /ready    200 `{ name }` while serving; 503 once terminating or killed
 *   GET  /counts   200 `{ name, counts, factor, pending }`
 *   POST /slow     `{ factor }` (finite, > 0): the service time is multiplied by it; 204
 *   POST /recycle  a Recycling `{ keepAliveTimeoutMs, maxRequestsPerSocket }`, or `null`; 204
 *   POST /kill     200 KillResult: the pod dies as a crashed process does; this endpoint stays
 *
 * SIGTERM (or SIGINT) turns /ready to 503 at once, keeps serving for `--pre-stop-ms` (what a
 * preStop sleep gives: time for the EndpointSlice, and so kube-proxy and podpool's clients, to
 * learn the pod is going), then stops accepting, lets what is in flight finish within
 * `--grace-ms`, and exits 0.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { CONTROL_PORT, POD_ENV } from './kube/protocol.ts';
import { POD_PORTS, Pod, type Protocol, type Recycling } from './pods.ts';

export const POD_USAGE = `usage: podpool pod [flags]   the bench's backend pod (HTTP ${POD_PORTS.http}, gRPC ${POD_PORTS.grpc}, WebSocket ${POD_PORTS.ws}, UDP ${POD_PORTS.udp}) and its control endpoint
      --host H               the address to listen on (default: $${POD_ENV.ip}, else 0.0.0.0)
      --name N               the name it answers with (default: $${POD_ENV.name}, else the host name)
      --concurrency K        requests served at once; the rest queue (default 4)
      --service-ms MS        service time per request (default 10)
      --protocols LIST       of http,grpc,ws,udp (default: all)
      --control-port P       the control endpoint: /ready /counts /slow /recycle /kill (default ${CONTROL_PORT})
      --pre-stop-ms MS       after SIGTERM, not ready but still serving for this long (default 0)
      --grace-ms MS          then the time in-flight requests get to finish (default 10000)`;

const PROTOCOLS: readonly Protocol[] = ['http', 'grpc', 'ws', 'udp'];

/** A request body larger than this is no control command. */
const MAX_BODY = 64 * 1024;

/** Turned into exit code 2 with the usage by the command's guard. */
function usage(message: string): Error {
  const error = new Error(message);
  error.name = 'UsageError';
  return error;
}

interface PodOptions {
  host: string;
  name: string;
  concurrency: number;
  serviceMs: number;
  protocols: Protocol[];
  controlPort: number;
  preStopMs: number;
  graceMs: number;
}

function podOptions(args: string[]): PodOptions | undefined {
  const { values } = parseArgs({
    args,
    options: {
      host: { type: 'string' },
      name: { type: 'string' },
      concurrency: { type: 'string' },
      'service-ms': { type: 'string' },
      protocols: { type: 'string' },
      'control-port': { type: 'string' },
      'pre-stop-ms': { type: 'string' },
      'grace-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const number = (flag: string, fallback: number, min: number, integer: boolean, max = Number.MAX_SAFE_INTEGER): number => {
    const raw = values[flag as keyof typeof values];
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (typeof raw !== 'string' || raw.trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw usage(`--${flag} must be ${integer ? 'an integer' : 'a number'} from ${min}${max < Number.MAX_SAFE_INTEGER ? ` to ${max}` : ''}, got ${JSON.stringify(raw)}`);
    }
    return n;
  };
  const host = values.host ?? process.env[POD_ENV.ip] ?? '0.0.0.0';
  // An address, never a name: a pod listens on its own IP, and nothing here should ask a resolver.
  if (isIP(host) === 0) throw usage(`--host must be an IP address${values.host === undefined ? ` ($${POD_ENV.ip})` : ''}, got ${JSON.stringify(host)}`);
  const name = values.name ?? process.env[POD_ENV.name] ?? hostname();
  if (name === '') throw usage('--name must not be empty');
  const protocols = values.protocols === undefined ? [...PROTOCOLS] : values.protocols.split(',').map((p) => p.trim());
  for (const p of protocols) if (!PROTOCOLS.includes(p as Protocol)) throw usage(`--protocols takes ${PROTOCOLS.join(', ')}; got ${JSON.stringify(p)}`);
  if (protocols.length === 0 || new Set(protocols).size !== protocols.length) throw usage(`--protocols lists each of ${PROTOCOLS.join(', ')} once at most, got ${JSON.stringify(values.protocols)}`);
  const controlPort = number('control-port', CONTROL_PORT, 1, true, 65_535);
  const taken = protocols.find((p) => p !== 'udp' && POD_PORTS[p as Protocol] === controlPort);
  if (taken) throw usage(`--control-port ${controlPort} is the ${taken} port`);
  return {
    host,
    name,
    concurrency: number('concurrency', 4, 1, true),
    serviceMs: number('service-ms', 10, 0, false),
    protocols: protocols as Protocol[],
    controlPort,
    preStopMs: number('pre-stop-ms', 0, 0, false),
    graceMs: number('grace-ms', 10_000, 0, false),
  };
}

type State = 'starting' | 'serving' | 'terminating' | 'killed';

/** `podpool pod [flags]`: serves until SIGTERM or SIGINT, then resolves with the exit code. */
export async function runPod(args: string[]): Promise<number> {
  const options = podOptions(args);
  if (options === undefined) {
    process.stdout.write(`${POD_USAGE}\n`);
    return 0;
  }
  const { host, name, controlPort } = options;
  const pod = new Pod({ name, address: host, protocols: options.protocols, concurrency: options.concurrency, serviceMs: options.serviceMs });
  let state: State = 'starting';
  const control = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (res.headersSent) res.destroy();
      else reply(res, 500, { error: error instanceof Error ? error.message : String(error) });
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?', 1)[0];
    const method = ROUTES[path as keyof typeof ROUTES];
    if (method === undefined) return reply(res, 404, { error: `no ${path}; the control endpoint has ${Object.keys(ROUTES).join(', ')}` });
    if (req.method !== method) {
      res.setHeader('allow', method);
      return reply(res, 405, { error: `${path} takes ${method}, got ${req.method}` });
    }
    switch (path) {
      case '/ready':
        return reply(res, state === 'serving' ? 200 : 503, { name, state });
      case '/counts':
        return reply(res, 200, { name, counts: pod.counts, factor: pod.factor, pending: pod.pending });
      case '/kill': {
        const result = pod.kill();
        state = 'killed';
        return reply(res, 200, result);
      }
    }
    const read = await readJson(req);
    if ('error' in read) return reply(res, read.status, { error: read.error });
    const body = read.value;
    if (path === '/slow') {
      const factor = (body as { factor?: unknown } | null)?.factor;
      if (typeof factor !== 'number' || !Number.isFinite(factor) || factor <= 0) {
        return reply(res, 400, { error: `/slow takes {"factor": n}, n a finite number > 0; got ${JSON.stringify(body)}` });
      }
      pod.slow(factor);
      return reply(res, 204);
    }
    // /recycle
    const recycling = recyclingOf(body);
    if (recycling instanceof Error) return reply(res, 400, { error: recycling.message });
    pod.recycle(recycling ?? undefined);
    return reply(res, 204);
  }

  try {
    await listen(control, controlPort, host);
    await pod.start().catch((error: unknown) => {
      throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `podpool pod can't listen on ${host}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    });
  } catch (error) {
    pod.kill();
    control.close();
    throw error;
  }
  const { promise: signalled, resolve: signal } = Promise.withResolvers<NodeJS.Signals>();
  // Before the ready line: whoever reads it may send SIGTERM at once.
  process.on('SIGTERM', signal);
  process.on('SIGINT', signal);
  state = 'serving';
  const ports = options.protocols.map((p) => `${p} ${POD_PORTS[p]}`).join(', ');
  process.stdout.write(`podpool pod ${name} ready on ${host}: ${ports}, control ${controlPort}\n`);
  try {
    const received = await signalled;
    // The first signal starts the shutdown; a second is answered by the same, bounded, shutdown.
    if (state === 'serving') state = 'terminating';
    process.stdout.write(`podpool pod ${name}: ${received}, not ready; serving ${options.preStopMs} ms more, then ${options.graceMs} ms to finish\n`);
    if (options.preStopMs > 0) await sleep(options.preStopMs);
    await pod.terminate(options.graceMs);
    control.closeAllConnections();
    await new Promise((r) => control.close(r));
  } finally {
    process.off('SIGTERM', signal);
    process.off('SIGINT', signal);
  }
  return 0;
}

const ROUTES = { '/ready': 'GET', '/counts': 'GET', '/slow': 'POST', '/recycle': 'POST', '/kill': 'POST' } as const;

async function listen(server: ReturnType<typeof createServer>, port: number, host: string): Promise<void> {
  server.listen(port, host);
  try {
    await once(server, 'listening');
  } catch (error) {
    throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `podpool pod can't listen on ${host} port ${port}: ${error instanceof Error ? error.message : String(error)}`, {
      cause: error,
    });
  }
}

function reply(res: ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

/** The request's JSON body, or the status and the sentence that say why there is none. */
async function readJson(req: IncomingMessage): Promise<{ value: unknown } | { status: number; error: string }> {
  const chunks: Buffer[] = [];
  let size = 0;
  // Read to the end even when too big: leaving the loop early would destroy the socket, and the answer with it.
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size <= MAX_BODY) chunks.push(chunk);
  }
  if (size > MAX_BODY) return { status: 413, error: `the body is over ${MAX_BODY} bytes` };
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return { value: JSON.parse(text) as unknown };
  } catch {
    return { status: 400, error: `the body is not JSON: ${JSON.stringify(text.slice(0, 80))}` };
  }
}

/** `null` (recycle nothing), a Recycling, or an Error naming what is wrong with the body. */
function recyclingOf(body: unknown): Recycling | null | Error {
  if (body === null) return null;
  const { keepAliveTimeoutMs, maxRequestsPerSocket } = (typeof body === 'object' ? body : {}) as Record<string, unknown>;
  const count = (v: unknown, integer: boolean): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0 && (!integer || Number.isInteger(v));
  if (typeof body !== 'object' || Array.isArray(body) || !count(keepAliveTimeoutMs, false) || !count(maxRequestsPerSocket, true)) {
    return new Error(
      `/recycle takes null or {"keepAliveTimeoutMs": ms ≥ 0, "maxRequestsPerSocket": an integer ≥ 0 (0: no limit)}; got ${JSON.stringify(body)?.slice(0, 120)}`,
    );
  }
  return { keepAliveTimeoutMs, maxRequestsPerSocket };
}
