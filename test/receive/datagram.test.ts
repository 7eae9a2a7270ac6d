import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors.ts';
import { datagramReceiver, type DatagramDrop, type DatagramGap } from '../../src/receive/datagram.ts';
import { decodeDatagram, encodeDatagram } from '../../src/wire/datagram.ts';

function recorder(options: { window?: number; maxSenders?: number } = {}) {
  const messages: string[] = [];
  const gaps: DatagramGap[] = [];
  const drops: DatagramDrop[] = [];
  const receiver = datagramReceiver({
    ...options,
    onMessage: (m) => messages.push(`${m.sender}#${m.sequence}:${Buffer.from(m.body).toString()}`),
    onGap: (g) => gaps.push(g),
    onDrop: (d) => drops.push(d),
  });
  const send = (sender: string, sequence: number, body = `m${sequence}`) => receiver.accept(encodeDatagram({ sender, sequence, body }));
  return { receiver, messages, gaps, drops, send };
}

describe('encodeDatagram / decodeDatagram', () => {
  it('round-trips sender, sequence and body, UTF-8 and the largest sequence included', () => {
    const datagram = encodeDatagram({ sender: 'pod-é', sequence: Number.MAX_SAFE_INTEGER, body: Buffer.from([0, 1, 2, 255]) });
    assert.deepEqual([...datagram.subarray(0, 4)], [0x50, 0x50, 1, Buffer.byteLength('pod-é')]);
    const decoded = decodeDatagram(datagram);
    assert.equal(decoded?.sender, 'pod-é');
    assert.equal(decoded?.sequence, Number.MAX_SAFE_INTEGER);
    assert.deepEqual([...decoded!.body], [0, 1, 2, 255]);
    assert.deepEqual(decodeDatagram(encodeDatagram({ sender: 's', sequence: 1, body: '' }))?.body.length, 0);
  });

  it('decodes only what it encodes', () => {
    const good = encodeDatagram({ sender: 'abc', sequence: 3, body: 'x' });
    assert.equal(decodeDatagram(Buffer.from('hello, world')), undefined);
    assert.equal(decodeDatagram(good.subarray(0, 13)), undefined, 'truncated inside the sender id');
    const version2 = Buffer.from(good);
    version2[2] = 2;
    assert.equal(decodeDatagram(version2), undefined);
    const zero = Buffer.from(good);
    zero.writeBigUInt64BE(0n, 4);
    assert.equal(decodeDatagram(zero), undefined);
  });

  it('refuses what cannot be framed', () => {
    assert.throws(() => encodeDatagram({ sender: '', sequence: 1, body: '' }), { code: ErrorCode.INVALID_ARGUMENT });
    assert.throws(() => encodeDatagram({ sender: 'x'.repeat(256), sequence: 1, body: '' }), /argument sender/);
    assert.throws(() => encodeDatagram({ sender: 's', sequence: 0, body: '' }), /argument sequence/);
    assert.throws(() => encodeDatagram({ sender: 's', sequence: 2 ** 53, body: '' }), /argument sequence/);
  });
});

