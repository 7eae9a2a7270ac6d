/**
 * Zone-aware routing: calls stay in the client's own zone while that zone has the capacity for
 * them, and spill over to the other zones when it has not.
 * (Contract stub: the routing is filled in by the zone-aware work of issue 12.)
 */
import { checkOptions, invalidOption, optionNames } from '../options.ts';
import type { Balancer, Pickable, Picker, PickerContext } from './balancer.ts';

/** The pool's `zone` option. */
export interface ZoneOptions {
  /** The client's own zone: its node's `topology.kubernetes.io/zone` label. */
  zone: string;
}

/** A checked zone policy. */
export interface ZonePolicy {
  readonly zone: string;
}

/** Calls picked in the client's zone and outside it, since the pool was made (`stats().zone`). */
export interface ZoneCounts {
  local: number;
  remote: number;
}

const ZONE_OPTIONS = optionNames<ZoneOptions>({ zone: true });

/** Checks `zone`, naming any bad option; `undefined`: no zone preference. */
export function zonePolicy(options: ZoneOptions | undefined): ZonePolicy | undefined {
  if (options === undefined) return undefined;
  checkOptions(options, ZONE_OPTIONS, 'zone');
  if (typeof options.zone !== 'string' || options.zone === '') invalidOption('zone.zone', 'a zone name such as "eu-west-1a"', options.zone);
  return Object.freeze({ zone: options.zone });
}

/**
 * A picker over `members` (in endpoint key order) that prefers the members of the client's zone,
 * built with `balancer`, counting each pick in `counts`.
 */
export function zonePicker<M extends Pickable>(balancer: Balancer, members: readonly M[], context: PickerContext, policy: ZonePolicy, counts: ZoneCounts): Picker<M> {
  const inner = balancer.picker(members, context);
  return {
    pick(key) {
      const m = inner.pick(key);
      if (m !== undefined) {
        if (m.endpoint.zone === policy.zone) counts.local++;
        else counts.remote++;
      }
      return m;
    },
  };
}
