/**
 * The fake cluster's object store: every kind the `--cluster` flow uses, kept as JSON the way
 * the API server keeps it (uid, resourceVersion, creationTimestamp, generation), with the
 * Kubernetes answers client-node branches on (Status objects with `reason` and `code`), the three
 * patch types, label selectors, and watch streams replayed from a resourceVersion. Controllers
 * subscribe to changes with {@link Store.onChange}; nothing here runs by itself.
 */
import { randomUUID } from 'node:crypto';
import { parseSelector as parseLabelSelector, statusObject } from '../fake-apiserver.ts';

/** A stored object as JSON. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec?: any;
  status?: any;
  [key: string]: unknown;
}

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  deletionGracePeriodSeconds?: number;
  generation?: number;
  generateName?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }[];
  [key: string]: unknown;
}

/** One resource the fake serves. */
export interface Resource {
  /** The plural, as in the path and in RBAC rules: `deployments`. */
  readonly name: string;
  /** `''` for the core group. */
  readonly group: string;
  readonly version: string;
  readonly kind: string;
  readonly namespaced: boolean;
  /** Spec changes bump `metadata.generation` (workloads). */
  readonly generation?: boolean;
}

const RESOURCE_LIST: Resource[] = [
  { name: 'namespaces', group: '', version: 'v1', kind: 'Namespace', namespaced: false },
  { name: 'nodes', group: '', version: 'v1', kind: 'Node', namespaced: false },
  { name: 'pods', group: '', version: 'v1', kind: 'Pod', namespaced: true },
  { name: 'services', group: '', version: 'v1', kind: 'Service', namespaced: true },
  { name: 'serviceaccounts', group: '', version: 'v1', kind: 'ServiceAccount', namespaced: true },
  { name: 'configmaps', group: '', version: 'v1', kind: 'ConfigMap', namespaced: true },
  { name: 'secrets', group: '', version: 'v1', kind: 'Secret', namespaced: true },
  { name: 'deployments', group: 'apps', version: 'v1', kind: 'Deployment', namespaced: true, generation: true },
  { name: 'jobs', group: 'batch', version: 'v1', kind: 'Job', namespaced: true, generation: true },
  { name: 'roles', group: 'rbac.authorization.k8s.io', version: 'v1', kind: 'Role', namespaced: true },
  { name: 'rolebindings', group: 'rbac.authorization.k8s.io', version: 'v1', kind: 'RoleBinding', namespaced: true },
];

/** The resources by `<group>/<plural>` (`/pods` for the core group). */
export const RESOURCES: ReadonlyMap<string, Resource> = new Map(RESOURCE_LIST.map((r) => [`${r.group}/${r.name}`, r]));

/** How a resource is named in messages: `deployments.apps`, `pods`. */
export function qualified(resource: Resource): string {
  return resource.group === '' ? resource.name : `${resource.name}.${resource.group}`;
}


/** A request the API server refuses: answered as a Status object. */
export class ApiError extends Error {
  readonly code: number;
  readonly #extra: { reason?: string; details?: Record<string, unknown> };

  constructor(code: number, message: string, extra: { reason?: string; details?: Record<string, unknown> } = {}) {
    super(message);
    this.code = code;
    this.#extra = extra;
  }

