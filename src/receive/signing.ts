import { createHmac, timingSafeEqual } from 'node:crypto';
import { InvalidArgumentError, MessageRejectedError, type RejectReason } from '../errors.ts';
import { checkFunction, checkNumber, checkOptions, invalidArgument, invalidOption, optionNames } from '../options.ts';
import { checkSecret, type Secret } from '../wire/secret.ts';
import type { ReplayMemory } from './dedup.ts';

/**
 * HMAC-SHA256 over a broadcast's id, timestamp and body, with a secret the sender and the pods
 * share. A pod that checks it knows the message came from someone holding the secret, recently,
 * and for the first time: a cache-invalidation endpoint is then not something anyone in the
 * cluster can call, nor something a captured request can replay.
 *
 * What is signed, byte for byte: `podpool-v1\n`, the id's UTF-8 length in decimal, `:`, the id,
 * `\n`, the timestamp (integer ms since the epoch) in decimal, `\n`, then the body. The length
 * prefix makes the id unambiguous whatever it contains.
 *
 * What protects against a replay: a message is accepted from `maxAgeMs` before to `maxAgeMs`
 * after its timestamp, and its id is remembered (`seen.keep`) until the last instant of that,
 * so a replay is either stale or a known id. A receiver that restarts with an empty memory would
 * take a replay of a message accepted in the last `maxAgeMs` before it stopped: give it
 * `notBefore` (its start time), or a `seen` of your own that outlives the process.
 */

export type { Secret } from '../wire/secret.ts';

/** What the sender sends beside the body (as HTTP headers, message fields, …). */
export interface SignedMessage {
  /** The broadcast's id (`delivery.id`): the same on every pod and every retry. */
  readonly id: string;
  /** When it was signed, in ms since the epoch. */
  readonly timestamp: number;
  /** base64url of the 32-byte HMAC-SHA256. */
  readonly signature: string;
}

/** What a receiver got: the three fields (strings straight from headers are fine) and the body. */
export interface ReceivedMessage {
  readonly id: string;
  readonly timestamp: number | string;
  readonly signature: string;
  readonly body: string | Uint8Array;
}

/** Options of {@link signMessage}. */
export interface SignOptions {
  secret: Secret;
  /** Milliseconds since the epoch; default `Date.now`. */
  clock?: () => number;
  /** The largest body it signs, in bytes; default 1 MiB (`verifyMessage`'s default limit). */
  maxBodyBytes?: number;
  /** The longest id it signs, in UTF-8 bytes; default 256 (`verifyMessage`'s default limit). */
  maxIdBytes?: number;
}

/** Options of {@link verifyMessage}. */
export interface VerifyOptions {
  secret: Secret;
  /**
   * Remembers the ids this receiver accepted: a {@link dedupFilter}, or a store of your own
   * ({@link ReplayMemory}). A second message with one of them is a replay. Each id is kept until
   * its message would be stale (`timestamp + maxAgeMs`, inclusive), whatever the filter's
   * `ttlMs`, and never forgotten earlier: a filter full of such ids refuses a new message
   * (`overload`) rather than forget one. Size `max` for the messages accepted in `2 × maxAgeMs`.
   */
  seen: ReplayMemory;
  /** Older (or further in the future, for clock skew) than this is rejected. Default 60 s. */
  maxAgeMs?: number;
  /**
   * Rejects (`stale`) a message signed before this instant (ms since the epoch). Give it the
   * receiver's start time to make it restart-safe: its memory of accepted ids starts empty, so
   * without this it would take a replay of a message it accepted before it restarted. The price:
   * a broadcast signed before the restart and retried after it without being signed again is
   * refused too (the writer in the README signs every attempt again, so its retries pass).
   */
  notBefore?: number;
  /** The largest body accepted, in bytes; default 1 MiB. Larger is `malformed`, refused before the HMAC runs. */
  maxBodyBytes?: number;
  /** The longest id accepted, in UTF-8 bytes; default 256. Longer is `malformed`. */
  maxIdBytes?: number;
  /** Milliseconds since the epoch; default `Date.now`. */
  clock?: () => number;
}

const SIGNATURE_BYTES = 32;
const MAX_BODY_BYTES = 1024 * 1024;
const MAX_ID_BYTES = 256;
const SIGN_OPTIONS = optionNames<SignOptions>({ secret: true, clock: true, maxBodyBytes: true, maxIdBytes: true });
const VERIFY_OPTIONS = optionNames<VerifyOptions>({
  secret: true,
  seen: true,
  maxAgeMs: true,
  notBefore: true,
  maxBodyBytes: true,
  maxIdBytes: true,
  clock: true,
});
const SIGNATURE_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const TIMESTAMP_PATTERN = /^\d{1,16}$/;

