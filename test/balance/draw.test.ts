import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { otherIndex, randomIndex } from '../../src/balance/draw.ts';

/** A random source that returns `values` in turn. */
const sequence = (...values: number[]) => {
  let k = 0;
  return () => values[k++ % values.length];
};

describe('draw', () => {
  it('randomIndex maps [0, 1) onto every index, and never past the end', () => {
    assert.deepEqual([0, 0.25, 0.5, 0.75].map((r) => randomIndex(() => r, 4)), [0, 1, 2, 3]);
    assert.equal(randomIndex(() => 1, 3), 2, 'an injected random that returns 1');
  });

  it('otherIndex draws each of the other n - 1 indices, never the first', () => {
    const n = 4;
    for (let i = 0; i < n; i++) {
      const random = sequence(0, 1 / 3, 2 / 3);
      const drawn = [otherIndex(random, n, i), otherIndex(random, n, i), otherIndex(random, n, i)];
      assert.deepEqual(
        drawn,
        [0, 1, 2, 3].filter((j) => j !== i),
        `others of ${i}`,
      );
    }
    assert.equal(otherIndex(() => 1, 3, 2), 1, 'clamped, and still not the first');
  });
});
