import { checkOptions } from '../options.ts';
import type { Balancer, Pickable, Picker, PickerContext } from './balancer.ts';
import { randomIndex } from './draw.ts';

/**
 * Picks a member uniformly at random, with the pool's `random` (inject it there to seed). It takes
 * no options: `random({ seed })` throws `PODPOOL_INVALID_OPTION` instead of being ignored.
 */
export function random(options: Readonly<Record<string, never>> = {}): Balancer {
  checkOptions(options, []);
  return Object.freeze({
    name: 'random',
    picker<M extends Pickable>(members: readonly M[], context: PickerContext): Picker<M> {
      return new RandomPicker(members, context.random);
    },
  });
}

class RandomPicker<M extends Pickable> implements Picker<M> {
  readonly #members: readonly M[];
  readonly #random: () => number;

  constructor(members: readonly M[], random: () => number) {
    this.#members = members;
    this.#random = random;
  }

  pick(): M | undefined {
    const n = this.#members.length;
    if (n === 0) return undefined;
    return this.#members[randomIndex(this.#random, n)];
  }
}
