/**
 * The client side of one pod's WebSocket: fire-and-forget `send`, and `request` matched to its
 * answer by id. `webSocketTransport` makes one per socket; the frames are wire/request-frame.ts's.
 */
import { debuglog } from 'node:util';
import { WebSocket, type RawData } from 'ws';
import { reasonOf } from '../abort.ts';
import type { Endpoint } from '../endpoint.ts';
import { BackpressureError, ConnectionLostError, MessageRejectedError, TimeoutError, type PodpoolError } from '../errors.ts';
import { checkDelay, checkOptions, checkSignal, optionNames } from '../options.ts';
import { decodeRemoteError, encodeRequest, parseFrame } from '../wire/request-frame.ts';

const debug = debuglog('podpool');

/** Options of {@link WebSocketClient.request}. */
export interface WebSocketRequestOptions {
  /** Fails with `PODPOOL_TIMEOUT` when no answer came by then. Default the transport's `requestTimeoutMs`. */
  timeoutMs?: number;
  /** Stops waiting for the answer (the pod may still act on the request). */
  signal?: AbortSignal;
}

const REQUEST_OPTIONS = optionNames<WebSocketRequestOptions>({ timeoutMs: true, signal: true });

/**
 * Rejects every request still waiting on a client: its socket is gone, or going. Only the
 * connection that owns the socket calls it.
 */
export let failPending: (client: WebSocketClient, error: PodpoolError) => void;

/** Errors of messages that were refused before a byte was written: a retry elsewhere is safe. */
const unsent = new WeakSet<object>();

/** Whether `error` failed a `send()` or `request()` before it was written to the socket. */
export function wasNotWritten(error: unknown): boolean {
  return typeof error === 'object' && error !== null && unsent.has(error);
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: unknown): void;
  timer: NodeJS.Timeout;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/**
 * One pod's WebSocket as `use()` and `broadcast()` callbacks see it: fire-and-forget `send`,
 * `request` with a correlation id, and the `ws` socket itself for anything else. The framing is
 * JSON: `{ id, data }` out, `{ id, reply }` or `{ id, error }` back (wire/request-frame.ts);
 * `answerRequests` is the pod side.
 */
export class WebSocketClient {
  /** The underlying `ws` socket, for advanced use (its own messages, `ping`, stats). Don't close it: the pool does. */
  readonly socket: WebSocket;
  readonly endpoint: Endpoint;
  readonly #highWaterMark: number;
  readonly #requestTimeoutMs: number;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;

  /** @internal Made by the transport. */
  constructor(socket: WebSocket, endpoint: Endpoint, highWaterMark: number, requestTimeoutMs: number) {
    this.socket = socket;
    this.endpoint = endpoint;
    this.#highWaterMark = highWaterMark;
    this.#requestTimeoutMs = requestTimeoutMs;
    socket.on('message', (raw, isBinary) => {
      if (!isBinary) this.#answer(raw);
    });
  }

  /** Requests sent and not yet answered. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Sends `data` (any JSON value) as `{ data }` and returns at once; the pod sends nothing
   * back. Throws `PODPOOL_BACKPRESSURE` when the pod isn't reading fast enough (the message is
   * not sent: drop it, or retry later) and `PODPOOL_CONNECTION_LOST` when the socket is closed.
   */
  send(data: unknown): void {
    this.#write(encodeRequest(undefined, data));
  }

  /**
   * Sends `data` (any JSON value) as `{ id, data }` and resolves with the pod's `reply`. Rejects
   * with `PODPOOL_TIMEOUT` after `timeoutMs`, `PODPOOL_CONNECTION_LOST` when the socket drops
   * first, `PODPOOL_BACKPRESSURE` when it is not sent at all, `PODPOOL_ABORTED` (or the signal's
   * podpool reason) on abort, and `PODPOOL_MESSAGE_REJECTED` when the pod's handler failed.
   */
  request<R = unknown>(data: unknown, options?: WebSocketRequestOptions): Promise<R> {
    const timeoutMs = options?.timeoutMs ?? this.#requestTimeoutMs;
    const signal = options?.signal;
    const id = this.#nextId++;
    try {
      if (options !== undefined) {
        checkOptions(options, REQUEST_OPTIONS);
        if (options.timeoutMs !== undefined) checkDelay('timeoutMs', timeoutMs);
        checkSignal('signal', signal);
      }
      if (signal?.aborted) throw reasonOf(signal, `request ${id} to ${this.endpoint.key}`);
      this.#write(encodeRequest(id, data));
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<R>((resolve, reject) => {
      const pending: Pending = {
        resolve: resolve as (value: unknown) => void,
        reject,
        signal,
        onAbort: undefined,
        timer: setTimeout(() => {
          this.#settle(id, new TimeoutError(`${this.endpoint.key} did not answer request ${id} within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      if (signal !== undefined) {
        pending.onAbort = () => this.#settle(id, reasonOf(signal, `request ${id} to ${this.endpoint.key}`));
        signal.addEventListener('abort', pending.onAbort, { once: true });
      }
      this.#pending.set(id, pending);
    });
  }

  static {
    // The connection settles what waits on a closed socket; nothing else may.
    failPending = (client, error) => {
      for (const id of [...client.#pending.keys()]) client.#settle(id, error);
    };
  }

  #write(frame: string): void {
    const { socket } = this;
    if (socket.readyState !== WebSocket.OPEN) {
      const error = new ConnectionLostError(`the WebSocket to ${this.endpoint.key} is closed; the pool is reconnecting`);
      unsent.add(error);
      throw error;
    }
    // Checked before the write, so the buffer never grows past the mark by more than one frame.
    if (socket.bufferedAmount >= this.#highWaterMark) {
      const error = new BackpressureError(
        `${this.endpoint.key} is not reading fast enough: ${socket.bufferedAmount} bytes buffered (highWaterMark ${this.#highWaterMark}); the message was not sent`,
      );
      unsent.add(error);
      throw error;
    }
    socket.send(frame);
  }

  #answer(raw: RawData): void {
    const frame = parseFrame(raw);
    if (frame === undefined) return;
    const { id, reply, error } = frame;
    if (typeof id !== 'number' || !this.#pending.has(id)) {
      if (typeof id === 'number') debug('%s: answer to request %d came after it ended', this.endpoint.key, id);
      return;
    }
    if (error === undefined) {
      this.#settle(id, undefined, reply);
      return;
    }
    const remote = decodeRemoteError(error);
    this.#settle(
      id,
      new MessageRejectedError('handler', `${this.endpoint.key} refused request ${id}: ${remote.message}`, { cause: remote }),
    );
  }

  #settle(id: number, error: unknown, value?: unknown): void {
    const pending = this.#pending.get(id);
    if (pending === undefined) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (pending.onAbort !== undefined) pending.signal!.removeEventListener('abort', pending.onAbort);
    if (error === undefined) pending.resolve(value);
    else pending.reject(error);
  }
}
