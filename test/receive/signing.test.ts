import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors.ts';
import { dedupFilter } from '../../src/receive/dedup.ts';
import { MessageRejectedError } from '../../src/errors.ts';
import { signMessage, verifyMessage, type ReceivedMessage } from '../../src/receive/signing.ts';

const secret = 'a shared secret of enough length';
const T0 = 1_700_000_000_000;

function signedAt(timestamp: number, body = '{"invalidate":"user:7"}', id = 'msg-1') {
  const signed = signMessage({ id, body }, { secret, clock: () => timestamp });
  return { ...signed, body };
}

function rejection(message: ReceivedMessage, options: Partial<Parameters<typeof verifyMessage>[1]> = {}) {
  try {
    verifyMessage(message, { secret, seen: dedupFilter(), clock: () => T0, ...options });
  } catch (error) {
    assert.ok(error instanceof MessageRejectedError);
    assert.equal(error.code, ErrorCode.MESSAGE_REJECTED);
    return error.reason;
  }
  return 'accepted';
}

describe('signMessage / verifyMessage', () => {
  it('accepts a good message, and rejects the same message again as a replay', () => {
    const seen = dedupFilter();
    const message = signedAt(T0);
    assert.equal(message.timestamp, T0);
    assert.match(message.signature, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(rejection(message, { seen }), 'accepted');
    assert.equal(rejection(message, { seen }), 'replay');
    assert.equal(rejection({ ...signedAt(T0 + 5), body: message.body }, { seen }), 'replay', 're-signed later, same id: still a replay');
  });

  it('accepts fields as they come out of HTTP headers (timestamp as a string) and bodies as bytes', () => {
    const message = signedAt(T0);
    assert.equal(rejection({ ...message, timestamp: String(message.timestamp), body: Buffer.from(message.body) }), 'accepted');
  });

  it('rejects a bad signature: another secret, or any field altered', () => {
    const message = signedAt(T0);
    const forged = signMessage({ id: 'msg-1', body: message.body }, { secret: 'another secret, also long enough', clock: () => T0 });
    assert.equal(rejection({ ...forged, body: message.body }), 'signature');
    assert.equal(rejection({ ...message, body: '{"invalidate":"user:8"}' }), 'signature');
    assert.equal(rejection({ ...message, id: 'msg-2' }), 'signature');
    assert.equal(rejection({ ...message, timestamp: T0 - 1 }), 'signature');
    assert.equal(rejection({ ...message, signature: message.signature.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) }), 'signature');
    assert.equal(rejection({ ...message, signature: 'not base64url!' }), 'signature');
    assert.equal(rejection({ ...message, signature: '' }), 'signature');
  });

  it('keeps the id and the timestamp apart in what it signs', () => {
    // Naively concatenated, id "a1" at timestamp 2 and id "a" at timestamp 12 are the same bytes.
    const one = signMessage({ id: 'a1', body: 'x' }, { secret, clock: () => 2 });
    const two = signMessage({ id: 'a', body: 'x' }, { secret, clock: () => 12 });
    assert.notEqual(one.signature, two.signature);
  });

  it('does not remember a message it rejected, so a forgery cannot burn a real id', () => {
    const seen = dedupFilter();
    const message = signedAt(T0);
    assert.equal(rejection({ ...message, body: 'tampered' }, { seen }), 'signature');
    assert.equal(rejection(signedAt(T0 - 120_000), { seen }), 'stale');
    assert.equal(seen.size, 0);
    assert.equal(rejection(message, { seen }), 'accepted');
  });

  it('rejects a stale message, and one dated beyond the allowed clock skew', () => {
    assert.equal(rejection(signedAt(T0 - 60_000)), 'accepted', 'exactly maxAgeMs old');
    assert.equal(rejection(signedAt(T0 - 60_001)), 'stale');
    assert.equal(rejection(signedAt(T0 + 60_000)), 'accepted');
    assert.equal(rejection(signedAt(T0 + 60_001)), 'future');
    assert.equal(rejection(signedAt(T0 - 1_001), { maxAgeMs: 1_000 }), 'stale');
  });

  it('rejects malformed messages', () => {
    const message = signedAt(T0);
    assert.equal(rejection({ ...message, id: '' }), 'malformed');
    assert.equal(rejection({ ...message, timestamp: 'yesterday' }), 'malformed');
    assert.equal(rejection({ ...message, timestamp: -5 }), 'malformed');
    assert.equal(rejection({ ...message, body: undefined as never }), 'malformed');
    assert.equal(rejection(null as never), 'malformed');
  });

  it('checks its options at the door', () => {
    assert.throws(
      () => signMessage({ id: 'x', body: 'y' }, { secret: 'short' }),
      (error: Error) => /option secret must be a string or bytes of at least 16 bytes, got a string of 5 bytes$/.test(error.message) && !error.message.includes('short'),
      'the size of the secret, never the secret',
    );
    assert.throws(() => verifyMessage(signedAt(T0), { secret, seen: dedupFilter(), maxAgeMS: 5 } as never), {
      code: ErrorCode.INVALID_OPTION,
      message: 'unknown option maxAgeMS (did you mean maxAgeMs?); the options are secret, seen, maxAgeMs, notBefore, maxBodyBytes, maxIdBytes, clock',
    });
    assert.throws(() => signMessage({ id: '', body: 'y' }, { secret }), { code: ErrorCode.INVALID_ARGUMENT, message: /argument id/ });
    assert.throws(() => signMessage({ id: 'x', body: 5 as never }, { secret }), { code: ErrorCode.INVALID_ARGUMENT, message: /argument body/ });
    const message = signedAt(T0);
    assert.throws(() => verifyMessage(message, { secret, seen: undefined as never }), /option seen must be a dedup filter/);
    assert.throws(() => verifyMessage(message, { secret, seen: { add: () => true } as never }), /option seen must be a dedup filter \(dedupFilter\(\)\) or another object with keep/);
    assert.throws(() => verifyMessage(message, { secret, seen: dedupFilter(), notBefore: 'start' as never }), /option notBefore/);
    assert.throws(() => verifyMessage(message, { secret, seen: dedupFilter(), maxBodyBytes: -1 }), /option maxBodyBytes/);
    assert.throws(() => verifyMessage(message, { secret, seen: dedupFilter(), maxIdBytes: 0 }), /option maxIdBytes/);
    assert.throws(() => verifyMessage(message, { secret, seen: dedupFilter(), maxAgeMs: 0 }), { code: ErrorCode.INVALID_OPTION });
  });
});

