import type { EndpointSet } from '../endpoint.ts';
import type { PodpoolError } from '../errors.ts';

/**
 * Where endpoints come from. A source is a recipe: each `watch()` starts its own discovery
 * (polls, a watch on the API server) and reports whole snapshots until closed, so one source
 * object can serve several pools.
 */
export interface EndpointSource {
  /** A short name for logs and stats: `static`, `dns`, `kubernetes`. */
  readonly kind: string;
  /** Starts discovery. The first snapshot comes only once the source has a complete picture. */
  watch(sink: SourceSink): SourceWatch;
}

/** What a source reports to. */
export interface SourceSink {
  /** A complete snapshot; the source sends one only when it differs from the previous one. */
  snapshot(endpoints: EndpointSet): void;
  /** A failure the source recovers from by itself (it keeps the last good snapshot meanwhile). */
  error(error: PodpoolError): void;
}

/** A running discovery. */
export interface SourceWatch {
  /** Stops discovery: no timer, socket or watch is left behind once it resolves. */
  close(): Promise<void>;
}
