/**
 * When a call through grpcChannel() is sent again on another pod: the retry policies of a gRPC
 * service config (gRFC A6, in the shape grpc-js takes), checked at the door, and the two reads of
 * an attempt's status that decide it — did the call ever reach the pod, and did the pod ask for a
 * pause (`grpc-retry-pushback-ms`).
 */
import { status, type Metadata, type StatusObject } from '@grpc/grpc-js';
import type { RetryPolicy } from '../call/retry.ts';
import { MAX_DELAY_MS, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';

/** A gRPC service config, as grpc-js reads one (`grpc.service_config`): only `methodConfig` applies to grpcChannel. */
export interface GrpcServiceConfig {
  methodConfig?: readonly GrpcMethodConfig[];
}

/** One entry of a service config's `methodConfig`: the methods it names, and their retry policy. */
export interface GrpcMethodConfig {
  /**
   * `{ service, method }` for one method, `{ service }` for every method of a service, `{}` for
   * every method the other entries do not name. `service` is the full name (`pkg.v1.Echo`).
   */
  name: readonly { service?: string; method?: string }[];
  /** Without it, the methods named are never retried once they may have reached a pod. */
  retryPolicy?: GrpcRetryPolicy;
}

/** gRFC A6's `retryPolicy`. */
export interface GrpcRetryPolicy {
  /** Attempts in all, the first included: at least 2; more than 5 counts as 5. */
  maxAttempts: number;
  /** The backoff before the first retry, as a duration in seconds: `'0.1s'`. */
  initialBackoff: string;
  /** The longest backoff: `'1s'`. */
  maxBackoff: string;
  /** What each retry multiplies the backoff by: `2`. */
  backoffMultiplier: number;
  /** The status codes that are retried, by name (`'UNAVAILABLE'`) or number (`14`). */
  retryableStatusCodes: readonly (string | number)[];
}

/** A checked retry policy of one method. */
export interface MethodRetry {
  /** Attempts in all that may reach a pod (A6's `maxAttempts`, capped at 5). */
  readonly maxAttempts: number;
  /** The backoff, in the shape the pool's `retry.delayMs()` takes. */
  readonly delays: RetryPolicy;
  readonly codes: ReadonlySet<number>;
}

/** A6: a `maxAttempts` over 5 is taken as 5 (grpc-js's `grpc-node.retry_max_attempts_limit`). */
const MAX_ATTEMPTS = 5;
/** A6: up to 9 digits after the point, then `s`; the same pattern grpc-js checks. */
const DURATION = /^\d+(\.\d{1,9})?s$/;

const CONFIG_KEYS = optionNames<GrpcServiceConfig>({ methodConfig: true });
const METHOD_KEYS = optionNames<GrpcMethodConfig>({ name: true, retryPolicy: true });
const NAME_KEYS = ['service', 'method'] as const;
const POLICY_KEYS = optionNames<GrpcRetryPolicy>({
  maxAttempts: true,
  initialBackoff: true,
  maxBackoff: true,
  backoffMultiplier: true,
  retryableStatusCodes: true,
});

/**
 * The retry policy of each method: from the service config's `methodConfig` (the most specific
 * name wins: `service/method`, then `service`, then `{}`), else `fallback` (what the pool's
 * `retry: { idempotent: true }` implies) for a method no entry names. Looked up only when an
 * attempt failed, and remembered per method.
 */
export class MethodRetries {
  /** By `service/method`, `service` or `` (the `{}` entry); `null` is an entry without a retryPolicy. */
  readonly #entries: ReadonlyMap<string, MethodRetry | null>;
  readonly #fallback: MethodRetry | undefined;
  readonly #byPath = new Map<string, MethodRetry | undefined>();

  constructor(entries: ReadonlyMap<string, MethodRetry | null>, fallback: MethodRetry | undefined) {
    this.#entries = entries;
    this.#fallback = fallback;
  }

  /** The policy of a call's method path (`/pkg.v1.Echo/Unary`), or undefined: not retried once it may have reached a pod. */
  forPath(path: string): MethodRetry | undefined {
    if (this.#byPath.has(path)) return this.#byPath.get(path);
    const slash = path.lastIndexOf('/');
    const service = path.slice(path.startsWith('/') ? 1 : 0, Math.max(slash, 0));
    const method = path.slice(slash + 1);
    const entries = this.#entries;
    const name = [`${service}/${method}`, service, ''].find((key) => entries.has(key));
    // An entry without a retryPolicy (null) says "not retried": it does not fall back.
    const policy = name === undefined ? this.#fallback : (entries.get(name) ?? undefined);
    // Method paths come from generated stubs: a handful per channel, so the cache stays small.
    this.#byPath.set(path, policy);
    return policy;
  }
}

/**
 * Checks `serviceConfig` (an object, or its JSON) as grpc-js does, with gRFC A6's bounds, and
 * throws `PODPOOL_INVALID_OPTION` naming the first bad field.
 */
export function methodRetries(serviceConfig: unknown, fallback: MethodRetry | undefined): MethodRetries {
  const entries = new Map<string, MethodRetry | null>();
  if (serviceConfig === undefined) return new MethodRetries(entries, fallback);
  let config: unknown = serviceConfig;
  if (typeof config === 'string') {
    try {
      config = JSON.parse(config) as unknown;
    } catch {
      // Not JSON.parse's message: it quotes the text around the fault, which may hold anything.
      invalidOption('serviceConfig', 'a service config object or its JSON (this string does not parse as JSON)', serviceConfig);
    }
  }
  checkOptions(config, CONFIG_KEYS, 'serviceConfig');
  const { methodConfig = [] } = config as GrpcServiceConfig;
  if (!Array.isArray(methodConfig)) invalidOption('serviceConfig.methodConfig', 'an array', methodConfig);
  methodConfig.forEach((entry: unknown, i: number) => {
    const at = `serviceConfig.methodConfig[${i}]`;
    checkOptions(entry, METHOD_KEYS, at);
    const { name, retryPolicy } = entry as GrpcMethodConfig;
    if (!Array.isArray(name)) invalidOption(`${at}.name`, 'an array of { service, method? }', name);
    const policy = retryPolicy === undefined ? null : checkPolicy(retryPolicy, `${at}.retryPolicy`);
    name.forEach((n: unknown, j: number) => {
      const key = nameKey(n, `${at}.name[${j}]`);
      // gRPC's service config spec: two entries naming the same method is an error.
      if (entries.has(key)) invalidOption(`${at}.name[${j}]`, 'a name no other entry has', n);
      entries.set(key, policy);
    });
  });
  return new MethodRetries(entries, fallback);
}

/** What `retry: { idempotent: true }` on the pool means for a method no service config names. */
export function idempotentRetry(policy: RetryPolicy): MethodRetry {
  return { maxAttempts: policy.retries + 1, delays: policy, codes: new Set([status.UNAVAILABLE]) };
}

/** `service/method`, `service`, or `` for `{}`, as grpc-js validates names. */
function nameKey(name: unknown, at: string): string {
  checkOptions(name, NAME_KEYS, at);
  const { service = '', method = '' } = name as { service?: unknown; method?: unknown };
  if (typeof service !== 'string') invalidOption(`${at}.service`, 'a string (the full service name, pkg.v1.Service)', service);
  if (typeof method !== 'string') invalidOption(`${at}.method`, 'a string', method);
  if (service === '') {
    if (method !== '') invalidOption(`${at}.method`, 'left out when service is', method);
    return '';
  }
  return method === '' ? service : `${service}/${method}`;
}

function checkPolicy(policy: unknown, at: string): MethodRetry {
  checkOptions(policy, POLICY_KEYS, at);
  const { maxAttempts, initialBackoff, maxBackoff, backoffMultiplier, retryableStatusCodes } = policy as GrpcRetryPolicy;
  checkNumber(`${at}.maxAttempts`, maxAttempts, { min: 2, integer: true });
  const minMs = durationMs(initialBackoff, `${at}.initialBackoff`);
  const maxMs = durationMs(maxBackoff, `${at}.maxBackoff`);
  checkNumber(`${at}.backoffMultiplier`, backoffMultiplier, { min: Number.MIN_VALUE });
  if (!Array.isArray(retryableStatusCodes) || retryableStatusCodes.length === 0) {
    invalidOption(`${at}.retryableStatusCodes`, "a non-empty array of status codes ('UNAVAILABLE' or 14)", retryableStatusCodes);
  }
  const codes = new Set<number>();
  retryableStatusCodes.forEach((code: unknown, i: number) => codes.add(statusCode(code, `${at}.retryableStatusCodes[${i}]`)));
  const attempts = Math.min(maxAttempts, MAX_ATTEMPTS);
  return {
    maxAttempts: attempts,
    delays: { retries: attempts - 1, idempotent: true, backoff: { minMs, maxMs, factor: backoffMultiplier } },
    codes,
  };
}

/** `'0.1s'` → 100: A6 wants both backoffs above zero. */
function durationMs(value: unknown, at: string): number {
  const ms = typeof value === 'string' && DURATION.test(value) ? Number(value.slice(0, -1)) * 1_000 : NaN;
  if (!(ms > 0 && ms <= MAX_DELAY_MS)) invalidOption(at, "a duration in seconds above 0, such as '0.1s'", value);
  return ms;
}

/** A status code by name (any case, as grpc-js matches) or number; never OK. */
function statusCode(value: unknown, at: string): number {
  const code = typeof value === 'string' ? (status as unknown as Record<string, unknown>)[value.toUpperCase()] : value;
  if (typeof code !== 'number' || status[code] === undefined || code === status.OK) {
    invalidOption(at, "a status code other than OK, by name ('UNAVAILABLE') or number (14)", value);
  }
  return code;
}

/**
 * Whether an attempt that ended with `ended` never reached the pod, read the conservative way:
 * grpc-js reports the status of the pod channel's last attempt without saying whether it left
 * the client, but a call's `getPeer()` names the remote address only once an HTTP/2 stream was
 * opened for it, and the channel's target while none was (a pick that failed because the
 * channel is not connected, a channel closed while the call waited for a pick). grpc-js has
 * already resent, on that channel, the attempts its own transparent retry covers (a stream that
 * could not start, a REFUSED_STREAM), and marks with `grpc-previous-rpc-attempts` a status that
 * follows an attempt that was processed (a retry policy on the pod's channel). Anything else may
 * have reached the pod.
 */
export function neverReachedPod(ended: StatusObject, peer: string, target: string): boolean {
  return ended.code === status.UNAVAILABLE && peer === target && ended.metadata.get(PREVIOUS_ATTEMPTS).length === 0;
}

/** gRFC A6's header on a retry (and trailer on its status): how many attempts came before that may have reached a pod. */
export const PREVIOUS_ATTEMPTS = 'grpc-previous-rpc-attempts';

/**
 * A6's `grpc-retry-pushback-ms`: `undefined` when the trailer is absent (back off as usual),
 * the wait the server asked for, or `false` when it sent a negative or unreadable value (do not
 * retry).
 */
export function pushbackMs(trailers: Metadata): number | false | undefined {
  const values = trailers.get('grpc-retry-pushback-ms');
  if (values.length === 0) return undefined;
  const text = String(values[0]);
  const ms = /^\d+$/.test(text) ? Number(text) : NaN;
  return ms <= MAX_DELAY_MS ? ms : false;
}
