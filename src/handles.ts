/**
 * Waiting for a closed socket's handle to be gone. Node emits a socket's 'close' (and calls its
 * close callback) on the next tick after `close()`, while libuv frees the handle only in a later
 * close phase of the event loop; two check phases later it is gone whichever phase `close()` ran
 * in. Without this wait, a `close()` that resolves on 'close' would leave the socket open.
 */
import { setImmediate } from 'node:timers/promises';

/** Resolves once the handles closed before it are freed. */
export async function handlesFreed(): Promise<void> {
  await setImmediate();
  await setImmediate();
}
