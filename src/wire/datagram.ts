/**
 * podpool's datagram: what `udpTransport` sends and `datagramReceiver` reads. The one place that
 * knows the layout, so the two sides can't drift apart.
 */
import { invalidArgument } from '../options.ts';

/**
 * The datagram format, version 1. Every datagram is one message:
 *
 * ```
 * offset  size  field
 *      0     2  magic "PP" (0x50 0x50)
 *      2     1  version, 1
 *      3     1  N, the sender id's length in bytes (1–255)
 *      4     8  sequence, unsigned big-endian (1, 2, 3, … per sender; at most 2^53 − 1)
 *     12     N  sender id, UTF-8
 *   12+N     …  body, the rest of the datagram
 * ```
 *
 * A receiver keys its duplicate window by (sender, sequence): the copies `repeat` sends and the
 * retries of one broadcast all carry the same pair.
 */
export interface Datagram {
  readonly sender: string;
  readonly sequence: number;
  readonly body: Uint8Array;
}

const MAGIC_0 = 0x50;
const MAGIC_1 = 0x50;
const VERSION = 1;
const HEADER_BYTES = 12;

/** Frames one message as a datagram (see {@link Datagram} for the layout). */
export function encodeDatagram(message: { sender: string; sequence: number; body: string | Uint8Array }): Buffer {
  const sender = Buffer.from(message.sender, 'utf8');
  if (sender.length < 1 || sender.length > 255) invalidArgument('sender', 'a string of 1 to 255 UTF-8 bytes', message.sender);
  const { sequence } = message;
  if (!Number.isSafeInteger(sequence) || sequence < 1) invalidArgument('sequence', 'an integer from 1 to 2^53 - 1', sequence);
  const body = typeof message.body === 'string' ? Buffer.from(message.body, 'utf8') : message.body;
  const datagram = Buffer.allocUnsafe(HEADER_BYTES + sender.length + body.byteLength);
  datagram[0] = MAGIC_0;
  datagram[1] = MAGIC_1;
  datagram[2] = VERSION;
  datagram[3] = sender.length;
  datagram.writeBigUInt64BE(BigInt(sequence), 4);
  sender.copy(datagram, HEADER_BYTES);
  datagram.set(body, HEADER_BYTES + sender.length);
  return datagram;
}

/** Reads a datagram framed by {@link encodeDatagram}; `undefined` when it isn't one. The body is a view, not a copy. */
export function decodeDatagram(datagram: Uint8Array): Datagram | undefined {
  if (datagram.byteLength < HEADER_BYTES + 1) return undefined;
  const bytes = Buffer.from(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  if (bytes[0] !== MAGIC_0 || bytes[1] !== MAGIC_1 || bytes[2] !== VERSION) return undefined;
  const senderLength = bytes[3];
  if (senderLength === 0 || bytes.length < HEADER_BYTES + senderLength) return undefined;
  const sequence = bytes.readBigUInt64BE(4);
  if (sequence < 1n || sequence > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
  return {
    sender: bytes.toString('utf8', HEADER_BYTES, HEADER_BYTES + senderLength),
    sequence: Number(sequence),
    body: bytes.subarray(HEADER_BYTES + senderLength),
  };
}
