/**
 * A small Kubernetes API server for EndpointSlices, real HTTP(S) on 127.0.0.1, speaking the
 * protocol `@kubernetes/client-node` speaks: bearer-token or client-certificate auth, list with
 * resourceVersion, limit and continue, and watch as a stream of JSON lines (ADDED, MODIFIED,
 * DELETED, BOOKMARK, ERROR) replayed from a resourceVersion, with faults on demand (error
 * statuses, dropped, ended and stalled connections, 410 Gone after compaction). Tests and the
 * bench drive it; nothing here sleeps.
 */
import { EventEmitter } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';

/** An EndpointSlice as JSON (`discovery.k8s.io/v1`). */
export interface EndpointSliceObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    resourceVersion?: string;
    uid?: string;
    [key: string]: unknown;
  };
  addressType: string;
  endpoints?: Record<string, unknown>[] | null;
  ports?: { name?: string; port?: number | null; protocol?: string }[] | null;
}

/** One endpoint for {@link endpointSlice}; conditions default the way the EndpointSlice controller sets them. */
export interface SliceEndpointInit {
  ip: string;
  /** The pod's name (targetRef kind Pod); the uid derives from it. */
  pod?: string;
  ready?: boolean;
  serving?: boolean;
  terminating?: boolean;
  /** Sent as is instead of the conditions above (to send nulls or leave fields out). */
  conditions?: Record<string, unknown>;
  node?: string;
  zone?: string;
  hintZones?: string[];
}

/** Builds an EndpointSlice of a Service, labelled as the EndpointSlice controller labels them. */
export function endpointSlice(init: {
  name: string;
  service: string;
  namespace?: string;
  addressType?: 'IPv4' | 'IPv6' | 'FQDN';
  ports?: { name?: string; port: number | null; protocol?: string }[];
  endpoints: SliceEndpointInit[];
}): EndpointSliceObject {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name: init.name,
      namespace: init.namespace ?? 'default',
      labels: {
        'kubernetes.io/service-name': init.service,
        'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io',
      },
    },
    addressType: init.addressType ?? 'IPv4',
    ports: (init.ports ?? [{ name: 'http', port: 8080 }]).map((p) => ({ protocol: 'TCP', ...p })),
    endpoints: init.endpoints.map((e) => {
      const ready = e.ready ?? !(e.terminating ?? false);
      return {
        addresses: [e.ip],
        conditions: e.conditions ?? { ready, serving: e.serving ?? ready, terminating: e.terminating ?? false },
        ...(e.pod !== undefined && {
          targetRef: { kind: 'Pod', name: e.pod, namespace: init.namespace ?? 'default', uid: `uid-${e.pod}` },
        }),
        ...(e.node !== undefined && { nodeName: e.node }),
        ...(e.zone !== undefined && { zone: e.zone }),
        ...(e.hintZones !== undefined && { hints: { forZones: e.hintZones.map((name) => ({ name })) } }),
      };
    }),
  };
}

/**
 * A Service's endpoints cut into slices of `perSlice` (100, as the EndpointSlice controller does),
 * named `<service>-0`, `<service>-1`, …: what a bench applies to scale a Service to any size.
 */
export function slicesFor(
  service: string,
  endpoints: SliceEndpointInit[],
  { perSlice = 100, namespace, ports }: { perSlice?: number; namespace?: string; ports?: { name?: string; port: number | null }[] } = {},
): EndpointSliceObject[] {
  const slices: EndpointSliceObject[] = [];
  for (let i = 0; i * perSlice < endpoints.length; i++) {
    const chunk = endpoints.slice(i * perSlice, (i + 1) * perSlice);
    slices.push(endpointSlice({ name: `${service}-${i}`, service, namespace, ports, endpoints: chunk }));
  }
  return slices;
}

/** A distinct IPv4 address for pod number `i` (0 ≤ i < 65 000): 10.1.0.1, 10.1.0.2, … */
export function podIp(i: number): string {
  const n = i + 1;
  return `10.1.${(n >> 8) & 255}.${n & 255}`;
}

