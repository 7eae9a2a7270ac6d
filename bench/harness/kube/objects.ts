/**
 * Every object `podpool bench --cluster` creates, and `podpool bench manifests` prints, as
 * `@kubernetes/client-node` typed models: the same builder feeds the API calls and the YAML, so
 * what a user applies by hand is what the command would have created.
 */
import { randomBytes } from 'node:crypto';
import type {
  KubernetesObject,
  V1Container,
  V1Deployment,
  V1Job,
  V1Namespace,
  V1ObjectMeta,
  V1ResourceRequirements,
  V1Role,
  V1RoleBinding,
  V1SecurityContext,
  V1Service,
  V1ServicePort,
  V1ServiceAccount,
  V1Volume,
  V1VolumeMount,
} from '@kubernetes/client-node';
import { POD_PORTS } from '../pods.ts';
import { CONTAINERS, CONTROL_PORT, DEADLINE_ANNOTATION, ENV, LABELS, MANAGED_BY, NAMES, POD_ENV, SERVICE_PORT_NAMES } from './protocol.ts';

/** What one run's objects are made of. */
export interface BenchSpec {
  /** The run's id ({@link newRunId}): a label on every object, and the own namespace's suffix. */
  runId: string;
  namespace: string;
  /** Whether the run creates (and deletes) `namespace`, or was given one to use as it is. */
  ownNamespace: boolean;
  /** The podpool image: its ENTRYPOINT is `podpool`, so containers give only `args`. */
  image: string;
  scenario: string;
  /** The scenario's flags as the user gave them (after `bench <scenario>`), for the runner. */
  runnerArgs: readonly string[];
  pods: number;
  /** A backend pod's capacity: requests at once, and service time of one. */
  concurrency: number;
  serviceMs: number;
  /**
   * The ClusterIP Service's address, as its create returned it; absent in `manifests` (nothing
   * was created yet), where the runner reads the service-link variable the kubelet sets instead.
   */
  clusterIp?: string;
  /** When a later run's sweep may delete these objects: the end of this run's bound. */
  deadline: Date;
}

/** One run's objects, in the order they are created (the namespace only when the run owns it). */
export interface BenchObjects {
  namespace?: V1Namespace;
  serviceAccount: V1ServiceAccount;
  role: V1Role;
  roleBinding: V1RoleBinding;
  headless: V1Service;
  service: V1Service;
  deployment: V1Deployment;
  job: V1Job;
}

/**
 * A backend pod: `podpool pod` waits out its service time on a timer rather than burning CPU,
 * so a quarter of a core is plenty to schedule it. The limit is a whole core so that CFS
 * throttling never adds latency of its own to what the bench measures; memory is one Node
 * process with small buffers (about 60 MiB resident), with room to spare under the limit.
 */
export const BACKEND_RESOURCES: V1ResourceRequirements = {
  requests: { cpu: '250m', memory: '128Mi' },
  limits: { cpu: '1', memory: '256Mi' },
};

/**
 * The client Job's pod runs every client of the scenario in one Node process and is the busiest
 * thing in the run: a full core asked for, two allowed, so the load generator is not the
 * bottleneck it measures. Memory covers the histograms and up to a few hundred connections.
 */
export const CLIENT_RESOURCES: V1ResourceRequirements = {
  requests: { cpu: '1', memory: '256Mi' },
  limits: { cpu: '2', memory: '512Mi' },
};

/**
 * The restricted Pod Security Standard: the image's user (uid 1000), no way to gain privileges,
 * no capabilities, the runtime's seccomp profile, and nothing written to the image's files.
 */
const SECURITY_CONTEXT: V1SecurityContext = {
  runAsNonRoot: true,
  runAsUser: 1000,
  runAsGroup: 1000,
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  capabilities: { drop: ['ALL'] },
  seccompProfile: { type: 'RuntimeDefault' },
};

// With the root filesystem read-only, Node still may want a temporary directory.
const TMP_VOLUMES: V1Volume[] = [{ name: 'tmp', emptyDir: { sizeLimit: '64Mi' } }];
const TMP_MOUNTS: V1VolumeMount[] = [{ name: 'tmp', mountPath: '/tmp' }];

