/**
 * One gRPC call through the pool, as grpcChannel() creates it: grpc-js's call interface on top of
 * a pod picked per call.
 */
import {
  Client,
  Metadata,
  status,
  type CallCredentials,
  type ChannelInterface,
  type InterceptingListener,
  type StatusObject,
} from '@grpc/grpc-js';
import { AbortedError, ConnectionLostError, ErrorCode, PodpoolError } from '../errors.ts';
import type { PoolCall } from '../call/call.ts';

export type GrpcCall = ReturnType<ChannelInterface['createCall']>;
export type CreateCallArgs = Parameters<ChannelInterface['createCall']>;
type MessageContext = Parameters<GrpcCall['sendMessageWithContext']>[0];

/** What a call needs of the channel: a pod now, or a pod once one is ready. */
export interface Router<C> {
  /** Picks a pod; throws `PODPOOL_NO_ENDPOINTS` when none is ready. */
  begin(method: string, metadata: Metadata): PoolCall<C>;
  /** Waits for a ready pod, as grpc-js queues a call while its channel connects. */
  wait(method: string, metadata: Metadata, options: { signal: AbortSignal; failFast: boolean }): Promise<PoolCall<C>>;
  /** The pool's connectivity, for messages. */
  readonly connectivity: string;
}

/** A failed call's status as the error the pool records (shaped like grpc-js's `ServiceError`). */
function statusError({ code, details, metadata }: StatusObject): Error {
  return Object.assign(new Error(`${code} ${status[code] ?? 'UNKNOWN'}: ${details}`), { code, details, metadata });
}

/**
 * One call through the pool. The pod is picked when the call starts (its metadata may carry the
 * affinity key), the call is created on that pod's channel, and the pool counts it in flight
 * until its status arrives, so a stream stays on its pod for its whole life and counts for as
 * long as it is open. A call that starts while no pod is ready waits for one as grpc-js queues
 * it: up to its deadline, and without `waitForReady` only while the pool is connecting.
 */
export class PoolChannelCall<C extends Client> implements GrpcCall, InterceptingListener {
  readonly #router: Router<C>;
  readonly #args: CreateCallArgs;
  #inner: GrpcCall | undefined = undefined;
  #listener: InterceptingListener | undefined = undefined;
  #end: ((error?: unknown) => void) | undefined = undefined;
  #credentials: CallCredentials | undefined = undefined;
  /** Set when the call failed (or was cancelled) before it reached a pod. */
  #failure: StatusObject | undefined = undefined;
  /** Operations issued before the call reached a pod, replayed on the pod's call. */
  #pending: ((call: GrpcCall) => void)[] | undefined = undefined;
  /** Ends the wait for a ready pod (deadline, cancel), while the call waits for one. */
  #waiting: AbortController | undefined = undefined;
  #deadlineTimer: NodeJS.Timeout | undefined = undefined;

  constructor(router: Router<C>, args: CreateCallArgs) {
    this.#router = router;
    this.#args = args;
  }

  start(metadata: Metadata, listener: InterceptingListener): void {
    this.#listener = listener;
    if (this.#failure !== undefined) {
      this.#deliverFailure();
      return;
    }
    let call: PoolCall<C>;
    try {
      call = this.#router.begin(this.#args[0], metadata);
    } catch (error) {
      if (error instanceof PodpoolError && error.code === ErrorCode.NO_ENDPOINTS) this.#wait(metadata);
      else this.#fail(error);
      return;
    }
    this.#startOn(call, metadata);
  }

  /**
   * No pod is ready: wait for one, as grpc-js queues a call for a pick. The deadline ends the
   * wait with DEADLINE_EXCEEDED; without `waitForReady` the wait also ends, UNAVAILABLE, as soon
   * as the pool is failing (grpc-js's TRANSIENT_FAILURE), and a call made then fails at once.
   */
  #wait(metadata: Metadata): void {
    const deadline = this.#args[1];
    const ms = deadline instanceof Date ? deadline.getTime() - Date.now() : deadline === Infinity ? Infinity : deadline - Date.now();
    if (ms <= 0) {
      this.#deadlineExceeded();
      return;
    }
    const waiting = new AbortController();
    this.#waiting = waiting;
    if (ms !== Infinity) this.#deadlineTimer = setTimeout(() => this.#deadlineExceeded(), ms);
    const failFast = metadata.getOptions().waitForReady !== true;
    this.#router.wait(this.#args[0], metadata, { signal: waiting.signal, failFast }).then(
      (call) => {
        this.#stopWaiting();
        // Cancelled or past its deadline as the pod became ready: the status is out already.
        if (this.#failure !== undefined) call.end(new AbortedError('the call ended before it reached the pod'));
        else this.#startOn(call, metadata);
      },
      (error: unknown) => {
        this.#stopWaiting();
        if (this.#failure === undefined) this.#fail(error);
      },
    );
  }

