/**
 * dnsEndpoints against a real DNS server on loopback. Every wait is on an event (a query reaching
 * the server, a report reaching the sink), never on a sleep; "poll n is over" is known from the
 * server receiving the first query of poll n + 1, since polls never overlap.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readdirSync, readlinkSync } from 'node:fs';
import { describe, it } from 'node:test';
import { setImmediate } from 'node:timers/promises';
import { dnsEndpoints, type DnsEndpointsOptions } from '../../src/discovery/dns.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { createPool } from '../../src/pool/pool.ts';
import { webSocketTransport } from '../../src/transport/websocket.ts';
import { DnsServer } from '../../testkit/dns-server.ts';
import { dnsWatches } from '../support/dns-watches.ts';
import { RecordingSink } from '../support/recording-sink.ts';
import { resourceNames } from '../support/resources.ts';

const HOST = 'backend.default.svc.cluster.local';
const SRV = `_grpc._tcp.${HOST}`;
// Record data only: nothing connects to these addresses. Loopback, which dnsEndpoints refuses
// by default, is accepted through allowAddresses in every watch below.
const LOOPBACK = { allowAddresses: ['loopback'] } as const;
const POD_A = '127.0.0.11';
const POD_B = '127.0.0.12';
const POD_C = '127.0.0.13';

/** Sockets this process holds open; c-ares's are invisible to getActiveResourcesInfo. */
function openSockets(): number | undefined {
  let fds: string[];
  try {
    fds = readdirSync('/proc/self/fd');
  } catch {
    return undefined; // not Linux: the resource check alone has to do
  }
  let count = 0;
  for (const fd of fds) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:')) count++;
    } catch {
      // the fd of readdir itself, gone by now
    }
  }
  return count;
}

// Per test, so a hang fails one test instead of cancelling the rest of the file.
const T = { timeout: 10_000 };

