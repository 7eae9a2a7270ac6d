import type { Pickable } from '../../src/balance/balancer.ts';
import { createEndpoint, type Endpoint } from '../../src/endpoint.ts';
import { LatencyEwma } from '../../src/pool/latency.ts';

/**
 * A member for balancer tests: its load is set by the test, and its `inFlight` reads are
 * counted, which shows which members a pick sampled.
 */
export class TestMember implements Pickable {
  readonly endpoint: Endpoint;
  readonly ewma: LatencyEwma;
  load: number;
  reads = 0;

  constructor(id: number, { load = 0, decayMs = 10_000 }: { load?: number; decayMs?: number } = {}) {
    this.endpoint = createEndpoint({ address: `10.0.${id >> 8}.${id & 255}`, port: 80 });
    this.ewma = new LatencyEwma(decayMs);
    this.load = load;
  }

  /** A member with this load and, when given, one observed latency at time 0. */
  static with(id: number, load: number, latencyMs?: number): TestMember {
    const m = new TestMember(id, { load });
    if (latencyMs !== undefined) m.ewma.observe(latencyMs, 0);
    return m;
  }

  get inFlight(): number {
    this.reads++;
    return this.load;
  }

  get samples(): number {
    return this.ewma.samples;
  }

  latencyMs(now: number): number {
    return this.ewma.at(now);
  }
}

/** mulberry32: a seeded stream of [0, 1) draws, for the tests that need many. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
