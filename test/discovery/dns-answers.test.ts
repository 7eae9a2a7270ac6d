/**
 * dnsEndpoints against answers a cluster DNS should not give but a network can: addresses nobody
 * should dial, one record type failing while the other answers, records of another name, and
 * bytes that do not parse. Every answer comes from the real DNS test server on loopback; every
 * wait is on an event (a query reaching the server, a report reaching the sink), never a sleep.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { dnsEndpoints } from '../../src/discovery/dns.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { createPool } from '../../src/pool/pool.ts';
import { httpTransport } from '../../src/transport/http.ts';
import { DnsServer } from '../../testkit/dns-server.ts';
import { startHttpPods } from '../../testkit/http-pods.ts';
import { dnsWatches } from '../support/dns-watches.ts';
import type { RecordingSink } from '../support/recording-sink.ts';

const HOST = 'backend.default.svc.cluster.local';
const SRV = `_grpc._tcp.${HOST}`;
// Record data only, never dialled (the pool test at the end has its own loopback pods).
const POD_A = '10.1.0.1';
const POD_B = '10.1.0.2';
const POD_C = '10.1.0.3';
const V6_A = 'fd00::1';
const V6_B = 'fd00::2';

const T = { timeout: 10_000 };

describe('dnsEndpoints and the answers it gets', () => {
  let server!: DnsServer;
  // timeoutMs: room for a cold first query on a loaded machine (the client and this server share
  // one event loop); a silent server still fails a poll quickly.
  const { watch } = dnsWatches(
    (s) => ({ host: HOST, port: 8080, refreshMs: 5, servers: [s.address], tries: 1, timeoutMs: 250 }),
    (s) => (server = s),
  );

  /** Resolves when `n` polls that start from now on have finished (poll n + 1 has begun). */
  const pollsFinish = (n: number, name = HOST, type = 'A') => server.waitForQueries(server.count(name, type) + n + 1, name, type);

  const codes = (sink: RecordingSink) => sink.errors.map((e) => e.code);

  describe('addresses nobody should dial (allowAddresses, default none)', () => {
    const refused: [string, string, 'A' | 'AAAA'][] = [
      ['0.0.0.0', 'unspecified', 'A'],
      ['127.0.0.1', 'loopback', 'A'],
      ['169.254.169.254', 'link-local', 'A'],
      ['224.0.0.1', 'multicast', 'A'],
      ['255.255.255.255', 'broadcast', 'A'],
      ['::', 'unspecified', 'AAAA'],
      ['::1', 'loopback', 'AAAA'],
      ['fe80::1', 'link-local', 'AAAA'],
      ['ff02::1', 'multicast', 'AAAA'],
      ['::ffff:127.0.0.1', 'loopback', 'AAAA'],
    ];
    for (const [address, range, type] of refused) {
      it(`skips ${address} (${range}) and reports it, naming the address and the option; the others are used`, T, async () => {
        server.set(HOST, type === 'A' ? { A: [POD_A, address, POD_B] } : { A: [POD_A, POD_B], AAAA: [address] });
        const sink = watch();
        await sink.until((s) => s.snapshots.length === 1 && s.errors.length === 1);
        assert.deepEqual(sink.keys, [`${POD_A}:8080`, `${POD_B}:8080`]);
        const [error] = sink.errors;
        assert.ok(error instanceof PodpoolError);
        assert.equal(error.code, ErrorCode.INVALID_ENDPOINT);
        assert.ok(
          error.message.includes(`${address} is ${range === 'unspecified' ? 'an' : 'a'} ${range} address, which this source refuses unless its allowAddresses option includes "${range}"`),
          error.message,
        );
        assert.ok(error.message.startsWith(`DNS lookup of ${HOST}: skipped`), error.message);
      });
    }

    it('reports a refused address once while it keeps coming back, and again after it went and came back', T, async () => {
      server.set(HOST, { A: [POD_A, '0.0.0.0'] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      await pollsFinish(3);
      assert.deepEqual(codes(sink), [ErrorCode.INVALID_ENDPOINT], 'not one report a poll');

      server.set(HOST, { A: [POD_A] });
      await pollsFinish(1);
      server.set(HOST, { A: [POD_A, '0.0.0.0', '169.254.169.254'] });
      await pollsFinish(2);
      assert.equal(sink.errors.length, 3, 'both reported when they came (back)');
      assert.match(sink.errors[1].message, /0\.0\.0\.0 is an unspecified address/);
      assert.match(sink.errors[2].message, /169\.254\.169\.254 is a link-local address/);
      assert.equal(sink.snapshots.length, 1, 'the set never held them');
    });

    it('keeps the last good set when every address of an answer is refused, and starts with none', T, async () => {
      server.set(HOST, { A: ['0.0.0.0'] });
      const sink = watch();
      await pollsFinish(3);
      assert.equal(sink.snapshots.length, 0, 'an answer of refused addresses alone is no picture of the pods');
      assert.deepEqual(codes(sink), [ErrorCode.INVALID_ENDPOINT]);

      server.set(HOST, { A: [POD_A] });
      await sink.until((s) => s.snapshots.length === 1);
      server.set(HOST, { A: ['0.0.0.0'] }); // a resolver that answers 0.0.0.0 for what it blocks, say
      await pollsFinish(3);
      assert.equal(sink.snapshots.length, 1, 'not emptied: two such answers in a row are not two empty answers');
      assert.deepEqual(sink.keys, [`${POD_A}:8080`]);
    });

    it('accepts the ranges allowAddresses names, and only those', T, async () => {
      server.set(HOST, { A: ['127.0.0.1', '169.254.1.1', POD_A] });
      const sink = watch({ allowAddresses: ['loopback'] });
      await sink.until((s) => s.snapshots.length === 1 && s.errors.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`, '127.0.0.1:8080']);
      assert.match(sink.errors[0].message, /169\.254\.1\.1 is a link-local address/);
    });

    it('skips a refused address an SRV target resolves to', T, async () => {
      server.set(SRV, { SRV: [{ target: `web-1.${HOST}`, port: 50051 }, { target: `metadata.${HOST}`, port: 80 }] });
      server.set(`web-1.${HOST}`, { A: [POD_A] });
      server.set(`metadata.${HOST}`, { A: ['169.254.169.254'] });
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1 && s.errors.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:50051`]);
      assert.equal(sink.errors[0].code, ErrorCode.INVALID_ENDPOINT);
      assert.match(sink.errors[0].message, new RegExp(`skipped an address of metadata\\.${HOST.replaceAll('.', '\\.')}: 169\\.254\\.169\\.254 is a link-local address`));
    });
  });

  describe('one record type failing while the other answers', () => {
    for (const mode of ['refused', 'servfail', 'timeout'] as const) {
      it(`yields the A records of an IPv4-only name whose AAAA the resolver answers ${mode}, and reports that once`, T, async () => {
        server.set(HOST, { A: [POD_A, POD_B] });
        server.fail(mode, { type: 'AAAA' });
        const sink = watch();
        await sink.until((s) => s.snapshots.length === 1);
        assert.deepEqual(sink.keys, [`${POD_A}:8080`, `${POD_B}:8080`]);
        await pollsFinish(3);
        assert.deepEqual(codes(sink), [ErrorCode.DISCOVERY_FAILED], 'once, not once a poll');
        const [error] = sink.errors;
        assert.match(error.message, new RegExp(`^DNS lookup of ${HOST.replaceAll('.', '\\.')}: the AAAA query failed \\(queryAaaa E${mode.toUpperCase()}`));
        assert.match(error.message, /using the IPv4 addresses alone/);
        assert.equal((error.cause as NodeJS.ErrnoException).code, `E${mode.toUpperCase()}`);

        // Changes in the family that answers still come through.
        server.set(HOST, { A: [POD_C] });
        await sink.until((s) => s.snapshots.length === 2);
        assert.deepEqual(sink.keys, [`${POD_C}:8080`]);
        assert.equal(sink.errors.length, 1);
      });
    }

    it('reports the failure again after the family answered and then failed again', T, async () => {
      server.set(HOST, { A: [POD_A] });
      server.fail('refused', { type: 'AAAA' });
      const sink = watch();
      await sink.until((s) => s.errors.length === 1);
      server.recover();
      await pollsFinish(2);
      assert.equal(sink.errors.length, 1);
      server.fail('refused', { type: 'AAAA' });
      await pollsFinish(2);
      assert.deepEqual(codes(sink), [ErrorCode.DISCOVERY_FAILED, ErrorCode.DISCOVERY_FAILED]);
      assert.equal(sink.snapshots.length, 1, 'the set never changed meanwhile');
    });

    it('keeps the failing family at its last good answer and takes the other as it answers now', T, async () => {
      server.set(HOST, { A: [POD_A], AAAA: [V6_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      server.fail('servfail', { type: 'AAAA' });
      // A changes while AAAA fails: the new A, and the IPv6 pod kept, not dropped and not churned.
      server.set(HOST, { A: [POD_B], AAAA: [V6_B] });
      await sink.until((s) => s.snapshots.length === 2);
      assert.deepEqual(sink.keys, [`${POD_B}:8080`, `[${V6_A}]:8080`]);
      assert.equal(sink.errors.length, 1);
      assert.match(sink.errors[0].message, /keeping the last 1 IPv6 addresses/);

      server.recover();
      await sink.until((s) => s.snapshots.length === 3);
      assert.deepEqual(sink.keys, [`${POD_B}:8080`, `[${V6_B}]:8080`], 'the fresh AAAA once it answers again');
    });

    it('yields the AAAA records of an IPv6-only name whose A fails', T, async () => {
      server.set(HOST, { AAAA: [V6_A, V6_B] });
      server.fail('refused', { type: 'A' });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`[${V6_A}]:8080`, `[${V6_B}]:8080`]);
      await pollsFinish(2, HOST, 'AAAA');
      assert.equal(sink.errors.length, 1);
      assert.match(sink.errors[0].message, /the A query failed \(queryA EREFUSED.*using the IPv6 addresses alone/);
    });

    it('fails the poll when the family that answered is empty and the failing one has no last answer', T, async () => {
      server.set(HOST, { AAAA: [V6_A] });
      server.fail('servfail', { type: 'AAAA' }); // A answers NODATA: nothing is known of IPv6
      const sink = watch();
      await sink.until((s) => s.errors.length >= 3);
      assert.equal(sink.snapshots.length, 0, 'not an empty answer: that would count towards emptying the set');
      assert.ok(sink.errors.every((e) => e.code === ErrorCode.DISCOVERY_FAILED && /queryAaaa ESERVFAIL/.test(e.message)));
      server.recover();
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`[${V6_A}]:8080`]);
    });

    it('takes an SRV target whose AAAA fails at its A records, reporting it once', T, async () => {
      server.set(SRV, { SRV: [{ target: `web-1.${HOST}`, port: 50051 }, { target: `web-2.${HOST}`, port: 50052 }] });
      server.set(`web-1.${HOST}`, { A: [POD_A] });
      server.set(`web-2.${HOST}`, { A: [POD_B], AAAA: [V6_B] });
      server.fail('refused', { name: `web-1.${HOST}`, type: 'AAAA' });
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:50051`, `${POD_B}:50052`, `[${V6_B}]:50052`]);

      server.fail('servfail', { name: `web-2.${HOST}`, type: 'AAAA' });
      await pollsFinish(3, SRV, 'SRV');
      assert.equal(sink.snapshots.length, 1, 'web-2 keeps its IPv6 address');
      assert.deepEqual(codes(sink), [ErrorCode.DISCOVERY_FAILED, ErrorCode.DISCOVERY_FAILED], 'one report per failing target and family');
      assert.match(sink.errors[0].message, new RegExp(`the AAAA query of web-1\\.${HOST.replaceAll('.', '\\.')} failed`));
      assert.match(sink.errors[1].message, /keeping the last 1 IPv6 addresses of web-2/);
    });

    it('still fails the poll, once a poll, when both families fail', T, async () => {
      server.set(HOST, { A: [POD_A], AAAA: [V6_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      server.fail('servfail');
      await pollsFinish(3);
      assert.equal(sink.snapshots.length, 1);
      assert.ok(sink.errors.length >= 3);
      assert.ok(sink.errors.every((e) => e.code === ErrorCode.DISCOVERY_FAILED && /^DNS lookup of \S+ failed/.test(e.message)));
    });
  });

  describe('records of another name than the one asked', () => {
    // c-ares (Node's Resolver) returns every A, AAAA and SRV record of the answer section whatever
    // its owner name, and does not say which name a record was for: dnsEndpoints reads the answer
    // itself (src/discovery/dns-query.ts) and keeps only the asked name's and its CNAME chain's.
    it('ignores A records of another name', T, async () => {
      server.answer(HOST, 'A', [
        { type: 'A', name: HOST, data: POD_A },
        { type: 'A', name: 'evil.example', data: POD_B },
      ]);
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`]);
    });

    it('ignores SRV records of another name', T, async () => {
      server.answer(SRV, 'SRV', [
        { type: 'SRV', name: SRV, data: { target: `web-1.${HOST}`, port: 50051 } },
        { type: 'SRV', name: `_grpc._tcp.evil.${HOST}`, data: { target: `evil.${HOST}`, port: 50051 } },
      ]);
      server.set(`web-1.${HOST}`, { A: [POD_A] });
      server.set(`evil.${HOST}`, { A: [POD_B] });
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:50051`]);
    });

    it('follows a CNAME of the name asked, as c-ares does', T, async () => {
      server.answer(HOST, 'A', [
        { type: 'CNAME', name: HOST, data: 'pods.internal.example' },
        { type: 'A', name: 'pods.internal.example', data: POD_A },
      ]);
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`]);
    });
  });

  describe('answers that do not parse or make no sense', () => {
    /** A response with the query's id and question, then `tail` in place of a well-formed rest. */
    const broken = (header: (id: number) => number[], tail: number[] = []) => (query: { id?: number }) =>
      Uint8Array.from([...header(query.id ?? 0), ...tail]);

    const answers: [string, Parameters<DnsServer['answer']>[2]][] = [
      ['an empty datagram', () => new Uint8Array(0)],
      ['a header claiming five records and holding none', broken((id) => [id >> 8, id & 255, 0x84, 0, 0, 0, 0, 5, 0, 0, 0, 0])],
      ['garbage after the header', broken((id) => [id >> 8, id & 255, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0], [0xc0, 0xff, 0xff, 1, 2, 3])],
      ['an A record of 3 bytes', broken((id) => [id >> 8, id & 255, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 3, 10, 0, 0])],
    ];
    for (const [name, answer] of answers) {
      it(`keeps the last good set through ${name}, reporting only PodpoolErrors`, T, async () => {
        server.set(HOST, { A: [POD_A] });
        const sink = watch();
        await sink.until((s) => s.snapshots.length === 1);
        server.answer(HOST, 'A', answer);
        server.answer(HOST, 'AAAA', answer);
        await pollsFinish(3);
        assert.equal(sink.snapshots.length, 1, 'never emptied by it');
        assert.deepEqual(sink.keys, [`${POD_A}:8080`]);
        assert.ok(sink.errors.every((e) => e instanceof PodpoolError), sink.errors.map(String).join('\n'));
        server.answer(HOST, 'A', undefined);
        server.answer(HOST, 'AAAA', undefined);
        server.set(HOST, { A: [POD_B] });
        await sink.until((s) => s.snapshots.length === 2);
        assert.deepEqual(sink.keys, [`${POD_B}:8080`], 'and goes on polling');
      });
    }

    // c-ares reports these as it reports NODATA (ENODATA, or no address), so they are empty
    // answers: one is a blip, as DESIGN.md has it, and only a second in a row empties the set.
    for (const [name, answer] of [
      ['a CNAME that points at itself', [{ type: 'CNAME', name: HOST, data: HOST }]],
      ['a record of another type only', [{ type: 'TXT', name: HOST, data: 'v=hello' }]],
    ] as const) {
      it(`takes ${name} for an empty answer: one does not empty the set`, T, async () => {
        server.set(HOST, { A: [POD_A] });
        const sink = watch();
        await sink.until((s) => s.snapshots.length === 1);
        const odd = server.count(HOST, 'A') + 1;
        // Only poll `odd` gets it: cleared as the next poll's first query arrives, before it is answered.
        const off = server.onQuery((q) => {
          if (q.name === HOST && q.type === 'A' && server.count(HOST, 'A') > odd) {
            server.answer(HOST, 'A', undefined);
            server.answer(HOST, 'AAAA', undefined);
            off();
          }
        });
        server.answer(HOST, 'A', answer);
        server.answer(HOST, 'AAAA', answer);
        await server.waitForQueries(odd + 3, HOST, 'A');
        assert.equal(sink.snapshots.length, 1);
        assert.deepEqual(sink.errors, []);
      });
    }

    for (const target of ['.', 'x'.repeat(63) + '.' + 'y'.repeat(63), '-bad-.example']) {
      it(`skips an SRV target of ${JSON.stringify(target.slice(0, 20))} without throwing`, T, async () => {
        server.answer(SRV, 'SRV', [
          { type: 'SRV', name: SRV, data: { target: `web-1.${HOST}`, port: 50051 } },
          { type: 'SRV', name: SRV, data: { target, port: 50051 } },
        ]);
        server.set(`web-1.${HOST}`, { A: [POD_A] });
        const sink = watch({ port: 'grpc' });
        await sink.until((s) => s.snapshots.length === 1);
        assert.deepEqual(sink.keys, [`${POD_A}:50051`]);
        assert.ok(sink.errors.every((e) => e instanceof PodpoolError));
      });
    }
  });
});

