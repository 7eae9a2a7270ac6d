import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors.ts';
import { datagramReceiver, type DatagramDrop, type DatagramGap, type DatagramReceiverOptions } from '../../src/receive/datagram.ts';
import { decodeDatagram, encodeDatagram } from '../../src/wire/datagram.ts';

const NONE = { jumps: 0, resyncs: 0, full: 0, evicted: 0, badSignatures: 0, expired: 0 };

function recorder(options: Partial<Omit<DatagramReceiverOptions, 'onMessage' | 'onGap' | 'onDrop'>> = {}) {
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
    assert.deepEqual(receiver.stats(), { senders: 2, accepted: 3, duplicates: 4, stale: 0, malformed: 0, missing: 0, ...NONE });
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
    assert.deepEqual(receiver.stats(), { senders: 1, accepted: 100_000, duplicates: 64, stale: 2, malformed: 0, missing: 0, ...NONE });
  });

  it('forgets the window on a jump larger than itself, and reports the jump as a gap', () => {
    const { gaps, send } = recorder({ window: 32, maxJump: 10_000 });
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

  it('tracks at most maxSenders, forgetting the one heard from least recently once it has been silent long enough', () => {
    let now = 0;
    const { receiver, send } = recorder({ maxSenders: 100, senderIdleMs: 1_000, clock: () => now });
    for (let i = 0; i < 5_000; i++) {
      now = i * 20; // the one heard 100 senders ago has been silent for 2,000 ms
      send(`sender-${i}`, 1);
    }
    assert.equal(receiver.stats().senders, 100);
    assert.equal(send('sender-4999', 1), 'duplicate', 'recent senders are remembered');
    now = 5_000 * 20;
    assert.equal(send('sender-0', 1), 'accepted', 'a forgotten sender starts over');
    assert.equal(receiver.stats().full, 0, 'never full: the least recently heard was always silent for long enough');
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

describe('datagramReceiver: bad input', () => {
  it('refuses what is not bytes with PODPOOL_INVALID_ARGUMENT, and counts nothing', () => {
    const { receiver } = recorder();
    for (const bad of [undefined, null, 5, 'PP\u0001', { length: 20 }, [0x50, 0x50, 1]]) {
      assert.throws(() => receiver.accept(bad as never), { code: ErrorCode.INVALID_ARGUMENT, message: /argument datagram must be bytes/ }, String(bad));
    }
    assert.deepEqual(receiver.stats(), { senders: 0, accepted: 0, duplicates: 0, stale: 0, malformed: 0, missing: 0, ...NONE });
  });

  it('refuses to listen() to what is not a socket', () => {
    const { receiver } = recorder();
    for (const bad of [undefined, null, 'udp4', {}]) assert.throws(() => receiver.listen(bad as never), { code: ErrorCode.INVALID_ARGUMENT, message: /argument socket must be a dgram Socket/ });
  });

  it('drops every truncation of a good datagram as malformed, never throws', () => {
    const { receiver } = recorder();
    const good = encodeDatagram({ sender: 'abc', sequence: 3, body: 'x' });
    for (let end = 0; end < 3 + 12; end++) assert.equal(receiver.accept(good.subarray(0, end)), 'malformed', `${end} bytes`);
  });
});

describe('datagramReceiver: how far a sequence may jump', () => {
  it('drops one datagram far ahead of its sender (further than maxJump, default 65,536), so the real ones after it still arrive', () => {
    const { receiver, messages, drops, send } = recorder();
    for (let seq = 1; seq <= 10; seq++) send('writer', seq);
    // One forged datagram: before the bound, every real one after it was stale.
    assert.equal(send('writer', Number.MAX_SAFE_INTEGER, 'forged'), 'jump');
    for (let seq = 11; seq <= 110; seq++) assert.equal(send('writer', seq), 'accepted', `real ${seq}`);
    assert.equal(messages.length, 110);
    assert.deepEqual(drops, [{ reason: 'jump', sender: 'writer', sequence: Number.MAX_SAFE_INTEGER, from: undefined }]);
    assert.equal(receiver.stats().jumps, 1);
  });

  it('lets a datagram move the window by up to maxJump at once, and no further', () => {
    const { send, gaps } = recorder({ window: 64, maxJump: 64 });
    send('a', 1);
    assert.equal(send('a', 65), 'accepted', 'exactly maxJump ahead');
    assert.equal(send('a', 130), 'jump', 'maxJump + 1 ahead');
    assert.deepEqual(gaps, [{ sender: 'a', from: 2, to: 64, missing: 63 }]);
  });

  it('follows a sender that really jumped once its next datagram confirms it, reporting the datagram it dropped inside the gap', () => {
    const { receiver, messages, gaps, send } = recorder({ window: 32, maxJump: 32 });
    send('a', 1);
    send('a', 2);
    // A pod away for a while: the sender is 10,000 further on.
    assert.equal(send('a', 10_002), 'jump');
    assert.equal(send('a', 10_003), 'accepted', 'the next one confirms');
    assert.equal(send('a', 10_004), 'accepted');
    assert.deepEqual(gaps, [{ sender: 'a', from: 3, to: 10_002, missing: 10_000 }]);
    assert.deepEqual(messages, ['a#1:m1', 'a#2:m2', 'a#10003:m10003', 'a#10004:m10004']);
    assert.equal(receiver.stats().resyncs, 1);
  });

  it('loses nothing of a confirmed jump when every datagram is sent twice (repeat: 2)', () => {
    const { messages, send } = recorder({ window: 32, maxJump: 32 });
    send('a', 1);
    assert.equal(send('a', 5_000), 'jump');
    assert.equal(send('a', 5_000), 'accepted', 'the second copy confirms, and is delivered');
    assert.equal(send('a', 5_000), 'duplicate');
    assert.deepEqual(messages, ['a#1:m1', 'a#5000:m5000']);
  });

  it('forgets a far datagram once a datagram inside reach is accepted: two forgeries between real ones confirm nothing', () => {
    const { send } = recorder({ window: 32, maxJump: 32 });
    send('a', 1);
    assert.equal(send('a', 1_000_000), 'jump');
    assert.equal(send('a', 2), 'accepted');
    assert.equal(send('a', 1_000_001), 'jump', 'not confirmed: the real sender spoke in between');
    assert.equal(send('a', 3), 'accepted');
  });

  it('takes the jumps of a pod that gets one datagram in thousands of its sender (the sequence is shared by every pod)', () => {
    const { receiver, send } = recorder();
    for (let seq = 1; seq <= 1_000_000; seq += 50_000) assert.equal(send('a', seq), 'accepted', `${seq}`);
    assert.equal(receiver.stats().jumps, 0);
  });

  it('without a secret, costs a sender one real datagram for a forged one within maxJump ahead, which pushed its window away', () => {
    const { messages, send } = recorder({ window: 32 });
    send('a', 1);
    assert.equal(send('a', 65_537, 'forged'), 'accepted', 'within reach: taken (nothing tells it from a real one)');
    assert.equal(send('a', 2), 'stale');
    assert.equal(send('a', 3), 'accepted', 'the second real one in a row brings the sender back');
    assert.deepEqual(messages, ['a#1:m1', 'a#65537:forged', 'a#3:m3']);
  });

  it('without a secret, gets a sender back from a confirmed forgery: two real datagrams in a row behind the window move it back', () => {
    const { receiver, messages, send } = recorder({ window: 32 });
    send('a', 1);
    send('a', Number.MAX_SAFE_INTEGER - 1);
    send('a', Number.MAX_SAFE_INTEGER); // two forgeries in a row: confirmed
    assert.equal(send('a', 2), 'stale');
    assert.equal(send('a', 3), 'accepted', 'the second real one in a row confirms the sender is back there');
    assert.equal(send('a', 4), 'accepted');
    assert.equal(send('a', 3), 'duplicate');
    assert.deepEqual(messages.at(-2), 'a#3:m3');
    assert.equal(receiver.stats().resyncs, 2);
  });

  it('counts a lone old datagram as stale, as before', () => {
    const { send } = recorder({ window: 32 });
    for (let seq = 1; seq <= 100; seq++) send('a', seq);
    assert.equal(send('a', 5), 'stale');
    assert.equal(send('a', 101), 'accepted', 'a real one forgets it');
    assert.equal(send('a', 6), 'stale', 'and 6 after it confirms nothing');
  });
});

describe('datagramReceiver: the sender table', () => {
  it('keeps established senders through a flood of new sender ids, dropping the newcomers (full) while no sender has been silent for senderIdleMs', () => {
    let now = 1_000;
    const { receiver, messages, drops, send } = recorder({ maxSenders: 8, senderIdleMs: 500, clock: () => now });
    send('real', 1);
    for (let i = 0; i < 1_024; i++) send(`forged-${i}`, 1);
    assert.equal(receiver.stats().senders, 8, 'the table is bounded');
    assert.equal(receiver.stats().full, 1_024 - 7);
    assert.deepEqual(drops.at(-1), { reason: 'full', sender: 'forged-1023', sequence: 1, from: undefined });
    // Before the policy, the real sender was pushed out and its repeats were taken again.
    assert.equal(send('real', 1), 'duplicate');
    assert.equal(send('real', 2), 'accepted');
    assert.equal(messages.filter((m) => m.startsWith('real#')).length, 2);

    now += 500;
    assert.equal(send('newcomer', 1), 'full', 'silent for exactly senderIdleMs: not yet');
    now += 1;
    assert.equal(send('newcomer', 1), 'accepted', 'silent for longer: the least recently heard goes');
    assert.equal(receiver.stats().evicted, 1);
    assert.equal(send('real', 3), 'accepted', 'the real sender, heard last, stayed');
  });

  it('refuses a senderIdleMs that would forget a signed sender while its datagrams can be replayed', () => {
    assert.throws(() => datagramReceiver({ secret, maxAgeMs: 1_000, senderIdleMs: 1_999, onMessage() {} }), {
      code: ErrorCode.INVALID_OPTION,
      message: /option senderIdleMs must be at least 2 × maxAgeMs \(2000\)/,
    });
    assert.doesNotThrow(() => datagramReceiver({ secret, maxAgeMs: 1_000, senderIdleMs: 2_000, onMessage() {} }));
  });
});

const secret = 'a datagram secret of some length';

describe('datagramReceiver with a secret', () => {
  const T0 = 1_700_000_000_000;
  const signed = (sender: string, sequence: number, timestamp = T0, key: string = secret) =>
    encodeDatagram({ sender, sequence, body: `m${sequence}`, timestamp }, { secret: key });

  it('takes signed datagrams and drops unsigned, badly signed and altered ones (signature)', () => {
    const { receiver, messages, drops } = recorder({ secret, clock: () => T0 });
    assert.equal(receiver.accept(signed('a', 1)), 'accepted');
    assert.equal(receiver.accept(encodeDatagram({ sender: 'a', sequence: 2, body: 'unsigned' })), 'signature');
    assert.equal(receiver.accept(signed('a', 3, T0, 'another secret, long enough too')), 'signature');
    const altered = signed('a', 4);
    altered[14] ^= 1;
    assert.equal(receiver.accept(altered), 'signature');
    assert.equal(receiver.accept(signed('a', 5)), 'accepted');
    assert.deepEqual(messages, ['a#1:m1', 'a#5:m5']);
    assert.deepEqual(
      drops.map((d) => [d.reason, d.sequence]),
      [
        ['signature', 2],
        ['signature', 3],
        ['signature', 4],
      ],
    );
    assert.equal(receiver.stats().badSignatures, 3);
  });

  it('keeps a flood of forged senders out of the table altogether', () => {
    const { receiver, send } = recorder({ secret, maxSenders: 2, clock: () => T0 });
    assert.equal(receiver.accept(signed('real', 1)), 'accepted');
    for (let i = 0; i < 100; i++) assert.equal(send(`forged-${i}`, 1), 'signature');
    assert.equal(receiver.stats().senders, 1);
  });

  it('drops a signed datagram dated further than maxAgeMs from its clock, either way (expired), the bounds included', () => {
    const { receiver } = recorder({ secret, maxAgeMs: 1_000, clock: () => T0 });
    assert.equal(receiver.accept(signed('a', 1, T0 - 1_000)), 'accepted');
    assert.equal(receiver.accept(signed('a', 2, T0 - 1_001)), 'expired');
    assert.equal(receiver.accept(signed('a', 3, T0 + 1_000)), 'accepted');
    assert.equal(receiver.accept(signed('a', 4, T0 + 1_001)), 'expired');
    assert.equal(receiver.stats().expired, 2);
  });

  it('is restart-safe with notBefore: a replay of what a receiver took before it restarted is dropped', () => {
    const captured = signed('a', 1, T0);
    const before = recorder({ secret, clock: () => T0 });
    assert.equal(before.receiver.accept(captured), 'accepted');
    // Restarted 10 s later: it knows no sender.
    const careless = recorder({ secret, clock: () => T0 + 10_000 });
    assert.equal(careless.receiver.accept(captured), 'accepted', 'what notBefore is for');
    const restarted = recorder({ secret, clock: () => T0 + 10_000, notBefore: T0 + 10_000 });
    assert.equal(restarted.receiver.accept(captured), 'expired');
    assert.equal(restarted.receiver.accept(signed('a', 2, T0 + 10_000)), 'accepted', 'signed since the start');
  });

  it('never moves a signed sender back, so replayed old datagrams stay stale', () => {
    const { receiver } = recorder({ secret, window: 32, clock: () => T0 });
    const old = [1, 2, 3].map((seq) => signed('a', seq));
    for (const d of old) receiver.accept(d);
    for (let seq = 4; seq <= 100; seq++) receiver.accept(signed('a', seq));
    for (const d of old) assert.equal(receiver.accept(d), 'stale');
    for (const d of old) assert.equal(receiver.accept(d), 'stale', 'replayed twice: still stale');
  });

  it('takes unsigned datagrams too with requireSignature: false, still checking the signed ones', () => {
    const { receiver } = recorder({ secret, requireSignature: false, clock: () => T0 });
    assert.equal(receiver.accept(encodeDatagram({ sender: 'old', sequence: 1, body: 'x' })), 'accepted');
    assert.equal(receiver.accept(signed('new', 1)), 'accepted');
    assert.equal(receiver.accept(signed('new', 2, T0, 'another secret, long enough too')), 'signature');
  });

  it('takes a signed datagram without a secret as an unsigned one (a receiver that does not check)', () => {
    const { receiver, messages } = recorder();
    assert.equal(receiver.accept(signed('a', 1)), 'accepted');
    assert.deepEqual(messages, ['a#1:m1']);
  });

  it('checks its signing options at the door, never printing the secret', () => {
    assert.throws(
      () => datagramReceiver({ secret: 'short secret', onMessage() {} }),
      (error: Error & { code?: string }) => error.code === ErrorCode.INVALID_OPTION && /got a string of 12 bytes$/.test(error.message) && !error.message.includes('short'),
    );
    assert.throws(() => datagramReceiver({ requireSignature: true, onMessage() {} }), /option requireSignature must be false without a secret/);
    assert.throws(() => datagramReceiver({ secret, requireSignature: 'yes' as never, onMessage() {} }), { code: ErrorCode.INVALID_OPTION });
    assert.throws(() => datagramReceiver({ secret, maxAgeMs: 2 ** 31, onMessage() {} }), /option maxAgeMs/);
    assert.throws(() => datagramReceiver({ maxJump: 0, onMessage() {} }), /option maxJump must be an integer >= 1/);
    assert.throws(() => datagramReceiver({ notBefore: 'now' as never, onMessage() {} }), /option notBefore/);
  });
});
