/**
 * The DNS client dnsEndpoints asks A, AAAA and SRV with. Node's `Resolver` (c-ares) returns every
 * record of the asked type in the answer section whatever name it belongs to, and does not say
 * which name that is: a record of another name (a cache poisoning attempt, a confused middlebox)
 * would become a pod. This client reads the answer itself and keeps only the records of the name
 * asked or of a CNAME chain starting there, as a stub resolver should (RFC 1034 §5.3.3).
 *
 * It fails as c-ares does, with the same `code` on the same conditions (`ENOTFOUND` for NXDOMAIN,
 * `ENODATA` for no record of the type, `ESERVFAIL`, `EREFUSED`, `ETIMEOUT`, `EBADRESP`,
 * `ECANCELLED`) and the same message form (`queryA ESERVFAIL name`), so callers branch as before.
 * Queries go over UDP from a fresh socket each (a random source port and id, which is what stops
 * off-path spoofing); a truncated answer is asked again over TCP on the same server.
 */
import { randomInt } from 'node:crypto';
import { getServers } from 'node:dns';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, isIP, type Socket as TcpSocket } from 'node:net';
import { debuglog } from 'node:util';
import { handlesFreed } from '../handles.ts';

const debug = debuglog('podpool:dns');

/** The record types asked, with their wire numbers and the names c-ares gives their queries. */
const TYPES = {
  A: { code: 1, syscall: 'queryA' },
  AAAA: { code: 28, syscall: 'queryAaaa' },
  SRV: { code: 33, syscall: 'querySrv' },
} as const;

/** A record type this client asks. */
export type QueryType = keyof typeof TYPES;

const CNAME = 5;
const CLASS_IN = 1;
const HEADER = 12;
// A name is at most 255 bytes on the wire (RFC 1035 §2.3.4): past that the answer is malformed.
const MAX_NAME = 255;
// Every hop of a compressed name must point strictly backwards, which already rules out loops;
// the bound also caps the work a hostile answer can cause.
const MAX_POINTERS = 64;
// A CNAME chain longer than this is a loop or an abuse; resolvers stop at about as many.
const MAX_CNAME_LINKS = 8;
const RCODES: Readonly<Record<number, string>> = { 1: 'EFORMERR', 2: 'ESERVFAIL', 3: 'ENOTFOUND', 4: 'ENOTIMP', 5: 'EREFUSED' };

/** An SRV record as `Resolver.resolveSrv` gives it. */
export interface SrvRecord {
  readonly name: string;
  readonly port: number;
  readonly priority: number;
  readonly weight: number;
}

/** A DNS server to ask. */
export interface DnsServerAddress {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
}

/** What {@link decodeResponse} found in a response to the query it was given. */
export interface DecodedResponse {
  /** 0 for NOERROR, else the rcode (3 NXDOMAIN, 2 SERVFAIL…). */
  readonly rcode: number;
  /** TC: the answer did not fit; ask again over TCP. The records are then left unread. */
  readonly truncated: boolean;
  /** The record data of the type asked, owned by the name asked or its CNAME chain. */
  readonly records: readonly (string | SrvRecord)[];
  /** Records of the type asked that belonged to another name, and were ignored. */
  readonly foreign: number;
}

/** An error as Node's resolver raises it: `code`, `syscall`, `hostname`. */
function dnsError(code: string, syscall: string, hostname: string): NodeJS.ErrnoException & { hostname: string } {
  return Object.assign(new Error(`${syscall} ${code} ${hostname}`), { code, syscall, hostname });
}

/** Thrown by the decoder for bytes that are not a well-formed answer; becomes EBADRESP. */
class Malformed extends Error {}

/**
 * Parses servers in the forms `Resolver.setServers` takes: `'10.96.0.10'`, `'127.0.0.1:5353'`,
 * `'::1'`, `'[::1]:53'`. Throws a plain `Error` naming the entry for anything else.
 */
