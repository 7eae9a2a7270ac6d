import { EndpointSet, type Endpoint, type EndpointInit } from '../endpoint.ts';
import type { EndpointSource } from './source.ts';

/**
 * A fixed list of endpoints, validated at once: for tests, and for services outside Kubernetes.
 * Throws `PODPOOL_INVALID_ENDPOINT` for a bad address or port.
 */
export function staticEndpoints(endpoints: Iterable<Endpoint | EndpointInit>): EndpointSource {
  const set = new EndpointSet(endpoints);
  return {
    kind: 'static',
    watch(sink) {
      let open = true;
      // Reported on the next tick so the pool has finished wiring itself up, as with any source.
      queueMicrotask(() => {
        if (open) sink.snapshot(set);
      });
      return {
        close() {
          open = false;
          return Promise.resolve();
        },
      };
    },
  };
}
