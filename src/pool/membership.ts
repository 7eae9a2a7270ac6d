import { debuglog } from 'node:util';
import { EndpointSet, type Endpoint, type EndpointDiff } from '../endpoint.ts';
import { ClosedError, type PodpoolError } from '../errors.ts';
import type { Connector } from './connector.ts';
import { Member, type MemberEvents, type MemberState } from './member.ts';

const debug = debuglog('podpool');

/**
 * New members a turn of the event loop: past it, a snapshot's new endpoints get theirs in later
 * turns. A member and its connect cost 10-25 µs of this thread (more with a transport that does
 * real work), so 500 keep a turn within a few ms where 20,000 at once held the loop for half a
 * second; and a big Service's pods are not all dialled in the same instant.
 */
const ADDS_PER_TURN = 500;

/** `stats().discovery`: what discovery last did, each field absent until it happened. */
export interface DiscoveryStats {
  /** When discovery last reported a snapshot (epoch ms), changed or not. */
  readonly lastSnapshotAt?: number;
  /** When discovery last failed (epoch ms); the pool kept the last good snapshot. */
  readonly lastErrorAt?: number;
  /** Discovery's last error (a `PodpoolError`, which serialises as `{ name, code, message }`). */
  readonly lastError?: PodpoolError;
}

/**
 * Who is in the pool: reconciles each snapshot from discovery against the members (a new
 * endpoint is added and connected, a gone or unready one drained, one that comes back while it
 * drains revived) and closes a drained member once its calls end or its drain time is up. It
 * keeps what discovery last said, so it can tell a person where the pool stands.
 */
export class Membership<C> {
  readonly #members = new Map<string, Member<C>>();
  readonly #sourceKind: string;
  #endpoints = EndpointSet.empty;
  #hasSnapshot = false;
  #sourceError: PodpoolError | undefined = undefined;
  /** When discovery last reported a snapshot, and last failed (epoch ms; 0 for never). */
  #lastSnapshotAt = 0;
  #lastErrorAt = 0;
  readonly #connector: Connector<C>;
  readonly #latencyDecayMs: number;
  readonly #drainTimeoutMs: number;
  readonly #events: MemberEvents;
  /** The last snapshot's subset, for endpoints whose member waits for a later turn. */
  #subset: ReadonlySet<string> | undefined = undefined;
  /** Members added in this turn of the event loop; `#turn` starts the count again. */
  #addedThisTurn = 0;
  /** Endpoint keys that wait for a member (past {@link ADDS_PER_TURN}), in snapshot order. */
  #waiting: string[] = [];
  #nextTurn: NodeJS.Immediate | undefined = undefined;
  #stopped = false;

  constructor(sourceKind: string, connector: Connector<C>, latencyDecayMs: number, drainTimeoutMs: number, events: MemberEvents) {
    this.#sourceKind = sourceKind;
    this.#connector = connector;
    this.#latencyDecayMs = latencyDecayMs;
    this.#drainTimeoutMs = drainTimeoutMs;
    this.#events = events;
  }

  get size(): number {
    return this.#members.size;
  }

  values(): MapIterator<Member<C>> {
    return this.#members.values();
  }

  /** The last snapshot discovery reported (empty before the first). */
  get endpoints(): EndpointSet {
    return this.#endpoints;
  }

  /** Discovery has reported a snapshot. */
  get hasSnapshot(): boolean {
    return this.#hasSnapshot;
  }

  /** Discovery's last error, kept for the messages of errors that end a wait. */
  get sourceError(): PodpoolError | undefined {
    return this.#sourceError;
  }

  discoveryFailed(error: PodpoolError): void {
    this.#sourceError = error;
    this.#lastErrorAt = Date.now();
  }

