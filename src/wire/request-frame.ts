/**
 * The WebSocket request frame: what `WebSocketClient` sends and `answerRequests` answers, one
 * JSON text frame per message:
 *
 *   client → pod   {"id":7,"data":…}      a request: the pod must answer with the same id
 *   client → pod   {"data":…}             a message sent with `send()`: no answer expected
 *   pod → client   {"id":7,"reply":…}     the answer to request 7 (`reply` may be left out)
 *   pod → client   {"id":7,"error":{"message":"…","code":"…"}}   request 7 failed in the handler
 *
 * Ids are unique per connection, not per pod, so a pod needs no state to answer. Frames a side
 * does not recognise (binary, not JSON, unknown or late ids) are ignored, which leaves the
 * socket free for a protocol of the user's own next to this one. Both sides read and write
 * frames only through this file, so they can't drift apart.
 */
import type { RawData } from 'ws';
import { messageOf } from '../abort.ts';
import { InvalidArgumentError } from '../errors.ts';

/** The fields a frame may carry; which ones say what it is (see the table above). */
export interface RequestFrame {
  readonly id?: unknown;
  readonly data?: unknown;
  readonly reply?: unknown;
  readonly error?: unknown;
}

/** The error the pod's handler threw, as the reply frame carried it: it is the `cause` of a `PODPOOL_MESSAGE_REJECTED`. */
export interface RemoteError extends Error {
  /** The `code` the handler's error had, if any. */
  readonly code?: string;
}

/**
 * A request (`id` a number) or a one-way message (`id` undefined) carrying `data`; throws
 * `PODPOOL_INVALID_ARGUMENT` for data JSON can't carry (a BigInt, a cycle), never the value itself.
 */
export function encodeRequest(id: number | undefined, data: unknown): string {
  try {
    return JSON.stringify(id === undefined ? { data } : { id, data });
  } catch (error) {
    throw new InvalidArgumentError(`argument data must be a value JSON can carry (${messageOf(error)})`, { cause: error });
  }
}

/**
 * The answer to request `id`: its `reply`, or the error the handler threw. A reply JSON can't
 * carry (a BigInt, a cycle) becomes an error answer: the handler's failure, not the pod's crash.
 */
export function encodeReply(id: number, outcome: { reply: unknown } | { error: unknown }): string {
  if ('error' in outcome) return JSON.stringify({ id, error: errorBody(outcome.error) });
  try {
    return JSON.stringify({ id, reply: outcome.reply });
  } catch (error) {
    return JSON.stringify({ id, error: errorBody(error) });
  }
}

/**
 * One text frame of podpool's framing as an object; `undefined` for anything else, which both
 * sides ignore so the socket stays free for a protocol of the user's own.
 */
export function parseFrame(raw: RawData): RequestFrame | undefined {
  let frame: unknown;
  try {
    frame = JSON.parse(raw.toString());
  } catch {
    return undefined;
  }
  return frame !== null && typeof frame === 'object' ? frame : undefined;
}

/** The `error` of a reply frame as an `Error` named `RemoteError`, with the handler's `code` if it had one. */
export function decodeRemoteError(error: unknown): RemoteError {
  const { message, code } = (error ?? {}) as { message?: unknown; code?: unknown };
  const remote = new Error(typeof message === 'string' ? message : 'the pod reported an error') as Error & { code?: string };
  remote.name = 'RemoteError';
  if (typeof code === 'string') remote.code = code;
  return remote;
}

function errorBody(error: unknown): { message: string; code?: string } {
  const message = messageOf(error);
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? { message, code } : { message };
}
