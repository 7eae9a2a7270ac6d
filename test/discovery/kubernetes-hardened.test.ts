/**
 * kubernetesEndpoints against answers no API server should send: lists without items, watch lines
 * that are not events, malformed slices, addresses nobody should dial. Each is reported with a
 * stable code, and none empties the picture or loses an event for good. Real HTTP against the fake
 * API server, through the real @kubernetes/client-node credentials.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import type { AddressRange } from '../../src/address.ts';
import { readSlice, type ParsedSlice } from '../../src/discovery/endpoint-slices.ts';
import { kubernetesEndpoints, type KubernetesEndpointsOptions } from '../../src/discovery/kubernetes.ts';
import { LineSplitter, parseWatchLine } from '../../src/discovery/kubernetes-lines.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { FakeApiServer, podIp, type EndpointSliceObject } from '../../testkit/fake-apiserver.ts';
import { discover, pods, SERVICE, slice, startServer } from '../support/kubernetes-discovery.ts';
import type { RecordingSink } from '../support/recording-sink.ts';

const TIMEOUT = { timeout: 20_000 };

/** A slice with some fields replaced by anything (null, a string, a number) as JSON may carry them. */
function broken(name: string, patch: Record<string, unknown>, endpoints = pods(0, 2)): EndpointSliceObject {
  return { ...slice(name, endpoints), ...patch } as EndpointSliceObject;
}

/** Discovery with its first snapshot in and its watch open. */
async function watching(t: TestContext, server: FakeApiServer, options: Partial<KubernetesEndpointsOptions> = {}): Promise<RecordingSink> {
  const open = server.nextRequest((r) => r.kind === 'watch');
  const { recorder } = discover(t, server, options);
  await recorder.snapshotWhere(() => true);
  await open;
  return recorder;
}

function keys(recorder: RecordingSink): string[] {
  return recorder.keys;
}

function assertNeverEmpty(recorder: RecordingSink): void {
  for (const s of recorder.snapshots) assert.notEqual(s.size, 0, 'a snapshot was empty');
}

function isCode(code: string) {
  return (e: PodpoolError) => e instanceof PodpoolError && e.code === code;
}

const lists = (server: FakeApiServer) => server.requests.filter((r) => r.kind === 'list').length;

describe('kubernetesEndpoints: a list that is not a list', () => {
  const bodies: [string, RegExp][] = [
    ['{}', /not a list of EndpointSlices \(items is undefined\)/],
    ['{"items":null}', /items is null/],
    ['{"items":"x"}', /items is string/],
    ['[]', /a bare list/],
    ['{"items":[5]}', /something that is no EndpointSlice: an EndpointSlice is 5, not an object/],
    ['{"items":[{"metadata":{}}]}', /no metadata\.name/],
    ['{"items":[', /not JSON/],
  ];
  for (const [body, message] of bodies) {
    it(`a relist answered 200 with ${body} is DISCOVERY_FAILED, and the last good set stays`, TIMEOUT, async (t) => {
      const server = await startServer(t);
      await server.apply(slice('backend-a', pods(0, 3)));
      const recorder = await watching(t, server);
      server.answerList(body);
      const relisted = server.nextRequest((r) => r.kind === 'list');
      // 410 Gone makes the source relist; the relist gets the broken answer, the one after a good one.
      await server.compact([slice('backend-a', pods(0, 4))]);
      await relisted;
      const error = await recorder.errorWhere(isCode(ErrorCode.DISCOVERY_FAILED));
      assert.match(error.message, /listing EndpointSlices failed/);
      assert.match(error.message, message);
      assert.match(error.message, /keeping the last endpoints/);
      await recorder.snapshotWhere((s) => s.size === 4);
      assertNeverEmpty(recorder);
    });
  }

  it('a first list of {} gives no snapshot at all (not an empty one) until a real list comes', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 2)));
    server.answerList('{}', { times: 2 });
    const { recorder } = discover(t, server);
    await recorder.snapshotWhere(() => true);
    assert.equal(recorder.errors.length, 2);
    for (const e of recorder.errors) assert.match(e.message, /no endpoints known yet/);
    assert.deepEqual(recorder.snapshots.map((s) => s.size), [2]);
  });
});

