import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import fc from 'fast-check';
import { mergeEndpointSlices } from '../../src/discovery/endpoint-slices.ts';
import { kubernetesEndpoints, type KubernetesEndpointsOptions } from '../../src/discovery/kubernetes.ts';
import type { Endpoint, EndpointSet } from '../../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import {
  endpointSlice,
  FakeApiServer,
  podIp,
  slicesFor,
  type RequestRecord,
  type SliceEndpointInit,
} from '../../testkit/fake-apiserver.ts';
import { discover, pods, SERVICE, slice, startServer } from '../support/kubernetes-discovery.ts';
import { RecordingSink } from '../support/recording-sink.ts';

// A broken feature shows up as a wait that never ends; this turns it into a failure.
const TIMEOUT = { timeout: 20_000 };

function addresses(set: EndpointSet): string[] {
  return set.toArray().map((e) => e.key);
}

function readyCount(set: EndpointSet): number {
  return set.ready().length;
}

function byPod(set: EndpointSet, pod: string): Endpoint | undefined {
  return set.toArray().find((e) => e.podName === pod);
}

/** Starts discovery and waits until its first snapshot is in and its watch is open. */
async function discoverAndWatch(
  t: TestContext,
  server: FakeApiServer,
  options: Partial<KubernetesEndpointsOptions> = {},
): Promise<{ recorder: RecordingSink; watch: RequestRecord; close: () => Promise<void> }> {
  const watching = server.nextRequest((r) => r.kind === 'watch');
  const d = discover(t, server, options);
  await d.recorder.snapshotWhere(() => true);
  return { ...d, watch: await watching };
}

function assertNeverEmpty(recorder: RecordingSink): void {
  for (const s of recorder.snapshots) assert.notEqual(s.size, 0, 'a snapshot was empty');
}