describe('verifyMessage: sizes', () => {
  it('refuses a body over maxBodyBytes (default 1 MiB) as malformed, before the HMAC runs', () => {
    const body = Buffer.alloc(64 * 1024 * 1024);
    const signed = signMessage({ id: 'big', body }, { secret, clock: () => T0, maxBodyBytes: body.length });
    assert.equal(rejection({ ...signed, body }), 'malformed', 'a 64 MiB body, however well signed');
    // Malformed, not a bad signature: the size is looked at first.
    assert.equal(rejection({ ...signed, body, signature: 'A'.repeat(43) }), 'malformed');
    assert.equal(rejection({ ...signed, body: body.toString('latin1') }), 'malformed', 'as a string too');
    assert.equal(rejection({ ...signed, body }, { maxBodyBytes: body.length }), 'accepted', 'unless the receiver allows it');
    const limit = Buffer.alloc(1024 * 1024);
    assert.equal(rejection({ ...signMessage({ id: 'limit', body: limit }, { secret, clock: () => T0 }), body: limit }), 'accepted', 'exactly 1 MiB');
  });

  it('measures a string body in UTF-8 bytes', () => {
    const body = 'é'.repeat(600); // 1,200 bytes in 600 characters
    const signed = { ...signMessage({ id: 'x', body }, { secret, clock: () => T0 }), body };
    assert.equal(rejection(signed, { maxBodyBytes: 1_199 }), 'malformed');
    assert.equal(rejection(signed, { maxBodyBytes: 1_200 }), 'accepted');
  });

  it('refuses an id over maxIdBytes (default 256) as malformed, without echoing it', () => {
    const longId = 'i'.repeat(10_000);
    let error: unknown;
    try {
      verifyMessage({ id: longId, timestamp: T0, signature: 'A'.repeat(43), body: '' }, { secret, seen: dedupFilter(), clock: () => T0 });
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof MessageRejectedError && error.reason === 'malformed');
    assert.ok(!error.message.includes('iiii'), error.message);
    const id = 'é'.repeat(129);
    const signed = { ...signMessage({ id, body: 'x' }, { secret, clock: () => T0, maxIdBytes: 258 }), body: 'x' };
    assert.equal(rejection(signed), 'malformed', '258 bytes in 129 characters');
    assert.equal(rejection(signed, { maxIdBytes: 258 }), 'accepted');
    assert.equal(rejection(signedAt(T0, 'x', 'é'.repeat(128))), 'accepted', 'exactly 256 bytes');
  });

  it('signMessage refuses what a receiver with the same limits would, with PODPOOL_INVALID_ARGUMENT naming the size', () => {
    assert.throws(() => signMessage({ id: 'x', body: Buffer.alloc(1024 * 1024 + 1) }, { secret }), {
      code: ErrorCode.INVALID_ARGUMENT,
      message: 'argument body is 1048577 bytes; at most 1048576 are signed (maxBodyBytes)',
    });
    assert.throws(() => signMessage({ id: 'x'.repeat(257), body: '' }, { secret }), {
      code: ErrorCode.INVALID_ARGUMENT,
      message: 'argument id is 257 bytes; at most 256 are signed (maxIdBytes)',
    });
    assert.doesNotThrow(() => signMessage({ id: 'x'.repeat(300), body: 'y'.repeat(2_000_000) }, { secret, maxIdBytes: 300, maxBodyBytes: 2_000_000 }));
    assert.throws(() => signMessage({ id: 'x', body: '' }, { secret, maxBodyBytes: 1.5 }), { code: ErrorCode.INVALID_OPTION });
  });
});

