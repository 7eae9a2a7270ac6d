import { LatencyEwma } from './latency.ts';

/**
 * How busy and how healthy one member is, as tower's `Load` keeps it apart from `Balance`: calls
 * in flight, counts, and the latency EWMA. It only measures; the balancers read it through the
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