export function parseServers(servers: readonly string[]): DnsServerAddress[] {
  return servers.map((server) => {
    if (typeof server !== 'string') throw new Error(`not a DNS server: ${JSON.stringify(server)}`);
    let address = server;
    let port = 53;
    const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(server);
    const withPort = /^([^:]+):(\d{1,5})$/.exec(server);
    if (bracketed) {
      address = bracketed[1];
      if (bracketed[2] !== undefined) port = Number(bracketed[2]);
    } else if (withPort) {
      address = withPort[1];
      port = Number(withPort[2]);
    }
    const family = isIP(address);
    // A scope (fe80::1%eth0) is what getServers() may list for a link-local server; UDP takes it.
    if (family === 0 || (bracketed && family !== 6) || (withPort && family !== 4) || port < 1 || port > 65535) {
      throw new Error(`not a DNS server: ${JSON.stringify(server)}`);
    }
    return { address, port, family: family as 4 | 6 };
  });
}

/** A query for `name`'s records of `type`, class IN, recursion desired. */
export function encodeQuery(id: number, name: string, type: QueryType): Buffer {
  // The root, which an SRV target of "." names: asked as such, the server says what it has.
  const trimmed = trimDot(name);
  const labels = trimmed === '' ? [] : trimmed.split('.');
  let length = HEADER + 4 + 1;
  for (const label of labels) length += 1 + Buffer.byteLength(label);
  if (length - HEADER - 4 > MAX_NAME) throw new Malformed(`name too long: ${name}`);
  const message = Buffer.alloc(length);
  message.writeUInt16BE(id, 0);
  message.writeUInt16BE(0x0100, 2); // RD
  message.writeUInt16BE(1, 4); // one question
  let at = HEADER;
  for (const label of labels) {
    const bytes = Buffer.from(label);
    if (bytes.length === 0 || bytes.length > 63) throw new Malformed(`bad label in ${name}`);
    message[at++] = bytes.length;
    at += bytes.copy(message, at);
  }
  message[at++] = 0;
  message.writeUInt16BE(TYPES[type].code, at);
  message.writeUInt16BE(CLASS_IN, at + 2);
  return message;
}

/**
 * Decodes a response to the query (`id`, `name`, `type`). Returns undefined for a message that is
 * not that response (another id, not a response, another question): on UDP anyone can send one,
 * so it is ignored rather than believed. Throws for a response whose records do not parse.
 */
export function decodeResponse(message: Uint8Array, id: number, name: string, type: QueryType): DecodedResponse | undefined {
  const bytes = Buffer.from(message.buffer, message.byteOffset, message.byteLength);
  if (bytes.length < HEADER) return undefined;
  const flags = bytes.readUInt16BE(2);
  if (bytes.readUInt16BE(0) !== id || (flags & 0x8000) === 0 || ((flags >> 11) & 0xf) !== 0) return undefined;
  if (bytes.readUInt16BE(4) !== 1) return undefined;
  const asked = trimDot(name).toLowerCase();
  let question: { name: string; end: number };
  try {
    question = readName(bytes, HEADER);
  } catch {
    return undefined;
  }
  if (question.end + 4 > bytes.length) return undefined;
  if (question.name.toLowerCase() !== asked || bytes.readUInt16BE(question.end) !== TYPES[type].code || bytes.readUInt16BE(question.end + 2) !== CLASS_IN) {
    return undefined;
  }
  const rcode = flags & 0xf;
  const truncated = (flags & 0x0200) !== 0;
  if (truncated || rcode !== 0) return { rcode, truncated, records: [], foreign: 0 };

  const count = bytes.readUInt16BE(6);
  const wanted = TYPES[type].code;
  const found: { owner: string; data: string | SrvRecord }[] = [];
  const aliases = new Map<string, string>();
  let at = question.end + 4;
  for (let i = 0; i < count; i++) {
    const owner = readName(bytes, at);
    at = owner.end;
    if (at + 10 > bytes.length) throw new Malformed('record header cut short');
    const rtype = bytes.readUInt16BE(at);
    const rclass = bytes.readUInt16BE(at + 2);
    const length = bytes.readUInt16BE(at + 8);
    const start = at + 10;
    const end = start + length;
    if (end > bytes.length) throw new Malformed('record data cut short');
    at = end;
    if (rclass !== CLASS_IN) continue;
    const key = owner.name.toLowerCase();
    if (rtype === CNAME) {
      const target = readName(bytes, start);
      if (target.end !== end) throw new Malformed('CNAME data of the wrong length');
      if (!aliases.has(key)) aliases.set(key, target.name.toLowerCase());
    } else if (rtype === wanted) {
      found.push({ owner: key, data: readData(bytes, type, start, end) });
    }
  }
  const chain = new Set([asked]);
  for (let name = asked, link = 0; link < MAX_CNAME_LINKS; link++) {
    const next = aliases.get(name);
    if (next === undefined || chain.has(next)) break;
    chain.add(next);
    name = next;
  }
  const records: (string | SrvRecord)[] = [];
  let foreign = 0;
  for (const { owner, data } of found) {
    if (chain.has(owner)) records.push(data);
    else foreign++;
  }
  return { rcode, truncated, records, foreign };
}

