/**
 * Every error podpool raises is a `PodpoolError` with a stable `code` to branch on; the message
 * says what happened and what to do about it. The original failure, if any, is in `cause`.
 */

/** The codes a `PodpoolError` can carry. */
export const ErrorCode = {
  /** An option passed to a factory was missing, of the wrong type, out of range or unknown (misspelled). */
  INVALID_OPTION: 'PODPOOL_INVALID_OPTION',
  /**
   * An argument that is not an option was missing or of the wrong kind: a message's id or body,
   * a datagram's sender or sequence, the server or handler given to `answerRequests`.
   */
  INVALID_ARGUMENT: 'PODPOOL_INVALID_ARGUMENT',
  /** An endpoint (address, port) is not valid. */
  INVALID_ENDPOINT: 'PODPOOL_INVALID_ENDPOINT',
  /** No member is ready to take the call. */
  NO_ENDPOINTS: 'PODPOOL_NO_ENDPOINTS',
  /** The balancer needs a key (`use(fn, { key })`) and none was given. */
  KEY_REQUIRED: 'PODPOOL_KEY_REQUIRED',
  /** A call, a broadcast delivery or a wait took longer than its `timeoutMs`. */
  TIMEOUT: 'PODPOOL_TIMEOUT',
  /** The caller's `AbortSignal` fired. */
  ABORTED: 'PODPOOL_ABORTED',
  /** The pool (or source, or transport) was closed. */
  CLOSED: 'PODPOOL_CLOSED',
  /**
   * A pod's connection can't take calls now: a broadcast could not reach it, or (a `state`
   * event's error) its member left the picks until its connection is back.
   */
  NOT_CONNECTED: 'PODPOOL_NOT_CONNECTED',
  /** Opening a connection to a pod failed. */
  CONNECT_FAILED: 'PODPOOL_CONNECT_FAILED',
  /** A connection to a pod was lost. */
  CONNECTION_LOST: 'PODPOOL_CONNECTION_LOST',
  /** A member was ejected as an outlier after failing too often in a row. */
  EJECTED: 'PODPOOL_EJECTED',
  /** Discovery failed (DNS error, API server refused the request, watch broke). */
  DISCOVERY_FAILED: 'PODPOOL_DISCOVERY_FAILED',
  /**
   * Discovery was told the name it asks for does not exist (DNS NXDOMAIN): a wrong Service name,
   * namespace or port name, a name that is not fully qualified, or a headless Service with no
   * ready pod (cluster DNS answers NXDOMAIN for that too).
   */
  NAME_NOT_FOUND: 'PODPOOL_NAME_NOT_FOUND',
  /** A message was refused by a receiver (bad signature, stale, replayed). */
  MESSAGE_REJECTED: 'PODPOOL_MESSAGE_REJECTED',
  /** A write would exceed a buffer's high-water mark. */
  BACKPRESSURE: 'PODPOOL_BACKPRESSURE',
  /** The pool's transport can't do what was asked (`begin()` on a transport that lends a connection per call). */
  NOT_SUPPORTED: 'PODPOOL_NOT_SUPPORTED',
  /** podpool was loaded on a Node.js older than its `engines` field allows. */
  UNSUPPORTED_NODE: 'PODPOOL_UNSUPPORTED_NODE',
  /**
   * A request `podpool bench --cluster` made of the Kubernetes API was refused or failed (RBAC,
   * an object that exists, an API server out of reach): the message names the verb, the object
   * and the API server's answer.
   */
  CLUSTER_REQUEST_FAILED: 'PODPOOL_CLUSTER_REQUEST_FAILED',
} as const;

/** One of the values of {@link ErrorCode}. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * The base of every error podpool throws; branch on `code` (or on the subclass, one per code),
 * never on the message. `new PodpoolError(code, …)` still makes one with any code.
 */
export class PodpoolError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PodpoolError';
    this.code = code;
  }

  /**
   * `{ name, code, message }`: an Error's message is not enumerable, so `JSON.stringify` (of
   * `stats()`, in a log line) would show `{ code, name }` without saying what happened. The
   * cause stays out: it may be anything, even something that does not serialise.
   */
  toJSON(): { name: string; code: ErrorCode; message: string } {
    return { name: this.name, code: this.code, message: this.message };
  }
}

/** The options every subclass takes: the original failure, if any. */
type Options = { cause?: unknown };

// One subclass per code, undici's pattern: `instanceof` and `code` say the same thing, and the
// `name` in a stack trace says which failure it was.

/** `PODPOOL_INVALID_OPTION`: an option was missing, of the wrong type, out of range or unknown. */
export class InvalidOptionError extends PodpoolError {
  declare readonly code: typeof ErrorCode.INVALID_OPTION;
  constructor(message: string, options?: Options) {
    super(ErrorCode.INVALID_OPTION, message, options);
    this.name = 'InvalidOptionError';
  }
}

/** `PODPOOL_INVALID_ARGUMENT`: an argument that is not an option was missing or of the wrong kind. */
export class InvalidArgumentError extends PodpoolError {
  declare readonly code: typeof ErrorCode.INVALID_ARGUMENT;
  constructor(message: string, options?: Options) {
    super(ErrorCode.INVALID_ARGUMENT, message, options);
    this.name = 'InvalidArgumentError';
  }
}

/** `PODPOOL_INVALID_ENDPOINT`: an endpoint's address or port is not valid. */
export class InvalidEndpointError extends PodpoolError {
  declare readonly code: typeof ErrorCode.INVALID_ENDPOINT;
  constructor(message: string, options?: Options) {
    super(ErrorCode.INVALID_ENDPOINT, message, options);
    this.name = 'InvalidEndpointError';
  }
}