describe('kubernetesEndpoints: watch lines that are not events', () => {
  const lines: [string, RegExp][] = [
    ['{"type":"MODIFIED","object":{"metadata":{"na', /not JSON \(cut short in transit\?\)/],
    ['5', /not an event object/],
    ['{"object":{"metadata":{"name":"backend-a"}}}', /has type undefined/],
    ['{"type":"RENAMED","object":{}}', /has type "RENAMED"/],
    ['{"type":"MODIFIED"}', /a MODIFIED watch event has no object \(got undefined\)/],
    ['{"type":"DELETED","object":"backend-a"}', /a DELETED watch event has no object/],
    ['{"type":"MODIFIED","object":{"metadata":{"resourceVersion":"5"}}}', /a MODIFIED event carries no usable object: an EndpointSlice has no metadata\.name/],
    ['{"type":"DELETED","object":{"metadata":{"name":"backend-a"}}}', /a DELETED event has no metadata\.resourceVersion/],
    ['{"type":"BOOKMARK","object":{"metadata":{}}}', /a BOOKMARK event has no metadata\.resourceVersion/],
  ];
  for (const [line, message] of lines) {
    it(`relists after ${line}, reports it, and deletes nothing`, TIMEOUT, async (t) => {
      const server = await startServer(t);
      await server.apply(slice('backend-a', pods(0, 3)));
      const recorder = await watching(t, server);
      const before = lists(server);
      const relisted = server.nextRequest((r) => r.kind === 'list');
      await server.writeRaw(`${line}\n`);
      const error = await recorder.errorWhere(isCode(ErrorCode.DISCOVERY_FAILED));
      assert.match(error.message, message);
      assert.match(error.message, /Service default\/backend/);
      assert.match(error.message, /keeping the last endpoints, retrying in \d+ ms with a fresh list/);
      await relisted;
      assert.equal(lists(server), before + 1);
      // The watch after the relist follows changes again.
      await server.nextRequest((r) => r.kind === 'watch');
      await server.apply(slice('backend-a', pods(0, 5)));
      await recorder.snapshotWhere((s) => s.size === 5);
      assertNeverEmpty(recorder);
      assert.ok(recorder.snapshots.every((s) => s.size >= 3), 'nothing was deleted by the bad line');
    });
  }

  it('an event cut short in transit is not lost: the removed pod goes, though later events moved past it', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)), slice('backend-b', pods(10, 12)));
    const recorder = await watching(t, server);
    const relisted = server.nextRequest((r) => r.kind === 'list');
    // Pod 2 leaves; its event arrives cut in half, the rest of the line lost.
    server.mangleNext((chunk) => `${chunk.slice(0, chunk.length >> 1)}\n`);
    await server.apply(slice('backend-a', pods(0, 2)));
    // A later event moves the resourceVersion past the lost one: a re-watch alone would never replay it.
    await server.apply(slice('backend-b', pods(10, 13)));
    await relisted;
    const s = await recorder.snapshotWhere((x) => !x.has(`${podIp(2)}:8080`) && x.has(`${podIp(12)}:8080`));
    assert.equal(s.size, 5);
    assert.match((await recorder.errorWhere()).message, /not JSON \(cut short in transit\?\)/);
  });

  it('a watch that ends in the middle of a line relists', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const recorder = await watching(t, server);
    const relisted = server.nextRequest((r) => r.kind === 'list');
    await server.writeRaw('{"type":"MODIFIED","obj');
    server.endWatches();
    const error = await recorder.errorWhere();
    assert.match(error.message, /the watch ended in the middle of an event \(23 bytes of a line cut short\)/);
    await relisted;
  });

  it('a line that never ends is cut off past 16 MiB, not buffered for ever', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const recorder = await watching(t, server);
    const relisted = server.nextRequest((r) => r.kind === 'list');
    const mib = 'x'.repeat(1024 * 1024);
    for (let i = 0; i < 17; i++) await server.writeRaw(mib);
    const error = await recorder.errorWhere();
    assert.equal(error.code, ErrorCode.DISCOVERY_FAILED);
    assert.match(error.message, /a watch line grew past 16777216 bytes without ending/);
    await relisted;
    assert.equal(recorder.last?.size, 3);
  });

  it('ignores blank lines between events', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const recorder = await watching(t, server);
    await server.writeRaw('\n  \r\n');
    await server.apply(slice('backend-a', pods(0, 4)));
    await recorder.snapshotWhere((s) => s.size === 4);
    assert.equal(recorder.errors.length, 0);
  });
});

