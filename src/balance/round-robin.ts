import { checkOptions } from '../options.ts';
import type { Balancer, Pickable, Picker, PickerContext } from './balancer.ts';

/**
 * Cycles through the members from a random start, so clients started together don't all hit one
 * pod. It takes no options: `roundRobin({ … })` throws `PODPOOL_INVALID_OPTION` rather than
 * ignoring what was meant for another balancer.
 */
export function roundRobin(options: Readonly<Record<string, never>> = {}): Balancer {
  checkOptions(options, []);
  return Object.freeze({
    name: 'round-robin',
    picker<M extends Pickable>(members: readonly M[], context: PickerContext): Picker<M> {
      return new RoundRobinPicker(members, context.random());
    },
  });
}

class RoundRobinPicker<M extends Pickable> implements Picker<M> {
  readonly #members: readonly M[];
  #next: number;

  constructor(members: readonly M[], random: number) {
    this.#members = members;
    // grpc-js also starts each new list at a random place: clients built at the same moment
    // (a deploy) would otherwise all send their first call to the first pod.
    const start = Math.floor(random * members.length);
    this.#next = start < members.length ? start : 0;
  }

  pick(): M | undefined {
    const members = this.#members;
    if (members.length === 0) return undefined;
    const member = members[this.#next];
    this.#next = this.#next + 1 === members.length ? 0 : this.#next + 1;
    return member;
  }
}
