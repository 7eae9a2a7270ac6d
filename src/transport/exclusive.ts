import genericPool, { type Pool as GenericPool } from 'generic-pool';
import { debuglog } from 'node:util';
import type { Endpoint } from '../endpoint.ts';
import { ClosedError, ConnectFailedError, ErrorCode, PodpoolError, TimeoutError, abortError } from '../errors.ts';
import { checkDelay, checkFunction, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';
import { messageOf, reasonOf, untilAborted } from '../abort.ts';
import type { ConnectContext, Connection, Transport } from './transport.ts';

const debug = debuglog('podpool');

/** How to open, close and check one connection of a kind that serves one caller at a time. */
export interface ExclusiveFactory<C> {
  /**
   * Opens one connection to `endpoint`. Must give up when `signal` aborts (the transport aborts
   * it after `acquireTimeoutMs`, and when the connection closes), and must return a new object
   * each time: connections are told apart by identity.
   */
  create(endpoint: Endpoint, signal: AbortSignal): Promise<C>;
  /** Closes one; resolves once its socket is gone. */
  destroy(client: C): void | Promise<void>;
  /** Checked before each loan; false (or a throw) destroys the connection and lends another. */
  validate?(client: C): boolean | Promise<boolean>;
}

/** Options of {@link exclusiveTransport}. */
export interface ExclusiveTransportOptions {
  /** Connections per pod at most, all lent out at once under load. Default 4. */
  perEndpoint?: number;
  /**
   * How long a call waits for a connection to come free, and how long opening one may take,
   * before failing with `PODPOOL_TIMEOUT`. Always bounded. Default 10 s.
   */
  acquireTimeoutMs?: number;
}

/**
 * What generic-pool holds in place of a connection that could not be opened. generic-pool
 * answers a failed `create` by calling it again at once for as long as a caller waits: against
 * a pod that refuses connections that is a hot loop of connects (some thousand a second on
 * loopback) until the caller's acquire times out. So a failed create never reaches generic-pool
 * as a failure: it "succeeds" with this marker, which goes to a waiting caller like any
 * connection, and that caller fails at once with the error.
 */
class CreateFailure {
  readonly error: PodpoolError;

  constructor(error: PodpoolError) {
    this.error = error;
  }
}

type Pooled<C> = C | CreateFailure;

const OPTIONS = optionNames<ExclusiveTransportOptions>({ perEndpoint: true, acquireTimeoutMs: true });

/**
 * Connections that serve one caller at a time (a database client, a raw TCP socket, an
 * HTTP/1.1 socket without pipelining), pooled per pod with `generic-pool`: up to `perEndpoint`
 * connections to each pod, one lent to each `use()` call and given back after it (destroyed
 * instead when the call failed). Balancers see a pod's borrowed connections as its in-flight
 * calls.
 *
 * A member becomes ready only once one connection to its pod opened, so a pod that refuses
 * connections is never picked. After that, a connection that can't be opened means the pod is
 * gone: every caller waiting on that pod fails at once, and the pool is told the pod was lost
 * (it stops picking it and reconnects with backoff).
 */
export function exclusiveTransport<C>(factory: ExclusiveFactory<C>, options: ExclusiveTransportOptions = {}): Transport<C> {
  if (factory === null || typeof factory !== 'object') invalidOption('factory', 'an object with create and destroy', factory);
  checkFunction('factory.create', factory.create, 'a function (endpoint, signal) => Promise<connection>');
  checkFunction('factory.destroy', factory.destroy, 'a function (connection) => void | Promise<void>');
  if (factory.validate !== undefined) checkFunction('factory.validate', factory.validate, 'a function (connection) => boolean | Promise<boolean>');
  // The factory is the caller's own object (a class instance, often): only its three methods are looked at.
  checkOptions(options, OPTIONS);
  const { perEndpoint = 4, acquireTimeoutMs = 10_000 } = options;
  checkNumber('perEndpoint', perEndpoint, { min: 1, integer: true });
  // Finite on purpose: without acquireTimeoutMillis a generic-pool caller can wait forever.
  checkNumber('acquireTimeoutMs', acquireTimeoutMs, { min: 1, integer: true });
  checkDelay('acquireTimeoutMs', acquireTimeoutMs);

  return {
    name: 'exclusive',
    async connect(endpoint, context) {
      const { signal } = context;
      signal.throwIfAborted();
      const connection = new ExclusiveConnection(endpoint, factory, perEndpoint, acquireTimeoutMs);
      const onAbort = (): void => void connection.close();
      signal.addEventListener('abort', onAbort, { once: true });
      try {
        // Proves the pod takes connections; the one opened stays in the pool for the first call.
        const first = await connection.acquire(undefined);
        connection.release(first, false);
      } catch (error) {
        await connection.close();
        throw signal.aborted ? abortError(signal, `connecting to ${endpoint.key}`) : error;
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
      connection.watch(context);
      return connection;
    },
  };
}

type State = 'open' | 'failed' | 'closed';

/** One pod's generic-pool, behind the Connection contract. */
class ExclusiveConnection<C> implements Connection<C> {
  readonly #endpoint: Endpoint;
  readonly #factory: ExclusiveFactory<C>;
  readonly #acquireTimeoutMs: number;
  readonly #pool: GenericPool<Pooled<C>>;
  #state: State = 'open';
  #failure: PodpoolError | undefined = undefined;
  #lost: ((error: Error) => void) | undefined = undefined;
  #closing: Promise<void> | undefined = undefined;
  /** Callers waiting for a loan, failed at once when the pod is lost or the connection closes. */
  readonly #waiters = new Set<(error: PodpoolError) => void>();
  /** Creates in progress, aborted on close. */
  readonly #creating = new Set<AbortController>();
  /** Connections lent out now. */
  readonly #lent = new Set<C>();

  constructor(endpoint: Endpoint, factory: ExclusiveFactory<C>, perEndpoint: number, acquireTimeoutMs: number) {
    this.#endpoint = endpoint;
    this.#factory = factory;
    this.#acquireTimeoutMs = acquireTimeoutMs;
    this.#pool = genericPool.createPool<Pooled<C>>(
      {
        create: () => this.#create(),
        destroy: (resource) => this.#destroy(resource),
        validate: (resource) => this.#validate(resource),
      },
      {
        min: 0,
        max: perEndpoint,
        acquireTimeoutMillis: acquireTimeoutMs,
        testOnBorrow: factory.validate !== undefined,
        autostart: false,
      },
    );
    // #create never rejects, so this is a guard: if generic-pool ever reports a failed create,
    // the pod is lost rather than left to generic-pool's retry loop.
    this.#pool.on('factoryCreateError', (error: unknown) => this.#fail(this.#createError(error)));
  }

  /** From now on, a pod that stops taking connections is reported through `context.lost`. */
  watch(context: ConnectContext): void {
    this.#lost = context.lost;
    if (this.#state === 'failed') context.lost(this.#failure!);
  }

  acquire(signal: AbortSignal | undefined): Promise<C> {
    if (this.#state !== 'open') return Promise.reject(this.#unavailable());
    if (signal?.aborted) return Promise.reject(reasonOf(signal, `borrowing a connection to ${this.#endpoint.key}`));
    return new Promise<C>((resolve, reject) => {
      let settled = false;
      const settle = (): void => {
        settled = true;
        this.#waiters.delete(fail);
        signal?.removeEventListener('abort', onAbort);
      };
      const fail = (error: unknown): void => {
        if (settled) return;
        settle();
        reject(error);
      };
      const onAbort = (): void => fail(reasonOf(signal!, `borrowing a connection to ${this.#endpoint.key}`));
      this.#waiters.add(fail);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#pool.acquire().then(
        (resource) => {
          if (resource instanceof CreateFailure) {
            void this.#pool.destroy(resource);
            fail(resource.error);
            return;
          }
          if (settled || this.#state !== 'open') {
            // The caller gave up, or the pod was lost, while generic-pool was finding this one.
            this.#giveBack(resource, this.#state !== 'open');
            fail(this.#unavailable());
            return;
          }
          settle();
          this.#lent.add(resource);
          resolve(resource);
        },
        (error: unknown) => {
          fail(
            isTimeout(error)
              ? new TimeoutError(
                  `no connection to ${this.#endpoint.key} came free within ${this.#acquireTimeoutMs} ms ` +
                    `(${this.#pool.borrowed} of ${this.#pool.max} lent out); raise perEndpoint or acquireTimeoutMs`,
                  { cause: error },
                )
              : error,
          );
        },
      );
    });
  }

  release(client: C, failed: boolean): void {
    // Not lent: close() destroyed it already while the call still held it.
    if (!this.#lent.delete(client)) return;
    this.#giveBack(client, failed || this.#state !== 'open');
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    this.#state = 'closed';
    const closed = new ClosedError(`the connection pool for ${this.#endpoint.key} is closed`);
    for (const fail of [...this.#waiters]) fail(closed);
    for (const controller of this.#creating) controller.abort(closed);
    // The pool closes a connection once its calls ended or their drain time ran out; a call
    // still holding one now has overstayed, and loses it.
    for (const client of [...this.#lent]) {
      this.#lent.delete(client);
      this.#giveBack(client, true);
    }
    await this.#pool.drain();
    await this.#pool.clear();
  }

  async #create(): Promise<Pooled<C>> {
    if (this.#state !== 'open') return new CreateFailure(this.#unavailable());
    const controller = new AbortController();
    this.#creating.add(controller);
    const timer = setTimeout(() => {
      controller.abort(
        new TimeoutError(`opening a connection to ${this.#endpoint.key} took longer than ${this.#acquireTimeoutMs} ms`),
      );
    }, this.#acquireTimeoutMs);
    try {
      const created = this.#factory.create(this.#endpoint, controller.signal);
      const client = await untilAborted(Promise.resolve(created), controller.signal, `opening a connection to ${this.#endpoint.key}`, (late) => this.#destroy(late));
      if (client === null || (typeof client !== 'object' && typeof client !== 'function')) {
        void this.#destroy(client);
        throw new TypeError(`factory.create must resolve with a connection object, got ${String(client)}`);
      }
      return client;
    } catch (error) {
      // Aborted by close(): nothing to say about the pod.
      if (this.#isClosed()) return new CreateFailure(this.#unavailable());
      const failure = this.#createError(error);
      this.#fail(failure);
      return new CreateFailure(failure);
    } finally {
      clearTimeout(timer);
      this.#creating.delete(controller);
    }
  }

  async #destroy(resource: Pooled<C>): Promise<void> {
    if (resource instanceof CreateFailure) return;
    try {
      await this.#factory.destroy(resource);
    } catch (error) {
      debug('%s: destroying a connection failed: %s', this.#endpoint.key, messageOf(error));
    }
  }

  async #validate(resource: Pooled<C>): Promise<boolean> {
    // A failure marker must reach its caller; refusing it would make generic-pool create again.
    if (resource instanceof CreateFailure) return true;
    try {
      return (await this.#factory.validate!(resource)) !== false;
    } catch (error) {
      // generic-pool leaves a rejected validation unhandled; here it just means "not valid".
      debug('%s: validate threw: %s', this.#endpoint.key, messageOf(error));
      return false;
    }
  }

  /** The pod stopped taking connections: fail every waiting caller, and say so once. */
  #fail(failure: PodpoolError): void {
    if (this.#state !== 'open') return;
    this.#state = 'failed';
    this.#failure = failure;
    debug('%s: %s', this.#endpoint.key, failure.message);
    for (const fail of [...this.#waiters]) fail(failure);
    this.#lost?.(failure);
  }

  #giveBack(resource: C, destroy: boolean): void {
    const done = destroy ? this.#pool.destroy(resource) : this.#pool.release(resource);
    Promise.resolve(done).catch((error: unknown) => debug('%s: giving back a connection: %s', this.#endpoint.key, messageOf(error)));
  }

  #createError(error: unknown): PodpoolError {
    if (error instanceof PodpoolError && error.code === ErrorCode.TIMEOUT) return error;
    return new ConnectFailedError(`could not open a connection to ${this.#endpoint.key}: ${messageOf(error)}`, {
      cause: error,
    });
  }

  #isClosed(): boolean {
    return this.#state === 'closed';
  }

  #unavailable(): PodpoolError {
    if (this.#state === 'failed' && this.#failure !== undefined) return this.#failure;
    return new ClosedError(`the connection pool for ${this.#endpoint.key} is closed`);
  }
}

function isTimeout(error: unknown): boolean {
  return error instanceof Error && error.name === 'TimeoutError';
}