describe('LineSplitter and parseWatchLine', () => {
  it('joins lines across chunks, cuts none in a multi-byte character, and bounds a line', () => {
    const lines = new LineSplitter(8);
    const bytes = Buffer.from('ab\nçé\n12345');
    assert.deepEqual(lines.push(bytes.subarray(0, 4)), ['ab']);
    // The second line's first character split between two chunks.
    assert.deepEqual(lines.push(bytes.subarray(4, 6)), []);
    assert.deepEqual(lines.push(bytes.subarray(6, 9)), ['çé']);
    assert.equal(lines.pending, 1);
    assert.deepEqual(lines.push(bytes.subarray(9)), []);
    assert.equal(lines.pending, 5);
    assert.throws(() => lines.push(Buffer.from('6789')), /grew past 8 bytes/);
    assert.equal(lines.pending, 0, 'what was buffered is dropped');
    assert.deepEqual(lines.push(Buffer.from('12345678\n')), ['12345678'], 'a line of exactly the bound passes');
  });

  it('reads an event, and names what is wrong with anything else, never echoing a whole line', () => {
    assert.deepEqual(parseWatchLine('{"type":"ADDED","object":{"a":1}}'), { type: 'ADDED', object: { a: 1 } });
    assert.equal(parseWatchLine('   '), undefined);
    const long = parseWatchLine(`{"type":"ADDED","object":{"secret":"${'s'.repeat(500)}`);
    assert.ok(long !== undefined && 'problem' in long);
    assert.ok(long.problem.length < 200, long.problem);
  });
});

