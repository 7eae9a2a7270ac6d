/**
 * An in-memory transport: the test decides how each endpoint's connects end (accept, refuse, or
 * hold until released), drops live connections with `lose()`, and reads back what the pool did
 * (connect attempts, connections opened and closed, clients lent and given back). Every wait a
 * test needs is a promise this transport resolves, so no test sleeps.
 */
import type { Endpoint } from '../../src/endpoint.ts';
import type { ConnectContext, Connection, Transport } from '../../src/transport/transport.ts';

/** What a call receives: which pod, and which of its connections (numbered from 1 per transport). */
export interface MemoryClient {
  readonly key: string;
  readonly connection: number;
  /** The transport reported it lost (`lose()`). */
  readonly lost: boolean;
  /** The pool closed it. */
  readonly closed: boolean;
  /** Lost or closed: a pick that lands here is a bug. */
  readonly dead: boolean;
}

/** How connects to an endpoint end. */
export type ConnectBehaviour = 'accept' | 'refuse' | 'hold';

export interface MemoryTransportOptions {
  /** Lend a client per call (`acquire`/`release`) instead of sharing `client`. */
  lend?: boolean;
  /** Becomes the transport's `isPodFailure`. */
  isPodFailure?: (error: unknown) => boolean;
  /** Becomes the transport's `wasNotSent`. */
  wasNotSent?: (error: unknown) => boolean;
  /** Becomes the transport's `isFailedResult`. */
  isFailedResult?: (result: unknown) => boolean;
  /** Becomes the transport's `discard`. */
  discard?: (result: unknown) => void;
}

/** One `release()` the pool made, for lending transports. */
export interface Release {
  readonly key: string;
  readonly connection: number;
  readonly failed: boolean;
}

class MemoryConnection implements MemoryClient {
  readonly key: string;
  readonly connection: number;
  readonly #lost: (error: Error) => void;
  lost = false;
  closed = false;

  constructor(key: string, connection: number, lost: (error: Error) => void) {
    this.key = key;
    this.connection = connection;
    this.#lost = lost;
  }

  get dead(): boolean {
    return this.lost || this.closed;
  }

  reportLost(error: Error): void {
    if (this.lost || this.closed) return;
    this.lost = true;
    this.#lost(error);
  }
}

interface Held {
  readonly key: string;
  settle(error?: Error): void;
}

interface Counts {
  attempts: number;
  connects: number;
  closes: number;
}

export class MemoryTransport implements Transport<MemoryClient> {
  readonly name = 'memory';
  readonly isPodFailure: ((error: unknown) => boolean) | undefined;
  readonly wasNotSent: ((error: unknown) => boolean) | undefined;
  readonly isFailedResult: ((result: unknown) => boolean) | undefined;
  readonly discard: ((result: unknown) => void) | undefined;
  readonly #lend: boolean;
  readonly #behaviour = new Map<string, ConnectBehaviour>();
  #default: ConnectBehaviour = 'accept';
  readonly #counts = new Map<string, Counts>();
  readonly #connections: MemoryConnection[] = [];
  readonly #contexts = new WeakMap<MemoryConnection, ConnectContext>();
  readonly #held = new Set<Held>();
  readonly #waits: { key: string | undefined; what: keyof Counts; at: number; resolve: () => void }[] = [];
  /** Clients lent and not yet given back. */
  lent = 0;
  readonly releases: Release[] = [];

  constructor(options: MemoryTransportOptions = {}) {
    this.#lend = options.lend ?? false;
    this.isPodFailure = options.isPodFailure;
    this.wasNotSent = options.wasNotSent;
    this.isFailedResult = options.isFailedResult;
    this.discard = options.discard;
  }

  /** Connects to `key` (or, without a key, to every endpoint not set otherwise) succeed. */
  accept(key?: string): void {
    this.#set(key, 'accept');
  }

  /** Connects to `key` (or to every endpoint) fail at once. */
  refuse(key?: string): void {
    this.#set(key, 'refuse');
  }

  /** Connects to `key` (or to every endpoint) wait until `release()` or their signal aborts. */
  hold(key?: string): void {
    this.#set(key, 'hold');
  }