  /**
   * Discovery's last snapshot and last error, as `stats().discovery` reports them. Wall-clock
   * times (epoch ms), not the pool's clock: they are read by people and compared with logs. A
   * last error older than the last snapshot is over.
   */
  discoveryStats(): DiscoveryStats {
    return {
      ...(this.#lastSnapshotAt > 0 && { lastSnapshotAt: this.#lastSnapshotAt }),
      ...(this.#lastErrorAt > 0 && { lastErrorAt: this.#lastErrorAt }),
      ...(this.#sourceError !== undefined && { lastError: this.#sourceError }),
    };
  }

  /**
   * Brings the members in line with a snapshot (with subsetting, the endpoints of `subset` only);
   * returns what changed since the last snapshot. Without a subset it looks only at what
   * changed: an endpoint the snapshot left as it was has its member as the last one left it.
   */
  reconcile(endpoints: EndpointSet, subset?: ReadonlySet<string>): EndpointDiff {
    const diff = endpoints.diff(this.#endpoints);
    this.#endpoints = endpoints;
    this.#hasSnapshot = true;
    this.#lastSnapshotAt = Date.now();
    this.#subset = subset;
    if (subset === undefined) {
      for (const e of diff.added) this.#place(e, undefined);
      for (const [, e] of diff.changed) this.#place(e, undefined);
      for (const e of diff.removed) {
        const m = this.#members.get(e.key);
        if (m !== undefined) this.drain(m);
      }
      return diff;
    }
    // The subset may move with any change (it depends on every endpoint): every endpoint is looked at.
    for (const e of endpoints) this.#place(e, subset);
    // Draining may close a member, which leaves the map; a Map's iterator allows that.
    for (const m of this.#members.values()) {
      if (!endpoints.has(m.endpoint.key)) this.drain(m);
    }
    return diff;
  }

  /** One endpoint of a snapshot: a member added, updated, revived or drained to match it. */
  #place(e: Endpoint, subset: ReadonlySet<string> | undefined): void {
    const m = this.#members.get(e.key);
    // Discovery's readiness (the pod passes its probe, and is not terminating) decides whether
    // the pod has a member at all; the member's own state `ready` (connected) whether it is picked.
    // With subsetting, only the pods of this client's subset have members.
    const inService = e.ready && !e.terminating && (subset === undefined || subset.has(e.key));
    if (m !== undefined) m.updateEndpoint(e);
    if (inService) {
      if (m === undefined) this.#add(e);
      else if (m.state === 'draining') this.#revive(m);
    } else if (m !== undefined) {
      this.drain(m);
    }
  }

  /**
   * What the pool knows and what to do about it, for errors a person will read. `waited`: the
   * error ends a wait (ready(), a call waiting for a pod), so the advice is not "wait".
   */
  situation(waited: boolean): string {
    const kind = this.#sourceKind;
    // A discovery error says best what is wrong (a name that does not exist, a refused request)
    // and what to check; it is the news whenever discovery has nothing to offer.
    const discovery = this.#sourceError ? `; discovery's last error: ${this.#sourceError.message}` : '';
    if (!this.#hasSnapshot) {
      if (discovery !== '') return `${kind} discovery has not reported any endpoint yet${discovery}`;
      return waited
        ? `${kind} discovery has not answered yet: its server may be slow or out of reach (NODE_DEBUG=podpool shows what it does), or it needs longer than that`
        : `${kind} discovery has not answered yet (the pool is starting): wait with await pool.ready(), or let the call wait for a pod`;
    }
    if (this.#endpoints.size === 0 && this.#members.size === 0) {
      return `${kind} discovery found no endpoint${discovery || ': check that the Service has ready pods, and that the source names the right Service and port'}`;
    }
    const counts = new Map<MemberState, number>();
    for (const m of this.#members.values()) counts.set(m.state, (counts.get(m.state) ?? 0) + 1);
    const states = [...counts].map(([state, n]) => `${n} ${state}`).join(', ') || 'no members';
    let lastError: Error | undefined;
    for (const m of this.#members.values()) lastError = m.lastError ?? lastError;
    const waiting = this.#waiting.length > 0 ? `, ${this.#waiting.length} waiting for a member` : '';
    return `${this.#endpoints.size} endpoint(s) discovered, ${states}${waiting}${lastError ? `; last error: ${lastError.message}` : ''}`;
  }

  /** No new picks; closes once in-flight calls end, or after the drain timeout. */
  drain(m: Member<C>): void {
    if (m.state === 'draining' || m.state === 'closed') return;
    if (!m.drain(this.#drainTimeoutMs, () => this.finishDrain(m))) this.finishDrain(m);
  }

  /** Closes a drained member; calls still running past the drain timeout hear why. */
  finishDrain(m: Member<C>): void {
    if (m.state === 'closed') return;
    this.#members.delete(m.endpoint.key);
    const connection = m.close(
      () => new ClosedError(`the pool closed its connection to ${m.endpoint.key} after ${this.#drainTimeoutMs} ms of draining`),
    );
    if (connection === undefined) m.closed.resolve();
    else void this.#connector.closeConnection(connection).then(() => m.closed.resolve());
  }

  /** The pool closes: endpoints still waiting for a member get none. */
  stop(): void {
    this.#stopped = true;
    clearImmediate(this.#nextTurn);
    this.#nextTurn = undefined;
    this.#waiting = [];
  }

  /** Endpoints that wait for a later turn to get a member. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** A member for `endpoint` now, or in a later turn once this one has added its share. */
  #add(endpoint: Endpoint): void {
    if (this.#addedThisTurn >= ADDS_PER_TURN) {
      this.#waiting.push(endpoint.key);
      return;
    }
    if (this.#addedThisTurn++ === 0) this.#nextTurn = setImmediate(() => this.#turn());
    this.#create(endpoint);
  }

  /**
   * A new turn: the endpoints that waited get members, as many as a turn takes, each as the
   * latest snapshot has it (one gone, out of service or given a member meanwhile gets none).
   */
  #turn(): void {
    this.#nextTurn = undefined;
    this.#addedThisTurn = 0;
    if (this.#stopped || this.#waiting.length === 0) return;
    const waiting = this.#waiting;
    this.#waiting = [];
    let i = 0;
    for (; i < waiting.length && this.#addedThisTurn < ADDS_PER_TURN; i++) {
      const e = this.#endpoints.get(waiting[i]);
      if (e === undefined || this.#members.has(e.key) || !e.ready || e.terminating || (this.#subset !== undefined && !this.#subset.has(e.key))) continue;
      this.#add(e);
    }
    // Kept ahead of any that a snapshot queued during this turn.
    if (i < waiting.length) this.#waiting = i === 0 ? waiting : waiting.slice(i).concat(this.#waiting);
    if (this.#waiting.length > 0 && this.#nextTurn === undefined) this.#nextTurn = setImmediate(() => this.#turn());
  }

  #create(endpoint: Endpoint): void {
    const m = new Member<C>(endpoint, this.#latencyDecayMs, this.#events);
    this.#members.set(endpoint.key, m);
    debug('%s: new member', endpoint.key);
    this.#connector.connect(m);
  }

  /** An endpoint came back before its member finished draining: take it up again. */
  #revive(m: Member<C>): void {
    if (m.revive()) this.#connector.connect(m);
  }
}
