import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { EventEmitter, once } from 'node:events';
import { afterEach, describe, it } from 'node:test';
import { setImmediate } from 'node:timers/promises';
import { staticEndpoints } from '../../src/discovery/static.ts';
import { ErrorCode } from '../../src/errors.ts';
import { createPool } from '../../src/pool/pool.ts';
import { datagramReceiver, type DatagramDrop, type DatagramGap, type DatagramReceiverOptions } from '../../src/receive/datagram.ts';
import { udpTransport } from '../../src/transport/udp.ts';
import { decodeDatagram, encodeDatagram } from '../../src/wire/datagram.ts';
import { resourceNames } from '../support/resources.ts';

type ReceiverOptions = Omit<DatagramReceiverOptions, 'onMessage' | 'onGap' | 'onDrop'>;

/** A pod's UDP socket on its own loopback address, with the dedup receiver in front of it. */
class UdpPod extends EventEmitter<{ datagram: [] }> {
  readonly socket: Socket;
  readonly address: string;
  /** Every datagram as it arrived, copies included. */
  readonly raw: Buffer[] = [];
  /** What the receiver delivered: one entry per message. */
  readonly messages: { sender: string; sequence: number; body: string }[] = [];
  readonly gaps: DatagramGap[] = [];
  readonly drops: DatagramDrop[] = [];
  readonly receiver;

  constructor(socket: Socket, address: string, options: ReceiverOptions) {
    super();
    this.socket = socket;
    this.address = address;
    this.receiver = datagramReceiver({
      ...options,
      onMessage: (m) => this.messages.push({ sender: m.sender, sequence: m.sequence, body: Buffer.from(m.body).toString() }),
      onGap: (gap) => this.gaps.push(gap),
      onDrop: (drop) => this.drops.push(drop),
    });
    socket.on('message', (datagram) => {
      this.raw.push(datagram);
      this.receiver.accept(datagram);
      this.emit('datagram');
    });
  }

  static async start(address: string, options: ReceiverOptions = {}): Promise<UdpPod> {
    const socket = createSocket(address.includes(':') ? 'udp6' : 'udp4');
    socket.bind(0, address);
    await once(socket, 'listening');
    try {
      return new UdpPod(socket, address, options);
    } catch (error) {
      socket.close();
      throw error;
    }
  }

  get port(): number {
    return this.socket.address().port;
  }

  get key(): string {
    return this.address.includes(':') ? `[${this.address}]:${this.port}` : `${this.address}:${this.port}`;
  }

  /** Resolves once `n` datagrams (copies included) have arrived. */
  async received(n: number): Promise<void> {
    while (this.raw.length < n) await once(this, 'datagram');
  }

  /** Resolves once the socket is gone (libuv frees it a loop turn or two after 'close'). */
  async close(): Promise<void> {
    this.socket.close();
    await once(this.socket, 'close');
    await setImmediate();
    await setImmediate();
  }
}

async function startPods(addresses: string[]): Promise<UdpPod[]> {
  return Promise.all(addresses.map((a) => UdpPod.start(a)));
}

