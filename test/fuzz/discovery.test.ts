/**
 * Fuzzing discovery answers through the real servers: random watch lines, EndpointSlice objects
 * and list bodies from the fake API server to the real @kubernetes/client-node, random records
 * and failures from the DNS test server to Node's resolver, and random endpoint lists to
 * staticEndpoints. Whatever comes, a pool's set keeps the endpoints of the last good answer
 * (a malformed answer never empties it, nor drops a good endpoint), every report is a
 * PodpoolError, and nothing is thrown out of a source.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { createPool, dnsEndpoints, kubernetesEndpoints, PodpoolError, staticEndpoints, type Pool } from '../../src/index.ts';
import { DnsServer } from '../../testkit/dns-server.ts';
import { endpointSlice, FakeApiServer } from '../../testkit/fake-apiserver.ts';
import { MemoryTransport, type MemoryClient } from '../support/memory-transport.ts';

/** Watches a pool: every snapshot must hold `keys`; every source error must be a PodpoolError. */
function guard(pool: Pool<MemoryClient>, keys: readonly string[]): { readonly problems: string[]; readonly errors: number } {
  const state = { problems: [] as string[], errors: 0 };
  pool.on('change', (endpoints) => {
    for (const key of keys) if (!endpoints.has(key)) state.problems.push(`a snapshot without ${key}: ${endpoints.toArray().map((e) => e.key).join(', ')}`);
  });
  pool.on('sourceError', (error) => {
    state.errors++;
    if (!(error instanceof PodpoolError)) state.problems.push(`a source error that is not a PodpoolError: ${String(error)}`);
  });
  return state;
}

/** Values for the fields of an EndpointSlice, right and wrong. */
const sliceValue = fc.oneof(
  fc.constantFrom(null, undefined, 0, -1, 70000, '8080', 'IPv4', 'IPv6', 'FQDN', '', true, [], {}),
  fc.constantFrom('10.0.0.1', '0.0.0.0', '169.254.169.254', '224.0.0.1', '::', 'fe80::1', '127.0.0.9', 'not-an-ip', '1.2.3', '::ffff:127.0.0.1'),
  fc.anything({ maxDepth: 1 }),
);
const randomEndpoint = fc.record(
  {
    addresses: fc.oneof(fc.array(sliceValue, { maxLength: 3 }), sliceValue),
    conditions: fc.oneof(fc.record({ ready: sliceValue, serving: sliceValue, terminating: sliceValue }, { requiredKeys: [] }), sliceValue),
    targetRef: fc.oneof(fc.record({ kind: fc.constantFrom('Pod', 'Node', 5), name: sliceValue, uid: sliceValue }, { requiredKeys: [] }), sliceValue),
    nodeName: sliceValue,
    zone: sliceValue,
  },
  { requiredKeys: [] },
);
/** A slice of another name than the good one, or of none: shaped like a slice, fields anything. */
const randomSlice = fc.record(
  {
    apiVersion: fc.constant('discovery.k8s.io/v1'),
    kind: fc.constant('EndpointSlice'),
    metadata: fc.oneof(
      fc.record({ name: fc.oneof(fc.constantFrom('other-1', 'other-2'), sliceValue), namespace: fc.constant('default'), resourceVersion: sliceValue, labels: fc.constant({ 'kubernetes.io/service-name': 'backend' }) }, { requiredKeys: [] }),
      sliceValue,
    ),
    addressType: sliceValue,
    endpoints: fc.oneof(fc.array(fc.oneof(randomEndpoint, sliceValue), { maxLength: 4 }), sliceValue),
    ports: fc.oneof(fc.array(fc.oneof(fc.record({ name: fc.oneof(fc.constant('http'), sliceValue), port: sliceValue, protocol: sliceValue }, { requiredKeys: [] }), sliceValue), { maxLength: 2 }), sliceValue),
  },
  { requiredKeys: [] },
);
/** One line on the watch: an event with a random slice, an event of another shape, or not JSON at all. */
const watchLine = fc.oneof(
  fc.record({ type: fc.constantFrom('ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK', 'ERROR', 'WHAT', 5), object: fc.oneof(randomSlice, sliceValue) }, { requiredKeys: [] }).map((e) => JSON.stringify(e) ?? 'null'),
  fc.json({ maxDepth: 2 }),
  fc.string({ maxLength: 60 }).map((s) => s.replace(/\n/g, ' ')),
  fc.constantFrom('{"type":"MODIFIED","object":{"metadata":{"name":"good"', '{"type":"DELETED"}', '{"type":"DELETED","object":{"metadata":{}}}', '[]', 'null'),
);
/** A list body that is not a list. */
const listBody = fc.oneof(
  fc.constantFrom('{}', '{"items":null}', '{"items":{}}', '{"items":[null, 5]}', '{"metadata":{"resourceVersion":"1"}}', '[]', 'null', '{"items":', ''),
  fc.json({ maxDepth: 2 }),
);

