/**
 * The client side of `podpool pod`'s control endpoint (pod-server.ts): what the in-cluster
 * runner does to one pod by its address, over HTTP to `http://<address>:9901/…`. Each call
 * opens its own connection and closes it (a pod may be killed between two calls), and is bounded
 * by a timeout; a failure is a PodpoolError that names the pod's address.
 */
import { isIPv6 } from 'node:net';
import { request } from 'undici';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { CONTROL_PORT } from './kube/protocol.ts';
import type { KillResult, PodCount, Recycling } from './pods.ts';

/** What `GET /counts` answers. */
export interface PodControlCounts {
  readonly name: string;
  readonly counts: PodCount;
  /** What the pod's service time is multiplied by now. */
  readonly factor: number;
  /** Requests it has received and not answered yet (being served or queued). */
  readonly pending: number;
}

export interface PodControlOptions {
  /** How long a call may take, connecting included (default 5000 ms). */
  readonly timeoutMs?: number;
  /** The control endpoint's port (default `CONTROL_PORT`, 9901). */
  readonly port?: number;
}

/** What the pod at `address` has served and accepted, and its slow factor. */
export async function podCounts(address: string, options?: PodControlOptions): Promise<PodControlCounts> {
  return (await call(address, 'GET', '/counts', undefined, options)) as PodControlCounts;
}

/** Multiplies the service time of the pod at `address` by `factor` (1 restores it). */
export async function slowPod(address: string, factor: number, options?: PodControlOptions): Promise<void> {
  if (typeof factor !== 'number' || !Number.isFinite(factor) || factor <= 0) {
    throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `slowPod(${JSON.stringify(address)}): the factor must be a finite number > 0, got ${String(factor)}`);
  }
  await call(address, 'POST', '/slow', { factor }, options);
}

/** Makes the pod's HTTP server recycle its keep-alive connections so (`undefined`: not at all). */
export async function recyclePod(address: string, recycling: Recycling | undefined, options?: PodControlOptions): Promise<void> {
  await call(address, 'POST', '/recycle', recycling ?? null, options);
}

/**
 * Kills the pod's servers as a crashed process dies (connections reset, its ports refuse); its
 * control endpoint stays, so its counts can still be read. Resolves with what it left unanswered.
 */
export async function killPod(address: string, options?: PodControlOptions): Promise<KillResult> {
  return (await call(address, 'POST', '/kill', undefined, options)) as KillResult;
}

async function call(address: string, method: 'GET' | 'POST', path: string, body: unknown, options: PodControlOptions = {}): Promise<unknown> {
  const timeoutMs = options.timeoutMs ?? 5_000;
  const url = `http://${isIPv6(address) ? `[${address}]` : address}:${options.port ?? CONTROL_PORT}${path}`;
  const what = `the control endpoint of pod ${address} (${method} ${url})`;
  let res;
  try {
    res = await request(url, {
      method,
      ...(body !== undefined && { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
      // One connection per call, closed after it: nothing is left open to a pod that may be gone.
      reset: true,
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (error) {
    const timedOut = error instanceof Error && (error.name === 'TimeoutError' || (error.cause as Error | undefined)?.name === 'TimeoutError');
    throw new PodpoolError(
      timedOut ? ErrorCode.TIMEOUT : ErrorCode.CONNECT_FAILED,
      timedOut ? `${what} did not answer within ${timeoutMs} ms` : `${what} failed: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
  const text = await res.body.text();
  if (res.statusCode >= 300) {
    throw new PodpoolError(ErrorCode.MESSAGE_REJECTED, `${what} answered ${res.statusCode}: ${text.slice(0, 200)}`);
  }
  return text === '' ? undefined : (JSON.parse(text) as unknown);
}
