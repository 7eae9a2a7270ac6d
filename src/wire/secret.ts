/**
 * The secret a sender and its pods share to sign what podpool sends: signed messages
 * (`signMessage` / `verifyMessage`) and signed datagrams (`udpTransport({ secret })` /
 * `datagramReceiver({ secret })`). One check, so both refuse the same secrets the same way.
 */
import { invalidOption } from '../options.ts';

/** The shared secret: at least 16 bytes (32 random bytes is the sensible choice). */
export type Secret = string | Uint8Array;

/** Checks a `secret` option at the door; the message shows only its kind and size, never its bytes. */
export function checkSecret(secret: unknown, name = 'secret'): asserts secret is Secret {
  const bytes = typeof secret === 'string' ? Buffer.byteLength(secret) : secret instanceof Uint8Array ? secret.byteLength : -1;
  if (bytes < 16) invalidOption(name, 'a string or bytes of at least 16 bytes', secret);
}
