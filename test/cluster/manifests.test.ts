/**
 * `podpool bench manifests`: the YAML a user pipes into `kubectl apply -f -`, parsed back with
 * eemeli's `yaml` (not client-node's js-yaml, which wrote it), and checked for what the API
 * server requires, what least privilege means for the runner's Role, what a cluster enforcing the
 * restricted Pod Security Standard or resource quotas admits, and what the sweep of a later run
 * finds leftovers by.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { benchSpec, manifests } from '../../bench/harness/kube/manifests.ts';
import { DEADLINE_ANNOTATION, ENV, LABELS, MANAGED_BY, NAMES } from '../../bench/harness/kube/protocol.ts';
import type { ScenarioOptions } from '../../bench/harness/scenarios/options.ts';

const MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');
const OPTIONS: ScenarioOptions = { pods: 3, clients: 2, durationS: 3, inflight: 16, concurrency: 4, serviceMs: 10 };
const NOW = new Date('2026-01-02T03:04:05Z');

// Loosely typed: the point is to read what the YAML says, not what client-node's types say.
type Obj = Record<string, any>;

function parse(text: string): Obj[] {
  const documents = parseAllDocuments(text);
  assert.ok(Array.isArray(documents), 'the YAML parses');
  for (const document of documents) assert.deepEqual(document.errors, [], 'every document parses without error');
  return documents.map((document) => document.toJS() as Obj).filter((object) => object !== null);
}

function byKind(objects: Obj[], kind: string, name?: string): Obj {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  assert.equal(found.length, 1, `one ${kind}${name ? ` ${name}` : ''}`);
  return found[0]!;
}

function containers(objects: Obj[]): Obj[] {
  return [byKind(objects, 'Deployment'), byKind(objects, 'Job')].flatMap((o) => o.spec.template.spec.containers as Obj[]);
}

const matches = (selector: Record<string, string>, labels: Record<string, string>): boolean =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([key, value]) => labels[key] === value);

describe('podpool bench manifests', () => {
  const spec = benchSpec('balance', OPTIONS, { image: 'registry.example/podpool:0.1.0' }, ['--pods', '3', '--transport', 'http'], { runId: 'a1b2c3', now: NOW });
  const text = manifests(spec);
  const objects = parse(text);
  const ns = 'podpool-bench-a1b2c3';

  it('has every object, each with apiVersion, kind, a name, and a namespace when the kind is namespaced', () => {
    assert.deepEqual(
      objects.map((o) => `${o.apiVersion} ${o.kind} ${o.metadata.name}`),
      [
        `v1 Namespace ${ns}`,
        `v1 ServiceAccount ${NAMES.serviceAccount}`,
        `rbac.authorization.k8s.io/v1 Role ${NAMES.role}`,
        `rbac.authorization.k8s.io/v1 RoleBinding ${NAMES.roleBinding}`,
        `v1 Service ${NAMES.headless}`,
        `v1 Service ${NAMES.service}`,
        `apps/v1 Deployment ${NAMES.deployment}`,
        `batch/v1 Job ${NAMES.job}`,
      ],
      'the namespace first, then what lives in it, the Job last (kubectl apply creates in order)',
    );
    for (const object of objects) {
      if (object.kind === 'Namespace') assert.equal(object.metadata.namespace, undefined, 'a Namespace has no namespace');
      else assert.equal(object.metadata.namespace, ns, `${object.kind} ${object.metadata.name} is in the run's namespace`);
    }
  });

  it('labels every object, pod templates included, with what the sweep and kubectl -l find it by, and the deadline', () => {
    const deadline = new Date(NOW.getTime() + (600 + 100 * OPTIONS.durationS) * 1000).toISOString().replace('.000Z', 'Z');
    for (const object of objects) {
      const what = `${object.kind} ${object.metadata.name}`;
      assert.equal(object.metadata.labels[LABELS.managedBy], MANAGED_BY, what);
      assert.equal(object.metadata.labels[LABELS.run], 'a1b2c3', what);
      assert.equal(object.metadata.labels[LABELS.name], MANAGED_BY, what);
      assert.equal(object.metadata.annotations[DEADLINE_ANNOTATION], deadline, `${what}: the run's bound from now, RFC 3339`);
      assert.ok(!Number.isNaN(Date.parse(object.metadata.annotations[DEADLINE_ANNOTATION])), `${what}: a date the sweep can read`);
    }
    for (const object of [byKind(objects, 'Deployment'), byKind(objects, 'Job')]) {
      const labels = object.spec.template.metadata.labels;
      assert.equal(labels[LABELS.managedBy], MANAGED_BY);
      assert.equal(labels[LABELS.run], 'a1b2c3', `${object.kind}'s pods carry the run label`);
    }
  });

  it("gives the runner's ServiceAccount exactly get, list and watch on EndpointSlices", () => {
    const role = byKind(objects, 'Role');
    assert.deepEqual(role.rules, [{ apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] }]);
    const binding = byKind(objects, 'RoleBinding');
    assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
    assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: byKind(objects, 'ServiceAccount').metadata.name, namespace: ns }]);
    const job = byKind(objects, 'Job');
    assert.equal(job.spec.template.spec.serviceAccountName, NAMES.serviceAccount, 'the Job runs as that account');
    assert.equal(byKind(objects, 'ServiceAccount').automountServiceAccountToken, true, "the runner's token is mounted");
    assert.equal(byKind(objects, 'Deployment').spec.template.spec.automountServiceAccountToken, false, 'the backend pods get no token');
  });

  it('selects the backend pods with the Deployment and both Services', () => {
    const deployment = byKind(objects, 'Deployment');
    const podLabels = deployment.spec.template.metadata.labels;
    assert.ok(matches(deployment.spec.selector.matchLabels, podLabels), "the Deployment's selector matches its template");
    assert.equal(deployment.spec.replicas, 3);
    assert.deepEqual(deployment.spec.strategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    const headless = byKind(objects, 'Service', NAMES.headless);
    const service = byKind(objects, 'Service', NAMES.service);
    assert.equal(headless.spec.clusterIP, 'None');
    assert.equal(service.spec.type, 'ClusterIP');
    for (const svc of [headless, service]) assert.ok(matches(svc.spec.selector, podLabels), `${svc.metadata.name} selects the backend pods`);
    const jobPods = byKind(objects, 'Job').spec.template.metadata.labels;
    for (const svc of [headless, service]) assert.ok(!matches(svc.spec.selector, jobPods), `${svc.metadata.name} does not select the client pod`);
    assert.deepEqual(
      headless.spec.ports.map((p: Obj) => `${p.name} ${p.port}/${p.protocol}`),
      ['http 8080/TCP', 'grpc 50051/TCP', 'ws 8081/TCP', 'udp 9090/UDP'],
    );
    assert.deepEqual(
      service.spec.ports.map((p: Obj) => `${p.name} ${p.port}->${p.targetPort}`),
      ['http 8080->8080', 'grpc 50051->50051', 'ws 8081->8081'],
    );
    const ports = deployment.spec.template.spec.containers[0].ports.map((p: Obj) => p.containerPort);
    for (const svc of [headless, service]) for (const port of svc.spec.ports) assert.ok(ports.includes(port.targetPort), `the pod exposes ${port.targetPort}`);
    const probe = deployment.spec.template.spec.containers[0].readinessProbe;
    assert.deepEqual([probe.httpGet.path, probe.httpGet.port], ['/ready', 9901]);
  });

  it('runs every container with args only (the image runs podpool), requests and limits, and the restricted security context', () => {
    for (const container of containers(objects)) {
      const what = `container ${container.name}`;
      assert.equal(container.command, undefined, `${what}: no command, the image's ENTRYPOINT is podpool`);
      assert.ok(Array.isArray(container.args) && container.args.length > 0, `${what}: args`);
      assert.equal(container.image, 'registry.example/podpool:0.1.0');
      for (const kind of ['requests', 'limits']) {
        assert.match(String(container.resources[kind].cpu), /^\d+m?$/, `${what}: ${kind}.cpu`);
        assert.match(String(container.resources[kind].memory), /^\d+Mi$/, `${what}: ${kind}.memory`);
      }
      const security = container.securityContext;
      assert.equal(security.runAsNonRoot, true, `${what}: non-root`);
      assert.ok(security.runAsUser > 0, `${what}: a user other than root`);
      assert.equal(security.allowPrivilegeEscalation, false, what);
      assert.equal(security.readOnlyRootFilesystem, true, what);
      assert.deepEqual(security.capabilities, { drop: ['ALL'] }, what);
      assert.deepEqual(security.seccompProfile, { type: 'RuntimeDefault' }, what);
    }
    const [pod] = containers(objects);
    assert.deepEqual(pod!.args, ['pod', '--concurrency', '4', '--service-ms', '10', '--pre-stop-ms', '2000', '--grace-ms', '10000']);
    assert.deepEqual(
      pod!.env.map((e: Obj) => `${e.name}=${e.valueFrom.fieldRef.fieldPath}`),
      ['POD_NAME=metadata.name', 'POD_IP=status.podIP'],
    );
  });

  it("runs the scenario in the Job with --in-cluster and the user's flags, once, within the run's bound", () => {
    const job = byKind(objects, 'Job');
    const [client] = job.spec.template.spec.containers;
    assert.deepEqual(client.args, ['bench', 'balance', '--in-cluster', '--pods', '3', '--transport', 'http', '--json']);
    assert.equal(job.spec.backoffLimit, 0, 'a failed run is not retried');
    assert.equal(job.spec.completions, 1);
    assert.equal(job.spec.parallelism, 1);
    assert.equal(job.spec.template.spec.restartPolicy, 'Never');
    assert.ok(job.spec.activeDeadlineSeconds > 0);
    const env = Object.fromEntries(client.env.map((e: Obj) => [e.name, e.value ?? e.valueFrom.fieldRef.fieldPath]));
    assert.deepEqual(env, {
      [ENV.namespace]: 'metadata.namespace',
      [ENV.service]: NAMES.headless,
      [ENV.dnsName]: `${NAMES.headless}.${ns}.svc.cluster.local`,
    }, "no ClusterIP before the Service exists: the runner reads the service-link variable then");
  });

  it('says in its header how to apply, collect and delete', () => {
    const header = text.slice(0, text.indexOf('\n---\n'));
    assert.ok(header.split('\n').every((line) => line.startsWith('#')), 'the header is YAML comments');
    assert.match(header, /kubectl apply -f -/);
    assert.match(header, new RegExp(`podpool bench collect balance --namespace ${ns}`));
    assert.match(header, new RegExp(`kubectl delete namespace ${ns}`));
  });

  it('uses a namespace it is given as it is: no Namespace object, everything in it', () => {
    const given = parse(manifests(benchSpec('scale-up', OPTIONS, { image: 'podpool:x', namespace: 'team-a' }, [], { runId: 'ffffff', now: NOW })));
    assert.equal(given.filter((o) => o.kind === 'Namespace').length, 0);
    for (const object of given) assert.equal(object.metadata.namespace, 'team-a');
    assert.deepEqual(byKind(given, 'RoleBinding').subjects[0].namespace, 'team-a');
    assert.match(byKind(given, 'Job').spec.template.spec.containers[0].env.find((e: Obj) => e.name === ENV.dnsName).value, /\.team-a\.svc\.cluster\.local$/);
  });

  it('keeps every label a string, whatever the run id looks like (1e5230 is a number to a YAML reader)', () => {
    for (const runId of ['1e5230', '123456', '9e9999']) {
      const printed = parse(manifests(benchSpec('balance', OPTIONS, { image: 'podpool:x' }, [], { runId, now: NOW })));
      for (const object of printed) {
        assert.equal(object.metadata.labels[LABELS.run], runId, `${object.kind}: the run id stays the string ${runId}`);
        for (const value of Object.values(object.metadata.labels as Record<string, unknown>)) assert.equal(typeof value, 'string');
      }
    }
  });

  it('is what `podpool bench manifests` prints: parseable YAML on stdout, exit 0', async () => {
    const child = spawn(process.execPath, ['--conditions=podpool-source', MAIN, 'bench', 'manifests', 'balance', '--pods', '3', '--image', 'podpool:cli'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const [code] = await once(child, 'close');
    assert.equal(code, 0, stderr);
    const printed = parse(stdout);
    assert.deepEqual(printed.map((o) => o.kind), ['Namespace', 'ServiceAccount', 'Role', 'RoleBinding', 'Service', 'Service', 'Deployment', 'Job']);
    assert.equal(byKind(printed, 'Deployment').spec.replicas, 3);
    const runId = byKind(printed, 'Namespace').metadata.labels[LABELS.run];
    assert.match(runId, /^[0-9a-f]{6}$/, 'a fresh run id');
    for (const object of printed) assert.equal(object.metadata.labels[LABELS.run], runId, 'one run id on every object');
    assert.deepEqual(byKind(printed, 'Job').spec.template.spec.containers[0].args, ['bench', 'balance', '--in-cluster', '--pods', '3', '--json']);
    for (const container of containers(printed)) assert.equal(container.image, 'podpool:cli');
  });

  it('puts the ClusterIP the command read into the Job when there is one', () => {
    const withIp = parse(manifests(benchSpec('balance', OPTIONS, { image: 'podpool:x' }, [], { runId: 'abcdef', now: NOW, clusterIp: '10.96.0.17' })));
    const env = byKind(withIp, 'Job').spec.template.spec.containers[0].env;
    assert.equal(env.find((e: Obj) => e.name === ENV.clusterIp)?.value, '10.96.0.17');
  });
});
