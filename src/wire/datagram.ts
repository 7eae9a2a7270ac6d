/**
 * podpool's datagram: what `udpTransport` sends and `datagramReceiver` reads. The one place that
 * knows the layout, so the two sides can't drift apart.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { invalidArgument } from '../options.ts';
import type { Secret } from './secret.ts';

/**
 * The datagram format. Every datagram is one message; version 1 is unsigned, version 2 is the
 * same with a signed trailer:
 *
 * ```
 * offset  size  field
 *      0     2  magic "PP" (0x50 0x50)
 *      2     1  version: 1 (unsigned) or 2 (signed)
 *      3     1  N, the sender id's length in bytes (1–255)
 *      4     8  sequence, unsigned big-endian (1, 2, 3, … per sender; at most 2^53 − 1)
 *     12     N  sender id, UTF-8
 *   12+N     …  body, the rest of the datagram (up to the trailer in version 2)
 * version 2 only:
 *  end-40     8  timestamp: when it was signed, ms since the epoch, unsigned big-endian
 *  end-32    32  HMAC-SHA256, under the shared secret, of every byte before it
 * ```
 *
 * A receiver keys its duplicate window by (sender, sequence): the copies `repeat` sends and the
 * retries of one broadcast all carry the same pair. The signature covers the header too, so a
 * signed datagram's sender and sequence can't be changed on the way; its timestamp lets a
 * receiver refuse an old one replayed after it forgot the sender. It proves who sent it and
 * when, not which pod it was sent to.
 */
export interface Datagram {
  readonly sender: string;
  readonly sequence: number;
  readonly body: Uint8Array;
  /** When a signed datagram was signed (ms since the epoch); absent in version 1. */
  readonly timestamp?: number;
  /**
   * `none`: version 1, unsigned. `valid` / `invalid`: signed, checked under the secret given to
   * {@link decodeDatagram}. `unchecked`: signed, and no secret was given.
   */
  readonly signature: 'none' | 'valid' | 'invalid' | 'unchecked';
}

const MAGIC_0 = 0x50;
const MAGIC_1 = 0x50;
const UNSIGNED = 1;
const SIGNED = 2;
const HEADER_BYTES = 12;
const MAC_BYTES = 32;
/** Timestamp and HMAC after a signed datagram's body. */
const TRAILER_BYTES = 8 + MAC_BYTES;
const MAX_SEQUENCE = BigInt(Number.MAX_SAFE_INTEGER);

/** Bytes of a datagram framing a body of `bodyBytes` for a sender id of `senderBytes`, signed or not. */
export function datagramBytes(senderBytes: number, bodyBytes: number, signed: boolean): number {
  return HEADER_BYTES + senderBytes + bodyBytes + (signed ? TRAILER_BYTES : 0);
}

/**
 * Frames one message as a datagram (see {@link Datagram} for the layout): version 2, signed, when
 * a `secret` is given, with `timestamp` (default now); version 1 otherwise.
 */
export function encodeDatagram(
  message: { sender: string; sequence: number; body: string | Uint8Array; timestamp?: number },
  options?: { secret: Secret },
): Buffer {
  if (message === null || typeof message !== 'object') invalidArgument('message', 'an object with sender, sequence and body', message);
  const { sequence, body, timestamp } = message;
  if (typeof message.sender !== 'string') invalidArgument('sender', 'a string of 1 to 255 UTF-8 bytes', message.sender);
  const sender = Buffer.from(message.sender, 'utf8');
  if (sender.length < 1 || sender.length > 255) invalidArgument('sender', 'a string of 1 to 255 UTF-8 bytes', message.sender);
  if (!Number.isSafeInteger(sequence) || sequence < 1) invalidArgument('sequence', 'an integer from 1 to 2^53 - 1', sequence);
  if (typeof body !== 'string' && !(body instanceof Uint8Array)) invalidArgument('body', 'a string or bytes', body);
  if (options !== undefined && (options === null || typeof options !== 'object')) invalidArgument('options', 'an object with a secret', options);
  const secret = options?.secret;
  if (secret !== undefined && typeof secret !== 'string' && !(secret instanceof Uint8Array)) invalidArgument('secret', 'a string or bytes', secret);
  if (timestamp !== undefined) {
    if (secret === undefined) invalidArgument('timestamp', 'absent from an unsigned datagram (only signed ones carry one)', timestamp);
    if (!Number.isSafeInteger(timestamp) || timestamp < 0) invalidArgument('timestamp', 'an integer number of ms since the epoch', timestamp);
  }
  return frameDatagram(sender, sequence, body, secret, timestamp ?? Date.now());
}

