import { debuglog } from 'node:util';
import type { Endpoint, EndpointSet } from '../endpoint.ts';
import { ClosedError } from '../errors.ts';
import type { Connector } from './connector.ts';
import { Member, type MemberEvents } from './member.ts';

const debug = debuglog('podpool');

/**
 * Who is in the pool: reconciles each snapshot from discovery against the members (a new
 * endpoint is added and connected, a gone or unready one drained, one that comes back while it
 * drains revived) and closes a drained member once its calls end or its drain time is up.
 */
export class Membership<C> {
  readonly #members = new Map<string, Member<C>>();
  readonly #connector: Connector<C>;
  readonly #latencyDecayMs: number;
  readonly #drainTimeoutMs: number;
  readonly #events: MemberEvents;

  constructor(connector: Connector<C>, latencyDecayMs: number, drainTimeoutMs: number, events: MemberEvents) {
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

  /** Brings the members in line with a snapshot. */
  reconcile(endpoints: EndpointSet): void {
    for (const e of endpoints) {
      const m = this.#members.get(e.key);
      const wanted = e.ready && !e.terminating;
      if (m !== undefined) m.updateEndpoint(e);
      if (wanted) {
        if (m === undefined) this.#add(e);
        else if (m.state === 'draining') this.#revive(m);
      } else if (m !== undefined) {
        this.drain(m);
      }
    }
    for (const m of [...this.#members.values()]) {
      if (!endpoints.has(m.endpoint.key)) this.drain(m);
    }
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

  #add(endpoint: Endpoint): void {
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
