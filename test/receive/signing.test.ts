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
      message: 'unknown option maxAgeMS (did you mean maxAgeMs?); the options are secret, seen, maxAgeMs, clock',
    });
    assert.throws(() => signMessage({ id: '', body: 'y' }, { secret }), { code: ErrorCode.INVALID_ARGUMENT, message: /argument id/ });
    assert.throws(() => signMessage({ id: 'x', body: 5 as never }, { secret }), { code: ErrorCode.INVALID_ARGUMENT, message: /argument body/ });
    const message = signedAt(T0);
    assert.throws(() => verifyMessage(message, { secret, seen: undefined as never }), /option seen must be a dedup filter/);
    assert.throws(
      () => verifyMessage(message, { secret, seen: dedupFilter({ ttlMs: 60_000 }), maxAgeMs: 60_000 }),
      /remembers ids for at least 2 × maxAgeMs \(120000 ms\)/,
    );
    assert.throws(() => verifyMessage(message, { secret, seen: dedupFilter(), maxAgeMs: 0 }), { code: ErrorCode.INVALID_OPTION });
  });
});
