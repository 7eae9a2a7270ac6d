/**
 * Zone-aware routing: calls stay in the client's own zone while that zone has the capacity for
 * them, and spill over to the other zones when it has not.
 *
 * The rule is Envoy's zone-aware routing. Envoy knows how its own clients spread over the zones;
 * podpool does not, so it assumes what Kubernetes' topology-aware routing assumes: clients spread
 * over the zones as the pods do. Each zone's *expected* share is its share of the Service's pods,
 * counted from the last snapshot whether they are ready or not (a pod failing its probe is
 * capacity its zone is missing); its *healthy* share is its share of the members that can be
 * picked now. While the local zone's healthy share is at least its expected share, every call
 * stays local. When it falls short, a fraction `healthy / expected` of the calls stays local and
 * the rest goes to the zones with more healthy pods than their share, in proportion to that
 * surplus. If every client of the Service does the same, every healthy pod gets the same load.
 *
 * Topology hints: when every ready endpoint carries `hints.forZones` (set by the EndpointSlice
 * controller for `trafficDistribution: PreferClose` or `topology-mode: Auto`), the local set is
 * the endpoints hinted for the client's zone, and each zone's expected share counts the ready
 * endpoints hinted for it, as kube-proxy reads them; when no endpoint is hinted for the zone, no
 * zone is preferred (kube-proxy's fallback). The same rule then spills what the cluster cannot
 * see: hinted pods this client can't reach.
 */
import { debuglog } from 'node:util';
import type { Endpoint } from '../endpoint.ts';
import { checkOptions, invalidOption, optionNames } from '../options.ts';
import type { Balancer, Pickable, Picker, PickerContext } from './balancer.ts';
import { murmur3 } from './ring-hash.ts';

const debug = debuglog('podpool:zone');

/** The pool's `zone` option. */
export interface ZoneOptions {
  /** The client's own zone: its node's `topology.kubernetes.io/zone` label. */
  zone: string;
  /**
   * Follow EndpointSlice topology hints when every ready endpoint carries them (default `true`):
   * the local set is then the endpoints hinted for `zone`, as kube-proxy routes. `false`: the
   * local set is the endpoints whose own zone is `zone`, hints or not.
   */
  hints?: boolean;
}

/** A checked zone policy. */
export interface ZonePolicy {
  readonly zone: string;
  readonly hints: boolean;
}

/**
 * How the current picker routes: `local` keeps every call in the local set, `spill` keeps a
 * share of them and sends the rest to zones with capacity to spare, `all` prefers no zone (no
 * endpoint in the client's zone, none with a zone at all, or hints that name other zones only).
 */
export type ZoneMode = 'local' | 'spill' | 'all';

/**
 * What `stats().zone` reports: calls picked on pods in the client's zone (by the endpoint's own
 * zone) and on pods elsewhere since the pool was made, and how the current picker routes.
 */
export interface ZoneCounts {
  local: number;
  remote: number;
  mode: ZoneMode;
  /** The share of new calls the current picker keeps in the local set: 1 in `local`, 0 in `all`. */
  localShare: number;
}

/** `stats().zone`. */
export type ZoneStats = { readonly zone: string } & Readonly<ZoneCounts>;

/** A zone's share of a spill: its members, and the share of all calls sent to them. */
export interface ZoneSpill<M> {
  readonly zone: string;
  readonly share: number;
  readonly members: readonly M[];
}

/** What {@link zonePlan} decides over one snapshot and the members that can be picked. */
export interface ZonePlan<M> {
  readonly mode: ZoneMode;
  /** Where the local set comes from: topology hints, or the endpoints' zones. */
  readonly by: 'hints' | 'zone';
  readonly localShare: number;
  /** The local set's pickable members (every pickable member in `all`). */
  readonly local: readonly M[];
  /** With `spill`: the other zones with capacity to spare, and their shares (they sum to 1 - localShare). */
  readonly spill: readonly ZoneSpill<M>[];
}

const ZONE_OPTIONS = optionNames<ZoneOptions>({ zone: true, hints: true });

// A keyed call's side of a spill is drawn from the key's hash, with a seed of its own: a ring
// hash over the local set then sees every hash, not only the low ones that stayed local.
const KEY_SEED = 0x5a0e;
const UINT32 = 2 ** 32;

/** Checks `zone`, naming any bad option; `undefined`: no zone preference. */
export function zonePolicy(options: ZoneOptions | undefined): ZonePolicy | undefined {
  if (options === undefined) return undefined;
  checkOptions(options, ZONE_OPTIONS, 'zone');
  const { zone, hints = true } = options;
  if (typeof zone !== 'string' || zone === '') invalidOption('zone.zone', 'a zone name such as "eu-west-1a"', zone);
  if (typeof hints !== 'boolean') invalidOption('zone.hints', 'true or false', hints);
  return Object.freeze({ zone, hints });
}