function readData(bytes: Buffer, type: QueryType, start: number, end: number): string | SrvRecord {
  const length = end - start;
  if (type === 'A') {
    if (length !== 4) throw new Malformed(`A record of ${length} bytes`);
    return `${bytes[start]}.${bytes[start + 1]}.${bytes[start + 2]}.${bytes[start + 3]}`;
  }
  if (type === 'AAAA') {
    if (length !== 16) throw new Malformed(`AAAA record of ${length} bytes`);
    return formatIPv6(bytes, start);
  }
  if (length < 7) throw new Malformed(`SRV record of ${length} bytes`);
  const target = readName(bytes, start + 6);
  if (target.end !== end) throw new Malformed('SRV data of the wrong length');
  return { name: target.name, port: bytes.readUInt16BE(start + 4), priority: bytes.readUInt16BE(start), weight: bytes.readUInt16BE(start + 2) };
}

/**
 * The name at `offset`, following compression pointers (each strictly backwards, so no loop), and
 * the offset just past it where it starts. Labels are returned as text, with `.` and bytes outside
 * printable ASCII escaped as `\DDD` (as c-ares does), so a label holding a dot cannot pass for two.
 */
function readName(bytes: Buffer, offset: number): { name: string; end: number } {
  let at = offset;
  let end = -1;
  let wire = 1;
  let pointers = 0;
  let lowest = offset;
  let name = '';
  for (;;) {
    if (at >= bytes.length) throw new Malformed('name runs past the end');
    const length = bytes[at];
    if (length === 0) {
      if (end === -1) end = at + 1;
      break;
    }
    if ((length & 0xc0) === 0xc0) {
      if (at + 1 >= bytes.length) throw new Malformed('pointer cut short');
      const target = ((length & 0x3f) << 8) | bytes[at + 1];
      if (end === -1) end = at + 2;
      if (target >= lowest || ++pointers > MAX_POINTERS) throw new Malformed('compression pointer loop');
      lowest = target;
      at = target;
      continue;
    }
    if ((length & 0xc0) !== 0) throw new Malformed('unknown label type');
    if (at + 1 + length > bytes.length) throw new Malformed('label runs past the end');
    wire += length + 1;
    if (wire > MAX_NAME) throw new Malformed('name longer than 255 bytes');
    if (name.length > 0) name += '.';
    for (let i = at + 1; i <= at + length; i++) {
      const c = bytes[i];
      name += c === 0x2e || c === 0x5c || c < 0x21 || c > 0x7e ? `\\${String(c).padStart(3, '0')}` : String.fromCharCode(c);
    }
    at += 1 + length;
  }
  return { name, end };
}

/**
 * IPv6 text as `inet_ntop` writes it, which is what c-ares returned: lower case, the longest run
 * of two or more zero groups (the first of equals) as `::`, and an IPv4 tail for mapped and
 * compatible addresses (`::ffff:127.0.0.1`).
 */
