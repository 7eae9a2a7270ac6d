import type { Endpoint } from '../endpoint.ts';

/**
 * One protocol: how to open a connection to one pod, share or lend it to calls, and close it.
 * The pool owns the life cycle (when to connect, reconnect with backoff, drain and close); the
 * transport only knows the wire.
 */
export interface Transport<C> {
  /** `http`, `grpc`, `websocket`, `exclusive`, `udp`. */
  readonly name: string;
  /**
   * Opens one connection to `endpoint` and resolves once it can carry calls; rejects when it
   * can't (the pool retries with backoff). Must stop and reject when `context.signal` aborts.
   */
  connect(endpoint: Endpoint, context: ConnectContext): Promise<Connection<C>>;
  /**
   * Whether an error thrown by a call through this transport says the pod failed (it counts
   * toward outlier ejection) rather than the request (a 404, an application error). When
   * absent, every error counts.
   */
  isPodFailure?(error: unknown): boolean;
  /**
   * Whether a value a call returned says the pod failed: an HTTP response with a 5xx or 429
   * status, which undici returns rather than throws. `use(fn, { failedResult })` overrides it per
   * call. When absent, a returned value is an answer.
   */
  isFailedResult?(result: unknown): boolean;
  /**
   * Whether a call that threw `error` never reached the pod: refused at connect, queued on a
   * connection that closed before it was written, made on a channel that was not connected.
   * Such a call is sent again on another pod whatever its idempotency (grpc-js calls this a
   * transparent retry). When absent, every error may have reached the pod.
   */
  wasNotSent?(error: unknown): boolean;
  /**
   * Frees what a returned value holds when the pool drops it to retry the call (an undici
   * response's body, so its socket can carry the next request). When absent, nothing is freed.
   */
  discard?(result: unknown): void;
}

/** What the pool gives a transport when it asks for a connection. */
export interface ConnectContext {
  /** Aborted when the pool no longer wants this connection (endpoint gone, pool closed). */
  readonly signal: AbortSignal;
  /**
   * The transport calls this once, after `connect` resolved, when the connection is lost for
   * good (socket closed, heartbeat missed). The pool stops picking the member, closes the
   * connection and reconnects with backoff.
   */
  lost(error: Error): void;
  /**
   * The transport calls this when the connection can take no new calls for now but may again
   * without the pool's help: a gRPC channel out of READY while it reconnects in place (a GOAWAY,
   * a dropped connection), an HTTP pod that closed its last socket while a new one opens. The
   * pool stops picking the member; calls in flight go on, and a broadcast still reaches it.
   * Absent when whoever connects does not pick (a test calling `connect()` itself).
   */
  unavailable?(reason: Error): void;
  /** The connection can take new calls again, after `unavailable`. */
  available?(): void;
}

/** A connection to one pod. */
export interface Connection<C> {
  /**
   * What `use()` and `broadcast()` callbacks receive when the connection is shared by
   * concurrent calls (an HTTP/2 channel, a WebSocket, a pipelined keep-alive socket).
   */
  readonly client?: C;
  /**
   * For connections that serve one caller at a time: lends one for a call, instead of `client`.
   * Must honour `signal` and must not wait forever.
   */
  acquire?(signal: AbortSignal | undefined): Promise<C>;
  /** Gives back what `acquire` lent; `failed` is true when the call threw. */
  release?(client: C, failed: boolean): void;
  /** Closes it; resolves when its sockets and timers are gone. Safe to call twice. */
  close(): Promise<void>;
}
