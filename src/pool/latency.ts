import { build, type Histogram } from 'hdr-histogram-js';

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

/** Slowest latency the recent histogram tells apart (µs, 30 min; an Int32Array holds it): a slower call counts as this slow. */
const HIGHEST_US = 1_800_000_000;

/**
 * The histogram's shape: microseconds from 1 µs to 30 minutes, within 1% (2 significant digits),
 * 32-bit counts (a 16-bit count would wrap on a busy pod within one window). About 12 KB each,
 * two per member, made at a member's first answered call: a member that never served a call
 * costs nothing here.
 */
const HISTOGRAM = { bitBucketSize: 32, lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_US, numberOfSignificantValueDigits: 2, autoResize: false } as const;

/** A latency in ms as {@link RecentLatency.record} takes it: whole µs (a clock reading may be fractional), within the histogram's range. */
export function toMicros(latencyMs: number): number {
  const us = Math.round(latencyMs * 1000);
  return us < 0 ? 0 : us > HIGHEST_US ? HIGHEST_US : us;
}

/** Samples a member keeps before it adds them to its histogram. */
const PENDING = 64;
const EMPTY = new Int32Array(0);

/** Where two windows are merged for a reading: one for every member, since a reading runs to its end without yielding. */
let scratch: Histogram | undefined;

/** What {@link RecentLatency.read} reports, in ms; all 0 with no sample. */
export interface LatencyReading {
  readonly meanMs: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** Calls behind the figures: those answered in the last one to two windows. */
  readonly samples: number;
}

const NO_READING: LatencyReading = Object.freeze({ meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, maxMs: 0, samples: 0 });

/**
 * A member's recent latency as it was, not as a balancer weighs it: an HDR histogram of the
 * calls answered in the current window and the one before (so "recent" is the last
 * `windowMs` to `2 × windowMs`); older calls are forgotten as the windows turn. Recording is one
 * integer stored (no allocation, no double handed over); the histogram takes them 64 at a time,
 * and merging and percentiles wait for a reading.
 */
export class RecentLatency {
  readonly #windowMs: number;
  #current: Histogram | undefined = undefined;
  #previous: Histogram | undefined = undefined;
  /** When the current window opened (a clock reading). */
  #start = 0;
  /**
   * When the current window ends (a clock reading): the caller checks it and calls `turn(now)`
   * past it. A field, not a getter, and `record()` takes an integer: the call path then hands
   * no double to a call that may not inline, which would box it (16 B each).
   */
  turnsAt = -Infinity;
  /** Samples (µs) of the current window not yet in its histogram: the histogram takes them {@link PENDING} at a time. */
  #pending: Int32Array = EMPTY;
  #count = 0;

  constructor(windowMs: number) {
    this.#windowMs = windowMs;
  }

  get windowMs(): number {
    return this.#windowMs;
  }

  /** A call's latency in whole µs (`toMicros(ms)`); call `turn(now)` first when `now >= turnsAt`. */
  record(us: number): void {
    this.#pending[this.#count] = us;
    if (++this.#count === PENDING) this.#flush();
  }

  /** Moves the pending samples into the current window's histogram. */
  #flush(): void {
    const current = this.#current!;
    const pending = this.#pending;
    for (let i = 0; i < this.#count; i++) current.recordValue(pending[i]!);
    this.#count = 0;
  }

  /** The first sample's window (the histograms are made then), or the windows that ended by `now` forgotten. */
  turn(now: number): void {
    if (this.#current === undefined) {
      this.#current = build(HISTOGRAM);
      this.#previous = build(HISTOGRAM);
      this.#pending = new Int32Array(PENDING);
      this.#start = now;
      this.turnsAt = now + this.#windowMs;
      return;
    }
    this.#flush();
    const windows = Math.floor((now - this.#start) / this.#windowMs);
    const previous = this.#previous!;
    const current = this.#current;
    previous.reset();
    this.#start += windows * this.#windowMs;
    this.turnsAt = this.#start + this.#windowMs;
    if (windows >= 2) {
      // Both windows ended before the one before now's.
      current.reset();
      return;
    }
    this.#previous = current;
    this.#current = previous;
  }

  /** The figures over the current and the previous window, as of `now`. */
  read(now: number): LatencyReading {
    if (this.#current === undefined) return NO_READING;
    if (now >= this.turnsAt) this.turn(now);
    else this.#flush();
    const current = this.#current;
    const previous = this.#previous!;
    let h = current;
    if (previous.totalCount > 0) {
      h = scratch ??= build(HISTOGRAM);
      h.reset();
      h.add(previous);
      h.add(current);
    }
    if (h.totalCount === 0) return NO_READING;
    return {
      meanMs: h.mean / 1000,
      p50Ms: h.getValueAtPercentile(50) / 1000,
      p90Ms: h.getValueAtPercentile(90) / 1000,
      p99Ms: h.getValueAtPercentile(99) / 1000,
      maxMs: h.maxValue / 1000,
      samples: h.totalCount,
    };
  }
}
