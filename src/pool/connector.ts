import { setTimeout as sleep } from 'node:timers/promises';
import { debuglog } from 'node:util';
import { messageOf } from '../abort.ts';
import { backoffMs, type BackoffPolicy } from '../backoff.ts';
import { ConnectFailedError, ConnectionLostError, NotConnectedError, type PodpoolError } from '../errors.ts';
import { checkDelay, checkNumber, checkOptions, optionNames } from '../options.ts';
import type { ConnectContext, Connection, Transport } from '../transport/transport.ts';
import type { Member } from './member.ts';

const debug = debuglog('podpool');

/** A connection that dies younger than this counts as a flap and delays the next connect. */
const STABLE_CONNECTION_MS = 1_000;

/** Reconnect backoff: exponential from `minMs` by `factor` up to `maxMs`, jittered. */
export interface ReconnectOptions {
  minMs?: number;
  maxMs?: number;
  factor?: number;
}

/** The checked reconnect backoff. */
export type ReconnectPolicy = BackoffPolicy;

const RECONNECT_OPTIONS = optionNames<ReconnectOptions>({ minMs: true, maxMs: true, factor: true });

/** Checks `reconnect` options at the door. */
export function reconnectPolicy(options: ReconnectOptions): ReconnectPolicy {
  checkOptions(options, RECONNECT_OPTIONS, 'reconnect');
  const { minMs = 100, maxMs = 10_000, factor = 2 } = options;
  checkDelay('reconnect.minMs', minMs);
  checkDelay('reconnect.maxMs', maxMs, minMs);
  checkNumber('reconnect.factor', factor, { min: 1 });
  return { minMs, maxMs, factor };
}

/**
 * A connection `#open` made, and what the transport reported before the member took it: a loss,
 * or that the connection can take no calls yet.
 */
interface Opened<C> {
  readonly connection: Connection<C>;
  lostEarly(): Error | undefined;
  unavailableEarly(): PodpoolError | undefined;
}

/** What the connector tells the pool. */
export interface ConnectorEvents<C> {
  /** An attempt failed; the loop tries again after its backoff. */
  connectError(member: Member<C>, error: PodpoolError): void;
  /** A draining member lost its connection: it can close now. */
  drainedByLoss(member: Member<C>): void;
}

/**
 * The connect loop: opens a member's connection through the transport, retries with one backoff
 * ({@link backoffMs}), hands the connection to the member, and when the transport reports it lost, closes
 * it and starts over. `settled()` waits for every loop and every closing connection.
 */
export class Connector<C> {
  readonly #transport: Transport<C>;
  readonly #policy: ReconnectPolicy;
  readonly #clock: () => number;
  readonly #random: () => number;
  readonly #events: ConnectorEvents<C>;
  readonly #loops = new Set<Promise<void>>();
  readonly #closing = new Set<Promise<void>>();

  constructor(transport: Transport<C>, policy: ReconnectPolicy, clock: () => number, random: () => number, events: ConnectorEvents<C>) {
    this.#transport = transport;
    this.#policy = policy;
    this.#clock = clock;
    this.#random = random;
    this.#events = events;
  }

  /** Starts the member's connect loop. */
  connect(m: Member<C>): void {
    const loop = this.#loop(m);
    this.#loops.add(loop);
    void loop.finally(() => this.#loops.delete(loop));
  }

  /** Closes a connection; `settled()` waits for it. */
  closeConnection(connection: Connection<C>): Promise<void> {
    const closing = connection.close().catch((error: unknown) => {
      debug('closing a connection failed: %s', messageOf(error));
    });
    this.#closing.add(closing);
    void closing.finally(() => this.#closing.delete(closing));
    return closing;
  }

  /** Resolves once every (aborted) loop ended and every connection closed. */
  async settled(): Promise<void> {
    // Every loop was aborted; one that opened a connection as the abort came closes it.
    await Promise.all(this.#loops);
    await Promise.all(this.#closing);
  }

  async #loop(m: Member<C>): Promise<void> {
    const signal = m.connectLoopSignal;
    // A connection that died young counts as a failed attempt, so a pod that accepts and drops
    // at once can't pull us into a tight loop. (p-retry can't start from a count, nor take the
    // injected random, so the loop is our own and p-retry stays with broadcast's retries.)
    let failures = m.flaps;
    try {
      for (;;) {
        if (failures > 0) await sleep(backoffMs(this.#policy, failures, this.#random), undefined, { signal });
        let opened: Opened<C>;
        try {
          opened = await this.#open(m, signal);
        } catch (error) {
          if (signal.aborted) return;
          failures++;
          const failure = error as PodpoolError;
          m.connectAttemptFailed(failure);
          this.#events.connectError(m, failure);
          continue;
        }
        // The member is draining or the pool closing: a connection that opened as the abort came is not wanted.
        if (signal.aborted) {
          void this.closeConnection(opened.connection);
          return;
        }
        m.connected(opened.connection, this.#clock(), opened.unavailableEarly());
        // A loss reported between connect resolving and now matched no member connection yet.
        const lost = opened.lostEarly();
        if (lost !== undefined) this.#lost(m, opened.connection, lost);
        return;
      }
    } catch {
      // Aborted during a backoff: the member is draining or the pool is closing; nothing to report.
    }
  }

  async #open(m: Member<C>, signal: AbortSignal): Promise<Opened<C>> {
    let connection: Connection<C> | undefined;
    let lostEarly: Error | undefined;
    let unavailableEarly: PodpoolError | undefined;
    // Until the member has adopted this connection, what the transport reports is kept for #loop.
    const adopted = (): boolean => connection !== undefined && m.connection === connection;
    const context: ConnectContext = {
      signal,
      lost: (error) => {
        if (adopted()) this.#lost(m, connection!, error);
        else lostEarly ??= error;
      },
      unavailable: (reason) => {
        const error = new NotConnectedError(`${m.endpoint.key} takes no new calls until its connection is back: ${reason.message}`, {
          cause: reason,
        });
        if (adopted()) m.unavailable(connection!, error);
        else unavailableEarly = error;
      },
      available: () => {
        if (adopted()) m.available(connection!);
        else unavailableEarly = undefined;
      },
    };
    try {
      connection = await this.#transport.connect(m.endpoint, context);
    } catch (error) {
      if (signal.aborted) throw error;
      throw new ConnectFailedError(`could not connect to ${m.endpoint.key} (${this.#transport.name}): ${messageOf(error)}`, { cause: error });
    }
    if (lostEarly !== undefined) {
      this.closeConnection(connection);
      throw new ConnectFailedError(`connection to ${m.endpoint.key} was lost as it opened: ${lostEarly.message}`, {
        cause: lostEarly,
      });
    }
    return { connection, lostEarly: () => lostEarly, unavailableEarly: () => unavailableEarly };
  }

  #lost(m: Member<C>, connection: Connection<C>, error: Error): void {
    const lost = new ConnectionLostError(`lost the connection to ${m.endpoint.key}: ${error.message}`, {
      cause: error,
    });
    if (!m.lost(connection, lost, this.#clock(), STABLE_CONNECTION_MS)) return;
    this.closeConnection(connection);
    if (m.state === 'draining') {
      this.#events.drainedByLoss(m);
      return;
    }
    if (m.state === 'closed') return;
    m.reconnecting(lost);
    this.connect(m);
  }
}