describe('udpTransport with real dgram sockets on loopback', { timeout: 20_000 }, () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  it('gives every pod each broadcast exactly once after dedup, with repeat = 3 and one sequence per message', async () => {
    const pods = await startPods(['127.0.0.141', '127.0.0.142', '127.0.0.143']);
    const pool = createPool({ source: staticEndpoints(pods), transport: udpTransport({ repeat: 3, senderId: 'writer-1' }) });
    cleanup.push(async () => void (await Promise.all(pods.map((p) => p.close()))), () => pool.close());
    await pool.ready({ minEndpoints: 3 });

    for (let m = 1; m <= 5; m++) {
      const result = await pool.broadcast((client, _endpoint, delivery) => client.send(`message ${m}`, delivery));
      assert.equal(result.failed.length, 0);
      for (const { value } of result.delivered) {
        assert.deepEqual(value, { acknowledged: false, sent: 3, sequence: m, bytes: 12 + 'writer-1'.length + `message ${m}`.length });
      }
    }
    await Promise.all(pods.map((p) => p.received(15)));
    for (const pod of pods) {
      assert.deepEqual(
        pod.messages,
        [1, 2, 3, 4, 5].map((m) => ({ sender: 'writer-1', sequence: m, body: `message ${m}` })),
        `${pod.key} got each message once, in order, with the same sequence as every other pod`,
      );
      assert.equal(pod.raw.length, 15, 'three copies of each arrived');
      assert.deepEqual(pod.receiver.stats(), {
        ...{ senders: 1, accepted: 5, duplicates: 10, stale: 0, malformed: 0, missing: 0 },
        ...{ jumps: 0, resyncs: 0, full: 0, evicted: 0, badSignatures: 0, expired: 0 },
      });
      assert.deepEqual(pod.gaps, []);
    }
  });

  it('gives a retried broadcast the sequence of its first attempt, so the retry is dropped as a duplicate', async () => {
    const pods = await startPods(['127.0.0.144', '127.0.0.145']);
    const pool = createPool({ source: staticEndpoints(pods), transport: udpTransport({ senderId: 'writer-2' }), ejection: false });
    cleanup.push(async () => void (await Promise.all(pods.map((p) => p.close()))), () => pool.close());
    await pool.ready({ minEndpoints: 2 });

    const result = await pool.broadcast(
      async (client, _endpoint, delivery) => {
        const sent = await client.send('invalidate user:7', delivery);
        // As if the first attempt's outcome were unknown (a timeout after the send): retry.
        if (delivery.attempt === 1) throw new Error('lost the answer');
        return sent;
      },
      { retries: 1 },
    );
    assert.deepEqual(
      result.delivered.map((d) => [d.attempts, d.value.sequence]),
      [
        [2, 1],
        [2, 1],
      ],
    );
    await Promise.all(pods.map((p) => p.received(2)));
    for (const pod of pods) {
      assert.deepEqual(
        pod.raw.map((d) => decodeDatagram(d)?.sequence),
        [1, 1],
      );
      assert.deepEqual(pod.messages, [{ sender: 'writer-2', sequence: 1, body: 'invalidate user:7' }]);
    }
  });

  it('lets a pod that missed a message see the gap', async () => {
    const pods = await startPods(['127.0.0.146', '127.0.0.147']);
    const pool = createPool({ source: staticEndpoints(pods), transport: udpTransport({ senderId: 'writer-3' }) });
    cleanup.push(async () => void (await Promise.all(pods.map((p) => p.close()))), () => pool.close());
    await pool.ready({ minEndpoints: 2 });

    await pool.broadcast((client, _e, delivery) => client.send('one', delivery));
    // A send to one pod only takes sequence 2 from the same sender.
    const only = await pool.use(async (client, endpoint) => ((await client.send('two')), endpoint.key));
    await pool.broadcast((client, _e, delivery) => client.send('three', delivery));

    const [got, missed] = pods[0].key === only ? pods : [pods[1], pods[0]];
    await got.received(3);
    await missed.received(2);
    assert.deepEqual(got.gaps, []);
    assert.deepEqual(missed.gaps, [{ sender: 'writer-3', from: 2, to: 2, missing: 1 }]);
    assert.deepEqual(
      missed.messages.map((m) => m.sequence),
      [1, 3],
    );
  });

  it('says nobody acknowledged, even when nothing listens at the pod', async () => {
    const probe = await UdpPod.start('127.0.0.148');
    const endpoint = { address: probe.address, port: probe.port };
    await probe.close();
    const pool = createPool({ source: staticEndpoints([endpoint]), transport: udpTransport() });
    cleanup.push(() => pool.close());
    await pool.ready();
    for (let i = 0; i < 3; i++) {
      const sent = await pool.use((client) => client.send('anyone?'));
      assert.equal(sent.acknowledged, false);
      assert.equal(sent.sent, 1);
    }
    assert.equal(pool.stats().members[0].state, 'ready');
  });

  it('counts only local send errors against a pod', async () => {
    // Sending to a broadcast address without SO_BROADCAST fails locally with EACCES.
    const pool = createPool({ source: staticEndpoints([{ address: '127.255.255.255', port: 9 }]), transport: udpTransport(), ejection: false });
    cleanup.push(() => pool.close());
    await pool.ready();

    await assert.rejects(pool.use((client) => client.send('x')), (error: Error & { code?: string; cause?: { code?: string } }) => {
      assert.equal(error.code, ErrorCode.NOT_CONNECTED);
      assert.equal(error.cause?.code, 'EACCES', "the kernel's error is the cause");
      assert.match(error.message, /^sending a datagram of \d+ bytes to 127\.255\.255\.255:9 failed \(EACCES\)/);
      return true;
    });
    assert.equal(pool.stats().members[0].failures, 1, 'a send error counts');
    await assert.rejects(
      pool.use(() => {
        throw new Error('the application failed');
      }),
      /the application failed/,
    );
    await assert.rejects(pool.use((client) => client.send(Buffer.alloc(70_000))), { code: ErrorCode.INVALID_ARGUMENT });
    assert.equal(pool.stats().members[0].failures, 1, 'an application error and an oversized message do not');

    const transport = udpTransport();
    assert.equal(transport.isPodFailure!(new Error('x')), false);
  });

  it('sends to IPv6 pods from an IPv6 socket', async () => {
    const [pod] = await startPods(['::1']);
    const pool = createPool({ source: staticEndpoints([pod]), transport: udpTransport({ senderId: 'six' }) });
    cleanup.push(() => pod.close(), () => pool.close());
    await pool.ready();
    await pool.use((client) => client.send('over v6'));
    await pod.received(1);
    assert.deepEqual(pod.messages, [{ sender: 'six', sequence: 1, body: 'over v6' }]);
  });

  it('sends to options.port instead of the endpoint port when given', async () => {
    const [pod] = await startPods(['127.0.0.149']);
    const pool = createPool({ source: staticEndpoints([{ address: pod.address, port: 1 }]), transport: udpTransport({ port: pod.port }) });
    cleanup.push(() => pod.close(), () => pool.close());
    await pool.ready();
    await pool.use((client) => client.send('to the UDP port'));
    await pod.received(1);
    assert.equal(pod.messages[0].body, 'to the UDP port');
  });

  it('shares one socket between members, and close() leaves nothing behind', async () => {
    const pods = await startPods(['127.0.0.150', '127.0.0.151', '127.0.0.152']);
    cleanup.push(async () => void (await Promise.all(pods.map((p) => p.close()))));
    const udpSockets = (): number => process.getActiveResourcesInfo().filter((r) => r === 'UDPWrap').length;
    const resourcesBefore = resourceNames();
    const before = udpSockets();

    const pool = createPool({ source: staticEndpoints(pods), transport: udpTransport({ repeat: 2 }) });
    await pool.ready({ minEndpoints: 3 });
    assert.equal(udpSockets(), before + 1, 'one sender socket for three pods');
    await pool.broadcast((client, _e, delivery) => client.send('x', delivery));
    await pool.close();
    assert.deepEqual(resourceNames(), resourcesBefore);
    await assert.rejects(pool.use((client) => client.send('x')), { code: ErrorCode.CLOSED });
  });

  it('refuses a send after its connection closed', async () => {
    const [pod] = await startPods(['127.0.0.153']);
    cleanup.push(() => pod.close());
    const connection = await udpTransport().connect(
      { key: pod.key, address: pod.address, port: pod.port, ready: true, serving: true, terminating: false },
      { signal: new AbortController().signal, lost: () => assert.fail('not lost') },
    );
    await connection.close();
    await connection.close();
    await assert.rejects(connection.client!.send('late'), { code: ErrorCode.CONNECTION_LOST });
  });

  it('rejects bad options at the door, naming the option', () => {
    assert.throws(() => udpTransport({ repeat: 0 }), /option repeat must be an integer >= 1, got 0/);
    assert.throws(() => udpTransport({ port: 70_000 }), /option port must be an integer from 1 to 65535/);
    assert.throws(() => udpTransport({ senderId: '' }), { code: ErrorCode.INVALID_OPTION });
    assert.throws(() => udpTransport({ senderId: 'x'.repeat(256) }), /option senderId/);
    assert.throws(
      () => udpTransport({ secret: 'too short' }),
      (error: Error & { code?: string }) => error.code === ErrorCode.INVALID_OPTION && /option secret .* got a string of 9 bytes$/.test(error.message) && !error.message.includes('short'),
    );
  });
});