describe('dnsEndpoints', () => {
  let server!: DnsServer;
  const { watch, track } = dnsWatches(
    (s) => ({ host: HOST, port: 8080, refreshMs: 20, servers: [s.address], tries: 1, ...LOOPBACK }),
    (s) => (server = s),
  );

  /** A-mode polls started so far: each poll asks A once. */
  const polls = (name = HOST, type = 'A') => server.count(name, type);

  /** Resolves when `n` polls that start from now on have finished (poll n + 1 has begun). */
  const pollsFinish = (n: number, name = HOST, type = 'A') =>
    server.waitForQueries(polls(name, type) + n + 1, name, type);

  it('is a source of kind dns', T, () => {
    assert.equal(dnsEndpoints({ host: HOST, port: 80 }).kind, 'dns');
  });

  describe('A and AAAA for a port number', () => {
    it('reports one ready endpoint per address, with the port, and treats AAAA NODATA as normal', T, async () => {
      server.set(HOST, { A: [POD_B, POD_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`, `${POD_B}:8080`]);
      assert.ok(sink.snapshots[0].toArray().every((e) => e.ready && e.serving && !e.terminating));
      assert.ok(server.count(HOST, 'A') >= 1 && server.count(HOST, 'AAAA') >= 1, 'asks both families');
      await pollsFinish(3);
      assert.deepEqual(sink.errors, [], 'an IPv4-only answer is not a failure');
    });

    it('reports pods as they appear and disappear', T, async () => {
      server.set(HOST, { A: [POD_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`]);

      server.set(HOST, { A: [POD_A, POD_B, POD_C] });
      await sink.until((s) => s.snapshots.length === 2);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`, `${POD_B}:8080`, `${POD_C}:8080`]);

      server.set(HOST, { A: [POD_C] });
      await sink.until((s) => s.snapshots.length === 3);
      assert.deepEqual(sink.keys, [`${POD_C}:8080`]);
      assert.deepEqual(sink.errors, []);
    });

    it('sends a snapshot only when the answer changes', T, async () => {
      server.set(HOST, { A: [POD_A, POD_B] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      await pollsFinish(4);
      assert.equal(sink.snapshots.length, 1, 'the same answer again is no news');
      // The same pods in another order are the same set.
      server.set(HOST, { A: [POD_B, POD_A] });
      await pollsFinish(2);
      assert.equal(sink.snapshots.length, 1);
    });

    it('reports IPv6 addresses from AAAA, alone or beside IPv4', T, async () => {
      server.set(HOST, { AAAA: ['::1', '::2'] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, ['[::1]:8080', '[::2]:8080'], 'A NODATA with AAAA records is an IPv6-only cluster');
      assert.ok(sink.snapshots[0].toArray().every((e) => e.address.includes(':')));

      server.set(HOST, { A: [POD_A], AAAA: ['::1', '::2'] });
      await sink.until((s) => s.snapshots.length === 2);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`, '[::1]:8080', '[::2]:8080']);
      assert.deepEqual(sink.errors, []);
    });

    it('follows a large answer that needs TCP', T, async () => {
      const many = Array.from({ length: 150 }, (_, i) => `127.1.0.${i + 1}`);
      server.set(HOST, { A: many });
      const transports = new Set<string>();
      server.onQuery((q) => transports.add(q.transport));
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      assert.equal(sink.snapshots[0].size, 150);
      assert.ok(transports.has('tcp'), 'the truncated UDP answer was asked again over TCP');
    });
  });

  describe('SRV for a port name', () => {
    it('resolves each target of _<name>._tcp.<host> and uses the port of its record', T, async () => {
      server.set(SRV, {
        SRV: [
          { target: `10-0-0-1.${HOST}`, port: 50051 },
          { target: `web-1.${HOST}`, port: 50052 },
          { target: `web-2.${HOST}`, port: 50053 },
        ],
      });
      server.set(`10-0-0-1.${HOST}`, { A: [POD_A] });
      server.set(`web-1.${HOST}`, { A: [POD_B] });
      server.set(`web-2.${HOST}`, { AAAA: ['::1'] });
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:50051`, `${POD_B}:50052`, '[::1]:50053']);
      assert.equal(server.count(HOST), 0, 'the Service name itself is not asked for addresses');
      assert.ok(server.count(SRV, 'SRV') >= 1);

      // A new pod: one more SRV record and its target.
      server.set(`web-3.${HOST}`, { A: [POD_C] });
      server.set(SRV, {
        SRV: [
          { target: `10-0-0-1.${HOST}`, port: 50051 },
          { target: `web-1.${HOST}`, port: 50052 },
          { target: `web-2.${HOST}`, port: 50053 },
          { target: `web-3.${HOST}`, port: 50054 },
        ],
      });
      await sink.until((s) => s.snapshots.length === 2);
      assert.deepEqual(sink.keys, [`${POD_A}:50051`, `${POD_B}:50052`, `${POD_C}:50054`, '[::1]:50053']);
      assert.deepEqual(sink.errors, []);
    });

    it('leaves out a target that no longer resolves (its pod went between the two queries)', T, async () => {
      server.set(SRV, { SRV: [{ target: `web-1.${HOST}`, port: 50051 }, { target: `gone.${HOST}`, port: 50051 }] });
      server.set(`web-1.${HOST}`, { A: [POD_A] });
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:50051`]);
      assert.deepEqual(sink.errors, []);
    });

    it('empties the set when the SRV name answers empty twice in a row', T, async () => {
      server.set(SRV, { SRV: [{ target: `web-1.${HOST}`, port: 50051 }] });
      server.set(`web-1.${HOST}`, { A: [POD_A] });
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1);
      const before = polls(SRV, 'SRV');
      server.delete(SRV); // no pod ready: Kubernetes drops every SRV record of the port
      await sink.until((s) => s.snapshots.length === 2);
      assert.equal(sink.snapshots[1].size, 0);
      assert.equal(polls(SRV, 'SRV') - before, 2);
      // NXDOMAIN, believed at the second answer in a row: reported with the snapshot, once.
      assert.deepEqual(
        sink.errors.map((e) => e.code),
        [ErrorCode.NAME_NOT_FOUND],
      );
      assert.match(sink.errors[0].message, new RegExp(`^DNS name ${SRV} does not exist .*twice in a row, which empties the set of 1 endpoints.*that "grpc" is the name of one of its TCP ports`));
    });

    it('skips and reports a bad record, and keeps the others', T, async () => {
      server.set(SRV, { SRV: [{ target: `web-1.${HOST}`, port: 50051 }, { target: `web-2.${HOST}`, port: 0 }] });
      server.set(`web-1.${HOST}`, { A: [POD_A] });
      server.set(`web-2.${HOST}`, { A: [POD_B] });
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1 && s.errors.length >= 1);
      assert.deepEqual(sink.keys, [`${POD_A}:50051`]);
      const error = sink.errors[0];
      assert.ok(error instanceof PodpoolError);
      assert.equal(error.code, ErrorCode.INVALID_ENDPOINT);
      assert.match(error.message, new RegExp(`web-2\\.${HOST.replaceAll('.', '\\.')}`));
      assert.equal((error.cause as PodpoolError).code, ErrorCode.INVALID_ENDPOINT);
    });

    it('keeps the last good set when a target lookup fails', T, async () => {
      server.set(SRV, { SRV: [{ target: `web-1.${HOST}`, port: 50051 }, { target: `web-2.${HOST}`, port: 50051 }] });
      server.set(`web-1.${HOST}`, { A: [POD_A] });
      server.set(`web-2.${HOST}`, { A: [POD_B] });
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:50051`, `${POD_B}:50051`]);

      server.fail('servfail', { name: `web-2.${HOST}` });
      await sink.until((s) => s.errors.length >= 2);
      assert.equal(sink.snapshots.length, 1, 'a pod is not dropped for a transient error');
      assert.equal(sink.errors[0].code, ErrorCode.DISCOVERY_FAILED);
      assert.match(sink.errors[0].message, /ESERVFAIL/);
      assert.match(sink.errors[0].message, new RegExp(SRV.replaceAll('.', '\\.')));
    });
  });

  describe('failures', () => {
    for (const [mode, code] of [
      ['servfail', 'ESERVFAIL'],
      ['refused', 'EREFUSED'],
      ['timeout', 'ETIMEOUT'],
    ] as const) {
      it(`keeps the last good set and reports ${code} when the server answers ${mode}`, T, async () => {
        server.set(HOST, { A: [POD_A, POD_B] });
        const sink = watch({ timeoutMs: 50 });
        await sink.until((s) => s.snapshots.length === 1);

        server.fail(mode);
        // Two failed polls: a source that took a failure for an empty answer would empty the set here.
        await sink.until((s) => s.errors.length >= 2);
        assert.equal(sink.snapshots.length, 1);
        for (const error of sink.errors) {
          assert.ok(error instanceof PodpoolError);
          assert.equal(error.code, ErrorCode.DISCOVERY_FAILED);
          assert.ok(error.message.includes(HOST), error.message);
          assert.ok(error.message.includes(code), error.message);
          assert.equal((error.cause as NodeJS.ErrnoException).code, code);
        }

        // Polling goes on through failures and picks up what changed meanwhile.
        server.recover();
        server.set(HOST, { A: [POD_C] });
        await sink.until((s) => s.snapshots.length === 2);
        assert.deepEqual(sink.keys, [`${POD_C}:8080`]);
      });
    }

    it('reports one error per failed poll, not one per query', T, async () => {
      server.set(HOST, { A: [POD_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      server.fail('servfail');
      await pollsFinish(3);
      assert.equal(sink.errors.length, 3);
    });

    it('keeps a dual-stack set when only AAAA fails, and says so once', T, async () => {
      server.set(HOST, { A: [POD_A], AAAA: ['::1'] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      server.fail('servfail', { type: 'AAAA' });
      await pollsFinish(3);
      assert.equal(sink.snapshots.length, 1, 'not shrunk to the IPv4 half');
      assert.equal(sink.errors.length, 1, 'one report for a family that keeps failing');
      assert.match(sink.errors[0].message, /queryAaaa ESERVFAIL/);
      assert.match(sink.errors[0].message, /keeping the last 1 IPv6 addresses/);
    });

    it('reports failures before the first answer, and no snapshot until one comes', T, async () => {
      server.set(HOST, { A: [POD_A] });
      server.fail('servfail');
      const sink = watch();
      await sink.until((s) => s.errors.length >= 2);
      assert.equal(sink.snapshots.length, 0);
      assert.match(sink.errors[0].message, /no endpoints known yet/);
      server.recover();
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`]);
    });
  });

  describe('empty answers', () => {
    it('keeps the set after one empty answer', T, async () => {
      server.set(HOST, { A: [POD_A, POD_B] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      // No poll is in flight here: the next one starts from a timer, after this turn.
      server.fail('nxdomain', { name: HOST, type: 'A', times: 1 });
      server.fail('nodata', { name: HOST, type: 'AAAA', times: 1 });
      const emptyPoll = polls() + 1;
      await server.waitForQueries(emptyPoll + 2, HOST, 'A'); // the empty poll and one good one are over
      assert.equal(sink.snapshots.length, 1);
      assert.deepEqual(sink.errors, [], 'an empty answer is not a failure');
    });

    it('empties the set when two polls in a row answer empty', T, async () => {
      server.set(HOST, { A: [POD_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      const before = polls();
      server.delete(HOST); // NXDOMAIN from now on, as Kubernetes answers with no pod ready
      await sink.until((s) => s.snapshots.length === 2);
      assert.equal(sink.snapshots[1].size, 0);
      assert.equal(polls() - before, 2, 'emptied by the second empty poll, not the first or a later one');
      await pollsFinish(2);
      assert.equal(sink.snapshots.length, 2, 'and only once');
      // The first NXDOMAIN is not reported (one empty answer is a blip), the second is, and so is
      // each after it, as long as the name is missing.
      assert.ok(sink.errors.length >= 3, `${sink.errors.length} errors`);
      assert.ok(sink.errors.every((e) => e.code === ErrorCode.NAME_NOT_FOUND));
      assert.match(sink.errors[0].message, /twice in a row, which empties the set of 1 endpoints \(the Service was deleted, or none of its pods is ready\)/);
    });

    it('does not count empty answers across a failure', T, async () => {
      server.set(HOST, { A: [POD_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      for (const type of ['A', 'AAAA']) {
        server.fail('nxdomain', { name: HOST, type, times: 1 });
        server.fail('servfail', { name: HOST, type, times: 1 });
        server.fail('nodata', { name: HOST, type, times: 1 });
      }
      const first = polls() + 1;
      await server.waitForQueries(first + 3, HOST, 'A'); // empty, failed, empty: all over
      assert.equal(sink.errors.length, 1);
      assert.equal(sink.snapshots.length, 1, 'empty, failure, empty is not two empty polls in a row');
    });

    it('reports no snapshot before the first answer, then an empty set once two polls agree', T, async () => {
      server.set(HOST, {}); // the name exists, with no address: NODATA
      const sink = watch();
      await server.waitForQueries(2, HOST, 'A'); // poll 1 (empty) is over
      assert.equal(sink.snapshots.length, 0, 'one empty answer is not a first picture');
      await sink.until((s) => s.snapshots.length === 1);
      assert.equal(polls(), 2, 'reported by the second poll');
      assert.equal(sink.snapshots[0].size, 0);

      server.set(HOST, { A: [POD_A] });
      await sink.until((s) => s.snapshots.length === 2);
      assert.deepEqual(sink.keys, [`${POD_A}:8080`]);
      assert.deepEqual(sink.errors, [], 'NODATA is an empty answer, not an error');
    });

    it('reports NXDOMAIN from the first poll on as PODPOOL_NAME_NOT_FOUND, saying what to check', T, async () => {
      const sink = watch(); // the server knows no such name
      const first = await sink.errorWhere();
      assert.equal(polls(), 1, 'reported by the first poll, not left for a timeout to find');
      assert.ok(first instanceof PodpoolError);
      assert.equal(first.code, ErrorCode.NAME_NOT_FOUND);
      assert.match(first.message, new RegExp(`^DNS name ${HOST} does not exist \\(NXDOMAIN from ${server.address}\\); no endpoints known yet`));
      assert.match(first.message, /Check the Service and namespace names in it, that the Service is headless \(clusterIP: None\) and that it has a ready pod/);
      assert.doesNotMatch(first.message, /If ".*" is <service>\.<namespace>/, 'a name with .svc. needs no hint about search domains');
      // Still an empty answer for the set: emptied by the second, as DESIGN.md says.
      await sink.until((s) => s.snapshots.length === 1);
      assert.equal(polls(), 2);
      assert.equal(sink.snapshots[0].size, 0);
      assert.equal(sink.errors.length, 2, 'one report per poll while the name is missing');

      server.set(HOST, { A: [POD_A] });
      await sink.until((s) => s.snapshots.length === 2);
      const errors = sink.errors.length;
      await pollsFinish(2);
      assert.equal(sink.errors.length, errors, 'no report once the name resolves');
    });

    it('points a name without .svc. at the full Kubernetes name', T, async () => {
      const sink = watch({ host: 'backend.default' });
      const error = await sink.errorWhere();
      assert.equal(error.code, ErrorCode.NAME_NOT_FOUND);
      assert.match(
        error.message,
        /If "backend\.default" is <service>\.<namespace>, pass the full name, "backend\.default\.svc\.cluster\.local" \(or your cluster's domain\): no search domains are applied/,
      );
      assert.equal(server.count('backend.default', 'A'), 1, 'asked as written');
      assert.equal(server.count('backend.default.svc.cluster.local', 'A'), 0, 'and nothing else');
    });

    it('does not report a lone NXDOMAIN while endpoints are known', T, async () => {
      server.set(HOST, { A: [POD_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      server.fail('nxdomain', { name: HOST, times: 2 }); // one poll's A and AAAA
      const emptyPoll = polls() + 1;
      await server.waitForQueries(emptyPoll + 2, HOST, 'A'); // the NXDOMAIN poll and one good one are over
      assert.deepEqual(sink.errors, [], 'a blip is not news');
      assert.equal(sink.snapshots.length, 1);
    });

    it('reports the first non-empty answer at once', T, async () => {
      server.set(HOST, { A: [POD_A] });
      const sink = watch();
      await sink.until((s) => s.snapshots.length === 1);
      assert.equal(polls(), 1);
    });
  });

  describe('scheduling', () => {
    it('never overlaps polls, even when the server is slower than refreshMs', T, async () => {
      server.set(HOST, { A: [POD_A], AAAA: ['::1'] });
      server.delayMs = 30; // a slow server: every answer takes longer than the whole period
      const sink = watch({ refreshMs: 1, random: () => 0 });
      await server.waitForQueries(8, HOST, 'A');
      assert.ok(server.maxOutstanding <= 2, `at most one A/AAAA pair in flight, saw ${server.maxOutstanding}`);
      assert.equal(sink.snapshots.length, 1);
    });

    it('resolves at most 8 SRV targets at a time', T, async () => {
      const targets = Array.from({ length: 20 }, (_, i) => `web-${i}.${HOST}`);
      server.set(SRV, { SRV: targets.map((target) => ({ target, port: 50051 })) });
      targets.forEach((t, i) => server.set(t, { A: [`127.1.0.${i + 1}`] }));
      server.delayMs = 30;
      const sink = watch({ port: 'grpc' });
      await sink.until((s) => s.snapshots.length === 1);
      assert.equal(sink.snapshots[0].size, 20);
      assert.ok(server.maxOutstanding <= 16, `at most 8 A/AAAA pairs in flight, saw ${server.maxOutstanding}`);
    });

    it('jitters each period by ±20% of refreshMs with the injected random', T, async (t) => {
      const spy = t.mock.method(globalThis, 'setTimeout');
      server.set(HOST, { A: [POD_A] });
      const draws = [0, 0.5, 0.999, Number.NaN];
      let i = 0;
      watch({ refreshMs: 40, random: () => draws[i++ % draws.length] });
      await server.waitForQueries(5, HOST, 'A');
      // The source's timers are the only ones started meanwhile (the server answers at once).
      // 2000 (timeoutMs's default) is each query's own timeout, not a period.
      const delays = spy.mock.calls.map((c) => c.arguments[1]).filter((d) => typeof d === 'number' && d > 0 && d !== 2000);
      assert.deepEqual(
        delays.slice(0, 4).map((d) => Math.round((d as number) * 1000) / 1000),
        [32, 40, 47.984, 40],
        'random 0 → 0.8×, 0.5 → 1×, 0.999 → ~1.2×, and a draw outside [0, 1] → 1×',
      );
    });
  });

  describe('close', () => {
    it('cancels a poll in flight, reports nothing and leaves no socket or timer behind', T, async () => {
      server.set(HOST, { A: [POD_A] });
      const baseline = resourceNames();
      const sockets = openSockets();
      server.hold();
      const sink = new RecordingSink();
      const options = { host: HOST, port: 8080, refreshMs: 20, servers: [server.address], timeoutMs: 60_000, tries: 1, ...LOOPBACK };
      const w = dnsEndpoints(options).watch(sink);
      track(w); // closed again after the test if an assertion fails first
      await server.waitForQueries(2); // A and AAAA, both held by the server
      if (sockets !== undefined) assert.ok(openSockets()! > sockets, 'the resolver has a socket open meanwhile');
      const closing = w.close();
      // Checked before close() settles: a poll merely abandoned would close its socket only when
      // the resolver gives up on the held query, and close() would wait for that.
      if (sockets !== undefined) assert.equal(openSockets(), sockets, 'close() cancelled the query at once');
      await closing;
      assert.deepEqual(resourceNames(), baseline);
      if (sockets !== undefined) assert.equal(openSockets(), sockets);
      assert.equal(sink.snapshots.length, 0);
      assert.deepEqual(sink.errors, [], 'a cancelled query is not a failure to report');
      server.release(); // the answers now go to a closed port
    });

    it('clears the timer of the next poll', T, async () => {
      server.set(HOST, { A: [POD_A] });
      const baseline = resourceNames();
      const sockets = openSockets();
      const sink = new RecordingSink();
      const w = dnsEndpoints({ host: HOST, port: 8080, refreshMs: 60_000, servers: [server.address], ...LOOPBACK }).watch(sink);
      track(w);
      await sink.until((s) => s.snapshots.length === 1);
      // The poll schedules its successor in microtasks after reporting: all run before an immediate.
      await setImmediate();
      assert.deepEqual(resourceNames(), [...baseline, 'Timeout'].sort(), 'the next poll waits on a timer');
      await w.close();
      assert.deepEqual(resourceNames(), baseline);
      if (sockets !== undefined) assert.equal(openSockets(), sockets);
      await w.close(); // twice is harmless
    });

    it('closing one watch leaves another watch of the same source running', T, async () => {
      server.set(HOST, { A: [POD_A] });
      server.hold();
      const source = dnsEndpoints({ host: HOST, port: 8080, refreshMs: 20, servers: [server.address], ...LOOPBACK });
      const first = new RecordingSink();
      const second = new RecordingSink();
      const w1 = source.watch(first);
      track(source.watch(second));
      await server.waitForQueries(4); // both watches' A and AAAA are in flight
      await w1.close();
      server.release();
      await second.until((s) => s.snapshots.length === 1);
      assert.deepEqual(second.errors, [], 'the other watch was not cancelled');
      assert.equal(first.snapshots.length, 0);
    });
  });

  describe('options', () => {
    const cases: [string, Record<string, unknown>][] = [
      ['host', { host: '' }],
      ['host', { host: 42 }],
      ['host', { host: '10.0.0.1' }],
      ['host', { host: 'backend' }],
      ['host', { host: 'http://backend' }],
      ['host', { host: 'dns://backend.default.svc.cluster.local' }],
      ['host', { host: `${HOST}:8080` }],
      ['host', { host: `${HOST}/v1` }],
      ['host', { host: 'backend.default.svc' }],
      ['host', { host: 'backend.default.SVC.' }],
      ['host', { host: 'backend..svc.cluster.local' }],
      ['host', { host: '-backend.default.svc.cluster.local' }],
      ['host', { host: `${'x'.repeat(64)}.default.svc.cluster.local` }],
      ['host', { host: 'back end.default.svc.cluster.local' }],
      ['port', { port: 0 }],
      ['port', { port: 65536 }],
      ['port', { port: 80.5 }],
      ['port', { port: '' }],
      ['port', { port: '8080' }],
      ['port', { port: '_grpc' }],
      ['port', { port: undefined }],
      ['refreshMs', { refreshMs: 0 }],
      ['refreshMs', { refreshMs: -5 }],
      ['refreshMs', { refreshMs: Number.NaN }],
      ['refreshMs', { refreshMs: 1e12 }],
      ['refreshMs', { refreshMs: '5000' }],
      ['servers', { servers: '127.0.0.1' }],
      ['servers', { servers: [] }],
      ['servers', { servers: [53] }],
      ['servers', { servers: ['dns.example'] }],
      ['timeoutMs', { timeoutMs: 0 }],
      ['timeoutMs', { timeoutMs: 1.5 }],
      // c-ares takes 32-bit timeouts: this one threw from watch(), inside the pool, before.
      ['timeoutMs', { timeoutMs: 2 ** 31 }],
      ['tries', { tries: 0 }],
      ['tries', { tries: 2 ** 31 }],
      ['tries', { tries: 101 }],
      ['allowAddresses', { allowAddresses: 'loopback' }],
      ['allowAddresses', { allowAddresses: ['localhost'] }],
      ['random', { random: 0.5 }],
    ];
    for (const [name, bad] of cases) {
      it(`rejects ${name} = ${String(Object.values(bad)[0])}`, T, () => {
        assert.throws(
          () => dnsEndpoints({ host: HOST, port: 8080, ...bad } as unknown as DnsEndpointsOptions),
          (error: unknown) =>
            error instanceof PodpoolError &&
            error.code === ErrorCode.INVALID_OPTION &&
            error.message.startsWith(`option ${name} must be`),
        );
      });
    }

    it('rejects a missing options object', T, () => {
      assert.throws(
        () => dnsEndpoints(undefined as unknown as DnsEndpointsOptions),
        (error: unknown) => error instanceof PodpoolError && error.code === ErrorCode.INVALID_OPTION,
      );
    });

    it('says what to pass instead of a URL, a port, a path, a single label or a name cut at .svc', T, () => {
      const says = (host: string, message: RegExp) =>
        assert.throws(() => dnsEndpoints({ host, port: 80 }), { code: ErrorCode.INVALID_OPTION, message });
      says('http://backend:8080/x', /^option host must be a DNS name, not a URL: pass the host part alone \(backend\) and the port as the port option, got "http:\/\/backend:8080\/x"$/);
      says(`${HOST}:8080`, /without a port: pass the port as the port option/);
      says(`${HOST}/v1`, /without a path/);
      says('backend', /a fully qualified name such as "backend\.<namespace>\.svc\.cluster\.local": no search domains are applied, so "backend" would be asked as is.*written with a final dot: "backend\."/);
      says('backend.default.svc', /the name with its cluster domain, such as "backend\.default\.svc\.cluster\.local"/);
    });

    it('rejects an unknown option, naming the one meant', T, () => {
      assert.throws(() => dnsEndpoints({ host: HOST, port: 80, refresh: 1000 } as unknown as DnsEndpointsOptions), {
        code: ErrorCode.INVALID_OPTION,
        message: 'unknown option refresh (did you mean refreshMs?); the options are host, port, refreshMs, servers, timeoutMs, tries, random, allowAddresses',
      });
      assert.throws(() => dnsEndpoints({ host: HOST, port: 80, server: ['127.0.0.1'] } as unknown as DnsEndpointsOptions), /did you mean servers\?/);
    });

    it('names the value it got', T, () => {
      assert.throws(() => dnsEndpoints({ host: HOST, port: 70000 }), /got 70000/);
      assert.throws(() => dnsEndpoints({ host: HOST, port: 80, servers: ['dns.example'] }), /"dns\.example"/);
    });

    it('accepts port names, server lists and the defaults', T, () => {
      for (const options of [
        { host: HOST, port: 'grpc' },
        { host: HOST, port: 'http-metrics' },
        { host: `${HOST}.`, port: 1 },
        { host: 'backend.', port: 1 }, // a single label, asked as is on purpose
        { host: 'backend.default', port: 1 }, // could be a real name; the first poll says if not
        { host: 'Backend.Default.svc.cluster.local', port: 1 },
        { host: 'my_service.example.com', port: 1 },
        { host: HOST, port: 65535, servers: ['127.0.0.1:5353', '[::1]:53', '10.96.0.10'] },
        { host: HOST, port: 80, refreshMs: 0.5 + 0.5, timeoutMs: 1, tries: 1, random: () => 0 },
        { host: HOST, port: 80, timeoutMs: 2 ** 31 - 1, tries: 100, allowAddresses: [] },
        { host: HOST, port: 80, allowAddresses: ['loopback', 'link-local', 'unspecified', 'multicast', 'broadcast'] as const },
      ]) {
        assert.equal(dnsEndpoints(options).kind, 'dns');
      }
    });
  });
});

describe('a pool over dnsEndpoints of a name that does not exist', () => {
  it('emits sourceError PODPOOL_NAME_NOT_FOUND, and ready() and calls pass on what to check', T, async (t) => {
    const server = await DnsServer.start();
    t.after(() => server.close());
    const pool = createPool({
      source: dnsEndpoints({ host: 'backend.default', port: 8080, refreshMs: 60_000, servers: [server.address], tries: 1 }),
      // Never used: nothing resolves, so nothing is dialled.
      transport: webSocketTransport(),
    });
    t.after(() => pool.close());
    const [error] = (await once(pool, 'sourceError')) as [PodpoolError];
    assert.equal(error.code, ErrorCode.NAME_NOT_FOUND);
    assert.match(error.message, /^DNS name backend\.default does not exist \(NXDOMAIN/);

    await assert.rejects(pool.ready({ timeoutMs: 1 }), (thrown: PodpoolError) => {
      assert.equal(thrown.code, ErrorCode.TIMEOUT);
      assert.match(thrown.message, /^ready\(\): 0 of 1 endpoint\(s\) ready after 1 ms; dns discovery has not reported any endpoint yet; discovery's last error: DNS name backend\.default does not exist/);
      assert.match(thrown.message, /pass the full name, "backend\.default\.svc\.cluster\.local"/);
      assert.doesNotMatch(thrown.message, /await pool\.ready\(\)/, 'no advice to wait for ready() inside ready()');
      return true;
    });
    await assert.rejects(pool.use(() => 1, { waitForReady: false }), {
      code: ErrorCode.NO_ENDPOINTS,
      message: /no endpoint is ready to take the call: dns discovery has not reported any endpoint yet; discovery's last error: DNS name backend\.default does not exist/,
    });
  });
});
