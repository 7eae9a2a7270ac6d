import { Client, Metadata, connectivityState, type ChannelInterface } from '@grpc/grpc-js';
import { ClosedError, PodpoolError } from '../errors.ts';
import { checkOptions, invalidOption, optionNames } from '../options.ts';
import type { AdapterPool } from '../pool/adapter-pool.ts';
import { PoolChannelCall, type CreateCallArgs, type GrpcCall, type Router } from './grpc-channel-call.ts';

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
}

const CHANNEL_OPTIONS = optionNames<GrpcChannelOptions>({ key: true });

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
    const { key } = options;
    if (key !== undefined && typeof key !== 'function') invalidOption('key', 'a function (method, metadata) => string | undefined', key);
    this.#pool = pool;
    this.#target = `podpool:${pool.sourceKind}`;
    const closing = this.#closing.signal;
    const closedError = (): PodpoolError => new ClosedError('the gRPC channel over the pool is closed');
    this.#router = {
      begin: (method, metadata) => {
        if (this.#closed) throw closedError();
        return pool.begin(key?.(method, metadata));
      },
      wait: (method, metadata, { signal, failFast }) => {
        if (this.#closed) return Promise.reject(closedError());
        return pool.beginWhenReady({ key: key?.(method, metadata), signal: AbortSignal.any([signal, closing]), failFast });
      },
      get connectivity() {
        return pool.connectivity;
      },
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
 * A grpc-js `Channel` over a gRPC pool, so one generated stub balances per call:
 * `new EchoClient('podpool', credentials.createInsecure(), { channelOverride: grpcChannel(pool) })`.
 */
export function grpcChannel<C extends Client>(pool: AdapterPool<C>, options?: GrpcChannelOptions): PoolChannel<C> {
  return new PoolChannel(pool, options);
}
