import { Client, Metadata, connectivityState, type ChannelInterface } from '@grpc/grpc-js';
import { ClosedError, PodpoolError } from '../errors.ts';
import { checkOptions, invalidOption, optionNames } from '../options.ts';
import type { AdapterPool } from '../pool/adapter-pool.ts';
import { PoolChannelCall, type CreateCallArgs, type GrpcCall, type Router } from './grpc-channel-call.ts';
import { idempotentRetry, methodRetries, type GrpcServiceConfig } from './grpc-retry.ts';

/**
 * A grpc-js channel's connectivity state. Named apart from podpool's own `grpcChannel()`, which
 * makes one: this is grpc-js's `ChannelInterface` vocabulary.
 */
type GrpcJsState = ReturnType<ChannelInterface['getConnectivityState']>;

type ChannelRef = ReturnType<ChannelInterface['getChannelzRef']>;

/** Options of {@link grpcChannel}. */
export interface GrpcChannelOptions {
  /**
   * The affinity key of a call, for `ringHash()`: read from the method or the call's metadata
   * (`(method, metadata) => metadata.get('tenant')[0]?.toString()`).
   */
  key?: (method: string, metadata: Metadata) => string | undefined;
  /**
   * Retry policies per method, in grpc-js's service-config shape (an object or its JSON):
   * `{ methodConfig: [{ name: [{ service: 'pkg.v1.Echo', method?: 'Unary' }], retryPolicy: {
   * maxAttempts: 3, initialBackoff: '0.1s', maxBackoff: '1s', backoffMultiplier: 2,
   * retryableStatusCodes: ['UNAVAILABLE'] } }] }`. A call of a method named, whose attempt ended
   * with a retryable code before any response header, is sent again on another pod after the
   * backoff (or the server's `grpc-retry-pushback-ms`), within its deadline and the pool's
   * retry budget. Without one, only calls that never reached a pod are sent again, and with the
   * pool's `retry: { idempotent: true }` also every UNAVAILABLE of a method no entry names.
   */
  serviceConfig?: GrpcServiceConfig | string;
}

const CHANNEL_OPTIONS = optionNames<GrpcChannelOptions>({ key: true, serviceConfig: true });

/** A `watchConnectivityState` caller. */
interface Watcher {
  readonly from: GrpcJsState;
  readonly callback: (error?: Error) => void;
  timer?: NodeJS.Timeout;
}

export class PoolChannel<C extends Client = Client> implements ChannelInterface {
  readonly #pool: AdapterPool<C>;
  readonly #target: string;
  readonly #router: Router<C>;
  readonly #watchers = new Set<Watcher>();
  readonly #onChange = (): void => this.#notify();
  /** Aborted when the channel closes: ends the waits of calls that wait for a pod. */
  readonly #closing = new AbortController();
  #closed = false;

  constructor(pool: AdapterPool<C>, options: GrpcChannelOptions = {}) {
    if (pool === null || typeof pool !== 'object' || typeof pool.begin !== 'function') {
      invalidOption('pool', 'a pool made with createPool({ transport: grpcTransport(…) })', pool);
    }
    checkOptions(options, CHANNEL_OPTIONS);
    const { key, serviceConfig } = options;
    if (key !== undefined && typeof key !== 'function') invalidOption('key', 'a function (method, metadata) => string | undefined', key);
    const { retry } = pool;
    // Idempotent calls may be sent twice: UNAVAILABLE is the code gRPC names for "try again".
    const retries = methodRetries(serviceConfig, retry.policy.idempotent ? idempotentRetry(retry.policy) : undefined);
    this.#pool = pool;
    this.#target = `podpool:${pool.sourceKind}`;
    const closing = this.#closing.signal;
    const closedError = (): PodpoolError => new ClosedError('the gRPC channel over the pool is closed');
    this.#router = {
      key: (method, metadata) => key?.(method, metadata),
      begin: (callKey, avoid) => {
        if (this.#closed) throw closedError();
        return pool.begin(callKey, avoid);
      },
      wait: (callKey, { signal, failFast, avoid }) => {
        if (this.#closed) return Promise.reject(closedError());
        return pool.beginWhenReady({ key: callKey, signal: AbortSignal.any([signal, closing]), failFast, avoid });
      },
      get connectivity() {
        return pool.connectivity;
      },
      retry,
      policyFor: (method) => retries.forPath(method),
    };
  }

  createCall(...args: CreateCallArgs): GrpcCall {
    return new PoolChannelCall(this.#router, args);
  }

  /**
   * The pool's connectivity as grpc-js names it: READY while a pod can take a call, CONNECTING
   * while the pool starts or a pod reconnects (calls wait), TRANSIENT_FAILURE while every pod is
   * failing (calls without `waitForReady` fail at once), SHUTDOWN once closed.
   */
  getConnectivityState(_tryToConnect?: boolean): GrpcJsState {
    if (this.#closed) return connectivityState.SHUTDOWN;
    switch (this.#pool.connectivity) {
      case 'ready':
        return connectivityState.READY;
      case 'connecting':
        return connectivityState.CONNECTING;
      case 'failing':
        return connectivityState.TRANSIENT_FAILURE;
      default:
        return connectivityState.SHUTDOWN;
    }
  }

  watchConnectivityState(currentState: GrpcJsState, deadline: Date | number, callback: (error?: Error) => void): void {
    if (this.#closed) throw new Error('Channel has been shut down');
    if (this.getConnectivityState() !== currentState) {
      process.nextTick(callback);
      return;
    }
    const watcher: Watcher = { from: currentState, callback };
    const ms = deadline instanceof Date ? deadline.getTime() - Date.now() : deadline === Infinity ? Infinity : deadline - Date.now();
    if (ms !== Infinity) {
      watcher.timer = setTimeout(() => {
        this.#unwatch(watcher);
        callback(new Error('Deadline passed without connectivity state change'));
      }, Math.max(0, ms));
    }
    if (this.#watchers.size === 0) this.#pool.on('connectivity', this.#onChange);
    this.#watchers.add(watcher);
  }

  getTarget(): string {
    return this.#target;
  }

  /** Not registered with channelz: the pods' own channels are. */
  getChannelzRef(): ChannelRef {
    return { kind: 'channel', id: 0, name: this.#target } as ChannelRef;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort(new ClosedError('the gRPC channel over the pool is closed'));
    this.#notify();
  }

  #notify(): void {
    const state = this.getConnectivityState();
    for (const watcher of [...this.#watchers]) {
      if (watcher.from === state) continue;
      this.#unwatch(watcher);
      watcher.callback();
    }
  }

  #unwatch(watcher: Watcher): void {
    clearTimeout(watcher.timer);
    this.#watchers.delete(watcher);
    if (this.#watchers.size === 0) this.#pool.off('connectivity', this.#onChange);
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
 *
 * Retries: a call that never reached its pod (the pod's channel was not connected or was closed
 * as the call began) is sent again at once on another pod, up to the pool's `retry.retries`
 * times, free of the retry budget (grpc-js's transparent retry, across pods). A call that may
 * have reached its pod is sent again only as `serviceConfig` (or the pool's `retry: {
 * idempotent: true }`) says, before any response header arrived and while its messages fit in
 * 256 KiB (gRFC A6's commit), each retry taking one from the pool's retry budget. Every attempt
 * is a call of its own in the pool's counts; the caller sees the status of the last one.
 */
export function grpcChannel<C extends Client>(pool: AdapterPool<C>, options?: GrpcChannelOptions): PoolChannel<C> {
  return new PoolChannel(pool, options);
}