  status(): Record<string, unknown> {
    return statusObject(this.code, this.message, this.#extra);
  }
}

function notFound(resource: Resource, name: string): ApiError {
  return new ApiError(404, `${qualified(resource)} "${name}" not found`, { details: { name, group: resource.group, kind: resource.name } });
}

/** One change, as a watch event carries it. */
export interface Change {
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED';
  readonly resource: Resource;
  readonly object: KubeObject;
  readonly rv: number;
}

/** A `labelSelector` (the FakeApiServer's parser), its errors a 400 as the API server answers them. */
export function parseSelector(text: string): (labels: Record<string, string> | undefined) => boolean {
  let matches: (labels: Record<string, string>) => boolean;
  try {
    matches = parseLabelSelector(text);
  } catch (error) {
    throw new ApiError(400, (error as Error).message);
  }
  return (labels) => matches(labels ?? {});
}

/** Whether a `matchLabels` selector selects `labels`. */
export function selects(matchLabels: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (matchLabels === undefined || Object.keys(matchLabels).length === 0) return false;
  return Object.entries(matchLabels).every(([k, v]) => labels?.[k] === v);
}

/** RFC 7386 JSON merge patch (strategic merge patch is taken as one: the flow's patches don't need list merging). */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return structuredClone(patch);
  const result: Record<string, unknown> =
    typeof target === 'object' && target !== null && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

/** RFC 6902 JSON patch: add, remove, replace, test (what client-node's users send). */
export function jsonPatch(target: unknown, operations: unknown): unknown {
  if (!Array.isArray(operations)) throw new ApiError(400, 'a json-patch body must be an array of operations');
  let doc = structuredClone(target);
  for (const op of operations as { op?: string; path?: string; value?: unknown }[]) {
    if (typeof op?.path !== 'string') throw new ApiError(422, `json-patch operation without a path: ${JSON.stringify(op)}`);
    const keys = op.path
      .split('/')
      .slice(1)
      .map((k) => k.replaceAll('~1', '/').replaceAll('~0', '~'));
    if (keys.length === 0) {
      if (op.op === 'replace' || op.op === 'add') doc = structuredClone(op.value);
      continue;
    }
    let parent = doc as Record<string, unknown> | unknown[];
    for (const key of keys.slice(0, -1)) {
      const next = (parent as Record<string, unknown>)[key];
      if (typeof next !== 'object' || next === null) throw new ApiError(422, `json-patch path ${op.path} does not exist`);
      parent = next as Record<string, unknown>;
    }
    const last = keys.at(-1)!;
    const exists = Array.isArray(parent) ? Number(last) < parent.length : last in parent;
    switch (op.op) {
      case 'add':
        if (Array.isArray(parent)) parent.splice(last === '-' ? parent.length : Number(last), 0, structuredClone(op.value));
        else parent[last] = structuredClone(op.value);
        break;
      case 'replace':
        if (!exists) throw new ApiError(422, `json-patch replace: path ${op.path} does not exist`);
        (parent as Record<string, unknown>)[last] = structuredClone(op.value);
        break;
      case 'remove':
        if (!exists) throw new ApiError(422, `json-patch remove: path ${op.path} does not exist`);
        if (Array.isArray(parent)) parent.splice(Number(last), 1);
        else delete parent[last];
        break;
      case 'test':
        if (JSON.stringify((parent as Record<string, unknown>)[last]) !== JSON.stringify(op.value)) {
          throw new ApiError(422, `json-patch test failed at ${op.path}`);
        }
        break;
      default:
        throw new ApiError(422, `json-patch operation ${JSON.stringify(op.op)} is not supported by the fake cluster`);
    }
  }
  return doc;
}

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const SUFFIX = 'bcdfghjklmnpqrstvwxz2456789';

/** Five characters as Kubernetes appends to a generated name. */
export function randomSuffix(length = 5): string {
  let out = '';
  for (let i = 0; i < length; i++) out += SUFFIX[Math.floor(Math.random() * SUFFIX.length)];
  return out;
}

/** Kubernetes times are RFC 3339 to the second. */
export function now(): string {
  return new Date().toISOString().replace(/\.\d+Z$/, 'Z');
}

export class Store {
  readonly #objects = new Map<string, KubeObject>();
  readonly #history: Change[] = [];
  readonly #listeners = new Set<(change: Change) => void>();
  readonly #pending: Change[] = [];
  readonly #order = new Map<string, number>();
  #emitting = false;
  #rv = 1;
  readonly #onError: (error: unknown) => void;

  /** `onError` hears what a listener (a controller) threw: a bug of the fake, for the test to see. */
  constructor(onError: (error: unknown) => void) {
    this.#onError = onError;
  }

