/**
 * An endpoint source the test drives by hand: `set()` reports a snapshot to every running watch
 * at once (synchronously, so the pool has reconciled when `set()` returns), `fail()` reports a
 * discovery error. A watch started after a `set()` gets the current snapshot on the next
 * microtask, as a real source reports its first complete picture.
 */
import { EndpointSet, type Endpoint, type EndpointInit } from '../../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import type { EndpointSource, SourceSink, SourceWatch } from '../../src/discovery/source.ts';

export class ManualSource implements EndpointSource {
  readonly kind = 'manual';
  #current: EndpointSet | undefined = undefined;
  readonly #sinks = new Set<SourceSink>();
  /** Watches started, and watches closed, so a test can check that `close()` stops discovery. */
  watches = 0;
  closes = 0;

  /** Reports a complete snapshot. Inits default to ready, serving, not terminating. */
  set(endpoints: Iterable<Endpoint | EndpointInit>): EndpointSet {
    const set = new EndpointSet(endpoints);
    this.#current = set;
    for (const sink of [...this.#sinks]) sink.snapshot(set);
    return set;
  }

  /** Reports a discovery failure; a plain `Error` is wrapped as `PODPOOL_DISCOVERY_FAILED`. */
  fail(error: Error | string): PodpoolError {
    const failure =
      error instanceof PodpoolError
        ? error
        : new PodpoolError(ErrorCode.DISCOVERY_FAILED, typeof error === 'string' ? error : error.message, {
            cause: error,
          });
    for (const sink of [...this.#sinks]) sink.error(failure);
    return failure;
  }

  /** Watches that are running now. */
  get open(): number {
    return this.#sinks.size;
  }

  watch(sink: SourceSink): SourceWatch {
    this.watches++;
    this.#sinks.add(sink);
    const first = this.#current;
    if (first !== undefined) {
      queueMicrotask(() => {
        if (this.#sinks.has(sink)) sink.snapshot(first);
      });
    }
    return {
      close: () => {
        if (this.#sinks.delete(sink)) this.closes++;
        return Promise.resolve();
      },
    };
  }
}

/** A ready endpoint on 10.0.0.`n`:80, or with the given conditions. */
export function pod(n: number, conditions: Omit<EndpointInit, 'address' | 'port'> = {}): EndpointInit {
  return { address: `10.0.0.${n}`, port: 80, ...conditions };
}

/** The key of {@link pod}(`n`). */
export function podKey(n: number): string {
  return `10.0.0.${n}:80`;
}
