import { checkNumber, checkOptions, optionNames } from '../options.ts';
import type { Balancer, Pickable, Picker, PickerContext } from './balancer.ts';
import { otherIndex, randomIndex } from './draw.ts';

/** Options of {@link leastLoaded}. */
export interface LeastLoadedOptions {
  /** How many distinct members to sample per pick (power of d choices); `Infinity` scans all. */
  choices?: number;
}

const OPTIONS = optionNames<LeastLoadedOptions>({ choices: true });

/** Sends each call to the least busy of `choices` random members (power of d choices, as tower's p2c). */
export function leastLoaded(options: LeastLoadedOptions = {}): Balancer {
  checkOptions(options, OPTIONS);
  const { choices = 2 } = options;
  checkNumber('choices', choices, { min: 1, integer: true, allowInfinity: true });
  return Object.freeze({
    name: 'least-loaded',
    picker<M extends Pickable>(members: readonly M[], context: PickerContext): Picker<M> {
      return new LeastLoadedPicker(members, choices, context.random);
    },
  });
}

// Sampling instead of scanning: nearly as even, O(1), and clients don't all herd onto the one
// member that looked idle a moment ago.
class LeastLoadedPicker<M extends Pickable> implements Picker<M> {
  readonly #members: readonly M[];
  readonly #choices: number;
  readonly #random: () => number;
  /**
   * A permutation of member indices for a partial Fisher-Yates draw. It stays a permutation
   * after each draw, so it is never reset, and drawing from it allocates nothing.
   */
  readonly #order: Uint32Array;

  constructor(members: readonly M[], choices: number, random: () => number) {
    this.#members = members;
    this.#choices = choices;
    this.#random = random;
    const sampled = choices !== 2 && choices < members.length;
    this.#order = new Uint32Array(sampled ? members.length : 0);
    if (sampled) for (let i = 0; i < members.length; i++) this.#order[i] = i;
  }

  pick(): M | undefined {
    const members = this.#members;
    const n = members.length;
    if (n <= 1) return members[0];
    if (this.#choices >= n) return this.#scan(n);
    return this.#choices === 2 ? this.#two(n) : this.#sample(n);
  }

  /** The default, without the permutation: the second draw skips over the first. */
  #two(n: number): M {
    const members = this.#members;
    const i = randomIndex(this.#random, n);
    const a = members[i];
    const b = members[otherIndex(this.#random, n, i)];
    return b.inFlight < a.inFlight ? b : a;
  }

  #sample(n: number): M {
    const members = this.#members;
    const order = this.#order;
    let best: M | undefined;
    let bestLoad = Infinity;
    for (let t = 0; t < this.#choices; t++) {
      // Swap a uniformly drawn one of the not-yet-drawn indices into place t.
      const j = t + randomIndex(this.#random, n - t);
      const index = order[j];
      order[j] = order[t];
      order[t] = index;
      const member = members[index];
      const load = member.inFlight;
      // Strictly less: on a tie the earlier (random) draw wins, so ties spread evenly.
      if (load < bestLoad) {
        best = member;
        bestLoad = load;
      }
    }
    return best as M;
  }

  #scan(n: number): M {
    const members = this.#members;
    // Start at a random member so ties don't always go to the first one.
    let i = randomIndex(this.#random, n);
    let best = members[i];
    let bestLoad = best.inFlight;
    for (let step = 1; step < n; step++) {
      i = i + 1 === n ? 0 : i + 1;
      const load = members[i].inFlight;
      if (load < bestLoad) {
        best = members[i];
        bestLoad = load;
      }
    }
    return best;
  }
}
