/**
 * The DNS client dnsEndpoints asks with: its decoder on hand-made bytes (compression loops,
 * records cut short, another id, records of another name), and the client against the DNS test
 * server on loopback, compared with what Node's own Resolver (c-ares) answers to the same server,
 * which it replaces: same records, same error codes and messages, minus the records of other names.
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import { once } from 'node:events';
import { isIP, SocketAddress } from 'node:net';
import { afterEach, beforeEach, describe, it } from 'node:test';
import * as dnsPacket from 'dns-packet';
import { DnsClient, decodeResponse, encodeQuery, formatIPv6, parseServers } from '../../src/discovery/dns-query.ts';
import { DnsServer } from '../../testkit/dns-server.ts';

const HOST = 'backend.default.svc.cluster.local';
const SRV = `_grpc._tcp.${HOST}`;
const T = { timeout: 10_000 };

/** A response to (id, name, type) holding `answers`, encoded by dns-packet. */
function response(id: number, answers: dnsPacket.Answer[], options: { name?: string; type?: 'A' | 'AAAA' | 'SRV'; flags?: number } = {}): Buffer {
  return dnsPacket.encode({
    type: 'response',
    id,
    flags: options.flags ?? 0,
    questions: [{ type: options.type ?? 'A', name: options.name ?? HOST }],
    answers,
  });
}

/** Header (id 7, QR, one question, `answers` records) and the question for HOST A, then `tail`. */
function handMade(answers: number, tail: number[]): Buffer {
  const question = encodeQuery(7, HOST, 'A').subarray(12);
  return Buffer.concat([Buffer.from([0, 7, 0x81, 0x80, 0, 1, 0, answers, 0, 0, 0, 0]), question, Buffer.from(tail)]);
}

describe('encodeQuery', () => {
  it('asks one question, class IN, with recursion desired and the id given', () => {
    for (const [name, type] of [[HOST, 'A'], [`${HOST}.`, 'AAAA'], [SRV, 'SRV']] as const) {
      const decoded = dnsPacket.decode(encodeQuery(0xbeef, name, type));
      assert.equal(decoded.id, 0xbeef);
      assert.equal(decoded.type, 'query');
      assert.equal(decoded.flag_rd, true);
      assert.deepEqual(decoded.questions, [{ name: name.replace(/\.$/, ''), type, class: 'IN' }]);
    }
  });
});