/**
 * Decides how to route over `members` (the pickable ones, in endpoint key order) given the last
 * snapshot `endpoints` (with subsetting, only the endpoints in `subset` count). Costs O(endpoints)
 * and is paid when the picker is built, never per call.
 */
export function zonePlan<M extends Pickable>(policy: ZonePolicy, members: readonly M[], endpoints: Iterable<Endpoint>, subset?: ReadonlySet<string>): ZonePlan<M> {
  const { zone } = policy;
  // kube-proxy's test: hints count when every ready endpoint has one and one names this zone.
  let ready = 0;
  let hinted = 0;
  let hintedHere = false;
  if (policy.hints) {
    for (const e of endpoints) {
      if (!e.ready || e.terminating || (subset !== undefined && !subset.has(e.key))) continue;
      ready++;
      if (e.hintZones === undefined || e.hintZones.length === 0) break;
      hinted++;
      if (!hintedHere && e.hintZones.includes(zone)) hintedHere = true;
    }
  }
  const by = ready > 0 && hinted === ready ? 'hints' : 'zone';
  if (by === 'hints' && !hintedHere) return all(members, by);
  const groupOf = by === 'hints' ? (e: Endpoint) => hintGroup(e, zone) : zoneGroup;

  // Expected: the pods each zone should have. With hints, the ready endpoints hinted for it (the
  // controller reassigns hints when pods fail); by zone, every pod not shutting down.
  const expected = new Map<string, number>();
  let expectedTotal = 0;
  for (const e of endpoints) {
    if (e.terminating || (subset !== undefined && !subset.has(e.key))) continue;
    if (by === 'hints' && (!e.ready || e.hintZones === undefined || e.hintZones.length === 0)) continue;
    const g = groupOf(e);
    expected.set(g, (expected.get(g) ?? 0) + 1);
    expectedTotal++;
  }
  const expectedLocal = expected.get(zone) ?? 0;
  if (expectedLocal === 0) return all(members, by);

  const healthy = new Map<string, M[]>();
  for (const m of members) {
    const g = groupOf(m.endpoint);
    const list = healthy.get(g);
    if (list === undefined) healthy.set(g, [m]);
    else list.push(m);
  }
  const healthyTotal = members.length;
  if (healthyTotal === 0) return all(members, by);
  const local = healthy.get(zone) ?? [];
  // Shares compared as integers: local healthy / all healthy ≥ local expected / all expected.
  const localWeight = local.length * expectedTotal;
  const fairWeight = expectedLocal * healthyTotal;
  if (localWeight >= fairWeight) return { mode: 'local', by, localShare: 1, local, spill: [] };

  const localShare = localWeight / fairWeight;
  const surplus: { zone: string; weight: number; members: M[] }[] = [];
  let surplusTotal = 0;
  for (const [g, list] of healthy) {
    if (g === zone) continue;
    const weight = list.length * expectedTotal - (expected.get(g) ?? 0) * healthyTotal;
    if (weight <= 0) continue;
    surplus.push({ zone: g, weight, members: list });
    surplusTotal += weight;
  }
  // The local zone's deficit is some other zone's surplus, so `surplus` is never empty here.
  const spill = surplus.map((s) => Object.freeze({ zone: s.zone, share: ((1 - localShare) * s.weight) / surplusTotal, members: s.members }));
  return { mode: 'spill', by, localShare, local, spill };
}

function all<M>(members: readonly M[], by: 'hints' | 'zone'): ZonePlan<M> {
  return { mode: 'all', by, localShare: 0, local: members, spill: [] };
}

/** By zone: the endpoint's own zone (`''` when it has none, a name no zone has). */
function zoneGroup(e: Endpoint): string {
  return e.zone ?? '';
}

/** By hints: the client's zone when the endpoint is hinted for it, else the first zone it is hinted for. */
function hintGroup(e: Endpoint, zone: string): string {
  const hints = e.hintZones;
  if (hints === undefined || hints.length === 0) return zoneGroup(e);
  return hints.includes(zone) ? zone : hints[0];
}

/**
 * A picker over `members` (the pickable ones, in endpoint key order) that prefers the client's
 * zone as {@link zonePlan} decides over `endpoints` (the last snapshot; with subsetting, only the
 * keys in `subset` count), built with `balancer`: one picker over the local set and one per zone
 * a spill goes to, all built here, and one draw per call to choose among them. A call with an
 * affinity key draws from the key's hash instead, so the key stays on one pod while the plan
 * holds. Each pick is counted in `counts`, which also gets the plan's mode and local share.
 * `previous`, the zone picker the pool built before, lends each of its pickers to the build of
 * the same zone's (ring-hash merges a ring's changes instead of building it again).
 */
