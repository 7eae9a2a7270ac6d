import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffMs, jitterOf } from '../src/backoff.ts';

const policy = { minMs: 100, maxMs: 1_000, factor: 2 };

describe('backoffMs', () => {
  it('grows by factor from minMs, jittered up to twice that by random()', () => {
    assert.deepEqual([1, 2, 3].map((n) => backoffMs(policy, n, () => 0)), [100, 200, 400]);
    assert.deepEqual([1, 2, 3].map((n) => backoffMs(policy, n, () => 0.5)), [150, 300, 600]);
  });

  it('never waits more than maxMs, however long the streak', () => {
    assert.equal(backoffMs(policy, 4, () => 0.99), 1_000);
    assert.equal(backoffMs(policy, 1e6, () => 0), 1_000);
  });

  it('takes a random() outside [0, 1] as 0.5: no wait stretched past its ceiling, none shrunk to nothing', () => {
    for (const broken of [-1, 7, Number.NaN]) {
      assert.equal(backoffMs(policy, 1, () => broken), 150, String(broken));
      assert.equal(jitterOf(() => broken), 0.5, String(broken));
    }
    assert.equal(jitterOf(() => 0.25), 0.25);
  });
});
