/** Waiting on a pool's events: call these before causing the event, then await them. */
import type { MemberState } from '../../src/pool/member.ts';
import type { Pool, StateChange } from '../../src/pool/pool.ts';

/**
 * Resolves at the next `state` event that takes the member for `key` to `to`, with what
 * `snapshot` read at that moment (undefined without one).
 */
export function stateReached<C, S = undefined>(
  pool: Pool<C>,
  key: string,
  to: MemberState,
  snapshot: () => S = () => undefined as S,
): Promise<StateChange & { snapshot: S }> {
  return new Promise((resolve) => {
    const listener = (change: StateChange): void => {
      if (change.endpoint.key !== key || change.to !== to) return;
      pool.off('state', listener);
      resolve({ ...change, snapshot: snapshot() });
    };
    pool.on('state', listener);
  });
}