/** The pods' TCP ports (`udp` is the fourth), named as the Services name them. */
const TCP_PORTS = ['http', 'grpc', 'ws'] as const;
type PortName = keyof typeof SERVICE_PORT_NAMES;

const protocolOf = (name: PortName): string => (name === 'udp' ? 'UDP' : 'TCP');

function servicePort(name: PortName): V1ServicePort {
  return { name: SERVICE_PORT_NAMES[name], port: POD_PORTS[name], targetPort: POD_PORTS[name], protocol: protocolOf(name) };
}

/** How long a backend pod gets to drain after SIGTERM (`podpool pod --grace-ms` is 10 s of it). */
const BACKEND_GRACE_S = 15;

/**
 * The run's bound in seconds: the Job's `activeDeadlineSeconds` and, from the start, the sweep's
 * deadline. Ten minutes for pulling the image and the pods getting ready, plus room for a
 * hundred load phases of `--duration` (the scenarios run far fewer).
 */
export function runBoundS(durationS: number): number {
  return Math.ceil(600 + 100 * durationS);
}

/** A short random id (6 hex digits): a DNS label on its own, and in the namespace's name. */
export function newRunId(): string {
  return randomBytes(3).toString('hex');
}

/** The namespace a run with this id creates. */
export function ownNamespaceName(runId: string): string {
  return `${NAMES.namespacePrefix}${runId}`;
}

/** The labels every object of a run carries (the sweep and `kubectl delete -l` find them). */
export function runLabels(runId: string): Record<string, string> {
  return { [LABELS.managedBy]: MANAGED_BY, [LABELS.run]: runId, [LABELS.name]: MANAGED_BY };
}