  #stopWaiting(): void {
    clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = undefined;
    this.#waiting = undefined;
  }

  #deadlineExceeded(): void {
    const metadata = new Metadata();
    metadata.set('podpool-error-code', ErrorCode.NO_ENDPOINTS);
    this.#endWaiting({
      code: status.DEADLINE_EXCEEDED,
      details: `podpool: deadline exceeded while waiting for a ready pod (the pool is ${this.#router.connectivity})`,
      metadata,
    });
  }

  /** Ends a call that never reached a pod with `failure`, and stops its wait if it waits. */
  #endWaiting(failure: StatusObject): void {
    if (this.#failure !== undefined) return;
    this.#failure = failure;
    const waiting = this.#waiting;
    this.#stopWaiting();
    waiting?.abort(new AbortedError(failure.details));
    this.#deliverFailure();
  }

  #startOn(call: PoolCall<C>, metadata: Metadata): void {
    let inner: GrpcCall;
    try {
      inner = call.client.getChannel().createCall(...this.#args);
      if (this.#credentials !== undefined) inner.setCredentials(this.#credentials);
    } catch (error) {
      const lost = new ConnectionLostError(`the channel to ${call.endpoint.key} is closed`, { cause: error });
      call.end(lost);
      this.#fail(lost);
      return;
    }
    this.#end = call.end;
    this.#inner = inner;
    inner.start(metadata, this);
    const pending = this.#pending;
    this.#pending = undefined;
    if (pending !== undefined) for (const operation of pending) operation(inner);
  }

  onReceiveMetadata(metadata: Metadata): void {
    this.#listener!.onReceiveMetadata(metadata);
  }

  onReceiveMessage(message: unknown): void {
    this.#listener!.onReceiveMessage(message);
  }

  onReceiveStatus(received: StatusObject): void {
    // The pool hears first, so whoever waits on the status sees the call no longer in flight.
    this.#end!(received.code === status.OK ? undefined : statusError(received));
    this.#listener!.onReceiveStatus(received);
  }

  sendMessageWithContext(context: MessageContext, message: Buffer): void {
    if (this.#inner !== undefined) this.#inner.sendMessageWithContext(context, message);
    else if (this.#failure !== undefined) process.nextTick(() => context.callback?.());
    else (this.#pending ??= []).push((call) => call.sendMessageWithContext(context, message));
  }

  startRead(): void {
    if (this.#inner !== undefined) this.#inner.startRead();
    else if (this.#failure === undefined) (this.#pending ??= []).push((call) => call.startRead());
  }

  halfClose(): void {
    if (this.#inner !== undefined) this.#inner.halfClose();
    else if (this.#failure === undefined) (this.#pending ??= []).push((call) => call.halfClose());
  }

  cancelWithStatus(code: status, details: string): void {
    if (this.#inner !== undefined) this.#inner.cancelWithStatus(code, details);
    else if (this.#waiting !== undefined) this.#endWaiting({ code, details, metadata: new Metadata() });
    else if (this.#failure === undefined) this.#failure = { code, details, metadata: new Metadata() };
  }

  getPeer(): string {
    return this.#inner?.getPeer() ?? '';
  }

  getCallNumber(): number {
    return this.#inner?.getCallNumber() ?? 0;
  }

  setCredentials(credentials: CallCredentials): void {
    if (this.#inner !== undefined) this.#inner.setCredentials(credentials);
    else this.#credentials = credentials;
  }

  // Typed through grpc-js's public Call interface: the inferred type names a module path of
  // grpc-js's build that a consumer's declarations can't resolve.
  getAuthContext(): ReturnType<GrpcCall['getAuthContext']> {
    return this.#inner?.getAuthContext() ?? null;
  }

  /** No pod could take the call: it ends UNAVAILABLE, the details saying why. */
  #fail(error: unknown): void {
    const metadata = new Metadata();
    if (error instanceof PodpoolError) metadata.set('podpool-error-code', error.code);
    const details = error instanceof Error ? error.message : String(error);
    this.#failure = { code: status.UNAVAILABLE, details: `podpool: ${details}`, metadata };
    this.#deliverFailure();
  }

  #deliverFailure(): void {
    const failure = this.#failure!;
    // Never from inside start(): the client has not finished setting the call up yet.
    process.nextTick(() => this.#listener!.onReceiveStatus(failure));
  }
}

/**
 * A grpc-js `Channel` that sends each call to a pod the pool picks, for a generated client's
 * `channelOverride`: `new EchoClient('podpool', credentials.createInsecure(), { channelOverride:
 * grpcChannel(pool) })`. Unary calls and streams of every kind work; a stream stays on its pod
 * for its whole life, and the pool counts it in flight until its status arrives. UNAVAILABLE,
 * DEADLINE_EXCEEDED and INTERNAL count against the pod.
 *
 * A call made while no pod is ready behaves as on a grpc-js channel: it waits while the pool
 * is connecting (starting, or a pod reconnecting), up to its deadline (DEADLINE_EXCEEDED);
 * when the pool is failing (every pod's connect failed, or none is left) it fails at once with
 * UNAVAILABLE, unless it was made with `waitForReady` (`metadata.setOptions({ waitForReady:
 * true })`), which waits through failures too. A failed call's details carry the pool's message
 * and its trailers the `podpool-error-code`. Closing the channel (or the client) fails the calls
 * that wait and stops it taking calls; close the pool to close connections.
 */