export function formatIPv6(bytes: Uint8Array, start = 0): string {
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push((bytes[start + 2 * i] << 8) | bytes[start + 2 * i + 1]);
  let best = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLength) {
      best = i;
      bestLength = j - i;
    }
    i = j;
  }
  if (bestLength < 2) best = -1;
  let text = '';
  for (let i = 0; i < 8; i++) {
    if (i === best) {
      text += i === 0 ? '::' : ':';
      i += bestLength - 1;
      continue;
    }
    if (i === 6 && best === 0 && (bestLength === 6 || (bestLength === 7 && words[7] !== 1) || (bestLength === 5 && words[5] === 0xffff))) {
      text += `${bytes[start + 12]}.${bytes[start + 13]}.${bytes[start + 14]}.${bytes[start + 15]}`;
      break;
    }
    text += words[i].toString(16);
    if (i < 7) text += ':';
  }
  return text;
}

function trimDot(name: string): string {
  return name.endsWith('.') ? name.slice(0, -1) : name;
}

/** Options of {@link DnsClient}. */
export interface DnsClientOptions {
  /** Servers to ask in order; the system's (`dns.getServers()`, read per query) when undefined. */
  readonly servers?: readonly DnsServerAddress[];
  /** How long one try waits for its answer. */
  readonly timeoutMs: number;
  /** Tries per server. */
  readonly tries: number;
}

/** One try on one server: the response, or the code it failed with. */
type Outcome = { readonly response: DecodedResponse } | { readonly code: string };

/**
 * Asks A, AAAA and SRV as `Resolver` does (same results, same error codes) but keeps only the
 * records of the name asked; see the module comment. `cancel()` ends every query in flight with
 * `ECANCELLED` and closes its socket at once.
 */
export class DnsClient {
  readonly #servers: readonly DnsServerAddress[] | undefined;
  readonly #timeoutMs: number;
  readonly #tries: number;
  // What ends each try in flight: cancel() calls them all.
  readonly #inFlight = new Set<(code: string) => void>();
  #foreign = 0;

  constructor(options: DnsClientOptions) {
    this.#servers = options.servers;
    this.#timeoutMs = options.timeoutMs;
    this.#tries = options.tries;
  }

  /** Records of the type asked that belonged to another name and were ignored, since creation. */
  get foreign(): number {
    return this.#foreign;
  }

  resolve4(name: string): Promise<string[]> {
    return this.#resolve(name, 'A') as Promise<string[]>;
  }

  resolve6(name: string): Promise<string[]> {
    return this.#resolve(name, 'AAAA') as Promise<string[]>;
  }

  resolveSrv(name: string): Promise<SrvRecord[]> {
    return this.#resolve(name, 'SRV') as Promise<SrvRecord[]>;
  }

