/**
 * A small authoritative DNS server on loopback, built on `dns-packet`: the tests' (and the
 * bench's stand-in cluster's) answer to "what does cluster DNS say about this headless name".
 * It serves A, AAAA and SRV records that the caller changes at run time, fails on demand
 * (SERVFAIL, REFUSED, silence, NXDOMAIN, NODATA), answers what no zone would (records of another
 * name, bytes that do not parse) when told to, can answer slowly, and counts what it was asked
 * so a test waits for "the next poll" on an event instead of sleeping.
 *
 * UDP first, as resolvers do; an answer too large for the datagram goes out truncated (TC) and the
 * resolver repeats the question over TCP on the same port, so large pod counts work as in a real
 * cluster.
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIP, type Server, type Socket as TcpSocket } from 'node:net';
import * as dnsPacket from 'dns-packet';

/** One SRV record: Kubernetes publishes one per ready pod and named port. */
export interface SrvRecord {
  target: string;
  port: number;
  priority?: number;
  weight?: number;
}

/** The records of one name; a type left out answers NODATA. */
export interface DnsRecords {
  A?: readonly string[];
  AAAA?: readonly string[];
  SRV?: readonly SrvRecord[];
}

/** The record types this server answers. */
export type DnsRecordType = 'A' | 'AAAA' | 'SRV';

/**
 * An answer no zone would give, for one name and type (see {@link DnsServer.answer}): records put
 * in the answer section exactly as given (any owner name, type or data: records of another name,
 * a CNAME chain), or a function building the whole response from the query, to send bytes that
 * are malformed on purpose.
 */
export type RawAnswer = readonly dnsPacket.Answer[] | ((query: dnsPacket.DecodedPacket) => Uint8Array);

/**
 * How to fail: an rcode (`servfail`, `refused`, `nxdomain`), an empty NOERROR answer (`nodata`),
 * or no answer at all (`timeout`), whatever the records say.
 */
export type DnsFailure = 'servfail' | 'refused' | 'timeout' | 'nxdomain' | 'nodata';

/** Which queries a failure applies to, and for how many of them. */
export interface FailureScope {
  /** Only this name (any case, trailing dot or not); every name when left out. */
  name?: string;
  /** Only this type; every type when left out. */
  type?: string;
  /** Only the next `times` matching queries; every one until `recover()` when left out. */
  times?: number;
}

/** A query as the server received it. */
export interface DnsQuery {
  /** Lower case, without the trailing dot. */
  readonly name: string;
  readonly type: string;
  readonly transport: 'udp' | 'tcp';
  /** 1 for the first query this server received, then 2, 3… */
  readonly seq: number;
}

/** Options of {@link DnsServer.start}. */
export interface DnsServerOptions {
  /** A loopback address to listen on: `127.0.0.1` (default) or `::1`. */
  host?: string;
  /** 0 (default) picks a free port, the same for UDP and TCP. */
  port?: number;
  /** TTL of every record, in seconds. 0 (default) so resolvers cache nothing and each poll asks. */
  ttl?: number;
}

interface Rule {
  readonly mode: DnsFailure;
  readonly name: string | undefined;
  readonly type: string | undefined;
  remaining: number;
}

type Reply = (response: Buffer) => void;

// A random port free for UDP may be taken for TCP; a few tries find one free for both.
const BIND_ATTEMPTS = 10;
// Without EDNS a UDP answer must fit in 512 bytes (RFC 1035 §4.2.1).
const CLASSIC_UDP_SIZE = 512;

