/**
 * Every error podpool raises is a `PodpoolError` with a stable `code` to branch on; the message
 * says what happened and what to do about it. The original failure, if any, is in `cause`.
 */

/** The codes a `PodpoolError` can carry. */
export const ErrorCode = {
  /** An option passed to a factory was missing, of the wrong type, out of range or unknown (misspelled). */
  INVALID_OPTION: 'PODPOOL_INVALID_OPTION',
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
  /** A broadcast could not reach a pod because its connection is down. */
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
} as const;

/** One of the values of {@link ErrorCode}. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The one error class podpool throws; branch on `code`, never on the message. */
export class PodpoolError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PodpoolError';
    this.code = code;
  }
}

/** The `PODPOOL_ABORTED` error for a signal, keeping the signal's reason as the cause. */
export function abortError(signal: AbortSignal, what: string): PodpoolError {
  return new PodpoolError(ErrorCode.ABORTED, `${what} was aborted`, { cause: signal.reason });
}