describe('fuzz: EndpointSlices through the fake API server', () => {
  let api: FakeApiServer;
  before(async () => {
    api = await FakeApiServer.start();
  });
  after(() => api.close());

  it('no watch line, slice or list body that is wrong drops an endpoint of the good slice', async () => {
    const good = ['127.0.0.1', '127.0.0.2', '127.0.0.3'];
    await api.apply(endpointSlice({ name: 'good', service: 'backend', endpoints: good.map((ip) => ({ ip })) }));
    const pool = createPool({
      source: kubernetesEndpoints({ service: 'backend', namespace: 'default', port: 'http', kubeConfig: api.kubeConfig(), allowAddresses: ['loopback'], backoff: { initialMs: 1, maxMs: 5 } }),
      transport: new MemoryTransport(),
    });
    const keys = good.map((a) => `${a}:8080`);
    const watching = guard(pool, keys);
    try {
      await pool.ready({ minEndpoints: 3 });
      let marker = 0;
      await fc.assert(
        fc.asyncProperty(fc.array(fc.oneof(watchLine.map((line) => ({ line })), listBody.map((list) => ({ list }))), { minLength: 1, maxLength: 4 }), async (inputs) => {
          for (const input of inputs) {
            if ('line' in input) await api.writeRaw(`${input.line}\n`);
            else api.answerList(input.list);
          }
          // A good change after the bad ones: once the pool has it, the source read past them
          // (relisting, if a bad line made it, past any bad list body too).
          marker++;
          const address = `127.0.1.${marker % 250}`;
          await api.apply(endpointSlice({ name: 'marker', service: 'backend', endpoints: [{ ip: address }] }));
          while (!pool.endpoints.has(`${address}:8080`)) await once(pool, 'change');
          for (const key of keys) assert.ok(pool.endpoints.has(key), `${key} is still known`);
          assert.deepEqual(watching.problems, []);
        }),
        { numRuns: 40 },
      );
      assert.ok(watching.errors > 0, 'the bad inputs were reported');
    } finally {
      await pool.close();
    }
  });
});

describe('fuzz: DNS answers through the DNS test server', () => {
  let dns: DnsServer;
  before(async () => {
    dns = await DnsServer.start();
  });
  after(() => dns.close());

  it('no record, foreign name or failure drops the endpoints of the last good answer', async () => {
    const name = 'backend.default.svc.cluster.local';
    const good = ['127.0.0.1', '127.0.0.2'];
    dns.set(name, { A: good });
    const pool = createPool({
      source: dnsEndpoints({ host: name, port: 80, servers: [dns.address], refreshMs: 1, timeoutMs: 250, tries: 1, allowAddresses: ['loopback'] }),
      transport: new MemoryTransport(),
    });
    const keys = good.map((a) => `${a}:80`);
    const watching = guard(pool, keys);
    const record = fc.oneof(
      fc.record({ type: fc.constant('A' as const), name: fc.constantFrom(name, 'other.default.svc.cluster.local', 'evil.example'), data: fc.constantFrom('10.0.0.9', '0.0.0.0', '169.254.169.254', '224.0.0.1', '255.255.255.255', '127.0.0.7') }),
      fc.record({ type: fc.constant('AAAA' as const), name: fc.constantFrom(name, 'other.default.svc.cluster.local'), data: fc.constantFrom('::', 'fe80::1', 'ff02::1', 'fd00::9', '::ffff:169.254.169.254') }),
      fc.record({ type: fc.constant('CNAME' as const), name: fc.constant(name), data: fc.constantFrom('elsewhere.example', name) }),
    );
    const step = fc.oneof(
      fc.record({ extra: fc.array(record, { maxLength: 4 }) }),
      fc.record({ fail: fc.constantFrom('servfail', 'refused', 'timeout'), type: fc.constantFrom('A', 'AAAA', undefined) }),
    );
    try {
      await pool.ready({ minEndpoints: 2 });
      await fc.assert(
        fc.asyncProperty(step, async (s) => {
          if ('extra' in s) {
            // The good records, and whatever else the fuzzer adds to the answer.
            dns.answer(name, 'A', [...good.map((data) => ({ type: 'A' as const, name, data })), ...s.extra]);
          } else {
            dns.fail(s.fail as never, { name, ...(s.type !== undefined && { type: s.type }), times: 2 });
          }
          // Two complete polls after the change: the source has read this answer.
          const asked = dns.count(name, 'A');
          await dns.waitForQueries(asked + 3, name, 'A');
          dns.recover();
          dns.answer(name, 'A', undefined);
          for (const key of keys) assert.ok(pool.endpoints.has(key), `${key} is still known`);
          assert.deepEqual(watching.problems, []);
        }),
        { numRuns: 40 },
      );
      assert.ok(watching.errors > 0, 'the bad answers were reported');
    } finally {
      await pool.close();
    }
  });
});

describe('fuzz: static endpoint lists', () => {
  it('any list is taken or refused with a PodpoolError', () => {
    const entry = fc.oneof(
      fc.record({ address: sliceValue, port: sliceValue, ready: sliceValue, podName: sliceValue }, { requiredKeys: [] }),
      fc.record({ address: fc.constantFrom('127.0.0.1', '10.1.2.3', '::1', 'fd00::1'), port: fc.integer({ min: 1, max: 65535 }) }),
      sliceValue,
    );
    fc.assert(
      fc.property(fc.oneof(fc.array(entry, { maxLength: 5 }), sliceValue), (list) => {
        try {
          staticEndpoints(list as never);
        } catch (error) {
          assert.ok(error instanceof PodpoolError, `staticEndpoints(${fc.stringify(list)}) threw ${String(error)}`);
        }
      }),
      { numRuns: 1000 },
    );
  });
});
