/**
 * One gRPC call through the pool, as grpcChannel() creates it: grpc-js's call interface on top of
 * a pod picked per call, sent again on another pod when it never reached one or its method's
 * retry policy allows.
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
import type { RetryGate } from '../call/retry.ts';
import type { Endpoint } from '../endpoint.ts';
import { PREVIOUS_ATTEMPTS, neverReachedPod, pushbackMs, type MethodRetry } from './grpc-retry.ts';
import { Replay } from './grpc-retry-replay.ts';

export type GrpcCall = ReturnType<ChannelInterface['createCall']>;
export type CreateCallArgs = Parameters<ChannelInterface['createCall']>;
type MessageContext = Parameters<GrpcCall['sendMessageWithContext']>[0];

/** What a call needs of the channel: a pod now, or a pod once one is ready, and when to retry. */
export interface Router<C> {
  /** The call's affinity key, read once when it starts. */
  key(method: string, metadata: Metadata): string | undefined;
  /** Picks a pod (another than `avoid` when one is ready); throws `PODPOOL_NO_ENDPOINTS` when none is. */
  begin(key: string | undefined, avoid: Endpoint | undefined): PoolCall<C>;
  /** Waits for a ready pod, as grpc-js queues a call while its channel connects. */
  wait(key: string | undefined, options: { signal: AbortSignal; failFast: boolean; avoid: Endpoint | undefined }): Promise<PoolCall<C>>;
  /** The pool's connectivity, for messages. */
  readonly connectivity: string;
  /** The pool's retry policy and budget. */
  readonly retry: RetryGate;
  /** The retry policy of a method once a call may have reached a pod; undefined: never resent then. */
  policyFor(method: string): MethodRetry | undefined;
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
 *
 * Each attempt is one `begin()`/`end()` on the pool. Until the call is committed (response
 * headers arrived, or its messages passed 256 KiB) it keeps what the caller sent (metadata, and
 * in a {@link Replay} messages, half-close, read) and can replay it on another pod: at once and
 * free when the attempt never reached its pod, after a backoff and one from the retry budget
 * when its method's policy says the status is retryable.
 */
export class PoolChannelCall<C extends Client> implements GrpcCall, InterceptingListener {
  readonly #router: Router<C>;
  readonly #args: CreateCallArgs;
  #listener: InterceptingListener | undefined = undefined;
  #metadata: Metadata | undefined = undefined;
  #key: string | undefined = undefined;
  #credentials: CallCredentials | undefined = undefined;
  /** The attempt running now: its call on the pod's channel, and its place in the pool. */
  #inner: GrpcCall | undefined = undefined;
  #pod: PoolCall<C> | undefined = undefined;
  /** The latest attempt's call, running or ended: what getPeer() and the like report. */
  #latest: GrpcCall | undefined = undefined;
  /** Retries of attempts that never reached a pod, and of attempts that may have. */
  #transparentRetries = 0;
  #policyRetries = 0;
  /** The policy retries since the backoff last started over (a pushback restarts it, A6). */
  #backoffStep = 0;
  #cancelled = false;
  readonly #replay = new Replay();
  /** The last attempt's status, while the call waits to be sent again. */
  #lastStatus: StatusObject | undefined = undefined;
  /** Set when the call ended without an attempt running (never reached a pod, cancelled between attempts). */
  #failure: StatusObject | undefined = undefined;
  /** Ends the wait for a ready pod (deadline, cancel), while the call waits for one. */
  #waiting: AbortController | undefined = undefined;
  #deadlineTimer: NodeJS.Timeout | undefined = undefined;
  #backoffTimer: NodeJS.Timeout | undefined = undefined;

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
    this.#metadata = metadata;
    try {
      this.#key = this.#router.key(this.#args[0], metadata);
    } catch (error) {
      this.#fail(error);
      return;
    }
    this.#begin(undefined);
  }