describe('mergeEndpointSlices', () => {
  it('reads conditions as the API defines them, and never offers a terminating pod new work', () => {
    const set = mergeEndpointSlices(
      [
        slice('s', [
          { ip: '10.0.0.1', conditions: {} },
          { ip: '10.0.0.2', conditions: { ready: null, serving: null, terminating: null } },
          { ip: '10.0.0.3', conditions: { ready: false } },
          { ip: '10.0.0.4', ready: false, serving: true, terminating: true },
          { ip: '10.0.0.5', ready: false, serving: false, terminating: true },
          // publishNotReadyAddresses: the slice says ready even while the pod terminates.
          { ip: '10.0.0.6', ready: true, serving: true, terminating: true },
        ]),
      ],
      'http',
    );
    const conditions = set.toArray().map((e) => [e.address, e.ready, e.serving, e.terminating]);
    assert.deepEqual(conditions, [
      ['10.0.0.1', true, true, false],
      ['10.0.0.2', true, true, false],
      ['10.0.0.3', false, false, false],
      ['10.0.0.4', false, true, true],
      ['10.0.0.5', false, false, true],
      ['10.0.0.6', false, true, true],
    ]);
  });

  it('counts an address in two slices once, preferring the ready view whatever the order', () => {
    const moving = { ip: '10.0.0.9', pod: 'mover', node: 'node-b', zone: 'zone-b' };
    const a = slice('a', [{ ...moving, ready: false, serving: false, node: 'node-a', zone: 'zone-a' }, { ip: '10.0.0.1' }]);
    const b = slice('b', [{ ...moving, ready: true }, { ip: '10.0.0.2' }]);
    for (const order of [[a, b], [b, a]]) {
      const set = mergeEndpointSlices(order, 'http');
      assert.deepEqual(addresses(set), ['10.0.0.1:8080', '10.0.0.2:8080', '10.0.0.9:8080']);
      const mover = set.get('10.0.0.9:8080');
      assert.equal(mover?.ready, true);
      assert.equal(mover?.nodeName, 'node-b', 'the metadata comes with the chosen view');
    }
  });

  it('takes each slice’s number for a named port, skips slices without it, and uses a numeric port as is', () => {
    const slices = [
      slice('a', [{ ip: '10.0.0.1' }], { ports: [{ name: 'http', port: 8080 }, { name: 'metrics', port: 9100 }] }),
      slice('b', [{ ip: '10.0.0.2' }], { ports: [{ name: 'http', port: 9090 }] }),
      slice('c', [{ ip: '10.0.0.3' }], { ports: [{ name: 'metrics', port: 9100 }] }),
      slice('d', [{ ip: '10.0.0.4' }], { ports: [{ name: 'http', port: null }] }),
      slice('e', [{ ip: 'backend.example.com' }], { addressType: 'FQDN' }),
      slice('f', [{ ip: 'not-an-address' }]),
    ];
    assert.deepEqual(addresses(mergeEndpointSlices(slices, 'http')), ['10.0.0.1:8080', '10.0.0.2:9090']);
    assert.deepEqual(addresses(mergeEndpointSlices(slices, 'metrics')), ['10.0.0.1:9100', '10.0.0.3:9100']);
    assert.deepEqual(addresses(mergeEndpointSlices(slices, 7000)), [
      '10.0.0.1:7000',
      '10.0.0.2:7000',
      '10.0.0.3:7000',
      '10.0.0.4:7000',
    ]);
  });

  it('keeps IPv6 slices, and counts a dual-stack pod once (by its IPv4 address)', () => {
    const set = mergeEndpointSlices(
      [
        slice('v4', [{ ip: '10.0.0.1', pod: 'dual' }]),
        slice('v6', [{ ip: 'fd00::1', pod: 'dual' }, { ip: 'fd00::2', pod: 'only-v6' }], { addressType: 'IPv6' }),
      ],
      'http',
    );
    assert.deepEqual(addresses(set), ['10.0.0.1:8080', '[fd00::2]:8080']);
    assert.equal(set.get('[fd00::2]:8080')?.podName, 'only-v6');
  });

  it('carries pod, node, zone and topology hints into the endpoint', () => {
    const set = mergeEndpointSlices(
      [slice('a', [{ ip: '10.0.0.1', pod: 'p1', node: 'n1', zone: 'z1', hintZones: ['z1', 'z2'] }, { ip: '10.0.0.2' }])],
      'http',
    );
    const [withMeta, bare] = set.toArray();
    assert.deepEqual(
      { podName: withMeta.podName, nodeName: withMeta.nodeName, zone: withMeta.zone, hintZones: withMeta.hintZones },
      { podName: 'p1', nodeName: 'n1', zone: 'z1', hintZones: ['z1', 'z2'] },
    );
    assert.deepEqual([bare.podName, bare.nodeName, bare.zone, bare.hintZones], [undefined, undefined, undefined, undefined]);
  });

  it('gives the same snapshot in any slice order: each address once, ready if any slice has it ready and not terminating', () => {
    const endpoint = fc.record({ ip: fc.integer({ min: 0, max: 15 }), ready: fc.boolean(), serving: fc.boolean(), terminating: fc.boolean() });
    const slicesArb = fc.array(fc.array(endpoint, { maxLength: 8 }), { maxLength: 5 }).map((lists) =>
      lists.map((eps, i) =>
        slice(
          `s${i}`,
          eps.map((e) => ({ ip: podIp(e.ip), ready: e.ready, serving: e.serving, terminating: e.terminating })),
        ),
      ),
    );
    fc.assert(
      fc.property(slicesArb, fc.nat(), (slices, rotation) => {
        const merged = mergeEndpointSlices(slices, 'http');
        const k = slices.length === 0 ? 0 : rotation % slices.length;
        const rotated = [...slices.slice(k), ...slices.slice(0, k)].reverse();
        assert.ok(merged.equals(mergeEndpointSlices(rotated, 'http')));
        const all = slices.flatMap((s) => s.endpoints ?? []) as { addresses: string[]; conditions: { ready: boolean; terminating: boolean } }[];
        assert.equal(merged.size, new Set(all.map((e) => e.addresses[0])).size);
        for (const e of merged) {
          const anyReady = all.some((x) => x.addresses[0] === e.address && x.conditions.ready && !x.conditions.terminating);
          assert.equal(e.ready, anyReady);
        }
      }),
    );
  });
});