/** Options of {@link FakeApiServer.start}. */
export interface FakeApiServerOptions {
  /** The bearer token it accepts; default a random one. */
  token?: string;
  /** Lists come in pages of at most this many slices, whatever `limit` the client asks. */
  maxPageSize?: number;
  /** Serve HTTPS with this key and certificate; with `ca`, also accept client certificates it signed. */
  tls?: { key: Buffer; cert: Buffer; ca?: Buffer };
}

/** One request the server saw. */
export interface RequestRecord {
  readonly seq: number;
  readonly kind: 'list' | 'watch' | 'other';
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  /** The bearer token sent, if any. */
  readonly token: string | undefined;
  /** Over TLS with client certificates: the CN of the certificate the client presented. */
  readonly clientCertificate?: string;
  /** The status answered (200 for a watch once its headers are sent); undefined while held. */
  status: number | undefined;
  /** Settles when the connection carrying this request is closed, by either side. */
  readonly closed: Promise<void>;
}

/** What {@link FakeApiServer.apply} and friends report once the change is on the watch streams. */
export interface Delivery {
  /** The resourceVersion of the last change. */
  readonly resourceVersion: string;
  /** How many open watches it was written to. */
  readonly watchers: number;
  /** `performance.now()` when the last of those writes was handed to the socket. */
  readonly writtenAt: number;
}

type Fault = { kind: 'status'; status: number } | { kind: 'stall'; beforeHeaders: boolean } | { kind: 'body'; body: string };

interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: Record<string, unknown>;
}

interface HistoryEntry {
  rv: number;
  event: WatchEvent;
  namespace: string;
  labels: Record<string, string>;
}

interface Watcher {
  res: ServerResponse;
  namespace: string | undefined;
  selector: (labels: Record<string, string>) => boolean;
  bookmarks: boolean;
  stalled: boolean;
  timer: NodeJS.Timeout | undefined;
}

const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  409: 'AlreadyExists',
  410: 'Expired',
  415: 'UnsupportedMediaType',
  422: 'Invalid',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

const PATH = /^\/apis\/discovery\.k8s\.io\/v1\/(?:namespaces\/([^/]+)\/)?endpointslices$/;

/** The user a request made with the server's own token (or a client certificate) is, to an {@link ApiServerExtension}. */
export const ADMIN_USER = 'kubernetes-admin';

/**
 * What {@link FakeApiServer.extend} plugs in to grow the server into a whole fake cluster: users
 * of its own (ServiceAccount tokens), RBAC over the EndpointSlice list and watch, and every path
 * the server does not serve itself. Without one the server behaves as before: one token, every
 * other path 404.
 */
export interface ApiServerExtension {
  /** The user a bearer token other than the server's own belongs to; undefined answers 401. */
  authenticate(token: string): string | undefined;
  /** Why `user` may not `verb` EndpointSlices in `namespace` (a Kubernetes-worded message), or undefined when it may. */
  authorize(user: string, verb: 'list' | 'watch', namespace: string | undefined): string | undefined;
  /** Answers a request for any path but the EndpointSlice list and watch; sets `record.status`. */
  handle(req: IncomingMessage, res: ServerResponse, user: string, record: RequestRecord): void;
}

/**
 * The fake API server. Start it with {@link FakeApiServer.start}, point a client at it with
 * {@link FakeApiServer.kubeConfig}, change slices with {@link FakeApiServer.apply} and
 * {@link FakeApiServer.remove}, and inject faults with `fail`, `stall`, `dropWatches`, `endWatches`,
 * `stallWatches` and `compact`; send what no API server should with `answerList`, `writeRaw` and
 * `mangleNext`. Emits `request` (a {@link RequestRecord}) for every request.
 */