export function zonePicker<M extends Pickable>(
  balancer: Balancer,
  members: readonly M[],
  context: PickerContext,
  policy: ZonePolicy,
  counts: ZoneCounts,
  endpoints: Iterable<Endpoint>,
  subset?: ReadonlySet<string>,
  previous?: Picker<M>,
): Picker<M> {
  const plan = zonePlan(policy, members, endpoints, subset);
  if (plan.mode !== counts.mode || plan.localShare !== counts.localShare) {
    debug('%s: %s by %s, %d of %d pickable local, %s% of calls kept local', policy.zone, plan.mode, plan.by, plan.mode === 'all' ? 0 : plan.local.length, members.length, (plan.localShare * 100).toFixed(1));
  }
  counts.mode = plan.mode;
  counts.localShare = plan.localShare;
  const before = previous instanceof CountingPicker || previous instanceof SpillPicker ? (previous.parts as ReadonlyMap<string, Picker<M>>) : undefined;
  const parts = new Map<string, Picker<M>>();
  // `all` is over other members than a zone's: it gets a name no zone has.
  const localName = plan.mode === 'all' ? ALL : policy.zone;
  const local = balancer.picker(plan.local, context, before?.get(localName));
  parts.set(localName, local);
  if (plan.mode !== 'spill') return new CountingPicker(local, policy.zone, counts, parts);
  const spill = plan.spill.map((s) => {
    const picker = balancer.picker(s.members, context, before?.get(s.zone));
    parts.set(s.zone, picker);
    return picker;
  });
  return new SpillPicker(plan, plan.localShare > 0 ? local : undefined, spill, context, policy.zone, counts, parts);
}

/** The name of the picker over every member (`all`): no zone is called that. */
const ALL = '\0all';

class CountingPicker<M extends Pickable> implements Picker<M> {
  /** The balancer's pickers this one is made of, by zone, for the next build to start from. */
  readonly parts: ReadonlyMap<string, Picker<M>>;
  readonly #inner: Picker<M>;
  readonly #zone: string;
  readonly #counts: ZoneCounts;

  constructor(inner: Picker<M>, zone: string, counts: ZoneCounts, parts: ReadonlyMap<string, Picker<M>>) {
    this.#inner = inner;
    this.#zone = zone;
    this.#counts = counts;
    this.parts = parts;
  }

  pick(key?: string): M | undefined {
    const m = this.#inner.pick(key);
    if (m !== undefined) count(m, this.#zone, this.#counts);
    return m;
  }
}

class SpillPicker<M extends Pickable> implements Picker<M> {
  readonly parts: ReadonlyMap<string, Picker<M>>;
  readonly #local: Picker<M> | undefined;
  readonly #localShare: number;
  /** `#bounds[i]`: the draw below which (and at or above `#bounds[i - 1]`) `#spill[i]` picks. */
  readonly #bounds: Float64Array;
  readonly #spill: readonly Picker<M>[];
  readonly #random: () => number;
  readonly #zone: string;
  readonly #counts: ZoneCounts;

  constructor(plan: ZonePlan<M>, local: Picker<M> | undefined, spill: readonly Picker<M>[], context: PickerContext, zone: string, counts: ZoneCounts, parts: ReadonlyMap<string, Picker<M>>) {
    this.parts = parts;
    this.#local = local;
    this.#localShare = plan.localShare;
    this.#bounds = new Float64Array(plan.spill.length);
    let bound = plan.localShare;
    for (let i = 0; i < plan.spill.length; i++) {
      bound += plan.spill[i].share;
      this.#bounds[i] = bound;
    }
    // Rounding must not leave a draw just under 1 with no zone to go to.
    this.#bounds[plan.spill.length - 1] = Infinity;
    this.#spill = spill;
    this.#random = context.random;
    this.#zone = zone;
    this.#counts = counts;
  }

  pick(key?: string): M | undefined {
    const draw = key === undefined ? this.#random() : murmur3(key, KEY_SEED) / UINT32;
    let m: M | undefined;
    if (draw < this.#localShare && this.#local !== undefined) {
      m = this.#local.pick(key);
    } else {
      const bounds = this.#bounds;
      let i = 0;
      while (draw >= bounds[i]) i++;
      m = this.#spill[i].pick(key);
    }
    if (m !== undefined) count(m, this.#zone, this.#counts);
    return m;
  }
}

function count(m: Pickable, zone: string, counts: ZoneCounts): void {
  if (m.endpoint.zone === zone) counts.local++;
  else counts.remote++;
}