describe('kubernetesEndpoints options', () => {
  const kubeConfigFor = async (t: TestContext) => (await startServer(t)).kubeConfig();

  it('refuses bad options at the door, naming the option and the value', async (t) => {
    const kubeConfig = await kubeConfigFor(t);
    const base = { service: SERVICE, namespace: 'default', port: 'http', kubeConfig } as KubernetesEndpointsOptions;
    const cases: [Partial<Record<keyof KubernetesEndpointsOptions, unknown>>, RegExp][] = [
      [{ service: '' }, /option service .*got ""/],
      [{ service: 'Backend' }, /option service .*"Backend"/],
      [{ service: undefined }, /option service .*undefined/],
      [{ namespace: 'kube_system' }, /option namespace .*"kube_system"/],
      [{ namespace: undefined }, /option namespace/],
      [{ port: 0 }, /option port .*got 0/],
      [{ port: 70000 }, /option port .*70000/],
      [{ port: 80.5 }, /option port .*80\.5/],
      [{ port: '' }, /option port .*""/],
      [{ port: '8080' }, /option port .*pass 8080 as a number/],
      [{ stallTimeoutMs: 0 }, /option stallTimeoutMs .*got 0/],
      [{ stallTimeoutMs: Number.NaN }, /option stallTimeoutMs .*NaN/],
      [{ stallTimeoutMs: 2 ** 31 }, /option stallTimeoutMs .*2147483648/],
      [{ backoff: { maxMs: Infinity } }, /option backoff\.maxMs .*Infinity/],
      [{ backoff: { initialMs: -1 } }, /option backoff\.initialMs .*-1/],
      [{ backoff: { initialMs: 100, maxMs: 10 } }, /option backoff\.maxMs .*>= 100.*got 10/],
      [{ kubeConfig: {} }, /option kubeConfig/],
      [{ clock: 5 }, /option clock must be a function returning milliseconds, got 5/],
      [{ random: 'x' }, /option random must be a function returning numbers in \[0, 1\), got "x"/],
    ];
    for (const [patch, message] of cases) {
      assert.throws(
        () => kubernetesEndpoints({ ...base, ...patch } as KubernetesEndpointsOptions),
        (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_OPTION && message.test(e.message),
        `${JSON.stringify(patch)} should be refused with ${message}`,
      );
    }
  });

  it('refuses a KubeConfig without a current cluster, without printing its credentials', () => {
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromOptions({ clusters: [], users: [{ name: 'u', token: 'secret-token' }], contexts: [], currentContext: 'none' });
    assert.throws(
      () => kubernetesEndpoints({ service: SERVICE, namespace: 'default', port: 'http', kubeConfig }),
      (e: unknown) =>
        e instanceof PodpoolError &&
        e.code === ErrorCode.INVALID_OPTION &&
        /option kubeConfig must have a current context/.test(e.message) &&
        !e.message.includes('secret-token'),
    );
  });

  it('accepts a port name or number and calls itself kubernetes', async (t) => {
    const kubeConfig = await kubeConfigFor(t);
    assert.equal(kubernetesEndpoints({ service: 'b', namespace: 'ns-1', port: 'grpc-web', kubeConfig }).kind, 'kubernetes');
    assert.equal(kubernetesEndpoints({ service: 'b', namespace: 'ns-1', port: 65535, kubeConfig }).kind, 'kubernetes');
  });

  it('without kubeConfig outside a pod, reads the file KUBECONFIG names', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('a', pods(0, 2)));
    const dir = await mkdtemp(join(tmpdir(), 'podpool-kubeconfig-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const file = await server.writeKubeconfig(dir);
    // The credentials are found at the door, so the environment only has to be right during the call.
    const source = withEnv({ KUBECONFIG: file, KUBERNETES_SERVICE_HOST: undefined }, () =>
      kubernetesEndpoints({ service: SERVICE, namespace: 'default', port: 'http' }),
    );
    const recorder = new RecordingSink();
    const watch = source.watch(recorder);
    t.after(() => watch.close());
    const first = await recorder.snapshotWhere(() => true);
    assert.deepEqual(addresses(first), [`${podIp(0)}:8080`, `${podIp(1)}:8080`]);
  });

  it('without kubeConfig, a pod, KUBECONFIG or ~/.kube/config, says kubeConfig is needed', async (t) => {
    const home = await mkdtemp(join(tmpdir(), 'podpool-home-'));
    t.after(() => rm(home, { recursive: true, force: true }));
    assert.throws(
      () =>
        withEnv({ HOME: home, KUBECONFIG: undefined, KUBERNETES_SERVICE_HOST: undefined }, () =>
          kubernetesEndpoints({ service: SERVICE, namespace: 'default', port: 'http' }),
        ),
      (e: unknown) => e instanceof PodpoolError && e.code === ErrorCode.INVALID_OPTION && /option kubeConfig is needed/.test(e.message),
    );
  });
});

function withEnv<T>(patch: Record<string, string | undefined>, fn: () => T): T {
  const saved = Object.fromEntries(Object.keys(patch).map((k) => [k, process.env[k]]));
  const set = (values: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(values)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  set(patch);
  try {
    return fn();
  } finally {
    set(saved);
  }
}

describe('kubernetesEndpoints against an API server', () => {
  it('reports nothing until the list is complete, then 250 pods from three overlapping slices at once', TIMEOUT, async (t) => {
    // Pages of one slice: the first snapshot must wait for the last page.
    const server = await startServer(t, { maxPageSize: 1 });
    await server.apply(
      // Pods 95–99 are moving from slice a to slice b: not ready in a's stale view, ready in b's.
      slice('backend-a', [...pods(0, 95), ...pods(95, 100, { ready: false, serving: false })]),
      slice('backend-b', pods(95, 195)),
      // A newer ReplicaSet's pods, with another number behind the same port name.
      slice('backend-c', pods(195, 250, { zone: 'zone-c', node: 'node-c', hintZones: ['zone-c'] }), {
        ports: [{ name: 'http', port: 9090 }],
      }),
      endpointSlice({ name: 'other-a', service: 'other', endpoints: pods(300, 310) }),
      endpointSlice({ name: 'backend-elsewhere', service: SERVICE, namespace: 'elsewhere', endpoints: pods(400, 410) }),
    );
    const watching = server.nextRequest((r) => r.kind === 'watch');
    const { recorder } = discover(t, server);
    const snapshotsAtEachPage: number[] = [];
    server.on('request', (r) => {
      if (r.kind === 'list') snapshotsAtEachPage.push(recorder.snapshots.length);
    });
    const watch = await watching;
    await recorder.snapshotWhere(() => true);

    const lists = server.requests.filter((r) => r.kind === 'list');
    assert.equal(lists.length, 3, 'one request per page');
    assert.deepEqual(snapshotsAtEachPage, [0, 0, 0], 'no snapshot before the last page');
    assert.equal(lists[0].query.labelSelector, 'kubernetes.io/service-name=backend');
    assert.ok(lists[1].query.continue, 'the second page asks to continue');
    assert.equal(watch.query.resourceVersion, server.resourceVersion, 'the watch starts where the list ended');
    assert.equal(watch.query.allowWatchBookmarks, 'true');
    assert.equal(watch.query.labelSelector, 'kubernetes.io/service-name=backend');

    assert.equal(recorder.snapshots.length, 1);
    const [first] = recorder.snapshots;
    assert.equal(first.size, 250, 'each pod once');
    assert.equal(readyCount(first), 250, 'a moving pod counts as ready');
    assert.equal(byPod(first, 'backend-97')?.port, 8080);
    const c = byPod(first, 'backend-200');
    assert.deepEqual([c?.port, c?.zone, c?.nodeName, c?.hintZones], [9090, 'zone-c', 'node-c', ['zone-c']]);
    assert.equal(recorder.errors.length, 0);
  });

  it('follows a scale-up and a scale-down, and reports only changes that alter the picture', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-0', pods(0, 3)));
    const { recorder } = await discoverAndWatch(t, server);
    assert.equal(recorder.last?.size, 3);

    // Two new pods start, not ready yet, then become ready.
    await server.apply(slice('backend-0', [...pods(0, 3), ...pods(3, 5, { ready: false })]));
    let s = await recorder.snapshotWhere((x) => x.size === 5);
    assert.equal(readyCount(s), 3, 'pods that are starting are there but not ready');
    await server.apply(slice('backend-0', pods(0, 5)));
    s = await recorder.snapshotWhere((x) => readyCount(x) === 5);

    // Past 100 pods the controller opens another slice.
    await server.apply(...slicesFor(SERVICE, pods(0, 150)));
    s = await recorder.snapshotWhere((x) => x.size === 150);
    assert.equal(readyCount(s), 150);

    // Changes that leave the picture as it is send nothing: another Service's slice, a slice
    // rewritten with the same endpoints. The next snapshot is the scale-down.
    const before = recorder.snapshots.length;
    await server.apply(endpointSlice({ name: 'other-a', service: 'other', endpoints: pods(500, 520) }));
    await server.apply(slice('backend-1', pods(100, 150)));
    await server.remove('backend-1');
    s = await recorder.snapshotWhere((x) => x.size === 100, before);
    assert.equal(recorder.snapshots.length, before + 1, 'one snapshot for three changes, one of which mattered');
    assert.ok(s.has(`${podIp(99)}:8080`) && !s.has(`${podIp(100)}:8080`));

    await server.apply(slice('backend-0', pods(0, 2)));
    s = await recorder.snapshotWhere((x) => x.size === 2);
    assertNeverEmpty(recorder);
    assert.equal(recorder.errors.length, 0);
  });

  it('follows a rolling restart: terminating pods stay for in-flight work but take no new picks', TIMEOUT, async (t) => {
    const server = await startServer(t);
    const old = (i: number, init: Partial<SliceEndpointInit> = {}) => ({ ip: podIp(i), pod: `old-${i}`, ...init });
    const neu = (i: number, init: Partial<SliceEndpointInit> = {}) => ({ ip: podIp(10 + i), pod: `new-${i}`, ...init });
    await server.apply(slice('backend-a', [old(0), old(1), old(2)]));
    const { recorder } = await discoverAndWatch(t, server);

    const steps: { endpoints: SliceEndpointInit[]; check: (s: EndpointSet) => boolean }[] = [];
    const done: SliceEndpointInit[] = [];
    for (let i = 0; i < 3; i++) {
      const rest = [0, 1, 2].filter((j) => j > i).map((j) => old(j));
      steps.push(
        { endpoints: [...done, neu(i, { ready: false }), old(i), ...rest], check: (s) => byPod(s, `new-${i}`)?.ready === false },
        { endpoints: [...done, neu(i), old(i), ...rest], check: (s) => byPod(s, `new-${i}`)?.ready === true },
        {
          endpoints: [...done, neu(i), old(i, { ready: false, serving: true, terminating: true }), ...rest],
          check: (s) => {
            const e = byPod(s, `old-${i}`);
            return e !== undefined && !e.ready && e.serving && e.terminating;
          },
        },
        {
          endpoints: [...done, neu(i), old(i, { ready: false, serving: false, terminating: true }), ...rest],
          check: (s) => byPod(s, `old-${i}`)?.serving === false,
        },
        { endpoints: [...done, neu(i), ...rest], check: (s) => byPod(s, `old-${i}`) === undefined },
      );
      done.push(neu(i));
    }
    for (const step of steps) {
      const from = recorder.snapshots.length;
      await server.apply(slice('backend-a', step.endpoints));
      await recorder.snapshotWhere(step.check, from);
    }
    assert.deepEqual(
      recorder.last?.toArray().map((e) => e.podName),
      ['new-0', 'new-1', 'new-2'],
    );
    for (const s of recorder.snapshots) assert.ok(readyCount(s) >= 3, 'never fewer than three ready pods');
    for (const s of recorder.snapshots) {
      for (const e of s) if (e.terminating) assert.equal(e.ready, false, 'a terminating pod takes no new picks');
    }
  });

  it('never reports a pod missing while it moves from one slice to another', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)), slice('backend-b', pods(3, 6)));
    const { recorder } = await discoverAndWatch(t, server);
    const from = recorder.snapshots.length;
    // The removal comes first: applied one at a time, the picture would lack pod 2 in between.
    await server.apply(slice('backend-a', pods(0, 2)), slice('backend-b', pods(2, 6)));
    await server.apply(slice('backend-b', pods(2, 7)));
    await recorder.snapshotWhere((s) => s.size === 7, from);
    for (const s of recorder.snapshots) assert.ok(s.has(`${podIp(2)}:8080`), 'pod 2 went missing');
  });

  it('carries IPv6 addresses and topology through both the list and the watch', TIMEOUT, async (t) => {
    const server = await startServer(t);
    const topo = { node: 'node-1', zone: 'zone-1', hintZones: ['zone-1'] };
    await server.apply(slice('backend-v6', [{ ip: 'fd00::1', pod: 'p1', ...topo }], { addressType: 'IPv6' }));
    const { recorder } = await discoverAndWatch(t, server);
    await server.apply(slice('backend-v6', [{ ip: 'fd00::1', pod: 'p1', ...topo }, { ip: 'fd00::2', pod: 'p2', ...topo }], { addressType: 'IPv6' }));
    const s = await recorder.snapshotWhere((x) => x.size === 2);
    for (const e of s) {
      assert.deepEqual([e.nodeName, e.zone, e.hintZones], ['node-1', 'zone-1', ['zone-1']], e.key);
    }
    assert.deepEqual(addresses(s), ['[fd00::1]:8080', '[fd00::2]:8080']);
  });

  it('a port number needs no port name in the slices', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 2), { ports: [{ port: 8443 }] }));
    const { recorder } = await discoverAndWatch(t, server, { port: 7000 });
    assert.deepEqual(addresses(recorder.last!), [`${podIp(0)}:7000`, `${podIp(1)}:7000`]);
  });

  it('reports an empty set when the Service has no endpoints: that is the truth, not an error', TIMEOUT, async (t) => {
    const server = await startServer(t);
    const { recorder } = await discoverAndWatch(t, server);
    assert.equal(recorder.last?.size, 0);
    await server.apply(slice('backend-a', pods(0, 1)));
    await recorder.snapshotWhere((s) => s.size === 1);
  });
});