describe('a pool over dnsEndpoints whose answer holds 0.0.0.0', () => {
  it('never dials it: a service bound to 127.0.0.1 alone gets no request, and no Authorization header', T, async (t) => {
    const server = await DnsServer.start();
    t.after(() => server.close());
    // The pod, and a service only this host should reach, bound to 127.0.0.1 alone: a connection
    // to 0.0.0.0 lands there.
    const [pod] = await startHttpPods(1, { first: 12 });
    const [local] = await startHttpPods(1, { first: 1 });
    t.after(() => Promise.all([pod.kill(), local.kill()]));
    server.set(SRV, { SRV: [{ target: `web-1.${HOST}`, port: pod.port }, { target: `rebind.${HOST}`, port: local.port }] });
    server.set(`web-1.${HOST}`, { A: [pod.address] });
    server.set(`rebind.${HOST}`, { A: ['0.0.0.0'] });
    const pool = createPool({
      // Loopback allowed for the test's pod; 0.0.0.0 (unspecified) still refused.
      source: dnsEndpoints({ host: HOST, port: 'grpc', refreshMs: 60_000, servers: [server.address], tries: 1, allowAddresses: ['loopback'] }),
      transport: httpTransport(),
    });
    t.after(() => pool.close());
    const [error] = (await once(pool, 'sourceError')) as [PodpoolError];
    assert.equal(error.code, ErrorCode.INVALID_ENDPOINT);
    assert.match(error.message, /0\.0\.0\.0 is an unspecified address, which this source refuses unless its allowAddresses option includes "unspecified"/);

    await pool.ready({ minEndpoints: 1 });
    const result = await pool.broadcast(async (dispatcher) => {
      const res = await dispatcher.request({ method: 'GET', path: '/', headers: { authorization: 'Bearer secret-token' } });
      return res.body.text();
    });
    assert.deepEqual(result.delivered.map((d) => d.endpoint.key), [pod.key], 'one member: the pod');
    assert.deepEqual(result.failed, []);
    assert.equal(local.connections, 0, 'nothing connected to the service on 127.0.0.1');
  });
});
