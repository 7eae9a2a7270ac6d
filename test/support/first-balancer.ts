import type { Balancer, Pickable, Picker } from '../../src/balance/balancer.ts';

/** Always picks the first pickable member (by key), so a test knows where a call goes. */
export function first(): Balancer {
  return {
    name: 'first',
    picker<M extends Pickable>(members: readonly M[]): Picker<M> {
      return { pick: () => members[0] };
    },
  };
}