describe('kubernetesEndpoints when things go wrong', () => {
  const service = /Service default\/backend/;

  it('refuses to guess without the token: a clear 401 error, no snapshot, and it keeps trying', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const second = server.nextRequest((r) => r.seq === 2);
    const { recorder } = discover(t, server, { kubeConfig: server.kubeConfig({ token: null }) });
    const error = await recorder.errorWhere();
    assert.equal(error.code, ErrorCode.DISCOVERY_FAILED);
    assert.match(error.message, service);
    assert.match(error.message, /401/);
    assert.match(error.message, /token/);
    assert.match(error.message, /no endpoints known yet/);
    assert.equal(server.requests[0].token, undefined);
    assert.equal(server.requests[0].status, 401);
    assert.equal((await second).kind, 'list', 'it retries');
    assert.equal(recorder.snapshots.length, 0, 'no snapshot, and above all no empty one');
  });

  it('names RBAC on a 403, then recovers once the Role is bound', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    server.forbid();
    const { recorder } = discover(t, server);
    const error = await recorder.errorWhere();
    assert.match(error.message, service);
    assert.match(error.message, /403/);
    assert.match(error.message, /RBAC/);
    assert.match(error.message, /get, list and watch endpointslices/);
    assert.match(error.message, /namespace default/);
    assert.equal(recorder.snapshots.length, 0);
    server.forbid(false);
    const s = await recorder.snapshotWhere(() => true);
    assert.equal(s.size, 3);
  });

  it('retries a list that answers 500, reporting each failure, and reports the picture once it lists', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    server.fail('list', 500, { times: 2 });
    const { recorder } = discover(t, server);
    const s = await recorder.snapshotWhere(() => true);
    assert.equal(s.size, 3);
    assert.equal(recorder.errors.length, 2);
    for (const e of recorder.errors) {
      assert.equal(e.code, ErrorCode.DISCOVERY_FAILED);
      assert.match(e.message, service);
      assert.match(e.message, /listing EndpointSlices failed: HTTP 500 injected fault 500/);
    }
    assert.equal(recorder.snapshots.length, 1);
  });

  it('keeps the last picture when a watch answers 500, relists, and follows changes again', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const { recorder } = await discoverAndWatch(t, server);
    const lists = () => server.requests.filter((r) => r.kind === 'list').length;
    const listsBefore = lists();
    server.fail('watch', 500);
    const relisted = server.nextRequest((r) => r.kind === 'list');
    server.dropWatches();
    const error = await recorder.errorWhere((e) => /HTTP 500/.test(e.message));
    assert.match(error.message, service);
    assert.match(error.message, /watching EndpointSlices failed/);
    assert.match(error.message, /keeping the last endpoints/);
    const relist = await relisted;
    await server.nextRequest((r) => r.kind === 'watch' && r.seq > relist.seq);
    assert.ok(lists() > listsBefore);
    await server.apply(slice('backend-a', pods(0, 4)));
    await recorder.snapshotWhere((s) => s.size === 4);
    assertNeverEmpty(recorder);
    assert.equal(recorder.snapshots.length, 2, 'the picture did not change until the scale-up');
  });

  it('after a dropped connection, watches again from the last resourceVersion and catches up', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const { recorder } = await discoverAndWatch(t, server);
    const lastSeen = server.resourceVersion;
    const rewatch = server.nextRequest((r) => r.kind === 'watch');
    assert.equal(server.dropWatches(), 1);
    // Made while the client is away: only the replay from its resourceVersion can bring it.
    await server.apply(slice('backend-a', pods(0, 5)));
    assert.equal((await rewatch).query.resourceVersion, lastSeen);
    await recorder.snapshotWhere((s) => s.size === 5);
    assert.equal(server.requests.filter((r) => r.kind === 'list').length, 1, 'no relist for a dropped connection');
    const error = await recorder.errorWhere();
    assert.match(error.message, /watching EndpointSlices failed: the connection to the API server broke/);
    assert.match(error.message, /keeping the last endpoints/);
    assertNeverEmpty(recorder);
  });

  it('restarts a watch the server ended cleanly, from where it was, without reporting an error', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const { recorder } = await discoverAndWatch(t, server);
    await server.apply(slice('backend-a', pods(0, 4)));
    await recorder.snapshotWhere((s) => s.size === 4);
    const lastSeen = server.resourceVersion;
    const rewatch = server.nextRequest((r) => r.kind === 'watch');
    assert.equal(server.endWatches(), 1);
    assert.equal((await rewatch).query.resourceVersion, lastSeen);
    await server.apply(slice('backend-a', pods(0, 5)));
    await recorder.snapshotWhere((s) => s.size === 5);
    assert.equal(recorder.errors.length, 0);
  });

  it('restarts a watch that went silent, and catches up on what it missed', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const { recorder, watch } = await discoverAndWatch(t, server, { stallTimeoutMs: 300 });
    const stalledAt = server.resourceVersion;
    assert.equal(server.stallWatches(), 1);
    const delivery = await server.apply(slice('backend-a', pods(0, 6)));
    assert.equal(delivery.watchers, 0, 'the silent watch did not get the change');
    await recorder.snapshotWhere((s) => s.size === 6);
    await watch.closed; // the client hung up on the silent watch itself
    const error = await recorder.errorWhere((e) => /no event nor bookmark for 300 ms/.test(e.message));
    assert.match(error.message, service);
    const resumed = server.requests.filter((r) => r.kind === 'watch' && r.seq > watch.seq);
    assert.ok(resumed.some((r) => r.query.resourceVersion === stalledAt), 'it resumed from where it was');
    assertNeverEmpty(recorder);
  });

  it('gives up on a watch whose response never starts', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    server.stall('watch', { beforeHeaders: true });
    const stalled = server.nextRequest((r) => r.kind === 'watch');
    const { recorder } = discover(t, server, { stallTimeoutMs: 300 });
    await recorder.snapshotWhere(() => true);
    await (await stalled).closed;
    await server.apply(slice('backend-a', pods(0, 4)));
    await recorder.snapshotWhere((s) => s.size === 4);
  });

  it('gives up on a list that never answers, and lists again', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    server.stall('list');
    const stalled = server.nextRequest((r) => r.kind === 'list');
    const { recorder } = discover(t, server, { stallTimeoutMs: 300 });
    const error = await recorder.errorWhere();
    assert.match(error.message, /listing EndpointSlices failed: no answer within 300 ms/);
    await (await stalled).closed;
    const s = await recorder.snapshotWhere(() => true);
    assert.equal(s.size, 3);
  });

  it('relists on an ERROR event with 410 Gone, and sees what happened in the compacted past', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const { recorder } = await discoverAndWatch(t, server);
    const relist = server.nextRequest((r) => r.kind === 'list');
    // The scale-up is never sent as an event: only a fresh list shows it.
    await server.compact([slice('backend-a', pods(0, 8))]);
    await relist;
    await recorder.snapshotWhere((s) => s.size === 8);
    assert.equal(recorder.errors.length, 0, '410 is routine, not an error');
    assertNeverEmpty(recorder);
  });

  it('relists when a watch request itself answers 410 Gone', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const { recorder } = await discoverAndWatch(t, server);
    await server.compact([slice('backend-a', pods(0, 7))], { endWatches: false });
    server.fail('watch', 410);
    const gone = server.nextRequest((r) => r.kind === 'watch');
    server.dropWatches();
    const goneSeq = (await gone).seq;
    const after = await server.nextRequest((r) => r.seq === goneSeq + 1);
    assert.equal(after.kind, 'list', 'the request after a 410 is a list');
    await recorder.snapshotWhere((s) => s.size === 7);
    assertNeverEmpty(recorder);
  });

  it('waits longer after each failure in a row (jittered by the injected random, capped), and starts over after progress', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    server.fail('list', 500, { times: 6 });
    // Each wait is initial · 2^(n-1) · (1 + random()), capped at maxMs.
    const { recorder } = discover(t, server, { backoff: { initialMs: 8, maxMs: 32 }, random: () => 0.5 });
    await recorder.snapshotWhere(() => true);
    const waits = () => recorder.errors.map((e) => Number(/retrying in (\d+) ms/.exec(e.message)?.[1]));
    assert.deepEqual(waits(), [12, 24, 32, 32, 32, 32]);

    // A watch event proves the server healthy: the next failures start from the first wait again.
    await server.apply(slice('backend-a', pods(0, 4)));
    await recorder.snapshotWhere((s) => s.size === 4);
    server.fail('watch', 500);
    server.dropWatches();
    await recorder.errorWhere((e) => /HTTP 500/.test(e.message), 6);
    assert.deepEqual(waits().slice(6), [12, 24], 'the first two waits after progress');
  });

  it('draws the watch timeout and the jitter from the injected random', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    server.fail('list', 500, { times: 1 });
    const { recorder, watch } = await discoverAndWatch(t, server, { backoff: { initialMs: 100, maxMs: 100 }, random: () => 0 });
    assert.match(recorder.errors[0].message, /retrying in 100 ms/, 'the base wait, unjittered, at random() = 0');
    // client-go's 5 to 10 minutes: the bottom of the range at random() = 0.
    assert.equal(watch.query.timeoutSeconds, '300');
  });

  it('tells a watch that ran a while from one that ended at once by the injected clock', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    // Each reading an hour after the last: by this clock every watch ran long, so one the server
    // ends cleanly restarts at once instead of after the minute-long backoff.
    let now = 0;
    const clock = () => (now += 3_600_000);
    const { recorder } = await discoverAndWatch(t, server, { backoff: { initialMs: 60_000, maxMs: 60_000 }, clock });
    await server.apply(slice('backend-a', pods(0, 4)));
    await recorder.snapshotWhere((s) => s.size === 4);
    const rewatch = server.nextRequest((r) => r.kind === 'watch');
    assert.equal(server.endWatches(), 1);
    await rewatch;
    assert.equal(recorder.errors.length, 0);
  });

  it('asks for bookmarks and resumes from the last bookmark', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    await discoverAndWatch(t, server);
    // Other Services move the resourceVersion on; the watch sees none of it but the bookmark.
    await server.apply(endpointSlice({ name: 'other-a', service: 'other', endpoints: pods(50, 52) }));
    await server.apply(endpointSlice({ name: 'other-a', service: 'other', endpoints: pods(50, 53) }));
    const bookmark = await server.bookmark();
    assert.equal(bookmark.watchers, 1, 'the watch asked for bookmarks');
    const rewatch = server.nextRequest((r) => r.kind === 'watch');
    server.endWatches();
    assert.equal((await rewatch).query.resourceVersion, bookmark.resourceVersion);
  });
});

