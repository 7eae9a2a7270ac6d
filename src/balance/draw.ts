/**
 * Drawing members at random, for the pickers that sample (random, least-loaded, peak-EWMA).
 * Plain numbers in and out, so a draw allocates nothing on the per-request path.
 */

/**
 * A uniform index in [0, n) from `random()` in [0, 1). Clamped, so an injected `random` that
 * returns 1 can't index past the end.
 */
export function randomIndex(random: () => number, n: number): number {
  const i = Math.floor(random() * n);
  return i < n ? i : n - 1;
}

/**
 * A uniform index in [0, n) other than `i` (n ≥ 2): drawn from the n − 1 others and shifted past
 * `i`, so the two members of a power-of-two-choices pick are always distinct, with one draw.
 */
export function otherIndex(random: () => number, n: number, i: number): number {
  const j = randomIndex(random, n - 1);
  return j >= i ? j + 1 : j;
}