/** A DNS server on loopback whose records and failures a test drives; see the module comment. */
export class DnsServer {
  /** Listens on loopback and resolves once both UDP and TCP are bound. */
  static async start(options: DnsServerOptions = {}): Promise<DnsServer> {
    const host = options.host ?? '127.0.0.1';
    const family = isIP(host);
    if (family === 0 || !(host.startsWith('127.') || host === '::1')) {
      throw new Error(`DnsServer listens on loopback only (127.0.0.0/8 or ::1), got ${JSON.stringify(host)}`);
    }
    const attempts = options.port ? 1 : BIND_ATTEMPTS;
    let lastError: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const udp = createSocket(family === 6 ? 'udp6' : 'udp4');
      let tcp: Server | undefined;
      try {
        await new Promise<void>((resolve, reject) => {
          udp.once('error', reject);
          udp.bind(options.port ?? 0, host, () => {
            udp.off('error', reject);
            resolve();
          });
        });
        const port = udp.address().port;
        const server = createServer();
        tcp = server;
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, host, () => {
            server.off('error', reject);
            resolve();
          });
        });
        return new DnsServer(udp, server, host, port, options.ttl ?? 0);
      } catch (error) {
        lastError = error;
        // A failed try leaves nothing behind either: the caller may count handles right after.
        await new Promise<void>((resolve) => udp.close(() => resolve()));
        const server = tcp;
        if (server?.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
        await closePhase();
      }
    }
    throw lastError;
  }

  /** The address to listen on, as given. */
  readonly host: string;
  readonly port: number;
  /** Seconds; applies to answers sent from now on. */
  ttl: number;
  /** Hold every answer this many milliseconds: a slow server. 0 answers at once. */
  delayMs = 0;

  readonly #udp: UdpSocket;
  readonly #tcp: Server;
  readonly #connections = new Set<TcpSocket>();
  readonly #delayed = new Set<NodeJS.Timeout>();
  #held: (() => void)[] = [];
  #holding = false;
  readonly #records = new Map<string, DnsRecords>();
  readonly #raw = new Map<string, RawAnswer>();
  readonly #counts = new Map<string, number>();
  readonly #listeners = new Set<(query: DnsQuery) => void>();
  #rules: Rule[] = [];
  #received = 0;
  #outstanding = 0;
  #maxOutstanding = 0;
  #closed = false;

  private constructor(udp: UdpSocket, tcp: Server, host: string, port: number, ttl: number) {
    this.#udp = udp;
    this.#tcp = tcp;
    this.host = host;
    this.port = port;
    this.ttl = ttl;
    udp.on('message', (message, remote) => this.#onUdp(message, remote));
    // A stray ICMP error or a send to a closed client must not take the server down.
    udp.on('error', () => {});
    tcp.on('connection', (socket) => this.#onTcp(socket));
  }

  /** `host:port` (`[::1]:port`), the form `Resolver.setServers` takes. */
  get address(): string {
    return isIP(this.host) === 6 ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
  }

  /** Queries received so far, answered or not. */
  get received(): number {
    return this.#received;
  }

  /** Queries received and not yet answered (delayed or held). Dropped ones (`timeout`) don't count. */
  get outstanding(): number {
    return this.#outstanding;
  }

  /** The most queries ever outstanding at once. */
  get maxOutstanding(): number {
    return this.#maxOutstanding;
  }

  /** Replaces every record of `name`; throws for an address that could not be encoded. */
  set(name: string, records: DnsRecords): void {
    // Checked here, where the caller can see it, rather than when an answer fails to encode.
    for (const [type, family] of [['A', 4], ['AAAA', 6]] as const) {
      for (const address of records[type] ?? []) {
        if (isIP(address) !== family) throw new Error(`${type} record of ${name} must be an IPv${family} address, got ${JSON.stringify(address)}`);
      }
    }
    for (const r of records.SRV ?? []) {
      if (!Number.isInteger(r.port) || r.port < 0 || r.port > 65535) throw new Error(`SRV port of ${name} must be 0..65535, got ${r.port}`);
    }
    this.#records.set(normalize(name), {
      ...(records.A && { A: [...records.A] }),
      ...(records.AAAA && { AAAA: [...records.AAAA] }),
      ...(records.SRV && { SRV: records.SRV.map((r) => ({ ...r })) }),
    });
  }

  /** Removes `name`: it answers NXDOMAIN from now on. */
  delete(name: string): void {
    this.#records.delete(normalize(name));
  }

  /**
   * Answers every query for `name` and `type` with `answer` from now on (NOERROR, whatever the
   * records of `name` say; failure rules still come first), or as the records say again when
   * `answer` is undefined. Throws at once for records `dns-packet` can't encode.
   */
  answer(name: string, type: string, answer: RawAnswer | undefined): void {
    const key = `${normalize(name)} ${type.toUpperCase()}`;
    if (answer === undefined) {
      this.#raw.delete(key);
      return;
    }
    if (typeof answer !== 'function') {
      // Encoded here, where the caller sees the error, not in the socket's handler where it would crash the process.
      dnsPacket.encode({ type: 'response', id: 0, questions: [{ type: 'A', name }], answers: [...answer] });
      answer = answer.map((record) => ({ ...record }));
    }
    this.#raw.set(key, answer);
  }

  /** Fails matching queries as `mode` says; the earliest rule that matches a query wins. */
  fail(mode: DnsFailure, scope: FailureScope = {}): void {
    this.#rules.push({
      mode,
      name: scope.name === undefined ? undefined : normalize(scope.name),
      type: scope.type?.toUpperCase(),
      remaining: scope.times ?? Infinity,
    });
  }

  /**
   * Keeps every answer from now on until `release()`, with no timer involved: a test holds a
   * query in flight for exactly as long as it needs to.
   */
  hold(): void {
    this.#holding = true;
  }

  /** Stops holding and sends every held answer, oldest first. */
  release(): void {
    this.#holding = false;
    const held = this.#held;
    this.#held = [];
    for (const send of held) send();
  }

  /** Drops every failure rule: answers follow the records again. */
  recover(): void {
    this.#rules = [];
  }

  /** How many queries matched: all of them, or those for a name, or a name and type. */
  count(name?: string, type?: string): number {
    if (name === undefined) return this.#received;
    const n = normalize(name);
    if (type !== undefined) return this.#counts.get(`${n} ${type.toUpperCase()}`) ?? 0;
    let total = 0;
    for (const [key, value] of this.#counts) if (key.slice(0, key.lastIndexOf(' ')) === n) total += value;
    return total;
  }

  /**
   * Calls `listener` for each query as it arrives, before the answer is built, so a listener may
   * change records or failures for that very query. Returns the function that unsubscribes.
   */
  onQuery(listener: (query: DnsQuery) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Resolves when `count(name, type)` reaches `total`: at once if it already has. The promise
   * settles in the tick the query arrives, before it is answered.
   */
  waitForQueries(total: number, name?: string, type?: string): Promise<void> {
    if (this.count(name, type) >= total) return Promise.resolve();
    return new Promise((resolve) => {
      const off = this.onQuery(() => {
        if (this.count(name, type) >= total) {
          off();
          resolve();
        }
      });
    });
  }

  /** Stops listening and drops held answers and TCP connections. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const timer of this.#delayed) clearTimeout(timer);
    this.#delayed.clear();
    this.#held = [];
    this.#listeners.clear();
    // Resolves once every handle is gone, so a caller's resource check right after sees none.
    const closing = [...this.#connections].map((socket) => {
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.destroy();
      return closed;
    });
    await Promise.all([
      ...closing,
      new Promise<void>((resolve) => this.#udp.close(() => resolve())),
      new Promise<void>((resolve) => this.#tcp.close(() => resolve())),
    ]);
    await closePhase();
  }

  #onUdp(message: Buffer, remote: RemoteInfo): void {
    let query: dnsPacket.DecodedPacket;
    try {
      query = dnsPacket.decode(message);
    } catch {
      return; // not DNS: a real server drops it too
    }
    const limit = Math.max(CLASSIC_UDP_SIZE, ednsSize(query));
    this.#handle(query, 'udp', (response) => {
      const packet = response.length > limit ? truncated(query) : response;
      this.#udp.send(packet, remote.port, remote.address);
    });
  }

  #onTcp(socket: TcpSocket): void {
    this.#connections.add(socket);
    socket.on('close', () => this.#connections.delete(socket));
    socket.on('error', () => {});
    let buffered = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      // Each message is framed by a two-byte length (RFC 1035 §4.2.2); several may share a chunk.
      while (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) {
        const length = buffered.readUInt16BE(0);
        const frame = buffered.subarray(2, 2 + length);
        buffered = buffered.subarray(2 + length);
        let query: dnsPacket.DecodedPacket;
        try {
          query = dnsPacket.decode(frame);
        } catch {
          socket.destroy();
          return;
        }
        this.#handle(query, 'tcp', (response) => {
          if (socket.writable) socket.write(Buffer.concat([lengthPrefix(response.length), response]));
        });
      }
    });
  }

  #handle(query: dnsPacket.DecodedPacket, transport: 'udp' | 'tcp', reply: Reply): void {
    const question = query.questions?.[0];
    if (question === undefined) return;
    const name = normalize(question.name);
    const type = String(question.type).toUpperCase();
    const key = `${name} ${type}`;
    this.#received++;
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1);
    const seen: DnsQuery = { name, type, transport, seq: this.#received };
    for (const listener of [...this.#listeners]) listener(seen);

    const mode = this.#takeRule(name, type);
    if (mode === 'timeout') return;
    const raw = mode === undefined ? this.#raw.get(key) : undefined;
    let response: Buffer;
    try {
      response = typeof raw === 'function' ? Buffer.from(raw(query)) : dnsPacket.encode(this.#answer(query, name, type, mode, raw));
    } catch {
      return; // a builder that throws is the test's bug; its query goes unanswered rather than crash the process
    }

    this.#outstanding++;
    this.#maxOutstanding = Math.max(this.#maxOutstanding, this.#outstanding);
    const send = () => {
      this.#outstanding--;
      if (!this.#closed) reply(response);
    };
    if (this.#holding) {
      this.#held.push(send);
      return;
    }
    if (this.delayMs <= 0) {
      send();
      return;
    }
    const timer = setTimeout(() => {
      this.#delayed.delete(timer);
      send();
    }, this.delayMs);
    this.#delayed.add(timer);
  }

  #takeRule(name: string, type: string): DnsFailure | undefined {
    const rule = this.#rules.find(
      (r) => (r.name === undefined || r.name === name) && (r.type === undefined || r.type === type),
    );
    if (rule === undefined) return undefined;
    if (--rule.remaining <= 0) this.#rules = this.#rules.filter((r) => r !== rule);
    return rule.mode;
  }

  #answer(
    query: dnsPacket.DecodedPacket,
    name: string,
    type: string,
    mode: DnsFailure | undefined,
    raw: readonly dnsPacket.Answer[] | undefined,
  ): dnsPacket.Packet {
    const base = {
      type: 'response' as const,
      id: query.id,
      // Echo the question as asked (case included) and the RD bit: resolvers match on both.
      flags: dnsPacket.AUTHORITATIVE_ANSWER | (query.flag_rd ? dnsPacket.RECURSION_DESIRED : 0),
      questions: query.questions,
    };
    if (mode === 'servfail') return { ...base, flags: base.flags | RCODE.SERVFAIL };
    if (mode === 'refused') return { ...base, flags: base.flags | RCODE.REFUSED };
    if (raw !== undefined) return { ...base, answers: [...raw] };
    const records = this.#records.get(name);
    if (mode === 'nxdomain' || records === undefined) return { ...base, flags: base.flags | RCODE.NXDOMAIN };
    if (mode === 'nodata') return base;
    const asked = query.questions![0].name;
    const ttl = this.ttl;
    let answers: dnsPacket.Answer[] = [];
    if (type === 'A' && records.A) answers = records.A.map((data) => ({ type: 'A', name: asked, ttl, data }));
    if (type === 'AAAA' && records.AAAA) answers = records.AAAA.map((data) => ({ type: 'AAAA', name: asked, ttl, data }));
    if (type === 'SRV' && records.SRV) {
      answers = records.SRV.map((r) => ({
        type: 'SRV',
        name: asked,
        ttl,
        data: { target: r.target, port: r.port, priority: r.priority ?? 0, weight: r.weight ?? 10 },
      }));
    }
    return { ...base, answers };
  }
}

// The low four bits of the flags word (RFC 1035 §4.1.1).
const RCODE = { SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

/**
 * Resolves once libuv has run its close phase. Node calls close callbacks on nextTick, before the
 * handles are really closed (that happens in the close phase, after the check phase), and until
 * then getActiveResourcesInfo() still lists them: two check phases later they are gone.
 */
async function closePhase(): Promise<void> {
  for (let turn = 0; turn < 2; turn++) await new Promise((resolve) => setImmediate(resolve));
}

function normalize(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** The UDP payload size the client advertised in its EDNS OPT record (RFC 6891), or 0. */
function ednsSize(query: dnsPacket.DecodedPacket): number {
  const opt = query.additionals?.find((a) => a.type === 'OPT');
  return opt !== undefined && 'udpPayloadSize' in opt ? opt.udpPayloadSize : 0;
}

/** The answer that tells the client to ask again over TCP. */
function truncated(query: dnsPacket.DecodedPacket): Buffer {
  return dnsPacket.encode({
    type: 'response',
    id: query.id,
    flags:
      dnsPacket.AUTHORITATIVE_ANSWER |
      dnsPacket.TRUNCATED_RESPONSE |
      (query.flag_rd ? dnsPacket.RECURSION_DESIRED : 0),
    questions: query.questions,
  });
}

function lengthPrefix(length: number): Buffer {
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE(length);
  return prefix;
}
