import { debuglog } from 'node:util';
import {
  ChannelCredentials,
  Client,
  Metadata,
  connectivityState,
  credentials as grpcCredentials,
  status,
  type ChannelInterface,
  type ClientOptions,
} from '@grpc/grpc-js';
import { endpointKey, type Endpoint } from '../endpoint.ts';
import { InvalidOptionError } from '../errors.ts';
import { MAX_DELAY_MS, checkDelay, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import { OwnSockets } from './grpc-sockets.ts';
import type { ConnectContext, Connection, Transport } from './transport.ts';

const debug = debuglog('podpool');

/** A generated grpc-js service client's constructor (`loadPackageDefinition(…).pkg.Service`, or generated code). */
export type GrpcClientConstructor<C extends Client> = new (
  address: string,
  credentials: ChannelCredentials,
  options?: ClientOptions,
) => C;

/** Options of {@link grpcTransport}. */
export interface GrpcTransportOptions {
  /** How each pod's channel is secured. Default `credentials.createInsecure()`. */
  credentials?: ChannelCredentials;
  /**
   * The name the pods' TLS certificate carries: the Service's DNS name, since pods are dialled
   * by IP. It is checked against the certificate and sent as SNI and `:authority`, as through the
   * Service itself. Needs TLS `credentials`.
   */
  serverName?: string;
  /**
   * More grpc-js channel options, over podpool's defaults (keepalive, a connection of its own per
   * pod); `interceptors` too. A name without its `grpc.` or `grpc-node.` (which grpc-js would
   * ignore) and an `…_ms` value past 2^31 - 1 throw `PODPOOL_INVALID_OPTION`.
   */
  channelOptions?: Omit<ClientOptions, 'channelOverride' | 'channelFactoryOverride'>;
  /**
   * How long a pod's channel may take to become READY, when it opens and again after it lost
   * its connection; past it, the pool counts the connection lost and reconnects. Default 10 s.
   */
  connectTimeoutMs?: number;
}

const TRANSPORT_OPTIONS = optionNames<GrpcTransportOptions>({
  credentials: true,
  serverName: true,
  channelOptions: true,
  connectTimeoutMs: true,
});

/**
 * What every pod's channel gets unless `channelOptions` says otherwise.
 *
 * Keepalive: a ping every 10 s, the connection declared dead when one goes 5 s unanswered, and
 * pings on idle connections too. A pod that vanished without a FIN or RST (node gone, network
 * cut, process wedged) is then noticed within 15 s even when no call is in flight, and dropped
 * from the picks at once (its channel leaves READY), then lost once the reconnect that follows
 * fails (at most `connectTimeoutMs` later). A pod
 * that dies the usual way (its process exits, the kernel resets its connections) is noticed at
 * once, whatever these values.
 *
 * grpc-js servers accept pings at any rate. grpc-go, C-core (C++, Python, Ruby) and Java servers
 * by default accept one per 5 minutes, none on idle connections, and answer more with GOAWAY
 * `too_many_pings`: no interval that notices a dead pod in seconds fits under that policy, so
 * relax it on such servers (Go: `EnforcementPolicy{MinTime: 5s, PermitWithoutStream: true}`).
 * Where it isn't, grpc-js doubles its interval after each such GOAWAY (gRPC proposal A8), and
 * since a pod's channel reconnects in place (see `watchChannel`) the doubling sticks: 10 s → …
 * → 320 s after five reconnects, which the default policy accepts. Those reconnects cost idle
 * connections nothing; a stream that is open but quiet at that moment can be cut.
 *
 * `use_local_subchannel_pool`: grpc-js otherwise shares one connection between every channel
 * in the process with the same target and options; the pool's connection to a pod must be its
 * own, to close when the pool closes it and to be measured on its own.
 */
const CHANNEL_DEFAULTS = Object.freeze({
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.use_local_subchannel_pool': 1,
});

const KEEPALIVE_OPTIONS = ['grpc.keepalive_time_ms', 'grpc.keepalive_timeout_ms'] as const;

/**
 * Status codes that say the pod (or the path to it) failed rather than the request: it is
 * unreachable or going away (UNAVAILABLE), too slow for the caller's deadline
 * (DEADLINE_EXCEEDED, as the pool's own `timeoutMs` counts), or it broke the protocol
 * (INTERNAL: a reset stream, a malformed frame, a reply that doesn't parse). Not counted:
 * UNKNOWN, which is what grpc servers send when a handler throws, so a poison request would
 * eject one healthy pod after another; RESOURCE_EXHAUSTED, mostly a per-caller quota or a
 * message over the size limit, which another pod would refuse alike; CANCELLED, the caller
 * gave up; and every application code (NOT_FOUND, INVALID_ARGUMENT, …).
 */
const POD_FAILURES: ReadonlySet<number> = new Set([status.UNAVAILABLE, status.DEADLINE_EXCEEDED, status.INTERNAL]);

/**
 * What grpc-js says when a call is failed by its pick, before any stream is opened: the channel
 * has no connection (TRANSIENT_FAILURE) and the call does not wait for one. The load balancing
 * policy's name comes first for some policies (`round_robin: No connection established`).
 */
const NO_CONNECTION = /^(?:[a-z_]+: )?No connection established/;

/** What grpc-js throws, before it makes a call, on a client that was closed. */
const SHUT_DOWN = 'Channel has been shut down';

/**
 * gRPC over HTTP/2: one grpc-js client per pod, dialled by IP, counted ready once its channel
 * is READY and watched for as long as it lives. A channel that leaves READY (a GOAWAY from a
 * server that is shutting down or recycling its connection, a dropped connection) takes no new
 * calls until it is READY again: calls in flight finish on the old connection. When its
 * reconnect in place fails (TRANSIENT_FAILURE, once the old connection is gone too) or takes
 * longer than `connectTimeoutMs`, the pool counts the pod lost and reconnects with its own backoff.
 * Closing a pod's connection (once the pool has drained it) ends whatever still runs on it and
 * resolves when its sockets are gone. `use()` and `broadcast()` callbacks get the generated
 * client; for one stub that routes every call through the pool, see `grpcChannel` (src/adapter/).
 */
export function grpcTransport<C extends Client>(
  ServiceClient: GrpcClientConstructor<C>,
  options: GrpcTransportOptions = {},
): Transport<C> {
  if (typeof ServiceClient !== 'function' || !(ServiceClient.prototype instanceof Client)) {
    invalidOption('ServiceClient', 'a grpc-js client constructor (from loadPackageDefinition or generated code)', ServiceClient);
  }
  checkOptions(options, TRANSPORT_OPTIONS);
  const { credentials = grpcCredentials.createInsecure(), serverName, channelOptions = {}, connectTimeoutMs = 10_000 } = options;
  if (!(credentials instanceof ChannelCredentials)) {
    invalidOption('credentials', 'grpc-js ChannelCredentials (credentials.createInsecure(), credentials.createSsl(…))', credentials);
  }
  if (serverName !== undefined) {
    if (typeof serverName !== 'string' || serverName === '') invalidOption('serverName', 'a non-empty DNS name', serverName);
    if (!credentials._isSecure()) invalidOption('serverName', 'used with TLS credentials (credentials.createSsl(…))', serverName);
  }
  if (channelOptions === null || typeof channelOptions !== 'object') invalidOption('channelOptions', 'grpc-js channel options', channelOptions);
  for (const name of ['channelOverride', 'channelFactoryOverride'] as const) {
    if (name in channelOptions) invalidOption(`channelOptions.${name}`, 'left out: podpool makes one channel per pod', '(set)');
  }
  checkChannelOptions(channelOptions);
  const permit = channelOptions['grpc.keepalive_permit_without_calls'];
  if (permit !== undefined && permit !== 0 && permit !== 1) {
    invalidOption("channelOptions['grpc.keepalive_permit_without_calls']", '0 or 1', permit);
  }
  checkDelay('connectTimeoutMs', connectTimeoutMs);

  const clientOptions: ClientOptions = {
    ...CHANNEL_DEFAULTS,
    ...(serverName !== undefined && { 'grpc.ssl_target_name_override': serverName, 'grpc.default_authority': serverName }),
    ...channelOptions,
  };

  return {
    name: 'grpc',
    async connect(endpoint, context): Promise<Connection<C>> {
      const { signal } = context;
      signal.throwIfAborted();
      const sockets = new OwnSockets(credentials);
      const client = new ServiceClient(targetOf(endpoint), sockets.credentials, clientOptions);
      const channel = client.getChannel();
      let watch: { stop(): void } | undefined;
      const close = (): Promise<void> => {
        watch?.stop();
        client.close();
        return sockets.destroy();
      };
      try {
        await untilReady(channel, endpoint, connectTimeoutMs, signal);
      } catch (error) {
        await close();
        throw error;
      }
      watch = watchChannel(channel, endpoint, sockets, connectTimeoutMs, context);
      return { client, close };
    },
    isPodFailure(error) {
      if (error === null || typeof error !== 'object') return false;
      // Only grpc-js's status codes: the pool itself counts its own TIMEOUT and CONNECTION_LOST.
      const { code } = error as { code?: unknown };
      return typeof code === 'number' && POD_FAILURES.has(code);
    },
    wasNotSent(error) {
      if (!(error instanceof Error)) return false;
      const { code, details } = error as { code?: unknown; details?: unknown };
      // Thrown by the client's method itself, before grpc-js makes a call.
      if (code === undefined) return error.message === SHUT_DOWN;
      // Anything else may have reached the pod: a reset stream, a dropped connection, a status
      // the server sent. (grpc-js already sends again, once, a call the server refused unread.)
      return code === status.UNAVAILABLE && typeof details === 'string' && NO_CONNECTION.test(details);
    },
  };
}

/** The `channelOptions` keys that are not grpc-js channel arguments (`grpc.…`, `grpc-node.…`). */
const CLIENT_KEYS: ReadonlySet<string> = new Set(['interceptors', 'interceptor_providers', 'callInvocationTransformer']);

/**
 * Checks `channelOptions` as far as grpc-js would not: it ignores a name it does not know (a
 * `keepalive_time_ms` without its `grpc.`), and hands an `…_ms` value to a timer as it is, where
 * one past 2^31 - 1 ms fires after 1 ms.
 */
function checkChannelOptions(channelOptions: object): void {
  for (const [key, value] of Object.entries(channelOptions)) {
    const name = `channelOptions['${key}']`;
    if (!CLIENT_KEYS.has(key) && !key.startsWith('grpc.') && !key.startsWith('grpc-node.')) {
      throw new InvalidOptionError(
        `unknown option ${name}${/^[a-z0-9_.]+$/.test(key) ? ` (did you mean channelOptions['grpc.${key}']?)` : ''}; grpc-js channel options are named grpc.… or grpc-node.…, besides ${[...CLIENT_KEYS].join(', ')}`,
      );
    }
    if ((KEEPALIVE_OPTIONS as readonly string[]).includes(key)) {
      checkNumber(name, value, { min: 1, integer: true });
      checkDelay(name, value);
    } else if (key.endsWith('_ms') && (typeof value !== 'number' || Number.isNaN(value) || value > MAX_DELAY_MS)) {
      // Below 0 is grpc-js's own "none" for some of them (-1).
      invalidOption(name, `a number of ms up to ${MAX_DELAY_MS}`, value);
    }
  }
}

/** `ipv4:10.0.0.1:50051` / `ipv6:[fd00::1]:50051`: dialled as is, with no DNS resolver behind it. */
function targetOf(endpoint: Endpoint): string {
  return `${endpoint.address.includes(':') ? 'ipv6' : 'ipv4'}:${endpointKey(endpoint.address, endpoint.port)}`;
}

type State = ReturnType<ChannelInterface['getConnectivityState']>;

function stateName(state: State): string {
  return connectivityState[state] ?? String(state);
}

/** Resolves once `channel` is READY; rejects when it fails, takes longer than `timeoutMs`, or `signal` aborts. */
function untilReady(channel: ChannelInterface, endpoint: Endpoint, timeoutMs: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (error?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      if (error === undefined) resolve();
      else reject(error);
    };
    const onAbort = (): void => finish(signal.reason);
    const timer = setTimeout(() => {
      finish(new Error(`the channel was not READY after ${timeoutMs} ms (${stateName(channel.getConnectivityState(false))})`));
    }, timeoutMs);
    signal.addEventListener('abort', onAbort, { once: true });
    const step = (): void => {
      if (settled) return;
      const state = leaveIdle(channel);
      debug('%s: grpc channel %s', endpoint.key, stateName(state));
      if (state === connectivityState.READY) {
        finish();
      } else if (state === connectivityState.TRANSIENT_FAILURE) {
        void lastFailure(channel).then((why) => finish(new Error(`the channel failed to connect: ${withHint(why)}`)));
      } else if (state === connectivityState.SHUTDOWN) {
        finish(new Error('the channel was shut down'));
      } else {
        channel.watchConnectivityState(state, Infinity, step);
      }
    };
    step();
  });
}