/** `PODPOOL_NO_ENDPOINTS`: no member is ready to take the call. */
export class NoEndpointsError extends PodpoolError {
  declare readonly code: typeof ErrorCode.NO_ENDPOINTS;
  constructor(message: string, options?: Options) {
    super(ErrorCode.NO_ENDPOINTS, message, options);
    this.name = 'NoEndpointsError';
  }
}

/** `PODPOOL_KEY_REQUIRED`: the balancer routes by key and none was given. */
export class KeyRequiredError extends PodpoolError {
  declare readonly code: typeof ErrorCode.KEY_REQUIRED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.KEY_REQUIRED, message, options);
    this.name = 'KeyRequiredError';
  }
}

/** `PODPOOL_TIMEOUT`: a call, a delivery or a wait took longer than its limit. */
export class TimeoutError extends PodpoolError {
  declare readonly code: typeof ErrorCode.TIMEOUT;
  constructor(message: string, options?: Options) {
    super(ErrorCode.TIMEOUT, message, options);
    this.name = 'TimeoutError';
  }
}

/** `PODPOOL_ABORTED`: the caller's `AbortSignal` fired; its reason is the `cause`. */
export class AbortedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.ABORTED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.ABORTED, message, options);
    this.name = 'AbortedError';
  }
}

/** `PODPOOL_CLOSED`: the pool, source or transport was closed. */
export class ClosedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.CLOSED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.CLOSED, message, options);
    this.name = 'ClosedError';
  }
}

/** `PODPOOL_NOT_CONNECTED`: a pod's connection can't take calls now (a broadcast's failure, or why a member left the picks). */
export class NotConnectedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.NOT_CONNECTED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.NOT_CONNECTED, message, options);
    this.name = 'NotConnectedError';
  }
}

/** `PODPOOL_CONNECT_FAILED`: opening a connection to a pod failed. */
export class ConnectFailedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.CONNECT_FAILED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.CONNECT_FAILED, message, options);
    this.name = 'ConnectFailedError';
  }
}

/** `PODPOOL_CONNECTION_LOST`: a connection to a pod was lost. */
export class ConnectionLostError extends PodpoolError {
  declare readonly code: typeof ErrorCode.CONNECTION_LOST;
  constructor(message: string, options?: Options) {
    super(ErrorCode.CONNECTION_LOST, message, options);
    this.name = 'ConnectionLostError';
  }
}

/** `PODPOOL_EJECTED`: a member was ejected as an outlier. */
export class EjectedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.EJECTED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.EJECTED, message, options);
    this.name = 'EjectedError';
  }
}

/** `PODPOOL_DISCOVERY_FAILED`: a DNS error, a refused API request, a broken watch. */
export class DiscoveryFailedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.DISCOVERY_FAILED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.DISCOVERY_FAILED, message, options);
    this.name = 'DiscoveryFailedError';
  }
}

/** `PODPOOL_NAME_NOT_FOUND`: discovery was told the name it asks for does not exist. */
export class NameNotFoundError extends PodpoolError {
  declare readonly code: typeof ErrorCode.NAME_NOT_FOUND;
  constructor(message: string, options?: Options) {
    super(ErrorCode.NAME_NOT_FOUND, message, options);
    this.name = 'NameNotFoundError';
  }
}

/**
 * Why a message was refused: by `verifyMessage` (`malformed`, `signature`, `stale`, `future`,
 * `replay`, or `overload`: its memory of accepted ids is full of ones it must keep), or by the
 * pod's handler of a WebSocket request (`handler`).
 */
export type RejectReason = 'malformed' | 'signature' | 'stale' | 'future' | 'replay' | 'overload' | 'handler';

/** `PODPOOL_MESSAGE_REJECTED`, with the `reason` to branch on (`replay` is often harmless: a retry). */
export class MessageRejectedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.MESSAGE_REJECTED;
  readonly reason: RejectReason;

  constructor(reason: RejectReason, message: string, options?: Options) {
    super(ErrorCode.MESSAGE_REJECTED, message, options);
    this.name = 'MessageRejectedError';
    this.reason = reason;
  }
}

/** `PODPOOL_BACKPRESSURE`: a write would exceed a buffer's high-water mark. */
export class BackpressureError extends PodpoolError {
  declare readonly code: typeof ErrorCode.BACKPRESSURE;
  constructor(message: string, options?: Options) {
    super(ErrorCode.BACKPRESSURE, message, options);
    this.name = 'BackpressureError';
  }
}

/** `PODPOOL_NOT_SUPPORTED`: the pool's transport can't do what was asked. */
export class NotSupportedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.NOT_SUPPORTED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.NOT_SUPPORTED, message, options);
    this.name = 'NotSupportedError';
  }
}

/** `PODPOOL_UNSUPPORTED_NODE`: podpool was loaded on a Node.js older than it supports. */
export class UnsupportedNodeError extends PodpoolError {
  declare readonly code: typeof ErrorCode.UNSUPPORTED_NODE;
  constructor(message: string, options?: Options) {
    super(ErrorCode.UNSUPPORTED_NODE, message, options);
    this.name = 'UnsupportedNodeError';
  }
}

/** `PODPOOL_CLUSTER_REQUEST_FAILED`: a request of `podpool bench --cluster` to the Kubernetes API failed. */
export class ClusterRequestFailedError extends PodpoolError {
  declare readonly code: typeof ErrorCode.CLUSTER_REQUEST_FAILED;
  constructor(message: string, options?: Options) {
    super(ErrorCode.CLUSTER_REQUEST_FAILED, message, options);
    this.name = 'ClusterRequestFailedError';
  }
}

/** The `PODPOOL_ABORTED` error for a signal, keeping the signal's reason as the cause. */
export function abortError(signal: AbortSignal, what: string): AbortedError {
  return new AbortedError(`${what} was aborted`, { cause: signal.reason });
}
