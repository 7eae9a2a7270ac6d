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

describe('dedupFilter.keep (replay protection)', () => {
  it('remembers an id for forMs, the last millisecond included, whatever ttlMs says', () => {
    let now = 0;
    const seen = dedupFilter({ ttlMs: 10, clock: () => now });
    assert.equal(seen.keep('a', 1_000), 'new');
    now = 1_000;
    assert.equal(seen.keep('a', 0), 'duplicate', 'at exactly forMs: still remembered');
    assert.equal(seen.has('a'), true);
    now = 1_001;
    assert.equal(seen.has('a'), false);
    assert.equal(seen.keep('a', 5), 'new');
  });

  it('never forgets a kept id early: a filter full of them answers full instead of evicting', () => {
    let now = 0;
    const seen = dedupFilter({ max: 100, clock: () => now });
    for (let i = 0; i < 100; i++) assert.equal(seen.keep(`id-${i}`, 1_000), 'new');
    assert.equal(seen.keep('id-100', 1_000), 'full');
    assert.equal(seen.refused, 1);
    assert.equal(seen.evicted, 0);
    assert.equal(seen.keep('id-0', 1_000), 'duplicate', 'the oldest is still there');
    assert.equal(seen.add('plain'), true, 'add() is told new...');
    assert.equal(seen.has('plain'), false, '...but nothing kept made room for it');
    now = 1_001;
    assert.equal(seen.keep('id-100', 1_000), 'new', 'once the kept ones are due, there is room');
    assert.equal(seen.size, 1);
  });

  it("forgets add()'s ids to make room for kept ones", () => {
    const seen = dedupFilter({ max: 3 });
    seen.add('a');
    seen.add('b');
    seen.add('c');
    assert.equal(seen.keep('k', 60_000), 'new');
    assert.equal(seen.has('a'), false);
    assert.equal(seen.evicted, 1);
    assert.equal(seen.keep('b', 60_000), 'duplicate', 'an id add() remembered is a duplicate for keep() too');
    seen.add('d');
    seen.add('e');
    assert.equal(seen.has('b'), true, 'and is kept from then on: add() only evicts its own');
    assert.equal(seen.has('k'), true);
  });

  it('extends a kept id when a duplicate asks for longer, never shortens it', () => {
    let now = 0;
    const seen = dedupFilter({ clock: () => now });
    seen.keep('a', 100);
    assert.equal(seen.keep('a', 500), 'duplicate');
    assert.equal(seen.keep('a', 10), 'duplicate');
    now = 500;
    assert.equal(seen.has('a'), true);
    now = 501;
    assert.equal(seen.has('a'), false);
  });

  it('holds back an expired id behind a longer-kept one, but treats it as forgotten', () => {
    let now = 0;
    const seen = dedupFilter({ clock: () => now });
    seen.keep('long', 1_000);
    seen.keep('short', 10);
    now = 11;
    assert.equal(seen.size, 2, 'still in memory behind "long"');
    assert.equal(seen.has('short'), false);
    assert.equal(seen.keep('short', 10), 'new');
    assert.equal(seen.size, 2);
  });

  it('refuses bad arguments with PODPOOL_INVALID_ARGUMENT', () => {
    const seen = dedupFilter();
    assert.throws(() => seen.keep(5 as never, 1), { code: ErrorCode.INVALID_ARGUMENT, message: /argument id/ });
    assert.throws(() => seen.keep('a', -1), { code: ErrorCode.INVALID_ARGUMENT, message: /argument forMs/ });
    assert.throws(() => seen.keep('a', Number.NaN), { code: ErrorCode.INVALID_ARGUMENT });
    assert.throws(() => seen.keep('a', '5' as never), { code: ErrorCode.INVALID_ARGUMENT });
  });
});