  /** Ends every held connect to `key`: opened, or failed with `error`. Returns how many. */
  release(key: string, error?: Error): number {
    let n = 0;
    for (const h of [...this.#held]) {
      if (h.key !== key) continue;
      this.#held.delete(h);
      h.settle(error);
      n++;
    }
    return n;
  }

  /** Connects to `key` waiting in `hold`. */
  held(key: string): number {
    let n = 0;
    for (const h of this.#held) if (h.key === key) n++;
    return n;
  }

  /** Reports every open connection to `key` lost, as a reset socket would. Returns how many. */
  lose(key: string, error: Error = new Error(`${key} reset the connection`)): number {
    let n = 0;
    // A copy: the pool may open the replacement synchronously, and that one is not lost.
    for (const c of [...this.#connections]) {
      if (c.key !== key || c.dead) continue;
      c.reportLost(error);
      n++;
    }
    return n;
  }

  /**
   * Says every open connection to `key` takes no new calls for now (`unavailable`), or can again
   * (`available`), as a gRPC channel out of READY would. Returns how many were told.
   */
  unavailable(key: string, reason: Error = new Error(`${key} is reconnecting`)): number {
    return this.#tell(key, (context) => context.unavailable?.(reason));
  }

  available(key: string): number {
    return this.#tell(key, (context) => context.available?.());
  }

  #tell(key: string, say: (context: ConnectContext) => void): number {
    let n = 0;
    for (const c of this.#connections) {
      if (c.key !== key || c.dead) continue;
      say(this.#contexts.get(c)!);
      n++;
    }
    return n;
  }

  /** Calls to `connect` for `key`, or for every endpoint. */
  attempts(key?: string): number {
    return this.#sum(key, 'attempts');
  }

  /** Connects that resolved. */
  connects(key?: string): number {
    return this.#sum(key, 'connects');
  }

  /** Connections closed (the first `close()` of each). */
  closes(key?: string): number {
    return this.#sum(key, 'closes');
  }

  /** Connections opened and not closed yet (lost ones included until the pool closes them). */
  open(key?: string): number {
    return this.#connections.filter((c) => (key === undefined || c.key === key) && !c.closed).length;
  }

  /** Every connection opened so far, in order. */
  get connections(): readonly MemoryClient[] {
    return this.#connections;
  }

  /** Resolves once `attempts(key)` reaches `n` (at once if it has). */
  untilAttempts(key: string | undefined, n: number): Promise<void> {
    return this.#until(key, 'attempts', n);
  }

  /** Resolves once `connects(key)` reaches `n`. */
  untilConnects(key: string | undefined, n: number): Promise<void> {
    return this.#until(key, 'connects', n);
  }

  /** Resolves once `closes(key)` reaches `n`. */
  untilCloses(key: string | undefined, n: number): Promise<void> {
    return this.#until(key, 'closes', n);
  }

  connect(endpoint: Endpoint, context: ConnectContext): Promise<Connection<MemoryClient>> {
    const { key } = endpoint;
    this.#bump(key, 'attempts');
    const { signal } = context;
    if (signal.aborted) return Promise.reject(signal.reason);
    const behaviour = this.#behaviour.get(key) ?? this.#default;
    const open = (): Connection<MemoryClient> => {
      const c = new MemoryConnection(key, this.#connections.length + 1, context.lost);
      this.#connections.push(c);
      this.#contexts.set(c, context);
      this.#bump(key, 'connects');
      return this.#connectionOf(c);
    };
    if (behaviour === 'accept') return Promise.resolve(open());
    if (behaviour === 'refuse') return Promise.reject(new Error(`${key} refused the connection`));
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        this.#held.delete(held);
        reject(signal.reason);
      };
      const held: Held = {
        key,
        settle: (error) => {
          signal.removeEventListener('abort', onAbort);
          if (error !== undefined) reject(error);
          else resolve(open());
        },
      };
      this.#held.add(held);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  #connectionOf(c: MemoryConnection): Connection<MemoryClient> {
    const close = (): Promise<void> => {
      if (!c.closed) {
        c.closed = true;
        this.#bump(c.key, 'closes');
      }
      return Promise.resolve();
    };
    if (!this.#lend) return { client: c, close };
    return {
      acquire: (signal) => {
        if (signal?.aborted) return Promise.reject(signal.reason);
        this.lent++;
        return Promise.resolve(c);
      },
      release: (client, failed) => {
        this.lent--;
        this.releases.push({ key: client.key, connection: client.connection, failed });
      },
      close,
    };
  }

  #set(key: string | undefined, behaviour: ConnectBehaviour): void {
    if (key === undefined) this.#default = behaviour;
    else this.#behaviour.set(key, behaviour);
  }

  #countsOf(key: string): Counts {
    let counts = this.#counts.get(key);
    if (counts === undefined) {
      counts = { attempts: 0, connects: 0, closes: 0 };
      this.#counts.set(key, counts);
    }
    return counts;
  }

  #sum(key: string | undefined, what: keyof Counts): number {
    if (key !== undefined) return this.#counts.get(key)?.[what] ?? 0;
    let n = 0;
    for (const counts of this.#counts.values()) n += counts[what];
    return n;
  }

  #bump(key: string, what: keyof Counts): void {
    this.#countsOf(key)[what]++;
    for (const w of [...this.#waits]) {
      if (w.what === what && this.#sum(w.key, what) >= w.at) {
        this.#waits.splice(this.#waits.indexOf(w), 1);
        w.resolve();
      }
    }
  }

  #until(key: string | undefined, what: keyof Counts, n: number): Promise<void> {
    if (this.#sum(key, what) >= n) return Promise.resolve();
    return new Promise((resolve) => this.#waits.push({ key, what, at: n, resolve }));
  }
}