describe('readSlice', () => {
  const none = new Set<AddressRange>();
  const read = (raw: unknown, port: string | number = 'http', allowed = none) => readSlice(raw, port, allowed);
  const parsed = (raw: unknown, port: string | number = 'http', allowed = none): ParsedSlice => {
    const r = read(raw, port, allowed);
    assert.ok(typeof r !== 'string', `${JSON.stringify(raw)} read as no slice: ${String(r)}`);
    return r;
  };
  const ep = (ip: unknown, extra: Record<string, unknown> = {}) => ({ addresses: [ip], ...extra });

  it('says why something is no slice at all', () => {
    assert.match(String(read(null)), /is null, not an object/);
    assert.match(String(read('x')), /is "x", not an object/);
    assert.match(String(read([])), /is a list, not an object/);
    assert.match(String(read({})), /no metadata\.name \(got missing\)/);
    assert.match(String(read({ metadata: { name: 5 } })), /no metadata\.name \(got 5\)/);
  });

  it('a slice unusable as a whole: bad addressType, endpoints, ports or port number', () => {
    const cases: [Record<string, unknown>, string | number, RegExp][] = [
      [{ addressType: undefined }, 'http', /addressType is missing, not IPv4, IPv6 or FQDN/],
      [{ addressType: 'ipv4' }, 'http', /addressType is "ipv4"/],
      [{ endpoints: 'x' }, 'http', /endpoints is "x", not a list/],
      [{ endpoints: { 0: {} } }, 7000, /endpoints is an object, not a list/],
      [{ ports: null }, 'http', /lists no ports, so none named "http"/],
      [{ ports: undefined }, 'http', /lists no ports/],
      [{ ports: 'http' }, 'http', /ports is "http", not a list/],
      [{ ports: [{ name: 'http' }] }, 'http', /port "http" is missing, not a number from 1 to 65535; its 2 endpoints are skipped/],
      [{ ports: [{ name: 'http', port: null }] }, 'http', /port "http" is null/],
      [{ ports: [{ name: 'http', port: '8080' }] }, 'http', /port "http" is "8080"/],
      [{ ports: [{ name: 'http', port: 0 }] }, 'http', /port "http" is 0/],
      [{ ports: [{ name: 'http', port: 70000 }] }, 'http', /port "http" is 70000/],
      [{ ports: [{ name: 'http', port: 80.5 }] }, 'http', /port "http" is 80\.5/],
      [{ ports: [7, 'x'] }, 'http', /a port is 7, not an object/],
    ];
    for (const [patch, port, message] of cases) {
      const s = parsed(broken('s', patch), port);
      assert.equal(s.unusable, true, JSON.stringify(patch));
      assert.equal(s.candidates.length, 0);
      assert.match(s.problems.join('; '), message, JSON.stringify(patch));
    }
  });

  it('a slice that says nothing about the port is sound: FQDN, no endpoints, ports without the name, a number port', () => {
    for (const [raw, port] of [
      [slice('s', [{ ip: 'backend.example.com' }], { addressType: 'FQDN' }), 'http'],
      [broken('s', { endpoints: null }), 'http'],
      [broken('s', { endpoints: [] }), 'http'],
      [slice('s', pods(0, 2), { ports: [{ name: 'metrics', port: 9100 }] }), 'http'],
    ] as const) {
      const s = parsed(raw, port);
      assert.deepEqual([s.unusable, s.problems, s.candidates.length], [false, [], 0], JSON.stringify(raw));
    }
    // A port number needs no ports at all.
    assert.equal(parsed(broken('s', { ports: null }), 7000).candidates.length, 2);
  });

  it('skips the bad endpoints of a slice, keeps the good ones, and says which and why', () => {
    const s = parsed(
      broken('s', {
        endpoints: [
          ep('10.0.0.1'),
          null,
          7,
          { addresses: [] },
          { addresses: 'x' },
          ep('not-an-ip'),
          ep('fd00::1'),
          ep('10.0.0.2', { conditions: 'ready' }),
          ep('10.0.0.3', { conditions: { ready: 'yes' } }),
          ep('10.0.0.4', { conditions: { terminating: 1 } }),
          ep('10.0.0.5', { targetRef: 'x', nodeName: 5, zone: {}, hints: 'x' }),
        ],
      }),
    );
    assert.equal(s.unusable, false);
    assert.deepEqual(s.candidates.map((c) => c.endpoint.key), ['10.0.0.1:8080', '10.0.0.5:8080']);
    assert.deepEqual(s.problems, [
      'endpoint #1 is null, not an object',
      'endpoint #2 is 7, not an object',
      'endpoint #3 has no address (addresses is a list)',
      'endpoint #4 has no address (addresses is "x")',
      'endpoint "not-an-ip": not an IP address',
      'endpoint fd00::1: an IPv6 address in an IPv4 slice',
      'endpoint 10.0.0.2: conditions is "ready", not an object',
      'endpoint 10.0.0.3: conditions.ready is "yes", not true, false or null',
      'endpoint 10.0.0.4: conditions.terminating is 1, not true, false or null',
    ]);
  });

  it('refuses unspecified, loopback, link-local, multicast and broadcast addresses unless allowed', () => {
    const v4 = ['0.0.0.0', '127.0.0.1', '169.254.169.254', '224.0.0.1', '255.255.255.255'];
    const s = parsed(broken('s', { endpoints: [...v4.map((ip) => ep(ip)), ep('10.0.0.1')] }));
    assert.deepEqual(s.candidates.map((c) => c.endpoint.address), ['10.0.0.1']);
    assert.equal(s.problems.length, 5);
    assert.match(s.problems[0], /endpoint 0\.0\.0\.0 is an unspecified address, which this source refuses unless its allowAddresses option includes "unspecified"/);
    assert.match(s.problems[2], /169\.254\.169\.254 is a link-local address/);
    const v6 = parsed(broken('s', { addressType: 'IPv6', endpoints: ['::', '::1', 'fe80::1', 'ff02::1', '::ffff:127.0.0.1'].map((ip) => ep(ip)) }));
    assert.equal(v6.candidates.length, 0);
    assert.equal(v6.unusable, true, 'every endpoint refused: nothing in it is usable');
    const loopback = parsed(broken('s', { endpoints: [ep('127.0.0.1'), ep('0.0.0.0')] }), 'http', new Set(['loopback']));
    assert.deepEqual(loopback.candidates.map((c) => c.endpoint.address), ['127.0.0.1']);
  });
});