export class FakeApiServer extends EventEmitter<{ request: [RequestRecord] }> {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** The bearer token the server accepts. */
  readonly token: string;
  /** Every request so far, oldest first. */
  readonly requests: RequestRecord[] = [];

  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #objects = new Map<string, EndpointSliceObject>();
  readonly #history: HistoryEntry[] = [];
  readonly #watchers = new Set<Watcher>();
  readonly #held = new Set<ServerResponse>();
  readonly #continues = new Map<string, { items: EndpointSliceObject[]; rv: number }>();
  readonly #faults: Record<'list' | 'watch', Fault[]> = { list: [], watch: [] };
  readonly #maxPageSize: number;
  #mangle: ((chunk: string) => string) | undefined;
  #rv = 1000;
  #compactedRv = 0;
  #forbidden = false;
  #seq = 0;
  #extension: ApiServerExtension | undefined;

  private constructor(server: Server, url: string, token: string, maxPageSize: number) {
    super();
    this.#server = server;
    this.url = url;
    this.token = token;
    this.#maxPageSize = maxPageSize;
    server.on('connection', (socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
    });
    server.on('request', (req, res) => this.#handle(req, res));
  }

  /**
   * Starts a server on 127.0.0.1 and an ephemeral port, plain HTTP or (with `tls`) HTTPS.
   * `maxPageSize` makes lists come in pages of at most that many slices whatever `limit` the
   * client asks (servers may return fewer).
   */
  static async start(options: FakeApiServerOptions = {}): Promise<FakeApiServer> {
    const { tls } = options;
    // With `tls.ca`, a client certificate that CA signed authenticates a request as a token does.
    const server = tls === undefined ? createServer() : createHttpsServer({ key: tls.key, cert: tls.cert, ...(tls.ca !== undefined && { ca: tls.ca, requestCert: true, rejectUnauthorized: false }) });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = server.address() as { port: number };
    const token = options.token ?? `fake-token-${Math.random().toString(36).slice(2)}`;
    return new FakeApiServer(server, `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`, token, options.maxPageSize ?? Infinity);
  }

  /**
   * A KubeConfig for this server; `token: null` sends no token at all. Over TLS: `ca` is the CA
   * to trust (as a cluster's certificate-authority-data), `servername` the name its certificate
   * has (tls-server-name, the address being 127.0.0.1), `client` a certificate to present.
   */
  kubeConfig({ token = this.token, ca, servername, client }: { token?: string | null; ca?: Buffer; servername?: string; client?: { cert: Buffer; key: Buffer } } = {}): KubeConfig {
    const kc = new KubeConfig();
    const cluster =
      ca === undefined
        ? // Plain HTTP on loopback: the client insists on skipTLSVerify for http:// servers.
          { name: 'fake', server: this.url, skipTLSVerify: true }
        : { name: 'fake', server: this.url, caData: ca.toString('base64'), ...(servername !== undefined && { tlsServerName: servername }) };
    kc.loadFromOptions({
      clusters: [cluster],
      users: [
        {
          name: 'fake-user',
          ...(token !== null && { token }),
          ...(client !== undefined && { certData: client.cert.toString('base64'), keyData: client.key.toString('base64') }),
        },
      ],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'fake-user' }],
      currentContext: 'fake',
    });
    return kc;
  }

  /** Writes a kubeconfig file for this server into `dir` and returns its path. */
  async writeKubeconfig(dir: string, { token = this.token }: { token?: string } = {}): Promise<string> {
    const file = join(dir, 'kubeconfig');
    const config = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'fake', cluster: { server: this.url, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'fake-user', user: { token } }],
      contexts: [{ name: 'fake', context: { cluster: 'fake', user: 'fake-user' } }],
      'current-context': 'fake',
    };
    // JSON is YAML.
    await writeFile(file, JSON.stringify(config, null, 2));
    return file;
  }

  /** The current resourceVersion. */
  get resourceVersion(): string {
    return String(this.#rv);
  }

  /** How many watches are open. */
  get openWatches(): number {
    return this.#watchers.size;
  }

  /** The stored slices. */
  slices(): EndpointSliceObject[] {
    return [...this.#objects.values()].map((o) => structuredClone(o));
  }

  /**
   * Creates or replaces slices, one resourceVersion each, and writes all their events to every
   * open watch in one chunk, as an API server does with events that arrive together.
   */
  apply(...slices: EndpointSliceObject[]): Promise<Delivery> {
    return this.#broadcast(slices.map((s) => this.#store(s)));
  }

  /** Deletes slices (by name, in `namespace`) and writes their DELETED events in one chunk. */
  remove(names: string | string[], namespace = 'default'): Promise<Delivery> {
    const entries: HistoryEntry[] = [];
    for (const name of Array.isArray(names) ? names : [names]) {
      const key = `${namespace}/${name}`;
      const stored = this.#objects.get(key);
      if (stored === undefined) throw new Error(`no slice ${key}`);
      this.#objects.delete(key);
      const rv = ++this.#rv;
      const object = structuredClone(stored);
      object.metadata.resourceVersion = String(rv);
      entries.push(this.#record(rv, { type: 'DELETED', object: object as unknown as Record<string, unknown> }));
    }
    return this.#broadcast(entries);
  }

  /** Writes a BOOKMARK at the current resourceVersion to every open watch that asked for them. */
  bookmark(): Promise<Delivery> {
    const object = { kind: 'EndpointSlice', apiVersion: 'discovery.k8s.io/v1', metadata: { resourceVersion: String(this.#rv) } };
    return this.#write((w) => (w.bookmarks ? [{ type: 'BOOKMARK', object }] : []));
  }

  /**
   * Compaction: applies `slices` without any watch event (they fall into the forgotten past), then
   * forgets all history, so that a watch from any earlier resourceVersion gets 410 Gone. Open
   * watches get an ERROR event with code 410 and are ended, as the watch cache does (unless
   * `endWatches` is false: they stay open, silent about the change). Only a client that relists
   * sees the changes.
   */
  async compact(slices: EndpointSliceObject[] = [], { endWatches = true }: { endWatches?: boolean } = {}): Promise<void> {
    for (const s of slices) this.#store(s);
    this.#rv += 1;
    this.#compactedRv = this.#rv;
    this.#history.length = 0;
    this.#continues.clear();
    if (!endWatches) return;
    const gone = statusObject(410, 'too old resource version');
    await this.#write(() => [{ type: 'ERROR', object: gone }]);
    this.endWatches();
  }

  /** The next `times` list or watch requests are answered with `status` (a Status object). */
  fail(kind: 'list' | 'watch', status: number, { times = 1 }: { times?: number } = {}): void {
    for (let i = 0; i < times; i++) this.#faults[kind].push({ kind: 'status', status });
  }

  /**
   * The next `times` list or watch requests get no answer; a watch gets its headers (unless
   * `beforeHeaders`) and then nothing, ever. The client has to give up on them itself.
   */
  stall(kind: 'list' | 'watch', { times = 1, beforeHeaders = false }: { times?: number; beforeHeaders?: boolean } = {}): void {
    for (let i = 0; i < times; i++) this.#faults[kind].push({ kind: 'stall', beforeHeaders });
  }

  /**
   * The next `times` list requests are answered 200 with `body` as it is (`'{}'`, `'{"items":null}'`,
   * JSON cut short): what a broken server or proxy in front of one might send.
   */
  answerList(body: string, { times = 1 }: { times?: number } = {}): void {
    for (let i = 0; i < times; i++) this.#faults.list.push({ kind: 'body', body });
  }

  /** Writes `text` as it is to every open watch: lines that are not events, or half of one. */
  writeRaw(text: string): Promise<Delivery> {
    return this.#write(() => [], () => text);
  }

  /**
   * The next chunk of events written to the watches goes through `transform` first (cut it short,
   * garble it): the events are stored and replayed as usual, only that write is damaged.
   */
  mangleNext(transform: (chunk: string) => string): void {
    this.#mangle = transform;
  }

  /** Open watches go silent but stay open: later events are not written to them. */
  stallWatches(): number {
    for (const w of this.#watchers) w.stalled = true;
    return this.#watchers.size;
  }

  /** Destroys the connections of open watches (a network failure, an API server crash). */
  dropWatches(): number {
    const n = this.#watchers.size;
    for (const w of this.#watchers) {
      w.res.socket?.destroy();
      this.#forget(w);
    }
    return n;
  }

  /** Ends open watches cleanly (the server's watch timeout). */
  endWatches(): number {
    const n = this.#watchers.size;
    for (const w of this.#watchers) {
      w.res.end();
      this.#forget(w);
    }
    return n;
  }

  /** Plugs in more users, their RBAC and the paths beyond EndpointSlices (see {@link ApiServerExtension}). */
  extend(extension: ApiServerExtension): void {
    this.#extension = extension;
  }

  /** While on, every authenticated request is refused with 403 (RBAC denies it). */
  forbid(on = true): void {
    this.#forbidden = on;
  }

  /** Resolves with the next request that `match` accepts (register before causing it). */
  nextRequest(match: (r: RequestRecord) => boolean = () => true): Promise<RequestRecord> {
    return new Promise((resolve) => {
      const listener = (r: RequestRecord) => {
        if (!match(r)) return;
        this.off('request', listener);
        resolve(r);
      };
      this.on('request', listener);
    });
  }

  /** Resolves once every client connection is closed. */
  async idle(): Promise<void> {
    await Promise.all([...this.#sockets].map((s) => (s.closed ? undefined : new Promise((resolve) => s.once('close', resolve)))));
  }

  /** Stops the server and cuts every connection. */
  async close(): Promise<void> {
    for (const w of this.#watchers) clearTimeout(w.timer);
    this.#watchers.clear();
    this.#held.clear();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }

  /** Takes a watch off the list at once (its socket's close event comes later). */
  #forget(w: Watcher): void {
    clearTimeout(w.timer);
    this.#watchers.delete(w);
  }

  #store(input: EndpointSliceObject): HistoryEntry {
    const object = structuredClone(input);
    object.apiVersion ??= 'discovery.k8s.io/v1';
    object.kind ??= 'EndpointSlice';
    object.metadata.namespace ??= 'default';
    object.metadata.labels ??= {};
    object.metadata.uid ??= `uid-slice-${object.metadata.namespace}-${object.metadata.name}`;
    const key = `${object.metadata.namespace}/${object.metadata.name}`;
    const type = this.#objects.has(key) ? 'MODIFIED' : 'ADDED';
    const rv = ++this.#rv;
    object.metadata.resourceVersion = String(rv);
    this.#objects.set(key, object);
    return this.#record(rv, { type, object: structuredClone(object) as unknown as Record<string, unknown> });
  }

  #record(rv: number, event: WatchEvent): HistoryEntry {
    const metadata = event.object.metadata as EndpointSliceObject['metadata'];
    const entry = { rv, event, namespace: metadata.namespace ?? 'default', labels: metadata.labels ?? {} };
    this.#history.push(entry);
    return entry;
  }

  #broadcast(entries: HistoryEntry[]): Promise<Delivery> {
    return this.#write((w) => entries.filter((e) => matches(w, e)).map((e) => e.event));
  }

  /**
   * Writes each open, non-stalled watch its events in one chunk (or `raw`'s text); resolves once
   * all are written.
   */
  async #write(eventsFor: (w: Watcher) => WatchEvent[], raw?: () => string): Promise<Delivery> {
    const writes: Promise<void>[] = [];
    const mangle = raw === undefined ? this.#mangle : undefined;
    let mangled = false;
    for (const w of this.#watchers) {
      if (w.stalled || w.res.writableEnded || w.res.destroyed) continue;
      const events = eventsFor(w);
      if (events.length === 0 && raw === undefined) continue;
      let chunk = raw?.() ?? events.map((e) => `${JSON.stringify(e)}\n`).join('');
      if (mangle !== undefined) {
        chunk = mangle(chunk);
        mangled = true;
      }
      // A connection that dies meanwhile may never call back; its close settles the write too.
      writes.push(
        new Promise((resolve) => {
          w.res.once('close', resolve);
          w.res.write(chunk, () => {
            w.res.off('close', resolve);
            resolve();
          });
        }),
      );
    }
    if (mangled) this.#mangle = undefined;
    await Promise.all(writes);
    return { resourceVersion: String(this.#rv), watchers: writes.length, writtenAt: performance.now() };
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', this.url);
    const query = Object.fromEntries(url.searchParams);
    const watch = query.watch === 'true' || query.watch === '1';
    const match = PATH.exec(url.pathname);
    const auth = req.headers.authorization;
    const token = auth?.startsWith('Bearer ') ? auth.slice('Bearer '.length) : undefined;
    const socket = req.socket as Partial<TLSSocket>;
    const peer = socket.authorized === true ? socket.getPeerCertificate?.() : undefined;
    const clientCertificate = typeof peer?.subject?.CN === 'string' ? peer.subject.CN : undefined;
    let closedResolve!: () => void;
    const record: RequestRecord = {
      seq: ++this.#seq,
      kind: match === null ? 'other' : watch ? 'watch' : 'list',
      method: req.method ?? 'GET',
      path: url.pathname,
      query,
      token,
      ...(clientCertificate !== undefined && { clientCertificate }),
      status: undefined,
      closed: new Promise((resolve) => (closedResolve = resolve)),
    };
    res.on('close', () => {
      this.#held.delete(res);
      closedResolve();
    });
    this.requests.push(record);
    this.emit('request', record);

    const answer = (status: number, body: unknown) => {
      record.status = status;
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const user =
      token === this.token || clientCertificate !== undefined ? ADMIN_USER : token === undefined ? undefined : this.#extension?.authenticate(token);
    if (user === undefined) {
      return answer(401, statusObject(401, 'Unauthorized'));
    }
    if (match === null && this.#extension !== undefined) return this.#extension.handle(req, res, user, record);
    if (match === null) return answer(404, statusObject(404, 'the server could not find the requested resource'));
    const namespace = match[1] === undefined ? undefined : decodeURIComponent(match[1]);
    if (this.#forbidden) {
      return answer(
        403,
        statusObject(403, `endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:${namespace}:client" cannot ${watch ? 'watch' : 'list'} resource "endpointslices" in API group "discovery.k8s.io" in the namespace "${namespace}"`),
      );
    }
    const denied = user === ADMIN_USER ? undefined : this.#extension?.authorize(user, watch ? 'watch' : 'list', namespace);
    if (denied !== undefined) return answer(403, statusObject(403, denied));
    if (record.method !== 'GET') return answer(405, statusObject(405, `${record.method} is not allowed`));
    let selector: (labels: Record<string, string>) => boolean;
    try {
      selector = parseSelector(query.labelSelector ?? '');
    } catch (error) {
      return answer(400, statusObject(400, (error as Error).message));
    }

    const fault = this.#faults[record.kind as 'list' | 'watch'].shift();
    if (fault?.kind === 'status') return answer(fault.status, statusObject(fault.status, `injected fault ${fault.status}`));
    if (fault?.kind === 'body' && !watch) {
      record.status = 200;
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(fault.body);
      return;
    }
    if (fault?.kind === 'stall' && (fault.beforeHeaders || !watch)) {
      this.#held.add(res);
      return;
    }

    if (!watch) return this.#list(query, namespace, selector, answer);

    record.status = 200;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const watcher: Watcher = {
      res,
      namespace,
      selector,
      bookmarks: query.allowWatchBookmarks === 'true',
      stalled: fault?.kind === 'stall',
      timer: undefined,
    };
    const from = query.resourceVersion;
    if (from !== undefined && from !== '' && from !== '0' && Number(from) < this.#compactedRv) {
      // As the watch cache does: a 200 whose only event says the resourceVersion is gone.
      res.end(`${JSON.stringify({ type: 'ERROR', object: statusObject(410, `too old resource version: ${from} (${this.#compactedRv})`) })}\n`);
      return;
    }
    const initial =
      from === undefined || from === '' || from === '0'
        ? [...this.#objects.values()]
            .filter((o) => matches(watcher, { namespace: o.metadata.namespace ?? 'default', labels: o.metadata.labels ?? {} }))
            .map((o) => ({ type: 'ADDED', object: o }))
        : this.#history.filter((e) => e.rv > Number(from) && matches(watcher, e)).map((e) => e.event);
    if (initial.length > 0 && !watcher.stalled) res.write(initial.map((e) => `${JSON.stringify(e)}\n`).join(''));
    const timeoutSeconds = Number(query.timeoutSeconds);
    if (Number.isFinite(timeoutSeconds) && timeoutSeconds > 0) {
      watcher.timer = setTimeout(() => {
        res.end();
        this.#forget(watcher);
      }, timeoutSeconds * 1000);
    }
    this.#watchers.add(watcher);
    res.on('close', () => this.#forget(watcher));
  }

  #list(
    query: Record<string, string>,
    namespace: string | undefined,
    selector: (labels: Record<string, string>) => boolean,
    answer: (status: number, body: unknown) => void,
  ): void {
    let items: EndpointSliceObject[];
    let rv: number;
    if (query.continue !== undefined && query.continue !== '') {
      const rest = this.#continues.get(query.continue);
      if (rest === undefined) {
        return answer(410, statusObject(410, 'The provided continue parameter is too old to display a consistent list result.'));
      }
      this.#continues.delete(query.continue);
      ({ items, rv } = rest);
    } else {
      items = [...this.#objects.values()]
        .filter((o) => (namespace === undefined || o.metadata.namespace === namespace) && selector(o.metadata.labels ?? {}))
        .sort((a, b) => (`${a.metadata.namespace}/${a.metadata.name}` < `${b.metadata.namespace}/${b.metadata.name}` ? -1 : 1))
        .map((o) => structuredClone(o));
      rv = this.#rv;
    }
    const limit = Number(query.limit) > 0 ? Number(query.limit) : Infinity;
    const size = Math.min(limit, this.#maxPageSize);
    const page = items.slice(0, size);
    const metadata: Record<string, string> = { resourceVersion: String(rv) };
    if (items.length > size) {
      const token = `c${this.#seq}-${rv}`;
      this.#continues.set(token, { items: items.slice(size), rv });
      metadata.continue = token;
    }
    answer(200, { kind: 'EndpointSliceList', apiVersion: 'discovery.k8s.io/v1', metadata, items: page });
  }
}

function matches(w: Watcher, e: { namespace: string; labels: Record<string, string> }): boolean {
  return (w.namespace === undefined || w.namespace === e.namespace) && w.selector(e.labels);
}

/** The Status object the API server answers a failure with; `reason` from the code unless given. */
export function statusObject(code: number, message: string, { reason, details }: { reason?: string; details?: Record<string, unknown> } = {}): Record<string, unknown> {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason: reason ?? REASONS[code] ?? 'Unknown', ...(details !== undefined && { details }), code };
}

/** Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, joined by commas. */
export function parseSelector(text: string): (labels: Record<string, string>) => boolean {
  const terms = text
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t.length > 0)
    .map((term): ((labels: Record<string, string>) => boolean) => {
      const m = /^([^=!]+)(!=|==|=)(.*)$/.exec(term);
      if (m !== null) {
        const [, key, op, value] = m;
        return op === '!=' ? (l) => l[key.trim()] !== value.trim() : (l) => l[key.trim()] === value.trim();
      }
      if (term.startsWith('!')) return (l) => !(term.slice(1) in l);
      if (/^[\w./-]+$/.test(term)) return (l) => term in l;
      throw new Error(`unable to parse requirement: ${term}`);
    });
  return (labels) => terms.every((t) => t(labels));
}
