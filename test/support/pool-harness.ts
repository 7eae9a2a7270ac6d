/** The pool unit tests' set-up: a pool over a hand-driven source and an in-memory transport. */
import type { TestContext } from 'node:test';
import { createPool, type Pool, type PoolOptions } from '../../src/pool/pool.ts';
import { ManualSource } from './manual-source.ts';
import { MemoryTransport, type MemoryClient } from './memory-transport.ts';

export interface Harness {
  source: ManualSource;
  transport: MemoryTransport;
  pool: Pool<MemoryClient>;
}

/**
 * A pool over a new ManualSource and the given MemoryTransport (or a new one), reconnecting
 * within 1–4 ms unless `options` say otherwise; closed after the test.
 */
export function harness(t: TestContext, options: Partial<PoolOptions<MemoryClient>> = {}): Harness {
  const source = new ManualSource();
  const transport = (options.transport as MemoryTransport | undefined) ?? new MemoryTransport();
  const pool = createPool({ reconnect: { minMs: 1, maxMs: 4 }, ...options, source, transport });
  t.after(() => pool.close());
  return { source, transport, pool };
}
