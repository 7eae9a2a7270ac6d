import { createHmac, timingSafeEqual } from 'node:crypto';
import { MessageRejectedError, type RejectReason } from '../errors.ts';
import { checkFunction, checkNumber, checkOptions, invalidArgument, invalidOption, optionNames } from '../options.ts';
import type { DedupFilter } from './dedup.ts';

/**
 * HMAC-SHA256 over a broadcast's id, timestamp and body, with a secret the sender and the pods
 * share. A pod that checks it knows the message came from someone holding the secret, recently,
 * and for the first time: a cache-invalidation endpoint is then not something anyone in the
 * cluster can call, nor something a captured request can replay.
 *
 * What is signed, byte for byte: `podpool-v1\n`, the id's UTF-8 length in decimal, `:`, the id,
 * `\n`, the timestamp (integer ms since the epoch) in decimal, `\n`, then the body. The length
 * prefix makes the id unambiguous whatever it contains.
 */

/** The shared secret: at least 16 bytes (32 random bytes is the sensible choice). */
export type Secret = string | Uint8Array;

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
}

/** Options of {@link verifyMessage}. */
export interface VerifyOptions {
  secret: Secret;
  /**
   * The ids this receiver has accepted (a {@link DedupFilter}); a second message with one of
   * them is a replay. It must remember ids for at least `2 × maxAgeMs` (a message is acceptable
   * from `maxAgeMs` before to `maxAgeMs` after its timestamp).
   */
  seen: DedupFilter;
  /** Older (or further in the future, for clock skew) than this is rejected. Default 60 s. */
  maxAgeMs?: number;
  /** Milliseconds since the epoch; default `Date.now`. */
  clock?: () => number;
}

const SIGNATURE_BYTES = 32;
const SIGN_OPTIONS = optionNames<SignOptions>({ secret: true, clock: true });
const VERIFY_OPTIONS = optionNames<VerifyOptions>({ secret: true, seen: true, maxAgeMs: true, clock: true });
const SIGNATURE_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const TIMESTAMP_PATTERN = /^\d{1,16}$/;

/** Signs `body` under `id` now; send the result beside the body. */
export function signMessage(message: { id: string; body: string | Uint8Array }, options: SignOptions): SignedMessage {
  if (message === null || typeof message !== 'object') invalidArgument('message', 'an object with id and body', message);
  checkOptions(options, SIGN_OPTIONS);
  const { id, body } = message;
  const { secret, clock = Date.now } = options;
  checkSecret(secret);
  if (typeof id !== 'string' || id === '') invalidArgument('id', 'a non-empty string', id);
  checkBody(body);
  checkFunction('clock', clock, 'a function returning ms since the epoch');
  const timestamp = Math.floor(clock());
  return { id, timestamp, signature: mac(secret, id, timestamp, body).toString('base64url') };
}

/**
 * Checks a received message and remembers its id; throws {@link MessageRejectedError} with the
 * reason when the signature is wrong, the message is stale (or from the future beyond
 * `maxAgeMs`), or its id was accepted before. Only a message with a good signature and a fresh
 * timestamp is remembered, so forged messages can't fill the filter.
 */
export function verifyMessage(message: ReceivedMessage, options: VerifyOptions): void {
  checkOptions(options, VERIFY_OPTIONS);
  const { secret, seen, maxAgeMs = 60_000, clock = Date.now } = options;
  checkSecret(secret);
  checkNumber('maxAgeMs', maxAgeMs, { min: 1 });
  if (seen === null || typeof seen !== 'object' || typeof seen.add !== 'function') {
    invalidOption('seen', 'a dedup filter (dedupFilter())', seen);
  }
  if (seen.ttlMs < 2 * maxAgeMs) {
    invalidOption('seen', `a dedup filter that remembers ids for at least 2 × maxAgeMs (${2 * maxAgeMs} ms)`, `ttlMs ${seen.ttlMs}`);
  }
  checkFunction('clock', clock, 'a function returning ms since the epoch');

  if (message === null || typeof message !== 'object') reject('malformed', 'the message is not an object');
  const { id, signature, body } = message;
  if (typeof id !== 'string' || id === '') reject('malformed', 'the message has no id');
  const timestamp = parseTimestamp(message.timestamp);
  if (timestamp === undefined) reject('malformed', `message ${id} has no valid timestamp`);
  if (typeof body !== 'string' && !(body instanceof Uint8Array)) reject('malformed', `message ${id} has no body`);
  if (typeof signature !== 'string' || !SIGNATURE_PATTERN.test(signature)) {
    reject('signature', `message ${id} has no well-formed signature`);
  }
  const expected = mac(secret, id, timestamp, body);
  const got = Buffer.from(signature, 'base64url');
  if (got.length !== SIGNATURE_BYTES || !timingSafeEqual(got, expected)) {
    reject('signature', `message ${id} has a bad signature (wrong secret, or altered on the way)`);
  }
  const age = clock() - timestamp;
  if (age > maxAgeMs) reject('stale', `message ${id} is ${Math.round(age)} ms old; at most ${maxAgeMs} ms is accepted`);
  if (-age > maxAgeMs) {
    reject('future', `message ${id} is dated ${Math.round(-age)} ms ahead; check the clocks (at most ${maxAgeMs} ms of skew is accepted)`);
  }
  if (!seen.add(id)) reject('replay', `message ${id} was accepted before`);
}

function mac(secret: Secret, id: string, timestamp: number, body: string | Uint8Array): Buffer {
  const hmac = createHmac('sha256', secret);
  hmac.update(`podpool-v1\n${Buffer.byteLength(id)}:${id}\n${timestamp}\n`);
  hmac.update(body);
  return hmac.digest();
}

function parseTimestamp(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value === 'string' && TIMESTAMP_PATTERN.test(value)) return Number(value);
  return undefined;
}

function checkSecret(secret: unknown): asserts secret is Secret {
  const bytes = typeof secret === 'string' ? Buffer.byteLength(secret) : secret instanceof Uint8Array ? secret.byteLength : -1;
  // invalidOption shows only the kind and size of a secret, never its bytes.
  if (bytes < 16) invalidOption('secret', 'a string or bytes of at least 16 bytes', secret);
}

function checkBody(body: unknown): void {
  if (typeof body !== 'string' && !(body instanceof Uint8Array)) invalidArgument('body', 'a string or bytes', body);
}

function reject(reason: RejectReason, message: string): never {
  throw new MessageRejectedError(reason, message);
}