  /** Starts an attempt on a pod picked now, else waits for one. */
  #begin(avoid: Endpoint | undefined): void {
    let call: PoolCall<C>;
    try {
      call = this.#router.begin(this.#key, avoid);
    } catch (error) {
      if (error instanceof PodpoolError && error.code === ErrorCode.NO_ENDPOINTS) this.#wait(avoid);
      else this.#fail(error);
      return;
    }
    this.#startOn(call);
  }

  /**
   * No pod is ready: wait for one, as grpc-js queues a call for a pick. The deadline ends the
   * wait with DEADLINE_EXCEEDED; without `waitForReady` the wait also ends, UNAVAILABLE, as soon
   * as the pool is failing (grpc-js's TRANSIENT_FAILURE), and a call made then fails at once.
   */
  #wait(avoid: Endpoint | undefined): void {
    const ms = this.#remainingMs();
    if (ms <= 0) {
      this.#deadlineExceeded();
      return;
    }
    const waiting = new AbortController();
    this.#waiting = waiting;
    if (ms !== Infinity) this.#deadlineTimer = setTimeout(() => this.#deadlineExceeded(), ms);
    const failFast = this.#metadata!.getOptions().waitForReady !== true;
    this.#router.wait(this.#key, { signal: waiting.signal, failFast, avoid }).then(
      (call) => {
        this.#stopWaiting();
        // Cancelled or past its deadline as the pod became ready: the status is out already.
        if (this.#failure !== undefined) call.end(new AbortedError('the call ended before it reached the pod'));
        else this.#startOn(call);
      },
      (error: unknown) => {
        this.#stopWaiting();
        if (this.#failure !== undefined) return;
        // A retry that finds no pod ends as its last attempt did: that says more than "no pod".
        const last = this.#lastStatus;
        if (last === undefined) this.#fail(error);
        else this.#endWith(last);
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

  /** Ends a call that has no attempt running with `failure`, and stops its wait if it waits. */
  #endWaiting(failure: StatusObject): void {
    if (this.#failure !== undefined) return;
    const waiting = this.#waiting;
    this.#stopWaiting();
    waiting?.abort(new AbortedError(failure.details));
    this.#endWith(failure);
  }

  /** ms left before the call's deadline (Infinity without one). */
  #remainingMs(): number {
    const deadline = this.#args[1];
    return deadline instanceof Date ? deadline.getTime() - Date.now() : deadline === Infinity ? Infinity : deadline - Date.now();
  }

  #startOn(call: PoolCall<C>): void {
    let inner: GrpcCall;
    try {
      inner = call.client.getChannel().createCall(...this.#args);
      if (this.#credentials !== undefined) inner.setCredentials(this.#credentials);
    } catch (error) {
      // The pod's channel was closed as the call began: nothing was sent.
      const lost = new ConnectionLostError(`the channel to ${call.endpoint.key} is closed`, { cause: error });
      call.end(lost);
      if (!this.#retryUnsent(call.endpoint)) this.#fail(lost);
      return;
    }
    this.#pod = call;
    this.#inner = inner;
    this.#latest = inner;
    let metadata = this.#metadata!;
    if (this.#policyRetries > 0) {
      metadata = metadata.clone();
      metadata.set(PREVIOUS_ATTEMPTS, String(this.#policyRetries));
    }
    inner.start(metadata, this);
    this.#replay.attach(inner);
  }

  onReceiveMetadata(metadata: Metadata): void {
    this.#replay.commit();
    if (this.#policyRetries > 0) metadata.set(PREVIOUS_ATTEMPTS, String(this.#policyRetries));
    this.#listener!.onReceiveMetadata(metadata);
  }

  onReceiveMessage(message: unknown): void {
    this.#listener!.onReceiveMessage(message);
  }

  onReceiveStatus(received: StatusObject): void {
    const pod = this.#pod!;
    const inner = this.#inner!;
    // The pool hears first, so whoever waits on the status sees the call no longer in flight.
    pod.end(received.code === status.OK ? undefined : statusError(received));
    this.#inner = undefined;
    this.#pod = undefined;
    this.#replay.detach();
    if (received.code !== status.OK && this.#retry(received, inner, pod)) return;
    if (this.#policyRetries > 0 && !this.#replay.committed) received.metadata.set(PREVIOUS_ATTEMPTS, String(this.#policyRetries));
    this.#release();
    this.#listener!.onReceiveStatus(received);
  }

  /** Whether the failed attempt is sent again (and then it is, now or after a backoff). */
  #retry(ended: StatusObject, inner: GrpcCall, pod: PoolCall<C>): boolean {
    if (this.#cancelled || this.#replay.committed) return false;
    if (neverReachedPod(ended, inner.getPeer(), pod.client.getChannel().getTarget())) {
      this.#lastStatus = ended;
      return this.#retryUnsent(pod.endpoint);
    }
    const gate = this.#router.retry;
    const policy = this.#router.policyFor(this.#args[0]);
    if (gate.policy.retries === 0 || policy === undefined || !policy.codes.has(ended.code)) return false;
    if (this.#policyRetries + 1 >= policy.maxAttempts) return false;
    const pushback = pushbackMs(ended.metadata);
    if (pushback === false) return false;
    if (pushback !== undefined) this.#backoffStep = 0;
    const delay = pushback ?? gate.delayMs(this.#backoffStep + 1, policy.delays);
    if (delay >= this.#remainingMs() || !gate.withdraw()) return false;
    if (pushback === undefined) this.#backoffStep++;
    this.#policyRetries++;
    this.#lastStatus = ended;
    const avoid = pod.endpoint;
    this.#backoffTimer = setTimeout(() => {
      this.#backoffTimer = undefined;
      this.#begin(avoid);
    }, delay);
    return true;
  }

  /**
   * Sends again, on another pod and at once, a call whose attempt on `from` never reached it:
   * it cost that pod nothing, so the budget is not asked; only the pool's `retry.retries` and
   * the deadline bound it.
   */
  #retryUnsent(from: Endpoint): boolean {
    if (this.#cancelled || this.#replay.committed) return false;
    if (this.#transparentRetries >= this.#router.retry.policy.retries || this.#remainingMs() <= 0) return false;
    this.#transparentRetries++;
    this.#begin(from);
    return true;
  }

  sendMessageWithContext(context: MessageContext, message: Buffer): void {
    if (this.#failure !== undefined) {
      process.nextTick(() => context.callback?.());
      return;
    }
    this.#replay.write(context, message);
  }

  startRead(): void {
    this.#replay.startRead();
  }

  halfClose(): void {
    this.#replay.halfClose();
  }

  cancelWithStatus(code: status, details: string): void {
    this.#cancelled = true;
    if (this.#inner !== undefined) {
      this.#inner.cancelWithStatus(code, details);
    } else if (this.#waiting !== undefined) {
      this.#endWaiting({ code, details, metadata: new Metadata() });
    } else if (this.#backoffTimer !== undefined) {
      clearTimeout(this.#backoffTimer);
      this.#backoffTimer = undefined;
      this.#endWith({ code, details, metadata: new Metadata() });
    } else if (this.#failure === undefined && this.#listener === undefined) {
      // Cancelled before it started: start() reports it.
      this.#failure = { code, details, metadata: new Metadata() };
    }
  }

  getPeer(): string {
    return this.#latest?.getPeer() ?? '';
  }

  getCallNumber(): number {
    return this.#latest?.getCallNumber() ?? 0;
  }

  setCredentials(credentials: CallCredentials): void {
    this.#credentials = credentials;
    this.#inner?.setCredentials(credentials);
  }

  // Typed through grpc-js's public Call interface: the inferred type names a module path of
  // grpc-js's build that a consumer's declarations can't resolve.
  getAuthContext(): ReturnType<GrpcCall['getAuthContext']> {
    return this.#latest?.getAuthContext() ?? null;
  }

  /** No pod could take the call: it ends UNAVAILABLE, the details saying why. */
  #fail(error: unknown): void {
    const metadata = new Metadata();
    if (error instanceof PodpoolError) metadata.set('podpool-error-code', error.code);
    const details = error instanceof Error ? error.message : String(error);
    this.#endWith({ code: status.UNAVAILABLE, details: `podpool: ${details}`, metadata });
  }

  /** Ends, with `failure`, a call that has no attempt running. */
  #endWith(failure: StatusObject): void {
    this.#failure = failure;
    this.#release();
    this.#deliverFailure();
  }

  #deliverFailure(): void {
    const failure = this.#failure!;
    // Never from inside start(): the client has not finished setting the call up yet.
    process.nextTick(() => this.#listener!.onReceiveStatus(failure));
  }

  /** The call is over: what was kept for a retry goes. */
  #release(): void {
    this.#replay.release();
    this.#lastStatus = undefined;
  }
}