describe('kubernetesEndpoints close()', () => {
  /** Live handles and timers, less listening servers: the source never listens, the fake servers do. */
  function resources(): string[] {
    return process.getActiveResourcesInfo().filter((r) => r !== 'TCPServerWrap' && r !== 'Immediate').sort();
  }

  /**
   * The resources once they match `expected`, or after 100 turns of the event loop. A socket whose
   * close has begun is gone a turn or two later; a leaked one never goes, nor does a timer.
   */
  async function resourcesSettlingTo(expected: string[]): Promise<string[]> {
    for (let turn = 0; turn < 100 && !isDeepStrictEqual(resources(), expected); turn++) await nextTurn();
    return resources();
  }

  /** The resources once the sockets of earlier tests have finished closing. */
  function baseline(): Promise<string[]> {
    return resourcesSettlingTo(resources().filter((r) => r !== 'TCPSocketWrap'));
  }

  // No waiting for the server to see its connections close: an idle keep-alive socket would close
  // only on the server's timeout, seconds later, and the settling below must catch it.
  it('leaves no socket, timer or watch behind', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const before = await baseline();
    const { recorder, close } = await discoverAndWatch(t, server);
    await server.apply(slice('backend-a', pods(0, 4)));
    await recorder.snapshotWhere((s) => s.size === 4);
    assert.equal(server.openWatches, 1);
    await close();
    assert.deepEqual(await resourcesSettlingTo(before), before);
    assert.equal(server.openWatches, 0);
  });

  it('leaves nothing behind when closed after the server ended a watch cleanly', TIMEOUT, async (t) => {
    const server = await startServer(t);
    await server.apply(slice('backend-a', pods(0, 3)));
    const before = await baseline();
    // A long first wait: the client sits out the wait after the clean end when close() comes.
    const { close } = await discoverAndWatch(t, server, { backoff: { initialMs: 60_000, maxMs: 60_000 } });
    server.endWatches();
    await close();
    assert.deepEqual(await resourcesSettlingTo(before), before);
  });

  it('leaves nothing behind when closed while waiting to retry', TIMEOUT, async (t) => {
    const server = await startServer(t);
    const before = await baseline();
    server.fail('list', 500, { times: 100 });
    const { recorder, close } = discover(t, server, { backoff: { initialMs: 60_000, maxMs: 60_000 } });
    await recorder.errorWhere();
    await close();
    assert.deepEqual(await resourcesSettlingTo(before), before);
  });

  it('leaves nothing behind when closed during a list that hangs', TIMEOUT, async (t) => {
    const server = await startServer(t);
    const before = await baseline();
    server.stall('list');
    const listing = server.nextRequest((r) => r.kind === 'list');
    const { close } = discover(t, server);
    await listing;
    await close();
    assert.deepEqual(await resourcesSettlingTo(before), before);
  });
});