/**
 * {@link encodeDatagram} without its checks, for a sender that checked its parts once (the
 * transport keeps its sender id as bytes, so a send does not encode it again).
 */
export function frameDatagram(sender: Uint8Array, sequence: number, body: string | Uint8Array, secret: Secret | undefined, timestamp: number): Buffer {
  const bodyBytes = typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
  const datagram = Buffer.allocUnsafe(datagramBytes(sender.length, bodyBytes, secret !== undefined));
  datagram[0] = MAGIC_0;
  datagram[1] = MAGIC_1;
  datagram[2] = secret === undefined ? UNSIGNED : SIGNED;
  datagram[3] = sender.length;
  datagram.writeBigUInt64BE(BigInt(sequence), 4);
  datagram.set(sender, HEADER_BYTES);
  const bodyAt = HEADER_BYTES + sender.length;
  if (typeof body === 'string') datagram.write(body, bodyAt, 'utf8');
  else datagram.set(body, bodyAt);
  if (secret !== undefined) {
    const trailerAt = bodyAt + bodyBytes;
    datagram.writeBigUInt64BE(BigInt(timestamp), trailerAt);
    mac(secret, datagram.subarray(0, trailerAt + 8)).copy(datagram, trailerAt + 8);
  }
  return datagram;
}

/**
 * Reads a datagram framed by {@link encodeDatagram}; `undefined` when it isn't one. The body is a
 * view, not a copy. A signed one is checked under `options.secret` when given (its `signature`
 * says how that went); throws `PODPOOL_INVALID_ARGUMENT` only when `datagram` is not bytes.
 */
export function decodeDatagram(datagram: Uint8Array, options?: { secret?: Secret }): Datagram | undefined {
  if (!(datagram instanceof Uint8Array)) invalidArgument('datagram', 'bytes (a Buffer or Uint8Array)', datagram);
  if (datagram.byteLength < HEADER_BYTES + 1) return undefined;
  const bytes = Buffer.from(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  const version = bytes[2];
  if (bytes[0] !== MAGIC_0 || bytes[1] !== MAGIC_1 || (version !== UNSIGNED && version !== SIGNED)) return undefined;
  const senderLength = bytes[3];
  const end = version === SIGNED ? bytes.length - TRAILER_BYTES : bytes.length;
  if (senderLength === 0 || end < HEADER_BYTES + senderLength) return undefined;
  const sequence = bytes.readBigUInt64BE(4);
  if (sequence < 1n || sequence > MAX_SEQUENCE) return undefined;
  const sender = bytes.toString('utf8', HEADER_BYTES, HEADER_BYTES + senderLength);
  const body = bytes.subarray(HEADER_BYTES + senderLength, end);
  if (version === UNSIGNED) return { sender, sequence: Number(sequence), body, signature: 'none' };

  const timestamp = bytes.readBigUInt64BE(end);
  if (timestamp > MAX_SEQUENCE) return undefined;
  const secret = options?.secret;
  if (secret !== undefined && typeof secret !== 'string' && !(secret instanceof Uint8Array)) invalidArgument('secret', 'a string or bytes', secret);
  let signature: Datagram['signature'] = 'unchecked';
  if (secret !== undefined) {
    const signed = bytes.subarray(0, end + 8);
    signature = timingSafeEqual(mac(secret, signed), bytes.subarray(end + 8)) ? 'valid' : 'invalid';
  }
  return { sender, sequence: Number(sequence), body, timestamp: Number(timestamp), signature };
}

function mac(secret: Secret, bytes: Uint8Array): Buffer {
  return createHmac('sha256', secret).update(bytes).digest();
}