/**
 * Watches a READY channel until it fails, and calls `lost` once. A channel that leaves READY (a
 * GOAWAY, a keepalive timeout, a reset) takes no new calls: the pool hears `unavailable`, and
 * `available` once it is READY again. It reconnects in place, keeping what grpc-js learned (a
 * doubled keepalive interval), and counts as lost only if that reconnect fails (once the old
 * connection, which may still carry calls begun before a GOAWAY, has closed too) or takes
 * longer than `timeoutMs`.
 */
function watchChannel(
  channel: ChannelInterface,
  endpoint: Endpoint,
  sockets: OwnSockets,
  timeoutMs: number,
  { lost, unavailable, available }: ConnectContext,
): { stop(): void } {
  let done = false;
  let timer: NodeJS.Timeout | undefined;
  /** The pool was told the channel takes no new calls. */
  let out = false;
  /** Counts the channel's returns to READY, so a failure learned after one is dropped. */
  let readyTimes = 0;
  /** Why the reconnect failed, kept while the old connection still carries calls. */
  let failure: Error | undefined;
  const stop = (): void => {
    done = true;
    clearTimeout(timer);
    sockets.onIdle = undefined;
  };
  const fail = (error: Error): void => {
    if (done) return;
    stop();
    lost(error);
  };
  sockets.onIdle = () => {
    if (failure !== undefined) fail(failure);
  };
  const step = (): void => {
    if (done) return;
    const left = channel.getConnectivityState(false);
    const state = leaveIdle(channel);
    debug('%s: grpc channel %s', endpoint.key, stateName(state));
    if (state === connectivityState.READY) {
      clearTimeout(timer);
      timer = undefined;
      failure = undefined;
      readyTimes++;
      if (out) {
        out = false;
        available?.();
      }
    } else if (state === connectivityState.SHUTDOWN) {
      fail(new Error('the channel was shut down'));
      return;
    } else {
      if (!out) {
        out = true;
        unavailable?.(new Error(`its gRPC channel left READY (${stateName(left)})`));
      }
      timer ??= setTimeout(() => {
        fail(new Error(`the channel lost its connection and was not READY again within ${timeoutMs} ms`));
      }, timeoutMs);
      if (state === connectivityState.TRANSIENT_FAILURE) {
        const since = readyTimes;
        void lastFailure(channel).then((why) => {
          if (done || since !== readyTimes) return;
          failure = new Error(`the channel could not reconnect: ${why}`);
          // Calls begun before a GOAWAY still run on the old connection: they finish first.
          if (sockets.open === 0) fail(failure);
        });
      }
    }
    // What the pool did on hearing it may have closed the channel already.
    if (!done) channel.watchConnectivityState(state, Infinity, step);
  };
  step();
  return { stop };
}

