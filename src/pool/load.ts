import { LatencyEwma, RecentLatency, toMicros } from './latency.ts';

/** How long a window of {@link RecentLatency} lasts: `stats()` figures cover the last 10 to 20 s. */
export const RECENT_WINDOW_MS = 10_000;

/**
 * How busy and how healthy one member is, as tower's `Load` keeps it apart from `Balance`: calls
 * in flight, counts, the latency EWMA the balancers weigh and the recent latency `stats()` reports. It only measures; the balancers read it through the
 * member, and ejection reads the run of failures. Nothing here allocates per call.
 */
export class Load {
  inFlight = 0;
  /** Calls started (use, broadcast deliveries, adapter calls). */
  requests = 0;
  /** Calls that failed in a way that counts against the pod. */
  failures = 0;
  consecutiveFailures = 0;
  readonly latency: LatencyEwma;
  /** What calls took lately, as they took it: for people (`stats()`), not for picking. */
  readonly recent = new RecentLatency(RECENT_WINDOW_MS);

  constructor(latencyDecayMs: number) {
    this.latency = new LatencyEwma(latencyDecayMs);
  }

  started(): void {
    this.inFlight++;
    this.requests++;
  }

  /** The pod answered (a success, or a request the pod refused): its latency is real. */
  answered(latencyMs: number, now: number): void {
    this.latency.observe(latencyMs, now);
    const recent = this.recent;
    if (now >= recent.turnsAt) recent.turn(now);
    recent.record(toMicros(latencyMs));
    this.consecutiveFailures = 0;
  }

  /** The pod failed the call; returns the failures in a row so far. */
  failed(latencyMs: number, now: number): number {
    this.latency.observeFailure(latencyMs, now);
    this.failures++;
    return ++this.consecutiveFailures;
  }

  /** Returns the calls still in flight. */
  settled(): number {
    return --this.inFlight;
  }
}