/** Signs `body` under `id` now; send the result beside the body. */
export function signMessage(message: { id: string; body: string | Uint8Array }, options: SignOptions): SignedMessage {
  if (message === null || typeof message !== 'object') invalidArgument('message', 'an object with id and body', message);
  checkOptions(options, SIGN_OPTIONS);
  const { id, body } = message;
  const { secret, clock = Date.now, maxBodyBytes = MAX_BODY_BYTES, maxIdBytes = MAX_ID_BYTES } = options;
  checkSecret(secret);
  checkNumber('maxBodyBytes', maxBodyBytes, { min: 0, integer: true });
  checkNumber('maxIdBytes', maxIdBytes, { min: 1, integer: true });
  if (typeof id !== 'string' || id === '') invalidArgument('id', 'a non-empty string', id);
  if (typeof body !== 'string' && !(body instanceof Uint8Array)) invalidArgument('body', 'a string or bytes', body);
  // What a receiver with the same limits would refuse is refused here, where the caller can act on it.
  const idBytes = Buffer.byteLength(id);
  if (idBytes > maxIdBytes) throw new InvalidArgumentError(`argument id is ${idBytes} bytes; at most ${maxIdBytes} are signed (maxIdBytes)`);
  const bodyBytes = byteLength(body);
  if (bodyBytes > maxBodyBytes) throw new InvalidArgumentError(`argument body is ${bodyBytes} bytes; at most ${maxBodyBytes} are signed (maxBodyBytes)`);
  checkFunction('clock', clock, 'a function returning ms since the epoch');
  const timestamp = Math.floor(clock());
  return { id, timestamp, signature: mac(secret, id, timestamp, body).toString('base64url') };
}

/**
 * Checks a received message and remembers its id; throws {@link MessageRejectedError} with the
 * reason when it is malformed or too big (`malformed`, checked before the HMAC runs), the
 * signature is wrong (`signature`), the message is stale (older than `maxAgeMs`, or signed
 * before `notBefore`) or from the future beyond `maxAgeMs` (`future`), its id was accepted
 * before (`replay`), or `seen` is full of ids it must still keep (`overload`). Only a message
 * with a good signature and a fresh timestamp is remembered, so forged messages can't fill `seen`.
 */
export function verifyMessage(message: ReceivedMessage, options: VerifyOptions): void {
  checkOptions(options, VERIFY_OPTIONS);
  const { secret, seen, maxAgeMs = 60_000, notBefore, maxBodyBytes = MAX_BODY_BYTES, maxIdBytes = MAX_ID_BYTES, clock = Date.now } = options;
  checkSecret(secret);
  checkNumber('maxAgeMs', maxAgeMs, { min: 1 });
  if (notBefore !== undefined) checkNumber('notBefore', notBefore);
  checkNumber('maxBodyBytes', maxBodyBytes, { min: 0, integer: true });
  checkNumber('maxIdBytes', maxIdBytes, { min: 1, integer: true });
  if (seen === null || typeof seen !== 'object' || typeof seen.keep !== 'function') {
    invalidOption('seen', 'a dedup filter (dedupFilter()) or another object with keep(id, forMs)', seen);
  }
  checkFunction('clock', clock, 'a function returning ms since the epoch');

  if (message === null || typeof message !== 'object') reject('malformed', 'the message is not an object');
  const { id, signature, body } = message;
  if (typeof id !== 'string' || id === '') reject('malformed', 'the message has no id');
  // UTF-8 takes at least a byte per UTF-16 unit: a string longer than the limit is over it, measured or not.
  if (id.length > maxIdBytes || Buffer.byteLength(id) > maxIdBytes) {
    reject('malformed', `the message's id is longer than ${maxIdBytes} bytes (maxIdBytes)`);
  }
  const timestamp = parseTimestamp(message.timestamp);
  if (timestamp === undefined) reject('malformed', `message ${id} has no valid timestamp`);
  if (typeof body !== 'string' && !(body instanceof Uint8Array)) reject('malformed', `message ${id} has no body`);
  if ((typeof body === 'string' && body.length > maxBodyBytes) || byteLength(body) > maxBodyBytes) {
    reject('malformed', `message ${id} has a body larger than ${maxBodyBytes} bytes (maxBodyBytes)`);
  }
  if (typeof signature !== 'string' || !SIGNATURE_PATTERN.test(signature)) {
    reject('signature', `message ${id} has no well-formed signature`);
  }
  const expected = mac(secret, id, timestamp, body);
  const got = Buffer.from(signature, 'base64url');
  if (got.length !== SIGNATURE_BYTES || !timingSafeEqual(got, expected)) {
    reject('signature', `message ${id} has a bad signature (wrong secret, or altered on the way)`);
  }
  const now = clock();
  const age = now - timestamp;
  if (age > maxAgeMs) reject('stale', `message ${id} is ${Math.round(age)} ms old; at most ${maxAgeMs} ms is accepted`);
  if (-age > maxAgeMs) {
    reject('future', `message ${id} is dated ${Math.round(-age)} ms ahead; check the clocks (at most ${maxAgeMs} ms of skew is accepted)`);
  }
  if (notBefore !== undefined && timestamp < notBefore) {
    reject('stale', `message ${id} was signed before notBefore (${notBefore}), so this receiver can't tell it from a replay`);
  }
  // Remembered until the last instant a replay would still pass the age check: timestamp + maxAgeMs.
  const outcome = seen.keep(id, timestamp + maxAgeMs - now);
  if (outcome === 'duplicate') reject('replay', `message ${id} was accepted before`);
  if (outcome !== 'new') {
    reject('overload', `message ${id} is refused: seen is full of ids it must keep until their messages are stale (size it for the messages accepted in 2 × maxAgeMs)`);
  }
}

function mac(secret: Secret, id: string, timestamp: number, body: string | Uint8Array): Buffer {
  const hmac = createHmac('sha256', secret);
  hmac.update(`podpool-v1\n${Buffer.byteLength(id)}:${id}\n${timestamp}\n`);
  hmac.update(body);
  return hmac.digest();
}

function byteLength(body: string | Uint8Array): number {
  return typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
}

function parseTimestamp(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value === 'string' && TIMESTAMP_PATTERN.test(value)) return Number(value);
  return undefined;
}

function reject(reason: RejectReason, message: string): never {
  throw new MessageRejectedError(reason, message);
}