/** The channel's state, after asking an IDLE channel to connect. */
function leaveIdle(channel: ChannelInterface): State {
  const state = channel.getConnectivityState(false);
  if (state !== connectivityState.IDLE) return state;
  channel.getConnectivityState(true);
  return channel.getConnectivityState(false);
}

/** A certificate that names something else than the pod's IP is the usual Service-name case. */
function withHint(why: string): string {
  return /certificate's altnames/.test(why)
    ? `${why} (when the certificate names the Service, give grpcTransport its DNS name as serverName)`
    : why;
}

/**
 * Why a channel in TRANSIENT_FAILURE failed (`connect ECONNREFUSED …`, a certificate that
 * doesn't name the server, …). grpc-js keeps the reason only for the calls it fails fast in
 * that state, so this asks with a call that never reaches the wire.
 */
function lastFailure(channel: ChannelInterface): Promise<string> {
  return new Promise((resolve) => {
    let call;
    try {
      // The deadline only guards against a channel that is connecting again already: a call
      // started in TRANSIENT_FAILURE fails on the spot.
      call = channel.createCall('/podpool.Probe/LastError', Date.now() + 1_000, null, null, null);
    } catch (error) {
      resolve(error instanceof Error ? error.message : String(error));
      return;
    }
    call.start(new Metadata(), {
      onReceiveMetadata() {},
      onReceiveMessage() {},
      onReceiveStatus({ details }) {
        resolve(details.replace(/^No connection established\. Last error: (Error: )?/, '').replace(/\. Resolution note: ?$/, ''));
      },
    });
    call.halfClose();
  });
}
