/**
 * What the caller sent on a call through grpcChannel (messages, half-close, read), fed to each
 * attempt in turn from the start until the call is committed to one (gRFC A6): response headers
 * arrived, or the messages outgrew the buffer.
 */
import type { ChannelInterface } from '@grpc/grpc-js';

type GrpcCall = ReturnType<ChannelInterface['createCall']>;
type MessageContext = Parameters<GrpcCall['sendMessageWithContext']>[0];

/**
 * gRFC A6 (and grpc-js's `grpc.per_rpc_retry_buffer_size`): a call whose messages add up to more
 * is committed to its attempt, so a long upload is not held in memory for a retry.
 */
export const RETRY_BUFFER_BYTES = 256 * 1024;

/** A message the caller sent, kept until the call is committed and an attempt has written it. */
interface Write {
  readonly message: Buffer;
  readonly flags: number | undefined;
  /** The caller's write callback, until the first attempt that writes the message calls it. */
  callback: (() => void) | undefined;
}

/** One call's replay: the call owns it, and tells it when an attempt starts, ends, or commits. */
export class Replay {
  /** The caller's messages, in order; undefined once committed and all written. */
  #writes: Write[] | undefined = undefined;
  #bytes = 0;
  #committed = false;
  /** The attempt fed now, and its number: a write callback from an earlier one is ignored. */
  #inner: GrpcCall | undefined = undefined;
  #attempt = 0;
  #onWritten: (() => void) | undefined = undefined;
  /** The next entry of #writes to hand to the attempt, and whether one is handed and not yet written. */
  #next = 0;
  #writing = false;
  #halfClosed = false;
  #halfCloseSent = false;
  #readStarted = false;

  /** Whether the call is bound to its attempt: it may not be sent again. */
  get committed(): boolean {
    return this.#committed;
  }

  /** Feeds a new attempt everything from the start; its write callbacks are its own. */
  attach(inner: GrpcCall): void {
    const attempt = ++this.#attempt;
    this.#inner = inner;
    this.#onWritten = () => this.#written(attempt);
    this.#next = 0;
    this.#writing = false;
    this.#halfCloseSent = false;
    if (this.#readStarted) inner.startRead();
    this.#pump();
  }

  /** The attempt ended: nothing more goes to it. */
  detach(): void {
    this.#inner = undefined;
  }

  write(context: MessageContext, message: Buffer): void {
    if (this.#writes === undefined && this.#committed) {
      // Committed and every kept message written: the attempt is the call.
      this.#inner?.sendMessageWithContext(context, message);
      return;
    }
    const write: Write = { message, flags: context.flags, callback: context.callback };
    // A literal of one, not [] then push: a unary call's log stays one slot long.
    if (this.#writes === undefined) this.#writes = [write];
    else this.#writes.push(write);
    this.#bytes += message.length;
    if (this.#bytes > RETRY_BUFFER_BYTES) this.commit();
    this.#pump();
  }

  halfClose(): void {
    this.#halfClosed = true;
    this.#pump();
  }

  startRead(): void {
    this.#readStarted = true;
    this.#inner?.startRead();
  }

  commit(): void {
    if (this.#committed) return;
    this.#committed = true;
    const writes = this.#writes;
    if (writes === undefined) return;
    // What the attempt has written is needed no more; what it has not, it still needs.
    const done = this.#writing ? this.#next - 1 : this.#next;
    writes.splice(0, done);
    this.#next -= done;
    this.#bytes = 0;
    if (writes.length === 0 && !this.#writing) this.#writes = undefined;
  }

  /** The call is over: what was kept goes. */
  release(): void {
    this.#writes = undefined;
    this.#inner = undefined;
    this.#onWritten = undefined;
  }

  /** Hands the attempt what it has not had yet: one message at a time, as grpc-js's calls take them. */
  #pump(): void {
    const inner = this.#inner;
    const writes = this.#writes;
    if (inner === undefined) return;
    if (writes !== undefined) {
      if (!this.#writing && this.#next < writes.length) {
        const write = writes[this.#next++]!;
        this.#writing = true;
        inner.sendMessageWithContext({ flags: write.flags, callback: this.#onWritten }, write.message);
      }
      if (this.#next < writes.length) return;
    }
    if (this.#halfClosed && !this.#halfCloseSent) {
      // As grpc-js does: a half-close may follow the last message before it is written.
      this.#halfCloseSent = true;
      inner.halfClose();
    }
    if (this.#committed && !this.#writing) this.#writes = undefined;
  }

  /** The attempt wrote the last message it was handed. */
  #written(attempt: number): void {
    if (attempt !== this.#attempt || this.#writes === undefined) return;
    const write = this.#writes[this.#next - 1]!;
    this.#writing = false;
    const callback = write.callback;
    write.callback = undefined;
    this.#pump();
    callback?.();
  }
}
