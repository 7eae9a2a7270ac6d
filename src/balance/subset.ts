/**
 * Deterministic subsetting: each client connects to `size` of the pods, chosen so that every pod
 * gets about the same number of clients, instead of every client connecting to every pod.
 * (Contract stub: the selection is filled in by the subsetting work of issue 12.)
 */
import type { EndpointSet } from '../endpoint.ts';
import { checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';

/** The pool's `subset` option. */
export interface SubsetOptions {
  /** Pods each client connects to. */
  size: number;
  /** This client's number, from 0 to `clientCount - 1` (a StatefulSet ordinal, say). */
  clientId: number;
  /** How many clients share the pods. */
  clientCount: number;
}

/** A checked subset: which endpoints of a snapshot this client keeps members for. */
export interface SubsetPolicy {
  readonly size: number;
  readonly clientId: number;
  readonly clientCount: number;
  /** The keys of the endpoints of `endpoints` this client connects to. */
  select(endpoints: EndpointSet): ReadonlySet<string>;
}

const SUBSET_OPTIONS = optionNames<SubsetOptions>({ size: true, clientId: true, clientCount: true });

/** Checks `subset`, naming any bad option; `undefined`: every pod (full mesh). */
export function subsetPolicy(options: SubsetOptions | undefined): SubsetPolicy | undefined {
  if (options === undefined) return undefined;
  checkOptions(options, SUBSET_OPTIONS, 'subset');
  const size = checkNumber('subset.size', options.size, { min: 1, integer: true });
  const clientCount = checkNumber('subset.clientCount', options.clientCount, { min: 1, integer: true });
  const clientId = checkNumber('subset.clientId', options.clientId, { min: 0, integer: true });
  if (clientId >= clientCount) invalidOption('subset.clientId', `an integer from 0 to clientCount - 1 (${clientCount - 1})`, clientId);
  return Object.freeze({
    size,
    clientId,
    clientCount,
    select(endpoints: EndpointSet): ReadonlySet<string> {
      const keys = new Set<string>();
      for (const e of endpoints) keys.add(e.key);
      return keys;
    },
  });
}
