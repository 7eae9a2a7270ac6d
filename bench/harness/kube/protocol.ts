/**
 * What `podpool bench <scenario> --cluster`, the in-cluster runner (`podpool bench <scenario>
 * --in-cluster`, the client Job's container), `podpool bench manifests` and the test's fake
 * cluster agree on: the objects' names and labels, the ports, the runner's environment, and the
 * lines the runner writes to its log for the command that started it.
 *
 * The runner and the command talk through the Job's log and the API server, never directly: the
 * command can't reach pod addresses from outside the cluster, and the runner's ServiceAccount may
 * only get, list and watch EndpointSlices. The runner asks in a log line (`request`) for what only
 * the command may do (scale the Deployment, restart it, delete a pod), and sees it done in the
 * EndpointSlices it watches anyway. Its last line carries the report (`result`).
 */
import { ErrorCode, PodpoolError } from '../../../src/errors.ts';
import type { ChartSpec, ScenarioReport } from '../report.ts';

/** Every object the command creates carries these labels; the sweep finds leftovers by them. */
export const LABELS = {
  /** `podpool-bench` on every object. */
  managedBy: 'app.kubernetes.io/managed-by',
  /** The run's id (a short random hex string), the same on every object of one run. */
  run: 'podpool.dev/bench-run',
  /** `backend` or `client`: which side of the bench a pod template or Service is. */
  component: 'app.kubernetes.io/component',
  /** `podpool-bench` on every object (kubectl's usual name label). */
  name: 'app.kubernetes.io/name',
} as const;

export const MANAGED_BY = 'podpool-bench';

/**
 * An RFC 3339 time after which the sweep of a later run may delete the object: the run's own
 * bound (every scenario's time, the waits, a margin). A run still going keeps its objects.
 */
export const DEADLINE_ANNOTATION = 'podpool.dev/bench-deadline';

/** Object names, the same in every run (a run has its namespace to itself, or is told one). */
export const NAMES = {
  /** The namespace a run creates is this and the run's id: `podpool-bench-3f9a1c`. */
  namespacePrefix: 'podpool-bench-',
  deployment: 'podpool-backend',
  /** The headless Service: podpool's DNS and EndpointSlice sources read it. */
  headless: 'podpool-backend-headless',
  /** The ClusterIP Service: kube-proxy's rows dial it. */
  service: 'podpool-backend',
  serviceAccount: 'podpool-bench-client',
  role: 'podpool-bench-client',
  roleBinding: 'podpool-bench-client',
  job: 'podpool-bench-client',
} as const;

/** Container names: the backend pods' and the client Job's. */
export const CONTAINERS = { pod: 'pod', client: 'client' } as const;

/** The `podpool pod` control endpoint's port (HTTP): `/ready`, `/counts`, `/slow`, `/recycle`, `/kill`. */
export const CONTROL_PORT = 9901;

/**
 * The ClusterIP Service's ports: the same numbers as the pods' (8080, 50051, 8081), so nothing
 * below 1024 is needed anywhere, and the fake cluster can listen on them without root.
 */
export const SERVICE_PORT_NAMES = { http: 'http', grpc: 'grpc', ws: 'ws', udp: 'udp' } as const;

/** The runner's environment, as the Job sets it (and the fake cluster's kubelet resolves it). */
export const ENV = {
  /** The Job pod's namespace (a `fieldRef` to `metadata.namespace`). */
  namespace: 'PODPOOL_BENCH_NAMESPACE',
  /** The headless Service whose EndpointSlices and DNS name list the pods. */
  service: 'PODPOOL_BENCH_SERVICE',
  /** The ClusterIP Service's `spec.clusterIP`, as the command read it after creating the Service. */
  clusterIp: 'PODPOOL_BENCH_CLUSTER_IP',
  /** The headless Service's DNS name: `podpool-backend-headless.<ns>.svc.cluster.local`. */
  dnsName: 'PODPOOL_BENCH_DNS_NAME',
  /**
   * `ip:port` of the DNS server to ask about the headless name. Unset in a real cluster (the
   * pod's resolver answers); the fake cluster sets it, as a kubelet sets a pod's resolv.conf, so
   * that nothing asks the machine's resolver about a test name.
   */
  dnsServer: 'PODPOOL_BENCH_DNS_SERVER',
  /** Address ranges the sources accept beyond the defaults (`loopback` in the fake cluster only). */
  allowAddresses: 'PODPOOL_BENCH_ALLOW_ADDRESSES',
} as const;

