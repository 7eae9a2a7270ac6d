/** A SourceSink for discovery tests: it records every report and lets a test wait for one. */
import type { SourceSink } from '../../src/discovery/source.ts';
import type { EndpointSet } from '../../src/endpoint.ts';
import type { PodpoolError } from '../../src/errors.ts';

export class RecordingSink implements SourceSink {
  readonly snapshots: EndpointSet[] = [];
  readonly errors: PodpoolError[] = [];
  #waiters: { check: () => boolean }[] = [];

  snapshot(endpoints: EndpointSet): void {
    this.snapshots.push(endpoints);
    this.#wake();
  }

  error(error: PodpoolError): void {
    this.errors.push(error);
    this.#wake();
  }

  get last(): EndpointSet | undefined {
    return this.snapshots.at(-1);
  }

  /** The keys of the latest snapshot. */
  get keys(): string[] {
    return this.last?.toArray().map((e) => e.key) ?? [];
  }

  /** Resolves once what was recorded satisfies `check` (at once if it does already). */
  until(check: (sink: this) => boolean): Promise<true> {
    return this.#until(() => check(this) || undefined);
  }

  /** The first snapshot from index `from` on (reported already or still to come) that `match` accepts. */
  snapshotWhere(match: (s: EndpointSet) => boolean, from = 0): Promise<EndpointSet> {
    return this.#until(() => this.snapshots.slice(from).find(match));
  }

  /** The first error from index `from` on that `match` accepts. */
  errorWhere(match: (e: PodpoolError) => boolean = () => true, from = 0): Promise<PodpoolError> {
    return this.#until(() => this.errors.slice(from).find(match));
  }

  #until<T>(find: () => T | undefined): Promise<T> {
    return new Promise((resolve) => {
      const check = () => {
        const found = find();
        if (found === undefined) return false;
        resolve(found);
        return true;
      };
      if (!check()) this.#waiters.push({ check });
    });
  }

  #wake(): void {
    this.#waiters = this.#waiters.filter((w) => !w.check());
  }
}