/** A socket of no pod: what someone else on the network sends, forged as they like. */
async function spoofer(type: 'udp4' | 'udp6' = 'udp4'): Promise<{ send(datagram: Uint8Array, pod: UdpPod): Promise<void>; close(): Promise<void> }> {
  const socket = createSocket(type);
  socket.bind(0, type === 'udp4' ? '127.0.0.1' : '::1');
  await once(socket, 'listening');
  return {
    send: (datagram, pod) =>
      new Promise<void>((resolve, reject) => socket.send(datagram, pod.port, pod.address, (error) => (error ? reject(error) : resolve()))),
    async close() {
      socket.close();
      await once(socket, 'close');
    },
  };
}

describe('udpTransport and datagramReceiver against forged datagrams, on real sockets', { timeout: 60_000 }, () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  it('delivers the real sender\'s next 100 datagrams after one forged with sequence 2^53 - 1 (before: all 100 dropped as stale)', async () => {
    const pod = await UdpPod.start('127.0.0.161');
    cleanup.push(() => pod.close());
    const forger = await spoofer();
    cleanup.push(() => forger.close());
    const pool = createPool({ source: staticEndpoints([pod]), transport: udpTransport({ senderId: 'writer-s' }) });
    cleanup.push(() => pool.close());
    await pool.ready();

    await pool.use((client) => client.send('first'));
    await pod.received(1);
    await forger.send(encodeDatagram({ sender: 'writer-s', sequence: Number.MAX_SAFE_INTEGER, body: 'forged' }), pod);
    await pod.received(2);
    for (let m = 1; m <= 100; m++) await pool.use((client) => client.send(`real ${m}`));
    await pod.received(102);

    assert.equal(pod.messages.length, 101);
    assert.deepEqual(pod.messages.at(-1), { sender: 'writer-s', sequence: 101, body: 'real 100' });
    assert.deepEqual(
      pod.drops.map((d) => [d.reason, d.sequence]),
      [['jump', Number.MAX_SAFE_INTEGER]],
    );
  });

  it('delivers each of 50 real datagrams once while 1,024 forged sender ids arrive between its copies (before: 50 of 50 twice)', async () => {
    const pod = await UdpPod.start('127.0.0.162');
    cleanup.push(() => pod.close());
    const forger = await spoofer();
    cleanup.push(() => forger.close());
    const pool = createPool({ source: staticEndpoints([pod]), transport: udpTransport({ senderId: 'writer-f' }) });
    cleanup.push(() => pool.close());
    await pool.ready();
    const forged = Array.from({ length: 1_024 }, (_, i) => encodeDatagram({ sender: `forged-${i}`, sequence: 1, body: 'x' }));

    let arrived = 0;
    for (let m = 1; m <= 50; m++) {
      // The same id twice: a broadcast retried, so both copies carry the same sequence.
      await pool.use((client) => client.send(`real ${m}`, { id: `message-${m}` }));
      await pod.received(++arrived);
      // In batches the pod reads before the next: the socket's buffer would drop a burst of 1,024.
      for (let batch = 0; batch < forged.length; batch += 64) {
        for (const datagram of forged.slice(batch, batch + 64)) await forger.send(datagram, pod);
        arrived += Math.min(64, forged.length - batch);
        await pod.received(arrived);
      }
      await pool.use((client) => client.send(`real ${m}`, { id: `message-${m}` }));
      await pod.received(++arrived);
    }

    const real = pod.messages.filter((message) => message.sender === 'writer-f');
    assert.deepEqual(
      real.map((message) => message.body),
      Array.from({ length: 50 }, (_, i) => `real ${i + 1}`),
      'each real message once',
    );
    const stats = pod.receiver.stats();
    assert.equal(stats.senders, 1_024, 'the table stays bounded');
    assert.equal(stats.duplicates, 50 + 49 * 1_023, "each real message's second copy, and every forged sender's datagram after the first round");
    assert.equal(stats.full, 50, 'the one forged sender that found no room, each round');
    assert.equal(stats.evicted, 0, 'no sender was forgotten: none was silent for senderIdleMs');
  });

  it('with a secret, takes what the pool signed and drops forged, unsigned and replayed datagrams', async () => {
    const secret = 'the secret the writer and the pods share';
    const pod = await UdpPod.start('127.0.0.163', { secret });
    cleanup.push(() => pod.close());
    const forger = await spoofer();
    cleanup.push(() => forger.close());
    const pool = createPool({ source: staticEndpoints([pod]), transport: udpTransport({ senderId: 'writer-k', secret }) });
    cleanup.push(() => pool.close());
    await pool.ready();

    await pool.use((client) => client.send('signed 1'));
    await pod.received(1);
    const captured = pod.raw[0];
    assert.equal(decodeDatagram(captured, { secret })?.signature, 'valid');
    await forger.send(encodeDatagram({ sender: 'writer-k', sequence: 2, body: 'unsigned' }), pod);
    await forger.send(encodeDatagram({ sender: 'writer-k', sequence: 2, body: 'forged' }, { secret: 'a guess at the secret, long enough' }), pod);
    await forger.send(encodeDatagram({ sender: 'writer-k', sequence: 9_000_000, body: 'jump' }), pod);
    await forger.send(captured, pod);
    await pool.use((client) => client.send('signed 2'));
    await pod.received(6);

    assert.deepEqual(
      pod.messages.map((m) => m.body),
      ['signed 1', 'signed 2'],
    );
    assert.deepEqual(
      pod.drops.map((d) => d.reason),
      ['signature', 'signature', 'signature', 'duplicate'],
    );
  });

  for (const [address, limit] of [
    ['127.0.0.164', 65_507],
    ['::1', 65_527],
  ] as const) {
    it(`sends a datagram of exactly ${limit} bytes to ${address}, and refuses one byte more before sending, not counting it against the pod`, async () => {
      const pod = await UdpPod.start(address);
      cleanup.push(() => pod.close());
      const pool = createPool({ source: staticEndpoints([pod]), transport: udpTransport({ senderId: 'big' }), ejection: false });
      cleanup.push(() => pool.close());
      await pool.ready();
      const header = 12 + 'big'.length;

      const sent = await pool.use((client) => client.send(Buffer.alloc(limit - header, 1)));
      assert.equal(sent.bytes, limit);
      await pod.received(1);
      assert.equal(pod.raw[0].length, limit);

      for (const size of [limit - header + 1, 70_000]) {
        await assert.rejects(pool.use((client) => client.send(Buffer.alloc(size))), {
          code: ErrorCode.INVALID_ARGUMENT,
          message: `argument body makes a datagram of ${size + header} bytes (header included); UDP carries at most ${limit} to ${pod.key}: send less per datagram`,
        });
      }
      assert.equal(pool.stats().members[0].failures, 0, "too big is the message's fault, not the pod's");
      const next = await pool.use((client) => client.send('small'));
      assert.equal(next.sequence, 2, 'a refused body takes no sequence number');
    });
  }

  it("counts a signed datagram's trailer against the limit", async () => {
    const pod = await UdpPod.start('127.0.0.165', { secret: 'the secret the writer and the pods share' });
    cleanup.push(() => pod.close());
    const pool = createPool({
      source: staticEndpoints([pod]),
      transport: udpTransport({ senderId: 'big', secret: 'the secret the writer and the pods share' }),
    });
    cleanup.push(() => pool.close());
    await pool.ready();
    const overhead = 12 + 'big'.length + 40;
    await pool.use((client) => client.send(Buffer.alloc(65_507 - overhead)));
    await pod.received(1);
    assert.equal(pod.messages.length, 1);
    await assert.rejects(pool.use((client) => client.send(Buffer.alloc(65_507 - overhead + 1))), { code: ErrorCode.INVALID_ARGUMENT, message: /65508 bytes/ });
  });
});