/** The backend pods' environment: `podpool pod` binds `POD_IP` and names itself `POD_NAME`. */
export const POD_ENV = { name: 'POD_NAME', ip: 'POD_IP' } as const;

/** Every event line starts so; other lines of the log (warnings, a stack) are left alone. */
export const LINE_PREFIX = 'podpool-bench ';

/** What the runner asks the command to do, by `op`. */
export type RunnerRequest =
  /** Set the Deployment's replicas (through its scale subresource). */
  | { readonly event: 'request'; readonly id: number; readonly op: 'scale'; readonly replicas: number }
  /** Restart the Deployment as `kubectl rollout restart` does (a template annotation). */
  | { readonly event: 'request'; readonly id: number; readonly op: 'restart' }
  /** Delete one pod at once (grace 0), as the control plane does to a pod that died. */
  | { readonly event: 'request'; readonly id: number; readonly op: 'delete-pod'; readonly pod: string };

export type RunnerEvent =
  /** The runner started and sees `pods` ready pods. */
  | { readonly event: 'hello'; readonly scenario: string; readonly pods: number; readonly version: string }
  /** A phase's progress, for the command's progress bar. */
  | { readonly event: 'progress'; readonly label: string; readonly fraction: number }
  /** A sentence for the user (the command prints it). */
  | { readonly event: 'note'; readonly message: string }
  | RunnerRequest
  /** The scenario's output: the command writes the results and charts from it, and prints the table. */
  | { readonly event: 'result'; readonly report: ScenarioReport; readonly chart?: ChartSpec; readonly table: string }
  /** The run failed; `code` is a PodpoolError's when it was one. */
  | { readonly event: 'error'; readonly message: string; readonly code?: string };

const EVENTS = new Set(['hello', 'progress', 'note', 'request', 'result', 'error']);
const OPS = new Set(['scale', 'restart', 'delete-pod']);

/** One log line for `event`, with its newline. */
export function formatEvent(event: RunnerEvent): string {
  return `${LINE_PREFIX}${JSON.stringify(event)}\n`;
}

/**
 * The event a log line carries; `undefined` for a line that is not one (no prefix). A line with
 * the prefix that does not parse, or names no known event, is a `PODPOOL_INVALID_ARGUMENT`: the
 * runner and the command are of different versions, or the log was cut.
 */
export function parseEvent(line: string): RunnerEvent | undefined {
  const text = line.endsWith('\r') ? line.slice(0, -1) : line;
  if (!text.startsWith(LINE_PREFIX)) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text.slice(LINE_PREFIX.length));
  } catch (error) {
    throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `the runner's log line is not JSON: ${text.slice(0, 80)}`, { cause: error });
  }
  const event = (value as { event?: unknown } | null)?.event;
  if (typeof value !== 'object' || value === null || typeof event !== 'string' || !EVENTS.has(event)) {
    throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `the runner's log line names no known event: ${text.slice(0, 80)}`);
  }
  if (event === 'request') {
    const request = value as { id?: unknown; op?: unknown; replicas?: unknown; pod?: unknown };
    const ok =
      Number.isSafeInteger(request.id) &&
      typeof request.op === 'string' &&
      OPS.has(request.op) &&
      (request.op !== 'scale' || (Number.isSafeInteger(request.replicas) && (request.replicas as number) >= 0)) &&
      (request.op !== 'delete-pod' || (typeof request.pod === 'string' && request.pod.length > 0));
    if (!ok) throw new PodpoolError(ErrorCode.INVALID_ARGUMENT, `the runner asked for something unknown: ${text.slice(0, 120)}`);
  }
  return value as RunnerEvent;
}

/**
 * Splits a stream of log text into lines, whatever the chunks: `push` returns the complete lines
 * so far, `end` the last one if it had no newline.
 */
export class LineSplitter {
  #rest = '';

  push(chunk: string): string[] {
    const text = this.#rest + chunk;
    const lines = text.split('\n');
    this.#rest = lines.pop()!;
    return lines;
  }

  end(): string[] {
    const rest = this.#rest;
    this.#rest = '';
    return rest === '' ? [] : [rest];
  }
}
