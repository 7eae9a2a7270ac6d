import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { loadAllYaml } from '@kubernetes/client-node';

const DIR = join(import.meta.dirname, '..', 'examples', 'kubernetes');
const NAMESPACED = new Set(['Service', 'Deployment', 'ServiceAccount', 'Role', 'RoleBinding']);
const API_VERSIONS: Record<string, string> = {
  Namespace: 'v1',
  Service: 'v1',
  ServiceAccount: 'v1',
  Deployment: 'apps/v1',
  Role: 'rbac.authorization.k8s.io/v1',
  RoleBinding: 'rbac.authorization.k8s.io/v1',
};

// Loose shapes: the test reads manifests, and checks each field it relies on.
type Manifest = Record<string, any>;

describe('examples/kubernetes manifests', () => {
  let objects: Manifest[] = [];
  const only = (kind: string): Manifest[] => objects.filter((o) => o.kind === kind);
  const one = (kind: string, name?: string): Manifest => {
    const found = only(kind).filter((o) => name === undefined || o.metadata.name === name);
    assert.equal(found.length, 1, `exactly one ${kind}${name ? ` ${name}` : ''}`);
    return found[0];
  };
  const env = (container: Manifest, name: string): Manifest | undefined => container.env?.find((e: Manifest) => e.name === name);

  before(async () => {
    const files = (await readdir(DIR)).filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'));
    assert.ok(files.length > 0, 'manifests exist');
    for (const file of files) {
      // The client's loader types each document by its kind (dropping fields Kubernetes does not
      // know, so a misspelt field fails below); JSON makes plain objects of its model classes.
      for (const doc of loadAllYaml(await readFile(join(DIR, file), 'utf8'))) if (doc != null) objects.push(JSON.parse(JSON.stringify(doc)));
    }
  });

  it('holds exactly the objects of the example, each with its apiVersion', () => {
    const kinds = objects.map((o) => o.kind).sort();
    assert.deepEqual(kinds, ['Deployment', 'Deployment', 'Namespace', 'Role', 'RoleBinding', 'Service', 'ServiceAccount']);
    for (const o of objects) assert.equal(o.apiVersion, API_VERSIONS[o.kind], `${o.kind} ${o.metadata?.name}`);
  });

  it('puts every namespaced object in the example’s namespace', () => {
    const namespace = one('Namespace').metadata.name;
    for (const o of objects.filter((x) => NAMESPACED.has(x.kind))) {
      assert.equal(o.metadata.namespace, namespace, `${o.kind} ${o.metadata.name}`);
    }
  });

  it('has Deployments whose selectors match their pods’ labels', () => {
    for (const d of only('Deployment')) {
      const labels = d.spec.template.metadata.labels;
      const selector = d.spec.selector.matchLabels;
      assert.ok(Object.keys(selector).length > 0, `${d.metadata.name} selects something`);
      for (const [k, v] of Object.entries(selector)) assert.equal(labels[k], v, `${d.metadata.name}: ${k}`);
    }
  });

  it('has a headless Service that selects the backend pods only, on a named port they expose', () => {
    const service = one('Service');
    assert.equal(service.spec.clusterIP, 'None', 'headless');
    const selector: Record<string, string> = service.spec.selector;
    const selects = (d: Manifest) => Object.entries(selector).every(([k, v]) => d.spec.template.metadata.labels[k] === v);
    const selected = only('Deployment').filter(selects);
    assert.equal(selected.length, 1, 'the Service selects one Deployment');
    const [backend] = selected;
    assert.equal(backend.metadata.name, service.metadata.name);
    const containerPorts = backend.spec.template.spec.containers.flatMap((c: Manifest) => c.ports ?? []);
    for (const p of service.spec.ports) {
      assert.ok(p.name, 'every Service port is named, for podpool’s port option');
      assert.ok(
        containerPorts.some((cp: Manifest) => cp.name === p.targetPort || cp.containerPort === p.targetPort),
        `target port ${p.targetPort} is a container port of the backend`,
      );
    }
  });

  it('runs the client as its ServiceAccount, pointed at the Service and its port by name', () => {
    const service = one('Service');
    const account = one('ServiceAccount');
    const client = only('Deployment').find((d) => d.metadata.name !== service.metadata.name);
    assert.ok(client);
    const pod = client.spec.template.spec;
    assert.equal(pod.serviceAccountName, account.metadata.name);
    assert.notEqual(pod.automountServiceAccountToken, false, 'podpool reads the mounted token');
    assert.notEqual(account.automountServiceAccountToken, false);
    const [container] = pod.containers;
    assert.equal(env(container, 'BACKEND_SERVICE')?.value, service.metadata.name);
    assert.ok(service.spec.ports.some((p: Manifest) => p.name === env(container, 'BACKEND_PORT')?.value), 'BACKEND_PORT names a Service port');
    assert.equal(env(container, 'POD_NAMESPACE')?.valueFrom?.fieldRef?.fieldPath, 'metadata.namespace');
  });

  it('grants exactly get, list and watch on endpointslices, in one namespace', () => {
    assert.equal(only('ClusterRole').length + only('ClusterRoleBinding').length, 0, 'nothing cluster-wide');
    const role = one('Role');
    assert.equal(role.rules.length, 1);
    const [rule] = role.rules;
    assert.deepEqual(Object.keys(rule).sort(), ['apiGroups', 'resources', 'verbs'], 'no resourceNames or other fields');
    assert.deepEqual(rule.apiGroups, ['discovery.k8s.io']);
    assert.deepEqual(rule.resources, ['endpointslices']);
    assert.deepEqual([...rule.verbs].sort(), ['get', 'list', 'watch']);
  });

  it('binds that Role, and only it, to the client’s ServiceAccount', () => {
    const binding = one('RoleBinding');
    const account = one('ServiceAccount');
    assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: one('Role').metadata.name });
    assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: account.metadata.name, namespace: account.metadata.namespace }]);
  });

  it('has a client program that reads the settings the Deployment gives it', async () => {
    const source = await readFile(join(DIR, 'client.ts'), 'utf8');
    assert.match(source, /from 'podpool'/);
    assert.match(source, /kubernetesEndpoints\(/);
    for (const name of ['BACKEND_SERVICE', 'BACKEND_PORT', 'POD_NAMESPACE']) assert.match(source, new RegExp(`process\\.env\\.${name}`));
  });
});