/** A time as Kubernetes writes one (RFC 3339, whole seconds, UTC). */
export function rfc3339(time: Date): string {
  return time.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The headless Service's name in cluster DNS. */
export function headlessDnsName(namespace: string): string {
  return `${NAMES.headless}.${namespace}.svc.cluster.local`;
}

/**
 * Every object of one run, each labelled for the sweep (managed-by,
 * the run's id, the deadline), the backend pods and the client Job's pod under the restricted
 * Pod Security Standard with requests and limits, the runner's account allowed only to read
 * EndpointSlices.
 */
export function benchObjects(spec: BenchSpec): BenchObjects {
  const { runId, namespace } = spec;
  const labels = runLabels(runId);
  const meta = (name: string, extra?: Record<string, string>): V1ObjectMeta => ({
    name,
    namespace,
    labels: { ...labels, ...extra },
    annotations: { [DEADLINE_ANNOTATION]: rfc3339(spec.deadline) },
  });
  const backend = { [LABELS.component]: 'backend' };
  const backendSelector = { [LABELS.component]: 'backend', [LABELS.run]: runId };
  const client = { [LABELS.component]: 'client' };

  const namespaceObject: V1Namespace | undefined = spec.ownNamespace
    ? {
        apiVersion: 'v1',
        kind: 'Namespace',
        metadata: {
          name: namespace,
          // Both pods meet the restricted Pod Security Standard; the namespace says so, so that
          // a cluster enforcing it admits them and one not enforcing it still sees any drift.
          labels: { ...labels, 'pod-security.kubernetes.io/enforce': 'restricted' },
          annotations: meta(namespace).annotations,
        },
      }
    : undefined;

  const serviceAccount: V1ServiceAccount = {
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: meta(NAMES.serviceAccount, client),
    // The runner reads EndpointSlices with this account's token; the backend pods mount none.
    automountServiceAccountToken: true,
  };

  const role: V1Role = {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'Role',
    metadata: meta(NAMES.role, client),
    // What podpool's EndpointSlice source needs, and nothing else.
    rules: [{ apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] }],
  };

  const roleBinding: V1RoleBinding = {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'RoleBinding',
    metadata: meta(NAMES.roleBinding, client),
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: NAMES.role },
    subjects: [{ kind: 'ServiceAccount', name: NAMES.serviceAccount, namespace }],
  };

  const headless: V1Service = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(NAMES.headless, backend),
    spec: {
      clusterIP: 'None',
      selector: backendSelector,
      // The UDP receiver's too: podpool's sources find a port by its name here.
      ports: [...TCP_PORTS.map(servicePort), servicePort('udp')],
    },
  };

  const service: V1Service = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(NAMES.service, backend),
    spec: {
      type: 'ClusterIP',
      selector: backendSelector,
      // The same numbers as the pods': nothing below 1024, and kube-proxy balances TCP only here.
      ports: TCP_PORTS.map(servicePort),
    },
  };

  const podContainer: V1Container = {
    name: CONTAINERS.pod,
    image: spec.image,
    imagePullPolicy: 'IfNotPresent',
    // No `command`: the image's ENTRYPOINT is `podpool`.
    args: ['pod', '--concurrency', String(spec.concurrency), '--service-ms', String(spec.serviceMs), '--pre-stop-ms', '2000', '--grace-ms', '10000'],
    env: [
      { name: POD_ENV.name, valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: POD_ENV.ip, valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
    ],
    ports: [
      ...[...TCP_PORTS, 'udp' as const].map((name) => ({ name: SERVICE_PORT_NAMES[name], containerPort: POD_PORTS[name], protocol: protocolOf(name) })),
      { name: 'control', containerPort: CONTROL_PORT, protocol: 'TCP' },
    ],
    // Failing once takes the pod out of the EndpointSlices at once: a pod told to drain says so
    // on /ready, and the scenarios measure how fast clients follow.
    readinessProbe: { httpGet: { path: '/ready', port: CONTROL_PORT }, periodSeconds: 1, failureThreshold: 1, successThreshold: 1, timeoutSeconds: 1 },
    resources: BACKEND_RESOURCES,
    securityContext: SECURITY_CONTEXT,
    volumeMounts: TMP_MOUNTS,
  };

  const deployment: V1Deployment = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: meta(NAMES.deployment, backend),
    spec: {
      replicas: spec.pods,
      selector: { matchLabels: backendSelector },
      // One new pod at a time and none taken away before its successor is ready: the rolling
      // restart the scenarios measure is the careful one.
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: {
        metadata: { labels: { ...labels, ...backend } },
        spec: {
          automountServiceAccountToken: false,
          terminationGracePeriodSeconds: BACKEND_GRACE_S,
          containers: [podContainer],
          volumes: TMP_VOLUMES,
        },
      },
    },
  };

  const clientEnv = [
    { name: ENV.namespace, valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
    { name: ENV.service, value: NAMES.headless },
    { name: ENV.dnsName, value: headlessDnsName(namespace) },
    ...(spec.clusterIp ? [{ name: ENV.clusterIp, value: spec.clusterIp }] : []),
  ];
  const job: V1Job = {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: meta(NAMES.job, client),
    spec: {
      // A failed run is reported, not retried: a second attempt would measure a different start.
      backoffLimit: 0,
      completions: 1,
      parallelism: 1,
      activeDeadlineSeconds: Math.max(60, Math.ceil((spec.deadline.getTime() - Date.now()) / 1000)),
      template: {
        metadata: { labels: { ...labels, ...client } },
        spec: {
          serviceAccountName: NAMES.serviceAccount,
          restartPolicy: 'Never',
          terminationGracePeriodSeconds: 5,
          containers: [
            {
              name: CONTAINERS.client,
              image: spec.image,
              imagePullPolicy: 'IfNotPresent',
              args: ['bench', spec.scenario, '--in-cluster', ...spec.runnerArgs, '--json'],
              env: clientEnv,
              resources: CLIENT_RESOURCES,
              securityContext: SECURITY_CONTEXT,
              volumeMounts: TMP_MOUNTS,
            },
          ],
          volumes: TMP_VOLUMES,
        },
      },
    },
  };

  return { ...(namespaceObject && { namespace: namespaceObject }), serviceAccount, role, roleBinding, headless, service, deployment, job };
}

/** The objects in the order they are created (deleted in the reverse one). */
export function creationOrder(objects: BenchObjects): KubernetesObject[] {
  const { namespace, serviceAccount, role, roleBinding, headless, service, deployment, job } = objects;
  return [...(namespace ? [namespace] : []), serviceAccount, role, roleBinding, headless, service, deployment, job];
}
