import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors.ts';
import { datagramBytes, decodeDatagram, encodeDatagram } from '../../src/wire/datagram.ts';

const secret = 'a datagram secret of some length';
const T0 = 1_700_000_000_000;

describe('encodeDatagram / decodeDatagram: bad input', () => {
  it('decodeDatagram refuses what is not bytes with PODPOOL_INVALID_ARGUMENT', () => {
    for (const bad of [undefined, null, 7, 'PP', { byteLength: 20 }, [80, 80, 1]]) {
      assert.throws(() => decodeDatagram(bad as never), { code: ErrorCode.INVALID_ARGUMENT, message: /^argument datagram must be bytes/ }, String(bad));
    }
    const good = encodeDatagram({ sender: 's', sequence: 1, body: 'x' }, { secret });
    assert.throws(() => decodeDatagram(good, { secret: 5 as never }), { code: ErrorCode.INVALID_ARGUMENT, message: /argument secret/ });
  });

  it('encodeDatagram refuses bad message shapes with PODPOOL_INVALID_ARGUMENT, naming the part', () => {
    const cases: [unknown, RegExp][] = [
      [null, /argument message must be an object/],
      [undefined, /argument message/],
      ['text', /argument message/],
      [{ sender: 5, sequence: 1, body: '' }, /argument sender/],
      [{ sequence: 1, body: '' }, /argument sender/],
      [{ sender: 's', sequence: '1', body: '' }, /argument sequence/],
      [{ sender: 's', sequence: 1.5, body: '' }, /argument sequence/],
      [{ sender: 's', sequence: 1, body: 5 }, /argument body must be a string or bytes/],
      [{ sender: 's', sequence: 1 }, /argument body/],
      [{ sender: 's', sequence: 1, body: { length: 3 } }, /argument body/],
      [{ sender: 's', sequence: 1, body: '', timestamp: T0 }, /argument timestamp must be absent from an unsigned datagram/],
    ];
    for (const [message, pattern] of cases) {
      assert.throws(() => encodeDatagram(message as never), { code: ErrorCode.INVALID_ARGUMENT, message: pattern }, JSON.stringify(message));
    }
    assert.throws(() => encodeDatagram({ sender: 's', sequence: 1, body: '', timestamp: -1 }, { secret }), /argument timestamp/);
    assert.throws(() => encodeDatagram({ sender: 's', sequence: 1, body: '' }, { secret: 42 as never }), { code: ErrorCode.INVALID_ARGUMENT, message: /argument secret must be a string or bytes, got 42$/ });
    assert.throws(() => encodeDatagram({ sender: 's', sequence: 1, body: '' }, null as never), /argument options/);
  });
});

describe('signed datagrams (version 2)', () => {
  const message = { sender: 'writer-é', sequence: 42, body: 'invalidate user:7', timestamp: T0 };

  it('lays out the version 1 header, the body, then the timestamp and the HMAC-SHA256 of everything before it', async () => {
    const { createHmac } = await import('node:crypto');
    const datagram = encodeDatagram(message, { secret });
    const senderBytes = Buffer.byteLength(message.sender);
    assert.equal(datagram.length, datagramBytes(senderBytes, message.body.length, true));
    assert.equal(datagram.length, 12 + senderBytes + message.body.length + 8 + 32);
    assert.deepEqual([...datagram.subarray(0, 4)], [0x50, 0x50, 2, senderBytes]);
    assert.equal(datagram.readBigUInt64BE(4), 42n);
    assert.equal(datagram.toString('utf8', 12 + senderBytes, datagram.length - 40), message.body);
    assert.equal(datagram.readBigUInt64BE(datagram.length - 40), BigInt(T0));
    const expected = createHmac('sha256', secret).update(datagram.subarray(0, datagram.length - 32)).digest();
    assert.deepEqual(datagram.subarray(datagram.length - 32), expected);
  });

  it('decodes as valid under the secret, invalid under another, unchecked without one', () => {
    const datagram = encodeDatagram(message, { secret });
    const valid = decodeDatagram(datagram, { secret });
    assert.deepEqual({ ...valid, body: Buffer.from(valid!.body).toString() }, { ...message, signature: 'valid' });
    assert.equal(decodeDatagram(datagram, { secret: 'another secret, long enough too' })?.signature, 'invalid');
    assert.equal(decodeDatagram(datagram)?.signature, 'unchecked');
    assert.equal(decodeDatagram(encodeDatagram({ sender: 's', sequence: 1, body: 'x' }), { secret })?.signature, 'none', 'version 1 stays readable');
  });

  it('takes any changed byte, header and timestamp included, for a bad signature', () => {
    const datagram = encodeDatagram(message, { secret });
    for (let i = 0; i < datagram.length; i++) {
      const altered = Buffer.from(datagram);
      altered[i] ^= 0x01;
      const decoded = decodeDatagram(altered, { secret });
      // A changed magic, version or length is not a datagram at all; anything else fails the HMAC.
      assert.ok(decoded === undefined || decoded.signature === 'invalid', `byte ${i}`);
    }
  });

  it('does not read a truncated signed datagram', () => {
    const datagram = encodeDatagram({ sender: 'abc', sequence: 1, body: '' }, { secret });
    for (let end = 0; end < datagram.length; end++) {
      const decoded = decodeDatagram(datagram.subarray(0, end), { secret });
      assert.ok(decoded === undefined || decoded.signature === 'invalid', `${end} bytes`);
    }
  });

  it('signs bytes bodies and empty bodies', () => {
    const datagram = encodeDatagram({ sender: 's', sequence: 1, body: new Uint8Array([0, 255]), timestamp: 0 }, { secret: Buffer.alloc(32, 7) });
    const decoded = decodeDatagram(datagram, { secret: Buffer.alloc(32, 7) });
    assert.deepEqual([...decoded!.body], [0, 255]);
    assert.equal(decoded!.timestamp, 0);
    assert.equal(decodeDatagram(encodeDatagram({ sender: 's', sequence: 1, body: '' }, { secret }), { secret })?.body.length, 0);
  });
});