describe('decodeResponse', () => {
  it('reads the records of the name asked, in any case', () => {
    const bytes = response(9, [
      { type: 'A', name: HOST, data: '10.0.0.1' },
      { type: 'A', name: HOST.toUpperCase(), data: '10.0.0.2' },
    ]);
    assert.deepEqual(decodeResponse(bytes, 9, HOST, 'A'), { rcode: 0, truncated: false, records: ['10.0.0.1', '10.0.0.2'], foreign: 0 });
  });

  it('ignores, and counts, A records of another name', () => {
    const bytes = response(9, [
      { type: 'A', name: HOST, data: '10.0.0.1' },
      { type: 'A', name: 'evil.example', data: '10.0.0.66' },
      { type: 'A', name: `x.${HOST}`, data: '10.0.0.67' },
    ]);
    assert.deepEqual(decodeResponse(bytes, 9, HOST, 'A'), { rcode: 0, truncated: false, records: ['10.0.0.1'], foreign: 2 });
  });

  it('ignores an answer whose only record is of another name (an empty answer, as NODATA)', () => {
    const bytes = response(9, [{ type: 'A', name: 'evil.example', data: '10.0.0.66' }]);
    assert.deepEqual(decodeResponse(bytes, 9, HOST, 'A')?.records, []);
  });

  it('ignores SRV records of another name', () => {
    const bytes = response(
      9,
      [
        { type: 'SRV', name: SRV, data: { target: 'web-1.example', port: 50051, priority: 1, weight: 2 } },
        { type: 'SRV', name: `_grpc._tcp.evil.example`, data: { target: 'evil.example', port: 50051 } },
      ],
      { name: SRV, type: 'SRV' },
    );
    assert.deepEqual(decodeResponse(bytes, 9, SRV, 'SRV')?.records, [{ name: 'web-1.example', port: 50051, priority: 1, weight: 2 }]);
  });

  it('follows the CNAME chain from the name asked, and no other', () => {
    const bytes = response(9, [
      { type: 'CNAME', name: HOST, data: 'one.example' },
      { type: 'CNAME', name: 'ONE.example', data: 'two.example' },
      { type: 'A', name: 'two.example', data: '10.0.0.2' },
      // A chain that does not start at the name asked: its records are another name's.
      { type: 'CNAME', name: 'evil.example', data: 'three.example' },
      { type: 'A', name: 'three.example', data: '10.0.0.3' },
    ]);
    assert.deepEqual(decodeResponse(bytes, 9, HOST, 'A'), { rcode: 0, truncated: false, records: ['10.0.0.2'], foreign: 1 });
  });

  it('stops at a CNAME loop, and after 8 links', () => {
    const loop = response(9, [
      { type: 'CNAME', name: HOST, data: 'a.example' },
      { type: 'CNAME', name: 'a.example', data: HOST },
      { type: 'A', name: 'a.example', data: '10.0.0.1' },
    ]);
    assert.deepEqual(decodeResponse(loop, 9, HOST, 'A')?.records, ['10.0.0.1']);
    const links = Array.from({ length: 10 }, (_, i) => ({ type: 'CNAME' as const, name: i === 0 ? HOST : `l${i}.example`, data: `l${i + 1}.example` }));
    const at = (n: number) => response(9, [...links, { type: 'A', name: `l${n}.example`, data: '10.0.0.9' }]);
    assert.deepEqual(decodeResponse(at(8), 9, HOST, 'A')?.records, ['10.0.0.9']);
    assert.deepEqual(decodeResponse(at(9), 9, HOST, 'A')?.records, []);
  });

  it('ignores a message that is not the response to this query', () => {
    const good = response(9, [{ type: 'A', name: HOST, data: '10.0.0.1' }]);
    assert.equal(decodeResponse(good, 10, HOST, 'A'), undefined, 'another id');
    assert.equal(decodeResponse(good, 9, `x.${HOST}`, 'A'), undefined, 'another question');
    assert.equal(decodeResponse(good, 9, HOST, 'AAAA'), undefined, 'another type');
    assert.equal(decodeResponse(encodeQuery(9, HOST, 'A'), 9, HOST, 'A'), undefined, 'a query, not a response');
    assert.equal(decodeResponse(good.subarray(0, 11), 9, HOST, 'A'), undefined, 'shorter than a header');
    assert.equal(decodeResponse(good.subarray(0, 20), 9, HOST, 'A'), undefined, 'the question cut short');
  });

  it('gives the rcode and the TC bit, leaving the records of a truncated answer unread', () => {
    const nx = response(9, [], { flags: 3 });
    assert.deepEqual(decodeResponse(nx, 9, HOST, 'A'), { rcode: 3, truncated: false, records: [], foreign: 0 });
    const tc = handMade(5, [1, 2, 3]); // five records announced, garbage instead
    tc[2] |= 0x02;
    assert.deepEqual(decodeResponse(tc, 7, HOST, 'A'), { rcode: 0, truncated: true, records: [], foreign: 0 });
  });

  const malformed: [string, Buffer][] = [
    // A record whose owner is a pointer to itself: following it would never end.
    ['a pointer to itself', handMade(1, [0xc0, 12 + encodeQuery(7, HOST, 'A').length - 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 1])],
    // A pointer forwards to a pointer back to it: a two-step loop.
    ['a two-pointer loop', (() => {
      const start = encodeQuery(7, HOST, 'A').length;
      return handMade(1, [0xc0, start + 2, 0xc0, start, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 1]);
    })()],
    ['a pointer past the end', handMade(1, [0xc0, 0xff, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 1])],
    ['an A record of 3 bytes', handMade(1, [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 3, 10, 0, 0])],
    ['an AAAA-sized A record', handMade(1, [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 16, ...new Array(16).fill(0)])],
    ['record data running past the end', handMade(1, [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0])],
    ['a record header cut short', handMade(1, [0, 0, 1, 0, 1])],
    ['five records announced, none there', handMade(5, [])],
    ['a label running past the end', handMade(1, [9, 0x61, 0x62])],
    ['a label of the reserved 0x40 type', handMade(1, [0x41, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 1])],
    ['a name longer than 255 bytes', handMade(1, [...Array.from({ length: 5 }, () => [63, ...new Array(63).fill(0x61)]).flat(), 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 1])],
  ];
  for (const [what, bytes] of malformed) {
    it(`throws for ${what}`, () => {
      assert.throws(() => decodeResponse(bytes, 7, HOST, 'A'));
    });
  }

  it('reads a well-formed hand-made record (the malformed cases above differ from it in one thing)', () => {
    assert.deepEqual(decodeResponse(handMade(1, [0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 1]), 7, HOST, 'A')?.records, ['10.0.0.1']);
  });
});

