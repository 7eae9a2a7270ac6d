import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors.ts';
import { dedupFilter } from '../../src/receive/dedup.ts';

describe('dedupFilter', () => {
  it('says an id is new once, and a duplicate after', () => {
    const seen = dedupFilter();
    assert.equal(seen.add('a'), true);
    assert.equal(seen.add('b'), true);
    assert.equal(seen.add('a'), false);
    assert.equal(seen.has('b'), true);
    assert.equal(seen.has('c'), false);
    assert.equal(seen.add('c'), true, 'has() did not remember c');
    assert.equal(seen.size, 3);
  });

  it('holds at most max ids whatever the number of messages, forgetting the oldest first', () => {
    const seen = dedupFilter({ max: 100 });
    for (let i = 0; i < 100_000; i++) assert.equal(seen.add(`id-${i}`), true);
    assert.equal(seen.size, 100);
    assert.equal(seen.evicted, 99_900);
    assert.equal(seen.add('id-99999'), false, 'the newest are remembered');
    assert.equal(seen.add('id-99900'), false);
    assert.equal(seen.add('id-99899'), true, 'the one before them was forgotten');
  });

  it('forgets an id ttlMs after it was first seen, by the injected clock', () => {
    let now = 1_000;
    const seen = dedupFilter({ ttlMs: 50, clock: () => now });
    seen.add('a');
    now += 30;
    seen.add('b');
    now += 19;
    assert.equal(seen.add('a'), false, '49 ms old: still remembered');
    now += 1;
    assert.equal(seen.has('a'), false, '50 ms old: forgotten');
    assert.equal(seen.size, 1);
    assert.equal(seen.add('b'), false);
    now += 30;
    assert.equal(seen.size, 1, 'expiry happens on use');
    assert.equal(seen.add('b'), true);
    assert.equal(seen.evicted, 0, 'expiry is not eviction');
  });

  it('rejects bad options at the door', () => {
    assert.throws(() => dedupFilter({ max: 0 }), /option max must be an integer >= 1, got 0/);
    assert.throws(() => dedupFilter({ ttlMs: -1 }), { code: ErrorCode.INVALID_OPTION });
    assert.throws(() => dedupFilter({ clock: 5 as never }), /option clock/);
    assert.throws(() => dedupFilter().add(5 as never), { code: ErrorCode.INVALID_ARGUMENT, message: /argument id must be a string/ });
  });
});
