/**
 * What podpool publishes on `node:diagnostics_channel`, as undici does: metrics, traces and APMs
 * subscribe here, and nothing in the call path knows about them. Publishing costs one
 * `hasSubscribers` check when nobody listens, and builds a message only when somebody does.
 *
 * Every message carries the `pool` it comes from, so a subscriber can keep to the pools it was
 * given. Call messages carry a `call` object that is the same in a call's start and its end or
 * error, so a tracer can key its span by it (one per attempt: a retry or a hedge is a new attempt
 * of the same logical call, with `attempt` counting from 1).
 */
import { channel } from 'node:diagnostics_channel';
import type { Endpoint, EndpointDiff, EndpointSet } from './endpoint.ts';
import type { PodpoolError } from './errors.ts';

/** The channel names, stable across versions: subscribe with `diagnostics_channel.subscribe(name, fn)`. */
export const CHANNEL_NAMES = Object.freeze({
  /** An attempt starts on a pod: {@link CallStartMessage}. */
  callStart: 'podpool:call:start',
  /** An attempt ended with an answer: {@link CallEndMessage}. */
  callEnd: 'podpool:call:end',
  /** An attempt ended without one (failed, abandoned for a hedge, given up): {@link CallErrorMessage}. */
  callError: 'podpool:call:error',
  /** A member moved from one state to another: {@link MemberStateMessage}. */
  memberState: 'podpool:member:state',
  /** Discovery delivered a snapshot: {@link SnapshotMessage}. */
  snapshot: 'podpool:discovery:snapshot',
  /** Discovery failed (the pool keeps its last good set): {@link DiscoveryErrorMessage}. */
  discoveryError: 'podpool:discovery:error',
});

/** Which of the pool's doors the call came through. */
export type CallKind = 'use' | 'broadcast' | 'adapter';

/** `podpool:call:start`. */
export interface CallStartMessage {
  /** The pool (a `Pool`); subscribers compare it by identity. */
  readonly pool: object;
  /** The same object in this attempt's end or error message. */
  readonly call: object;
  /**
   * The same object in every attempt of one logical call: a `use()`'s retries and hedges share
   * it (the first attempt's `call`, unless the call hedges). A broadcast's delivery retried by the
   * broadcast, and an adapter's retry, are calls of their own here (their `attempt` still counts).
   */
  readonly logicalCall: object;
  readonly kind: CallKind;
  /** The pod picked. */
  readonly endpoint: Endpoint;
  /**
   * 1 for the first attempt, then 2, 3… for retries and hedges of the same call; a broadcast
   * delivery's retry on its pod has the delivery's attempt; an adapter's retry (`begin()` with
   * `avoid`) is 2, however many came before.
   */
  readonly attempt: number;
  /** True for a hedge: an attempt sent while an earlier one still runs. */
  readonly hedge: boolean;
  /** The balancer's name (`round-robin`, `peak-ewma`, …). */
  readonly balancer: string;
}

/** `podpool:call:end`: the pod answered. */
export interface CallEndMessage extends CallStartMessage {
  readonly durationMs: number;
}

/**
 * `podpool:call:error`: the attempt ended without an answer, or with one that counts as the pod
 * failing (an HTTP 503 from the transport's `isFailedResult` or `use()`'s `failedResult`).
 * `outcome` says what it meant for the pod: `failed` counts against it; `answered` is a request
 * the pod refused (the transport's `isPodFailure` says so: its latency is as real as a success's);
 * `abandoned` (a hedge answered first) and `unrecorded` (the caller gave up, or the deadline's
 * failure was counted already) do not count.
 */
export interface CallErrorMessage extends CallStartMessage {
  readonly durationMs: number;
  readonly outcome: 'answered' | 'failed' | 'abandoned' | 'unrecorded';
  /** What the attempt threw; for a failed answer, an error naming it (the caller got the answer). */
  readonly error: unknown;
}

/** `podpool:member:state`. */
export interface MemberStateMessage {
  readonly pool: object;
  readonly endpoint: Endpoint;
  readonly from: string;
  readonly to: string;
  readonly error?: PodpoolError;
}

/** `podpool:discovery:snapshot`. */
export interface SnapshotMessage {
  readonly pool: object;
  /** The source's kind. */
  readonly source: string;
  readonly endpoints: EndpointSet;
  readonly diff: EndpointDiff;
}

/** `podpool:discovery:error`. */
export interface DiscoveryErrorMessage {
  readonly pool: object;
  readonly source: string;
  readonly error: PodpoolError;
}

/** The channels themselves, made once: publishers check `hasSubscribers` before building a message. */
export const channels = Object.freeze({
  callStart: channel(CHANNEL_NAMES.callStart),
  callEnd: channel(CHANNEL_NAMES.callEnd),
  callError: channel(CHANNEL_NAMES.callError),
  memberState: channel(CHANNEL_NAMES.memberState),
  snapshot: channel(CHANNEL_NAMES.snapshot),
  discoveryError: channel(CHANNEL_NAMES.discoveryError),
});