describe('formatIPv6', () => {
  it('writes addresses as inet_ntop does', () => {
    const addresses = ['fd00::1', '::', '::1', '1::', '1:0:0:1:0:0:0:1', '1:0:1:0:1:0:1:0', 'fe80::1:2', '::ffff:127.0.0.1', '::ffff:0.0.0.1',
      '::1.2.3.4', '::0.0.0.2', '2001:db8:0:0:1:0:0:1', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', '0:0:0:0:0:ffff:0:1', '1:2:3:4:5:6:7:0'];
    for (const address of addresses) {
      const bytes = dnsPacket.encode({ type: 'response', answers: [{ type: 'AAAA', name: 'x', data: address }] }).subarray(-16);
      const expected = new SocketAddress({ address, family: 'ipv6' }).address;
      assert.equal(formatIPv6(bytes), expected, address);
      assert.equal(isIP(formatIPv6(bytes)), 6);
    }
  });
});

describe('parseServers', () => {
  it('takes the forms Resolver.setServers takes', () => {
    assert.deepEqual(parseServers(['10.96.0.10', '127.0.0.1:5353', '::1', '[::1]:53', '[fd00::53]']), [
      { address: '10.96.0.10', port: 53, family: 4 },
      { address: '127.0.0.1', port: 5353, family: 4 },
      { address: '::1', port: 53, family: 6 },
      { address: '::1', port: 53, family: 6 },
      { address: 'fd00::53', port: 53, family: 6 },
    ]);
  });

  it('refuses what is not an address', () => {
    for (const bad of ['dns.example', '10.0.0.1:0', '10.0.0.1:70000', '[10.0.0.1]:53', '::1:53x', '', '[::1]:']) {
      assert.throws(() => parseServers([bad]), /not a DNS server/, bad);
    }
  });
});

describe('DnsClient against the DNS test server', () => {
  let server: DnsServer;
  let client: DnsClient;
  let resolver: Resolver;

  beforeEach(async () => {
    server = await DnsServer.start();
    client = new DnsClient({ servers: parseServers([server.address]), timeoutMs: 250, tries: 1 });
    resolver = new Resolver({ timeout: 250, tries: 1, maxTimeout: 250 });
    resolver.setServers([server.address]);
  });

  afterEach(async () => {
    client.cancel();
    resolver.cancel();
    await server.close();
  });

  /** What `query` settles with: the value, or the error's code, message and syscall. */
  const outcome = (query: Promise<unknown>) =>
    query.then(
      (value) => ({ value }),
      (error: NodeJS.ErrnoException) => ({ code: error.code, message: error.message, syscall: error.syscall }),
    );

  it('answers A, AAAA and SRV as Node\'s Resolver does', T, async () => {
    server.set(HOST, { A: ['10.1.0.1', '10.1.0.2'], AAAA: ['FD00:0:0:0:0:0:0:1', '::ffff:10.0.0.1', '2001:db8::1:0:0:1'] });
    server.set(SRV, { SRV: [{ target: `Web-1.${HOST}`, port: 50051, priority: 3, weight: 7 }] });
    assert.deepEqual(await client.resolve4(HOST), await resolver.resolve4(HOST));
    assert.deepEqual(await client.resolve6(HOST), await resolver.resolve6(HOST));
    assert.deepEqual(await client.resolve6(HOST), ['fd00::1', '::ffff:10.0.0.1', '2001:db8::1:0:0:1']);
    // Node 24 adds type: 'SRV' to each record; nothing reads it.
    const theirs = (await resolver.resolveSrv(SRV)).map(({ name, port, priority, weight }) => ({ name, port, priority, weight }));
    assert.deepEqual(await client.resolveSrv(SRV), theirs);
  });

  for (const mode of ['nxdomain', 'nodata', 'servfail', 'refused', 'timeout'] as const) {
    it(`fails with the code and message c-ares gives for ${mode}`, T, async () => {
      server.set(HOST, { A: ['10.1.0.1'] });
      server.fail(mode);
      const ours = await outcome(client.resolve4(HOST));
      assert.ok('code' in ours && ours.code !== undefined, 'it failed');
      assert.deepEqual(ours, await outcome(resolver.resolve4(HOST)));
    });
  }

  it('fails with EBADRESP for bytes that do not parse, as c-ares does', T, async () => {
    server.answer(HOST, 'A', (query) => {
      const bytes = response(query.id ?? 0, [{ type: 'A', name: HOST, data: '10.1.0.1' }]);
      return bytes.subarray(0, bytes.length - 2); // the record's data cut short
    });
    const ours = await outcome(client.resolve4(HOST));
    assert.deepEqual(ours, { code: 'EBADRESP', message: `queryA EBADRESP ${HOST}`, syscall: 'queryA' });
    assert.deepEqual(ours, await outcome(resolver.resolve4(HOST)));
  });

  it('returns only the records of the name asked, and counts the others', T, async () => {
    server.answer(HOST, 'A', [
      { type: 'A', name: HOST, data: '10.1.0.1' },
      { type: 'A', name: 'evil.example', data: '10.1.0.66' },
    ]);
    assert.deepEqual(await resolver.resolve4(HOST), ['10.1.0.1', '10.1.0.66'], 'c-ares keeps the foreign record (why this client exists)');
    assert.deepEqual(await client.resolve4(HOST), ['10.1.0.1']);
    assert.equal(client.foreign, 1);
    server.answer(HOST, 'A', [{ type: 'A', name: 'evil.example', data: '10.1.0.66' }]);
    assert.deepEqual(await outcome(client.resolve4(HOST)), { code: 'ENODATA', message: `queryA ENODATA ${HOST}`, syscall: 'queryA' });
  });

  it('asks a truncated answer again over TCP and gets every record', T, async () => {
    const many = Array.from({ length: 200 }, (_, i) => `10.2.${i >> 8}.${i & 255}`);
    server.set(HOST, { A: many });
    const transports: string[] = [];
    server.onQuery((q) => transports.push(q.transport));
    assert.deepEqual(await client.resolve4(HOST), many);
    assert.deepEqual(transports, ['udp', 'tcp']);
  });

  it('tries each server in order, `tries` times each, and moves on from one that fails', T, async () => {
    const second = await DnsServer.start();
    try {
      second.set(HOST, { A: ['10.1.0.9'] });
      server.fail('timeout');
      const both = new DnsClient({ servers: parseServers([server.address, second.address]), timeoutMs: 100, tries: 2 });
      assert.deepEqual(await both.resolve4(HOST), ['10.1.0.9']);
      assert.equal(server.count(HOST, 'A'), 2);
      assert.equal(second.count(HOST, 'A'), 1);
      server.recover();
      server.fail('servfail');
      // SERVFAIL is an answer: no second try on that server, straight to the next.
      assert.deepEqual(await both.resolve4(HOST), ['10.1.0.9']);
      assert.equal(server.count(HOST, 'A'), 3);
    } finally {
      await second.close();
    }
  });

  it('cancel() ends a query in flight with ECANCELLED at once', T, async () => {
    server.set(HOST, { A: ['10.1.0.1'] });
    server.hold();
    const slow = new DnsClient({ servers: parseServers([server.address]), timeoutMs: 60_000, tries: 5 });
    const query = outcome(slow.resolve4(HOST));
    await server.waitForQueries(1);
    slow.cancel();
    assert.deepEqual(await query, { code: 'ECANCELLED', message: `queryA ECANCELLED ${HOST}`, syscall: 'queryA' });
    assert.equal(server.count(), 1, 'no further try after cancel');
  });
});

describe('DnsClient against a server that answers with another id first', () => {
  it('ignores the answer with the wrong id and takes the right one', T, async () => {
    const socket = createSocket('udp4');
    socket.bind(0, '127.0.0.1');
    await once(socket, 'listening');
    const ids: number[] = [];
    socket.on('message', (message, remote) => {
      const query = dnsPacket.decode(message);
      ids.push(query.id!);
      const answer = (id: number, data: string) => response(id, [{ type: 'A', name: HOST, data }]);
      // A spoofer's guess first, then the real answer: only the second may count.
      socket.send(answer((query.id! + 1) & 0xffff, '10.6.6.6'), remote.port, remote.address);
      socket.send(answer(query.id!, '10.1.0.1'), remote.port, remote.address);
    });
    try {
      const client = new DnsClient({ servers: parseServers([`127.0.0.1:${socket.address().port}`]), timeoutMs: 5000, tries: 1 });
      assert.deepEqual(await client.resolve4(HOST), ['10.1.0.1']);
      assert.equal(ids.length, 1);
    } finally {
      await new Promise<void>((resolve) => socket.close(() => resolve()));
    }
  });
});
