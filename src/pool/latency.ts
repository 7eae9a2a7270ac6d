/**
 * A member's latency measurement: a peak-sensitive EWMA (as Finagle's and tower's PeakEwma;
 * named apart from the `peakEwma()` balancer, which reads it and never measures). A sample above the
 * estimate replaces it at once; a lower one is blended in with a weight that grows with the time
 * since the last sample; reading decays the estimate toward 0 so an idle member looks cheap again.
 */
export class LatencyEwma {
  #value = 0;
  #at = 0;
  #samples = 0;
  readonly #decayMs: number;

  constructor(decayMs: number) {
    this.#decayMs = decayMs;
  }

  get samples(): number {
    return this.#samples;
  }

  observe(latencyMs: number, now: number): void {
    if (this.#samples === 0 || latencyMs > this.#value) {
      this.#value = latencyMs;
    } else {
      const w = Math.exp(-Math.max(0, now - this.#at) / this.#decayMs);
      this.#value = this.#value * w + latencyMs * (1 - w);
    }
    this.#at = now;
    this.#samples++;
  }

  /**
   * A failed call only ever raises the estimate: a pod that fails fast must not look fast, but
   * one that failed slowly (a timeout) must look slow.
   */
  observeFailure(latencyMs: number, now: number): void {
    if (latencyMs > this.at(now)) this.observe(latencyMs, now);
  }

  /** The estimate at `now`, decayed toward 0 since the last sample. */
  at(now: number): number {
    if (this.#samples === 0) return 0;
    return this.#value * Math.exp(-Math.max(0, now - this.#at) / this.#decayMs);
  }
}