describe('kubernetesEndpoints: malformed slices through the API server', () => {
  it('a slice that loses its port number keeps its last good version, and says so', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)), slice('backend-b', pods(10, 12)));
    const recorder = await watching(t, server);
    for (const port of [null, '8080', 0, 70000]) {
      const from = recorder.errors.length;
      await server.apply(broken('backend-a', { ports: [{ name: 'http', port }] }, pods(0, 1)));
      const error = await recorder.errorWhere(() => true, from);
      assert.equal(error.code, ErrorCode.INVALID_ENDPOINT);
      assert.match(error.message, /Service default\/backend: EndpointSlice backend-a: port "http" is .* its 1 endpoints are skipped/);
      assert.match(error.message, /nothing in it is usable, so its last good version stands/);
    }
    // backend-b's change shows the picture kept backend-a's pods all along.
    await server.apply(slice('backend-b', pods(10, 13)));
    const s = await recorder.snapshotWhere((x) => x.size === 6);
    assert.ok(s.has(`${podIp(2)}:8080`));
    assertNeverEmpty(recorder);
    // A good version replaces the kept one.
    await server.apply(slice('backend-a', pods(0, 1)));
    await recorder.snapshotWhere((x) => x.size === 4);
  });

  it('the only slice garbled in every way never empties the set', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 2)));
    const recorder = await watching(t, server);
    const patches: Record<string, unknown>[] = [
      { endpoints: 'x' },
      { addressType: null },
      { ports: null },
      { endpoints: [null, 5, { addresses: ['nope'] }] },
      { endpoints: [{ addresses: ['0.0.0.0'] }, { addresses: ['169.254.169.254'] }] },
    ];
    for (const patch of patches) await server.apply(broken('backend-a', patch));
    await recorder.until((r) => r.errors.length === patches.length);
    for (const e of recorder.errors) assert.equal(e.code, ErrorCode.INVALID_ENDPOINT);
    await server.apply(slice('backend-b', pods(5, 6)));
    await recorder.snapshotWhere((s) => s.size === 3);
    assertNeverEmpty(recorder);
    assert.deepEqual(keys(recorder), [`${podIp(0)}:8080`, `${podIp(1)}:8080`, `${podIp(5)}:8080`]);
  });

  it('skips bad endpoints in a list and in events, keeps the good ones, and reports each problem once', TIMEOUT, async (t) => {
    const server = await startServer(t);
    const withBad = (n: number) => broken('backend-a', { endpoints: [...slice('x', pods(0, n)).endpoints!, { addresses: ['not-an-ip'] }] });
    await server.apply(withBad(2));
    const { recorder } = discover(t, server);
    const first = await recorder.snapshotWhere(() => true);
    assert.equal(first.size, 2);
    const error = await recorder.errorWhere();
    assert.equal(error.code, ErrorCode.INVALID_ENDPOINT);
    assert.match(error.message, /EndpointSlice backend-a: endpoint "not-an-ip": not an IP address \(its 2 other endpoints are used\)/);
    // New versions of the slice that still carry the same bad endpoint are not reported again.
    await server.nextRequest((r) => r.kind === 'watch');
    await server.apply(withBad(3));
    await server.apply(withBad(4));
    await recorder.snapshotWhere((s) => s.size === 4);
    assert.equal(recorder.errors.length, 1);
    // Fixed, then broken again: reported again.
    await server.apply(slice('backend-a', pods(0, 4)));
    await server.apply(broken('backend-a', { endpoints: [...slice('x', pods(0, 4)).endpoints!, { addresses: ['not-an-ip'] }] }));
    await recorder.until((r) => r.errors.length === 2);
  });

  it('reports at most ten slices at once, then one per interval by the injected clock, counting what it held back', TIMEOUT, async (t) => {
    const server = await startServer(t);
    let now = 0;
    const clock = () => now;
    const bad = (i: number) => broken(`backend-${i}`, { endpoints: [{ addresses: [podIp(i)] }, { addresses: [`bad-${i}`] }] });
    await server.apply(...Array.from({ length: 15 }, (_, i) => bad(i)));
    const { recorder } = discover(t, server, { clock });
    const first = await recorder.snapshotWhere(() => true);
    assert.equal(first.size, 15, 'every good endpoint is used');
    assert.equal(recorder.errors.length, 10);
    now += 6_000;
    await server.nextRequest((r) => r.kind === 'watch');
    await server.apply(bad(20));
    await recorder.until((r) => r.errors.length === 11);
    assert.match(recorder.errors[10].message, /bad-20.*5 such reports were held back before this one/);
  });

  it('a refused address is skipped and reported once while it keeps coming; allowAddresses lets it in', TIMEOUT, async (t) => {
    const server = await startServer(t);
    const endpoints = (n: number) => [{ ip: '127.0.0.1', pod: 'local' }, { ip: '169.254.169.254', pod: 'metadata' }, ...pods(0, n)];
    await server.apply(slice('backend-a', endpoints(1)));
    const recorder = await watching(t, server);
    assert.deepEqual(keys(recorder), [`${podIp(0)}:8080`]);
    const error = await recorder.errorWhere();
    assert.equal(error.code, ErrorCode.INVALID_ENDPOINT);
    assert.match(error.message, /127\.0\.0\.1 is a loopback address, which this source refuses unless its allowAddresses option includes "loopback"/);
    assert.match(error.message, /169\.254\.169\.254 is a link-local address/);
    await server.apply(slice('backend-a', endpoints(2)));
    await recorder.snapshotWhere((s) => s.size === 2);
    assert.equal(recorder.errors.length, 1, 'the same refusals are not reported on every event');

    const allowing = await watching(t, server, { allowAddresses: ['loopback'] });
    assert.deepEqual(allowing.keys, [`${podIp(0)}:8080`, `${podIp(1)}:8080`, '127.0.0.1:8080']);
    assert.equal(allowing.errors.length, 1);
    assert.doesNotMatch(allowing.errors[0].message, /127\.0\.0\.1/);
  });

  it('refuses a bad allowAddresses option at the door', async (t) => {
    const server = await startServer(t);
    for (const allowAddresses of ['loopback', ['localhost'], null]) {
      assert.throws(
        () => kubernetesEndpoints({ service: SERVICE, namespace: 'default', port: 'http', kubeConfig: server.kubeConfig(), allowAddresses } as never),
        (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_OPTION && /option allowAddresses/.test(e.message),
      );
    }
  });

  it('a MODIFIED event for a slice whose name is gone deletes nothing; a DELETED of an unknown slice changes nothing', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 2)));
    const recorder = await watching(t, server);
    const rv = Number(server.resourceVersion) + 1;
    await server.writeRaw(`${JSON.stringify({ type: 'DELETED', object: { metadata: { name: 'never-was', resourceVersion: String(rv) } } })}\n`);
    await server.apply(slice('backend-a', pods(0, 3)));
    await recorder.snapshotWhere((s) => s.size === 3);
    assert.equal(recorder.errors.length, 0);
  });
});