  /** Calls `listener` after every change, synchronously, in order. */
  onChange(listener: (change: Change) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  get resourceVersion(): number {
    return this.#rv;
  }

  get(resource: Resource, namespace: string | undefined, name: string): KubeObject | undefined {
    return this.#objects.get(key(resource, namespace, name));
  }

  /** Like {@link get}, or a 404 ApiError. */
  read(resource: Resource, namespace: string | undefined, name: string): KubeObject {
    const object = this.get(resource, namespace, name);
    if (object === undefined) throw notFound(resource, name);
    return object;
  }

  /** Live objects of `resource` (in `namespace` when given), oldest first; the store's own, not copies. */
  list(resource: Resource, namespace?: string, selector?: (labels: Record<string, string> | undefined) => boolean): KubeObject[] {
    const out: KubeObject[] = [];
    for (const object of this.#objects.values()) {
      if (object.kind !== resource.kind || (object.apiVersion !== apiVersion(resource))) continue;
      if (namespace !== undefined && object.metadata.namespace !== namespace) continue;
      if (selector !== undefined && !selector(object.metadata.labels)) continue;
      out.push(object);
    }
    return out;
  }

  /** When an object was created, as a number that grows (timestamps are to the second). */
  order(object: KubeObject): number {
    return this.#order.get(object.metadata.uid ?? '') ?? 0;
  }

  /** Every live object of every kind. */
  all(): KubeObject[] {
    return [...this.#objects.values()];
  }

  /** Stores a new object: fills the metadata the API server sets; 409 when the name is taken. */
  create(resource: Resource, namespace: string | undefined, input: KubeObject): KubeObject {
    if (typeof input !== 'object' || input === null || typeof input.metadata !== 'object' || input.metadata === null) {
      throw new ApiError(400, `the body of a ${resource.kind} must be an object with metadata`);
    }
    const object = structuredClone(input);
    const metadata = object.metadata;
    if (metadata.name === undefined && metadata.generateName !== undefined) metadata.name = `${metadata.generateName}${randomSuffix()}`;
    if (typeof metadata.name !== 'string' || !NAME.test(metadata.name) || metadata.name.length > 253) {
      throw new ApiError(422, `${resource.kind} "${metadata.name ?? ''}" is invalid: metadata.name: Invalid value: ${JSON.stringify(metadata.name ?? '')}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'`, {
        details: { name: metadata.name, group: resource.group, kind: resource.kind },
      });
    }
    if (metadata.namespace !== undefined && resource.namespaced && metadata.namespace !== namespace) {
      throw new ApiError(400, `the namespace of the provided object (${metadata.namespace}) does not match the namespace sent on the request (${namespace})`);
    }
    if (this.get(resource, namespace, metadata.name) !== undefined) {
      throw new ApiError(409, `${qualified(resource)} "${metadata.name}" already exists`, {
        details: { name: metadata.name, group: resource.group, kind: resource.name },
      });
    }
    object.apiVersion = apiVersion(resource);
    object.kind = resource.kind;
    if (resource.namespaced) metadata.namespace = namespace;
    else delete metadata.namespace;
    metadata.uid = randomUUID();
    this.#order.set(metadata.uid, this.#rv + 1);
    metadata.creationTimestamp = now();
    delete metadata.deletionTimestamp;
    if (resource.generation === true) metadata.generation = 1;
    return this.#put('ADDED', resource, object);
  }

  /**
   * Replaces a stored object with `next` (the caller's changed copy): keeps what the client may
   * not change, checks `resourceVersion` when the client sent one (409 Conflict), bumps the
   * generation when the spec changed.
   */
  update(resource: Resource, next: KubeObject, { status = false }: { status?: boolean } = {}): KubeObject {
    // `status`: the control plane's own write, which sets status and deletion marks too.
    const current = this.read(resource, next.metadata.namespace, next.metadata.name);
    if (next.metadata.resourceVersion !== undefined && next.metadata.resourceVersion !== current.metadata.resourceVersion) {
      throw new ApiError(409, `Operation cannot be fulfilled on ${qualified(resource)} "${current.metadata.name}": the object has been modified; please apply your changes to the latest version and try again`, {
        reason: 'Conflict',
        details: { name: current.metadata.name, group: resource.group, kind: resource.name },
      });
    }
    const object = structuredClone(next);
    object.apiVersion = current.apiVersion;
    object.kind = current.kind;
    // Deletion is the API server's and the controllers' to mark, never a client's write.
    const kept = status ? (['uid', 'creationTimestamp', 'namespace', 'name'] as const) : (['uid', 'creationTimestamp', 'namespace', 'name', 'deletionTimestamp', 'deletionGracePeriodSeconds'] as const);
    for (const field of kept) {
      if (current.metadata[field] === undefined) delete object.metadata[field];
      else (object.metadata as Record<string, unknown>)[field] = current.metadata[field];
    }
    // Status belongs to the controllers: a client's write of the object keeps it, theirs sets it.
    if (!status && current.status !== undefined) object.status = current.status;
    if (resource.generation === true) {
      object.metadata.generation = (current.metadata.generation ?? 1) + (JSON.stringify(object.spec) === JSON.stringify(current.spec) ? 0 : 1);
    }
    object.metadata.resourceVersion = current.metadata.resourceVersion;
    // A write that changes nothing makes no event (a controller's status write would loop otherwise).
    if (canonical(object) === canonical(current)) return current;
    return this.#put('MODIFIED', resource, object);
  }

  /** A controller's change to what it owns: `mutate` edits a copy, stored only when it changed something. */
  modify(resource: Resource, object: KubeObject, mutate: (copy: KubeObject) => void): KubeObject {
    const copy = structuredClone(this.read(resource, object.metadata.namespace, object.metadata.name));
    mutate(copy);
    delete copy.metadata.resourceVersion;
    return this.update(resource, copy, { status: true });
  }

  /** Takes an object out of the store. */
  remove(resource: Resource, object: KubeObject): void {
    const k = key(resource, object.metadata.namespace, object.metadata.name);
    const stored = this.#objects.get(k);
    if (stored === undefined) return;
    this.#objects.delete(k);
    this.#order.delete(stored.metadata.uid ?? '');
    const rv = ++this.#rv;
    const gone = structuredClone(stored);
    gone.metadata.resourceVersion = String(rv);
    this.#emit({ type: 'DELETED', resource, object: gone, rv });
  }

  /** Every change after `rv`, oldest first, for a watch resumed from it. */
  since(rv: number): Change[] {
    return this.#history.filter((c) => c.rv > rv);
  }

  #put(type: Change['type'], resource: Resource, object: KubeObject): KubeObject {
    const rv = ++this.#rv;
    object.metadata.resourceVersion = String(rv);
    this.#objects.set(key(resource, object.metadata.namespace, object.metadata.name), object);
    this.#emit({ type, resource, object: structuredClone(object), rv });
    return object;
  }

  /**
   * Listeners hear every change in resourceVersion order, even when one of them changes the store
   * while it hears one: that change waits until everyone heard the one before.
   */
  #emit(change: Change): void {
    this.#history.push(change);
    this.#pending.push(change);
    if (this.#emitting) return;
    this.#emitting = true;
    try {
      for (let next = this.#pending.shift(); next !== undefined; next = this.#pending.shift()) {
        for (const listener of [...this.#listeners]) {
          try {
            listener(next);
          } catch (error) {
            this.#onError(error);
          }
        }
      }
    } finally {
      this.#emitting = false;
    }
  }
}

/** JSON with object keys sorted: two objects that say the same compare equal. */
export function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    typeof v === 'object' && v !== null && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v,
  );
}

export function apiVersion(resource: Resource): string {
  return resource.group === '' ? resource.version : `${resource.group}/${resource.version}`;
}

function key(resource: Resource, namespace: string | undefined, name: string): string {
  return `${resource.group}/${resource.name}/${resource.namespaced ? namespace : ''}/${name}`;
}
