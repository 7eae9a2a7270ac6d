import { checkAllowAddresses, refusedAddress, type AddressRange } from '../address.ts';
import { createEndpoint, EndpointSet, type Endpoint, type EndpointInit } from '../endpoint.ts';
import { InvalidEndpointError } from '../errors.ts';
import { checkOptions, invalidArgument, optionNames } from '../options.ts';
import type { EndpointSource } from './source.ts';

/** Options of {@link staticEndpoints}. */
export interface StaticEndpointsOptions {
  /**
   * The address ranges the list may hold besides ordinary unicast addresses. Default
   * `['loopback']`: a static list is the caller's own code, and tests and local development
   * dial 127.0.0.1. A given list replaces the default (`[]` refuses loopback too).
   */
  allowAddresses?: readonly AddressRange[];
}

const OPTIONS = optionNames<StaticEndpointsOptions>({ allowAddresses: true });
const DEFAULT_ALLOWED: readonly AddressRange[] = ['loopback'];

/**
 * A fixed list of endpoints, validated at once: for tests, and for services outside Kubernetes.
 * Throws `PODPOOL_INVALID_ARGUMENT` when `endpoints` is not a list, `PODPOOL_INVALID_ENDPOINT`
 * naming the index of a bad entry (not an object, a bad address or port, or an address in a
 * range `allowAddresses` does not name: `0.0.0.0`, `169.254.169.254`, multicast…), and
 * `PODPOOL_INVALID_OPTION` for a bad option.
 */
export function staticEndpoints(endpoints: Iterable<Endpoint | EndpointInit>, options: StaticEndpointsOptions = {}): EndpointSource {
  checkOptions(options, OPTIONS);
  const allowed = checkAllowAddresses(options.allowAddresses, DEFAULT_ALLOWED);
  // A string is iterable too, and would be read one character an endpoint.
  if (endpoints === null || typeof endpoints !== 'object' || typeof (endpoints as Partial<Iterable<unknown>>)[Symbol.iterator] !== 'function') {
    invalidArgument('endpoints', 'an array of { address, port } objects', endpoints);
  }
  const checked: Endpoint[] = [];
  let index = 0;
  for (const entry of endpoints) {
    let endpoint: Endpoint;
    try {
      // Every entry is rebuilt, a ready-made Endpoint too: a frozen look-alike is checked as well.
      endpoint = createEndpoint(entry);
    } catch (error) {
      throw new InvalidEndpointError(`staticEndpoints: endpoints[${index}]: ${(error as Error).message}`, { cause: error });
    }
    const refused = refusedAddress(endpoint.address, allowed);
    if (refused !== undefined) throw new InvalidEndpointError(`staticEndpoints: endpoints[${index}]: ${refused}`);
    checked.push(endpoint);
    index++;
  }
  const set = new EndpointSet(checked);
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
