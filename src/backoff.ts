/**
 * The one backoff of podpool's long-lived loops: the pool's connect loop (a failed connect, or a
 * connection that died young) and the Kubernetes source's list/watch loop; and the jitter of
 * discovery's polls and timeouts. p-retry can't carry a failure streak from one connection to
 * the next nor take the injected `random`, so it serves only broadcast's short per-pod retries.
 */

/** A checked backoff: exponential from `minMs` by `factor`, never over `maxMs`. */
export interface BackoffPolicy {
  readonly minMs: number;
  readonly maxMs: number;
  readonly factor: number;
}

/**
 * The wait after `failures` failures in a row (1 for the first): `minMs · factor^(failures-1)`,
 * jittered up to twice that by `random()`, never over `maxMs`.
 */
export function backoffMs(policy: BackoffPolicy, failures: number, random: () => number): number {
  return Math.min(policy.maxMs, policy.minMs * policy.factor ** Math.min(failures - 1, 1_000) * (1 + jitterOf(random)));
}

/**
 * A draw of an injected `random()` for a jitter: what it returned when that is in [0, 1], else
 * 0.5, so a broken one can neither stretch a wait past its ceiling nor shrink it to nothing.
 */
export function jitterOf(random: () => number): number {
  const r = random();
  return r >= 0 && r <= 1 ? r : 0.5;
}