describe('verifyMessage: replays', () => {
  it('never forgets an id a replay could still pass: dedupFilter({ max: 100 }) refuses the 101st (overload) rather than forget the first', () => {
    const seen = dedupFilter({ max: 100, clock: () => T0 });
    const messages = Array.from({ length: 101 }, (_, i) => signedAt(T0, `body ${i}`, `msg-${i}`));
    for (const message of messages.slice(0, 100)) assert.equal(rejection(message, { seen }), 'accepted');
    assert.equal(rejection(messages[100], { seen }), 'overload');
    assert.equal(rejection(messages[0], { seen }), 'replay', 'the first one, replayed after 100 newer ones');
    assert.equal(seen.refused, 1);
  });

  it('makes room as the ids kept fall due: a message refused for overload passes once older ones are stale', () => {
    let now = T0;
    const seen = dedupFilter({ max: 2, clock: () => now });
    const verifyAt = (message: ReceivedMessage) => rejection(message, { seen, clock: () => now });
    assert.equal(verifyAt(signedAt(T0, 'a', 'a')), 'accepted');
    assert.equal(verifyAt(signedAt(T0, 'b', 'b')), 'accepted');
    assert.equal(verifyAt(signedAt(T0, 'c', 'c')), 'overload');
    now = T0 + 60_001;
    assert.equal(verifyAt(signedAt(T0 + 60_001, 'c', 'c')), 'accepted');
    assert.equal(verifyAt(signedAt(T0, 'a', 'a')), 'stale', 'a itself is stale by now');
  });

  it('remembers a message dated maxAgeMs ahead until the last instant it is acceptable, that instant included', () => {
    let now = T0;
    const seen = dedupFilter({ clock: () => now });
    const ahead = signedAt(T0 + 60_000);
    const verifyAt = (at: number) => {
      now = at;
      return rejection(ahead, { seen, clock: () => now });
    };
    assert.equal(verifyAt(T0), 'accepted');
    assert.equal(verifyAt(T0 + 119_999), 'replay');
    assert.equal(verifyAt(T0 + 120_000), 'replay', 'exactly 2 × maxAgeMs later: still acceptable by age, so a replay');
    assert.equal(verifyAt(T0 + 120_001), 'stale');
  });

  it('keeps ids long enough whatever the filter ttlMs (a short one is no longer a hole)', () => {
    let now = T0;
    const seen = dedupFilter({ ttlMs: 1_000, clock: () => now });
    const message = signedAt(T0);
    assert.equal(rejection(message, { seen, clock: () => now }), 'accepted');
    now = T0 + 59_999;
    assert.equal(rejection(message, { seen, clock: () => now }), 'replay');
  });

  it('keeps a retry re-signed later until its own timestamp is stale', () => {
    let now = T0;
    const seen = dedupFilter({ clock: () => now });
    assert.equal(rejection(signedAt(T0), { seen, clock: () => now }), 'accepted');
    now = T0 + 30_000;
    const retry = signedAt(T0 + 30_000);
    assert.equal(rejection(retry, { seen, clock: () => now }), 'replay');
    now = T0 + 90_000; // the first copy is stale, the retry is not
    assert.equal(rejection(retry, { seen, clock: () => now }), 'replay');
  });

  it('is restart-safe with notBefore: a receiver restarted with an empty memory refuses what was signed before it started', () => {
    const message = signedAt(T0);
    assert.equal(rejection(message, { seen: dedupFilter() }), 'accepted');
    // The receiver restarts 5 s later; its memory is gone.
    const startedAt = T0 + 5_000;
    const after = { clock: () => startedAt + 1 };
    assert.equal(rejection(message, { seen: dedupFilter(), ...after }), 'accepted', 'the hole notBefore closes');
    assert.equal(rejection(message, { seen: dedupFilter(), ...after, notBefore: startedAt }), 'stale');
    assert.equal(rejection(signedAt(startedAt), { seen: dedupFilter(), ...after, notBefore: startedAt }), 'accepted', 'signed since the start');
  });

  it('takes a memory of its own (keep(id, forMs)), which can outlive a restart', () => {
    const store = new Map<string, number>(); // stands for a shared or persistent store
    let now = T0;
    const persistent = {
      keep(id: string, forMs: number) {
        if ((store.get(id) ?? -Infinity) >= now) return 'duplicate' as const;
        store.set(id, now + forMs);
        return 'new' as const;
      },
    };
    const message = signedAt(T0);
    assert.equal(rejection(message, { seen: persistent, clock: () => now }), 'accepted');
    assert.equal(store.get('msg-1'), T0 + 60_000, 'asked to keep it until its message is stale');
    now = T0 + 5_000; // "restarted": same store
    assert.equal(rejection(message, { seen: persistent, clock: () => now }), 'replay');
    assert.equal(rejection(signedAt(T0, 'x', 'other'), { seen: { keep: () => 'full' }, clock: () => now }), 'overload');
  });
});
