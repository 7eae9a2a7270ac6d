/**
 * What the pod side costs per message, in this process (no sockets): a datagram through
 * `datagramReceiver.accept()` unsigned and signed, framing one for `udpTransport` unsigned and
 * signed, and `verifyMessage` with its dedup filter. Each is timed over a fixed count, several
 * rounds; the report gives the median per operation.
 *
 *   node_modules/.bin/node bench/micro/receive.ts [--count 200000] [--rounds 7]
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { datagramReceiver } from '../../src/receive/datagram.ts';
import { dedupFilter } from '../../src/receive/dedup.ts';
import { signMessage, verifyMessage } from '../../src/receive/signing.ts';
import { encodeDatagram, frameDatagram } from '../../src/wire/datagram.ts';

const { values } = parseArgs({ options: { count: { type: 'string', default: '200000' }, rounds: { type: 'string', default: '7' } } });
const COUNT = Number(values.count);
const ROUNDS = Number(values.rounds);
const secret = 'a bench secret of thirty-two byte';
const body = JSON.stringify({ type: 'invalidate', key: 'user:42' });
const sender = Buffer.from('writer-1');

function median(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** ns per operation: `run(i)` for i in [0, COUNT), median over the rounds. */
function time(name: string, prepare: () => (i: number) => void): void {
  const samples: number[] = [];
  for (let round = 0; round < ROUNDS + 1; round++) {
    const run = prepare();
    const start = performance.now();
    for (let i = 0; i < COUNT; i++) run(i);
    const ns = ((performance.now() - start) * 1e6) / COUNT;
    if (round > 0) samples.push(ns); // the first round warms up
  }
  console.log(`${name.padEnd(44)} ${median(samples).toFixed(0).padStart(6)} ns/op`);
}

// Datagrams made before timing, so only accept() is measured.
const unsigned = Array.from({ length: COUNT }, (_, i) => encodeDatagram({ sender: 'writer-1', sequence: i + 1, body }));
const now = Date.now();
const signed = Array.from({ length: COUNT }, (_, i) => encodeDatagram({ sender: 'writer-1', sequence: i + 1, body, timestamp: now }, { secret }));
const messages = Array.from({ length: COUNT }, (_, i) => ({ ...signMessage({ id: `m-${i}`, body }, { secret, clock: () => now }), body }));

console.log(`${COUNT} operations a round, median of ${ROUNDS} rounds, Node ${process.version}`);
time('accept(), unsigned', () => {
  const receiver = datagramReceiver({ onMessage() {} });
  return (i) => receiver.accept(unsigned[i]);
});
time('accept(), signed (HMAC checked)', () => {
  const receiver = datagramReceiver({ secret, clock: () => now, onMessage() {} });
  return (i) => receiver.accept(signed[i]);
});
time('frame a datagram, unsigned', () => (i) => frameDatagram(sender, i + 1, body, undefined, now));
time('frame a datagram, signed', () => (i) => frameDatagram(sender, i + 1, body, secret, now));
time('verifyMessage (dedupFilter keep)', () => {
  const seen = dedupFilter({ max: COUNT, clock: () => now });
  return (i) => verifyMessage(messages[i], { secret, seen, clock: () => now });
});