  /** Ends every query in flight with ECANCELLED; its sockets are closed before this returns. */
  cancel(): void {
    for (const end of [...this.#inFlight]) end('ECANCELLED');
  }

  async #resolve(name: string, type: QueryType): Promise<(string | SrvRecord)[]> {
    const { syscall } = TYPES[type];
    const servers = this.#servers ?? systemServers();
    // c-ares's answer when it has nobody to ask.
    let code = 'ECONNREFUSED';
    for (const server of servers) {
      for (let attempt = 0; attempt < this.#tries; attempt++) {
        const outcome = await this.#try(server, name, type);
        if ('code' in outcome) {
          code = outcome.code;
          if (code === 'ECANCELLED') throw dnsError(code, syscall, name);
          // A malformed answer would come again from the same server: try the next one.
          if (code === 'EBADRESP') break;
          continue;
        }
        const { rcode, records, foreign } = outcome.response;
        if (foreign > 0) {
          this.#foreign += foreign;
          debug('dns %s %s: ignored %d records of other names from %s', name, type, foreign, server.address);
        }
        if (rcode === 0) {
          if (records.length === 0) throw dnsError('ENODATA', syscall, name);
          return [...records];
        }
        code = RCODES[rcode] ?? 'EBADRESP';
        if (code === 'ENOTFOUND') throw dnsError(code, syscall, name);
        // SERVFAIL, REFUSED, NOTIMP, FORMERR: this server won't do; c-ares moves to the next.
        break;
      }
    }
    throw dnsError(code, syscall, name);
  }

  /** One UDP try, and its TCP repeat when the answer comes back truncated. */
  #try(server: DnsServerAddress, name: string, type: QueryType): Promise<Outcome> {
    const id = randomInt(0x10000);
    let query: Buffer;
    try {
      query = encodeQuery(id, name, type);
    } catch {
      return Promise.resolve({ code: 'EBADNAME' });
    }
    return new Promise<Outcome>((resolve) => {
      let udp: UdpSocket | undefined = createSocket(server.family === 6 ? 'udp6' : 'udp4');
      let tcp: TcpSocket | undefined;
      let tcpClosed = false;
      let settled = false;
      // Closes what is open at once (the fd goes now, not at some later tick) and settles once
      // libuv has let go of the handles, so a caller that awaits the query has nothing left over.
      const end = (outcome: Outcome): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#inFlight.delete(endWith);
        const closing: Promise<void>[] = [];
        if (udp !== undefined) {
          const socket = udp;
          udp = undefined;
          closing.push(new Promise((done) => socket.close(() => done())));
        }
        if (tcp !== undefined) {
          const socket = tcp;
          tcp = undefined;
          closing.push(tcpClosed ? Promise.resolve() : new Promise((done) => socket.once('close', () => done())));
          socket.destroy();
        }
        void Promise.all(closing)
          .then(handlesFreed)
          .then(() => resolve(outcome));
      };
      const endWith = (code: string): void => end({ code });
      // Armed when the question is sent: the time is the server's to answer, not ours to bind.
      let timer: NodeJS.Timeout | undefined;
      this.#inFlight.add(endWith);

      const answered = (message: Buffer): boolean => {
        let response: DecodedResponse | undefined;
        try {
          response = decodeResponse(message, id, name, type);
        } catch (error) {
          debug('dns %s %s: malformed answer from %s: %s', name, type, server.address, (error as Error).message);
          end({ code: 'EBADRESP' });
          return true;
        }
        if (response === undefined) return false;
        if (!response.truncated) {
          end({ response });
          return true;
        }
        overTcp();
        return true;
      };

      const overTcp = (): void => {
        const socket = udp!;
        udp = undefined;
        socket.close();
        tcp = connect({ host: server.address, port: server.port, family: server.family });
        let buffered: Buffer = Buffer.alloc(0);
        tcp.on('close', () => {
          tcpClosed = true;
          end({ code: 'ECONNREFUSED' });
        });
        // c-ares reports any failure to talk to a server as ECONNREFUSED.
        tcp.on('error', () => end({ code: 'ECONNREFUSED' }));
        tcp.on('data', (chunk: Buffer) => {
          buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
          if (buffered.length < 2 || buffered.length < 2 + buffered.readUInt16BE(0)) return;
          const frame = buffered.subarray(2, 2 + buffered.readUInt16BE(0));
          // On a connection only the server can answer: anything but the answer is a bad one.
          if (!answered(frame)) end({ code: 'EBADRESP' });
        });
        const prefix = Buffer.alloc(2);
        prefix.writeUInt16BE(query.length);
        // write, not end: a server may stop answering a connection half-closed by its client.
        tcp.write(Buffer.concat([prefix, query]));
      };

      // An ICMP port unreachable, say; c-ares reports any failure to talk to a server so.
      udp.on('error', () => end({ code: 'ECONNREFUSED' }));
      udp.on('message', (message, remote) => {
        // The socket is connected, so the kernel already drops other senders; checked anyway.
        if (remote.port !== server.port || remote.address !== server.address) return;
        answered(message);
      });
      udp.connect(server.port, server.address, () => {
        if (udp === undefined) return;
        timer = setTimeout(endWith, this.#timeoutMs, 'ETIMEOUT');
        udp.send(query);
      });
    });
  }
}

/** The system's servers, as c-ares read them from resolv.conf when Node started. */
function systemServers(): DnsServerAddress[] {
  try {
    return parseServers(getServers());
  } catch {
    return [];
  }
}