describe('datagramReceiver', () => {
  it('delivers the first copy of each (sender, sequence) and drops the others', () => {
    const { receiver, messages, drops, send } = recorder();
    for (const seq of [1, 1, 1, 2, 2, 2]) send('a', seq);
    assert.equal(send('b', 1), 'accepted', 'another sender has its own sequence space');
    assert.deepEqual(messages, ['a#1:m1', 'a#2:m2', 'b#1:m1']);
    assert.deepEqual(
      drops.map((d) => [d.reason, d.sender, d.sequence]),
      [
        ['duplicate', 'a', 1],
        ['duplicate', 'a', 1],
        ['duplicate', 'a', 2],
        ['duplicate', 'a', 2],
      ],
    );
    assert.deepEqual(receiver.stats(), { senders: 2, accepted: 3, duplicates: 4, stale: 0, malformed: 0, missing: 0 });
  });

  it('reports skipped sequences as a gap, and still takes a late one inside the window once', () => {
    const { messages, gaps, send } = recorder();
    send('a', 1);
    send('a', 2);
    send('a', 5);
    assert.deepEqual(gaps, [{ sender: 'a', from: 3, to: 4, missing: 2 }]);
    assert.equal(send('a', 3), 'accepted', 'reordered, not lost');
    assert.equal(send('a', 3), 'duplicate');
    send('a', 6);
    assert.deepEqual(gaps.length, 1, 'no gap for consecutive sequences');
    assert.deepEqual(messages, ['a#1:m1', 'a#2:m2', 'a#5:m5', 'a#3:m3', 'a#6:m6']);
  });

  it('starts a sender where it is first heard: a receiver that came late reports no gap', () => {
    const { gaps, send } = recorder();
    send('a', 57);
    send('a', 58);
    assert.deepEqual(gaps, []);
  });

  it('keeps a fixed window per sender whatever the number of messages: older ones are stale, not remembered', () => {
    const { receiver, send } = recorder({ window: 64 });
    for (let seq = 1; seq <= 100_000; seq++) assert.equal(send('a', seq), 'accepted');
    for (let seq = 100_000 - 63; seq <= 100_000; seq++) assert.equal(send('a', seq), 'duplicate', `${seq} is inside the window`);
    assert.equal(send('a', 100_000 - 64), 'stale', 'one behind the window');
    assert.equal(send('a', 1), 'stale');
    assert.deepEqual(receiver.stats(), { senders: 1, accepted: 100_000, duplicates: 64, stale: 2, malformed: 0, missing: 0 });
  });

  it('forgets the window on a jump larger than itself, and reports the jump as a gap', () => {
    const { gaps, send } = recorder({ window: 32 });
    for (let seq = 1; seq <= 10; seq++) send('a', seq);
    assert.equal(send('a', 1_000), 'accepted');
    assert.deepEqual(gaps, [{ sender: 'a', from: 11, to: 999, missing: 989 }]);
    // 1000 - 31 .. 999 were never seen, although their bits once held 1 .. 10.
    for (let seq = 969; seq < 1_000; seq++) assert.equal(send('a', seq), 'accepted');
    assert.equal(send('a', 968), 'stale');
  });

  it('clears the slots a smaller jump passes over, so old bits are not taken for new sequences', () => {
    const { gaps, send } = recorder({ window: 32 });
    for (let seq = 1; seq <= 10; seq++) send('a', seq);
    send('a', 40);
    assert.deepEqual(gaps, [{ sender: 'a', from: 11, to: 39, missing: 29 }]);
    // 33 shares its slot with 1, seen before the jump.
    assert.equal(send('a', 33), 'accepted');
    assert.equal(send('a', 42), 'accepted');
    assert.equal(send('a', 10), 'stale');
  });

  it('tracks at most maxSenders, forgetting the one heard from least recently', () => {
    const { receiver, send } = recorder({ maxSenders: 100 });
    for (let i = 0; i < 5_000; i++) send(`sender-${i}`, 1);
    assert.equal(receiver.stats().senders, 100);
    assert.equal(send('sender-4999', 1), 'duplicate', 'recent senders are remembered');
    assert.equal(send('sender-0', 1), 'accepted', 'a forgotten sender starts over');
  });

  it('drops what is not a podpool datagram', () => {
    const { receiver, drops } = recorder();
    assert.equal(receiver.accept(Buffer.from('GET / HTTP/1.1')), 'malformed');
    assert.deepEqual(drops, [{ reason: 'malformed', from: undefined }]);
    assert.equal(receiver.stats().malformed, 1);
  });

  it('rejects bad options at the door', () => {
    assert.throws(() => datagramReceiver({ window: 0, onMessage() {} }), /option window must be an integer >= 1, got 0/);
    assert.throws(() => datagramReceiver({ maxSenders: 1.5, onMessage() {} }), { code: ErrorCode.INVALID_OPTION });
    assert.throws(() => datagramReceiver({} as never), /option onMessage must be a function/);
    assert.throws(() => datagramReceiver({ onMessage() {}, onGap: 1 as never }), /option onGap/);
  });
});
