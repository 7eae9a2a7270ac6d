// One stand-in pod of the cache-invalidation example: an HTTP server with an in-memory cache in
// front of a (shared) database, and a signed invalidation endpoint.
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { dedupFilter, MessageRejectedError, verifyMessage, type Secret } from 'podpool';

/** The headers a signed invalidation carries beside its JSON body `{ "key": … }`. */
export const HEADERS = { id: 'x-podpool-id', timestamp: 'x-podpool-timestamp', signature: 'x-podpool-signature' } as const;

export interface Row {
  readonly value: string;
  readonly version: number;
}

export interface PodOptions {
  secret: Secret;
  /** The source of truth every pod reads on a cache miss. */
  database: ReadonlyMap<string, Row>;
  /** Answer 503 to the first invalidation after applying it, as if the answer were lost, to show a retry. */
  loseFirstAnswer?: boolean;
}

export interface CachePod {
  readonly address: string;
  readonly port: number;
  readonly key: string;
  /** `performance.now()` when each invalidation (by message id) was applied. */
  readonly applied: ReadonlyMap<string, number>;
  /** Invalidations refused, by reason. */
  readonly rejected: ReadonlyMap<string, number>;
  close(): Promise<void>;
}

const MAX_BODY = 64 * 1024;

export async function startPod(address: string, options: PodOptions): Promise<CachePod> {
  const { secret, database } = options;
  let loseNextAnswer = options.loseFirstAnswer ?? false;
  const cache = new Map<string, Row>();
  const applied = new Map<string, number>();
  const rejected = new Map<string, number>();
  // verifyMessage keeps each accepted id until its message would be stale (timestamp + maxAgeMs),
  // so a retry (or a replayed capture) is recognised for as long as its timestamp would pass; a
  // filter full of such ids refuses new messages ('overload', answered 503 below) rather than
  // forget one. notBefore: a replay of what this pod accepted before it restarted is refused too.
  const maxAgeMs = 30_000;
  const seen = dedupFilter({ max: 100_000 });
  const startedAt = Date.now();

  const server: Server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url ?? '/', 'http://pod');
      if (req.method === 'GET' && url.pathname.startsWith('/items/')) {
        const item = decodeURIComponent(url.pathname.slice('/items/'.length));
        let row = cache.get(item);
        const from = row === undefined ? 'database' : 'cache';
        if (row === undefined) {
          row = database.get(item);
          if (row !== undefined) cache.set(item, row);
        }
        return reply(res, row === undefined ? 404 : 200, { ...row, from });
      }
      if (req.method === 'POST' && url.pathname === '/invalidate') {
        const body = await readBody(req);
        try {
          verifyMessage(
            {
              id: header(req, HEADERS.id),
              timestamp: header(req, HEADERS.timestamp),
              signature: header(req, HEADERS.signature),
              body,
            },
            { secret, seen, maxAgeMs, notBefore: startedAt, maxBodyBytes: MAX_BODY },
          );
        } catch (error) {
          if (!(error instanceof MessageRejectedError)) throw error;
          rejected.set(error.reason, (rejected.get(error.reason) ?? 0) + 1);
          // A replay of a message already applied is a retry whose first answer got lost: the
          // work is done, so say so, and do it no second time.
          if (error.reason === 'replay') return reply(res, 200, { status: 'duplicate' });
          // Too many messages to remember at once: not applied, so the writer should retry later.
          if (error.reason === 'overload') return reply(res, 503, { rejected: error.reason, message: error.message });
          return reply(res, 401, { rejected: error.reason, message: error.message });
        }
        const { key } = JSON.parse(body.toString()) as { key: string };
        cache.delete(key);
        applied.set(header(req, HEADERS.id), performance.now());
        if (loseNextAnswer) {
          loseNextAnswer = false;
          return reply(res, 503, { status: 'applied, but pretending the answer was lost' });
        }
        return reply(res, 200, { status: 'applied' });
      }
      reply(res, 404, { error: 'not found' });
    } catch (error) {
      reply(res, 400, { error: (error as Error).message });
    }
  });
  server.listen(0, address);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    address,
    port,
    key: `${address}:${port}`,
    applied,
    rejected,
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

function header(req: IncomingMessage, name: string): string {
  const value = req.headers[name];
  return typeof value === 'string' ? value : '';
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new Error('body too large');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function reply(res: ServerResponse, status: number, body: object): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}
