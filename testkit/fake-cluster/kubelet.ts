/**
 * The fake cluster's scheduler and kubelet in one: gives each new pod a node and an address on
 * loopback, runs its container as a local process (`node --conditions=podpool-source
 * src/cli/main.ts <args…>`, the image's ENTRYPOINT being `podpool`), probes its readiness over
 * real HTTP, restarts it as its restartPolicy says, keeps its log for `pods/<name>/log`, and
 * terminates it as the kubelet does: SIGTERM, SIGKILL after the grace period, then the pod is gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { join } from 'node:path';
import type { ServerResponse } from 'node:http';
import { RESOURCES, now, type KubeObject, type Store } from './store.ts';

const PODS = RESOURCES.get('/pods')!;
const SERVICES = RESOURCES.get('/services')!;

/** How often a running container's readinessProbe is tried (a real probe's period is ≥ 1 s; tests want it sooner). */
const PROBE_INTERVAL_MS = 100;
const PROBE_TIMEOUT_MS = 1000;
/** Backoff of a container that keeps exiting (CrashLoopBackOff), doubled per restart up to the cap. */
const RESTART_BASE_MS = 100;
const RESTART_MAX_MS = 5000;

/** What the kubelet needs from the cluster around it. */
export interface KubeletOptions {
  readonly store: Store;
  /** The repository whose `src/cli/main.ts` is the image. */
  readonly repo: string;
  /** The Node binary that runs it. */
  readonly node: string;
  readonly nodes: readonly string[];
  /** The cluster DNS, `ip:port` (PODPOOL_BENCH_DNS_SERVER). */
  readonly dnsServer: string;
  /** A kubeconfig path with the ServiceAccount's own token, or undefined when it has none (yet). */
  readonly kubeconfigFor: (namespace: string, serviceAccount: string) => string | undefined;
  readonly allocateIp: () => string;
  readonly releaseIp: (ip: string) => void;
  /** Tells the cluster what happened to a pod, for tests to wait on. */
  readonly emit: (event: 'pod-started' | 'pod-exited' | 'pod-ready' | 'pod-unready' | 'pod-gone', pod: KubeObject, detail?: Record<string, unknown>) => void;
}

interface Container {
  process: ChildProcess | undefined;
  /** This run's output, stdout and stderr as they came. */
  log: Buffer[];
  followers: Set<ServerResponse>;
  restarts: number;
  ready: boolean;
  successes: number;
  failures: number;
  probing: boolean;
  probeTimer: NodeJS.Timeout | undefined;
  restartTimer: NodeJS.Timeout | undefined;
  killTimer: NodeJS.Timeout | undefined;
  terminating: boolean;
  /** The grace period the termination runs under (a later delete may shorten it). */
  grace: number;
  /** Set once the pod has no process and never will again. */
  done: boolean;
}

export class Kubelet {
  readonly #options: KubeletOptions;
  readonly #pods = new Map<string, Container>();
  #nextNode = 0;
  #closed = false;
  constructor(options: KubeletOptions) {
    this.#options = options;
    options.store.onChange((change) => {
      if (change.resource !== PODS || change.type === 'DELETED') return;
      const id = podId(change.object);
      const container = this.#pods.get(id);
      if (container === undefined && change.type === 'ADDED') this.#admit(change.object);
      else if (container !== undefined && change.object.metadata.deletionTimestamp !== undefined) {
        // A second delete with a shorter grace period (grace 0 on a pod already terminating) cuts it short.
        const grace = change.object.metadata.deletionGracePeriodSeconds ?? Infinity;
        if (!container.terminating || grace < container.grace) this.#terminate(change.object, container);
      }
    });
  }

  /**
   * Answers `pods/<name>/log`: what the container wrote so far, then (`follow`) what it writes
   * until it exits.
   */
  log(pod: KubeObject, res: ServerResponse, follow: boolean): void {
    const container = this.#pods.get(podId(pod));
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    if (container === undefined) {
      res.end();
      return;
    }
    for (const chunk of container.log) res.write(chunk);
    if (!follow || container.process === undefined) {
      res.end();
      return;
    }
    container.followers.add(res);
    res.on('close', () => container.followers.delete(res));
  }

  /** Whether the pod has a container that ever started (a log to read). */
  started(pod: KubeObject): boolean {
    const container = this.#pods.get(podId(pod));
    return container !== undefined && (container.process !== undefined || container.log.length > 0 || container.done);
  }

  /** SIGKILLs every process, synchronously: for a test process on its way out without close(). */
  killAll(): void {
    for (const container of this.#pods.values()) container.process?.kill('SIGKILL');
  }

  /** Kills every process at once and waits for them to be gone. */
  async close(): Promise<void> {
    this.#closed = true;
    const exits: Promise<unknown>[] = [];
    for (const container of this.#pods.values()) {
      clearTimeout(container.probeTimer);
      clearTimeout(container.restartTimer);
      clearTimeout(container.killTimer);
      for (const res of container.followers) res.end();
      const child = container.process;
      if (child !== undefined && child.exitCode === null && child.signalCode === null) {
        exits.push(new Promise((resolve) => child.once('close', resolve)));
        child.kill('SIGKILL');
      }
    }
    await Promise.all(exits);
  }

  /** The scheduler's and the CNI's part: a node and an IP, then the container runs. */
  #admit(pod: KubeObject): void {
    const { store, nodes } = this.#options;
    const container: Container = {
      process: undefined,
      log: [],
      followers: new Set(),
      restarts: 0,
      ready: false,
      successes: 0,
      failures: 0,
      probing: false,
      probeTimer: undefined,
      restartTimer: undefined,
      killTimer: undefined,
      terminating: false,
      grace: Infinity,
      done: false,
    };
    this.#pods.set(podId(pod), container);
    const node = pod.spec.nodeName ?? nodes[this.#nextNode++ % nodes.length];
    const ip = this.#options.allocateIp();
    const admitted = store.modify(PODS, pod, (p) => {
      p.spec.nodeName = node;
      p.status = {
        phase: 'Pending',
        conditions: [{ type: 'PodScheduled', status: 'True', lastTransitionTime: now() }],
        hostIP: '127.0.0.1',
        podIP: ip,
        podIPs: [{ ip }],
        startTime: now(),
        qosClass: 'Guaranteed',
      };
    });
    this.#start(admitted, container);
  }

  #start(pod: KubeObject, container: Container): void {
    const spec = pod.spec.containers[0];
    const env = this.#env(pod, spec);
    // As the kubelet does, $(VAR) in args is the container's variable.
    const args = (spec.args ?? []).map((arg: string) => expand(arg, env));
    const child = spawn(this.#options.node, ['--conditions=podpool-source', join(this.#options.repo, 'src/cli/main.ts'), ...args], {
      cwd: this.#options.repo,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    container.process = child;
    container.log = [];
    container.ready = false;
    container.successes = 0;
    container.failures = 0;
    const output = (chunk: Buffer) => {
      container.log.push(chunk);
      for (const res of container.followers) res.write(chunk);
    };
    child.stdout!.on('data', output);
    child.stderr!.on('data', output);
    child.once('spawn', () => {
      if (this.#closed) return;
      const running = this.#setStatus(pod, container, { running: true });
      if (running !== undefined) this.#options.emit('pod-started', running, { pid: child.pid });
      if (spec.readinessProbe?.httpGet !== undefined) this.#probe(pod, container);
      else this.#setReady(pod, container, true);
    });
    // 'close', not 'exit': the log is complete only once both pipes are drained.
    child.once('close', (code, signal) => this.#exited(pod, container, child, code, signal));
    child.once('error', (error) => output(Buffer.from(`fake kubelet: ${error.message}\n`)));
  }

  /**
   * The container's environment: PATH, the service links Kubernetes injects (Services that exist
   * when the pod starts), the fake cluster's own (DNS, loopback allowed, a kubeconfig with the
   * ServiceAccount's token), then the container's `env` with its fieldRefs resolved.
   */
  #env(pod: KubeObject, spec: { env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[] }): Record<string, string> {
    const { store } = this.#options;
    const namespace = pod.metadata.namespace!;
    const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOSTNAME: pod.metadata.name, HOME: '/tmp' };
    if (pod.spec.enableServiceLinks !== false) {
      for (const service of store.list(SERVICES, namespace)) {
        const ip = service.spec.clusterIP;
        if (typeof ip !== 'string' || ip === 'None' || !Array.isArray(service.spec.ports) || service.spec.ports.length === 0) continue;
        const prefix = service.metadata.name.toUpperCase().replaceAll('-', '_');
        env[`${prefix}_SERVICE_HOST`] = ip;
        env[`${prefix}_SERVICE_PORT`] = String(service.spec.ports[0].port);
        for (const port of service.spec.ports as { name?: string; port: number; protocol?: string }[]) {
          const protocol = (port.protocol ?? 'TCP').toLowerCase();
          if (port.name !== undefined) env[`${prefix}_SERVICE_PORT_${port.name.toUpperCase().replaceAll('-', '_')}`] = String(port.port);
          env[`${prefix}_PORT_${port.port}_${protocol.toUpperCase()}`] = `${protocol}://${ip}:${port.port}`;
        }
        env[`${prefix}_PORT`] = `${(service.spec.ports[0].protocol ?? 'TCP').toLowerCase()}://${ip}:${service.spec.ports[0].port}`;
      }
    }
    env.PODPOOL_BENCH_DNS_SERVER = this.#options.dnsServer;
    env.PODPOOL_BENCH_ALLOW_ADDRESSES = 'loopback';
    const serviceAccount = pod.spec.serviceAccountName ?? 'default';
    if (pod.spec.automountServiceAccountToken !== false) {
      const kubeconfig = this.#options.kubeconfigFor(namespace, serviceAccount);
      if (kubeconfig !== undefined) env.KUBECONFIG = kubeconfig;
    }
    const fields: Record<string, string | undefined> = {
      'metadata.name': pod.metadata.name,
      'metadata.namespace': namespace,
      'metadata.uid': pod.metadata.uid,
      'spec.nodeName': pod.spec.nodeName,
      'spec.serviceAccountName': serviceAccount,
      'status.podIP': pod.status?.podIP,
      'status.hostIP': pod.status?.hostIP,
    };
    for (const variable of spec.env ?? []) {
      if (variable.value !== undefined) env[variable.name] = expand(variable.value, env);
      else if (variable.valueFrom?.fieldRef !== undefined) env[variable.name] = fields[variable.valueFrom.fieldRef.fieldPath] ?? '';
    }
    return env;
  }

  /** One readiness probe, then the next one PROBE_INTERVAL_MS later while the process runs. */
  #probe(pod: KubeObject, container: Container): void {
    const probe = pod.spec.containers[0].readinessProbe;
    const current = this.#options.store.get(PODS, pod.metadata.namespace, pod.metadata.name);
    const child = container.process;
    if (this.#closed || current === undefined || child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    container.probing = true;
    const port = resolvePort(current, probe.httpGet.port);
    const req = request({ host: current.status.podIP, port, path: probe.httpGet.path ?? '/', timeout: PROBE_TIMEOUT_MS, agent: false });
    const settle = (ok: boolean) => {
      if (!container.probing) return;
      container.probing = false;
      req.destroy();
      if (ok) {
        container.failures = 0;
        container.successes += 1;
        if (!container.ready && container.successes >= (probe.successThreshold ?? 1)) this.#setReady(pod, container, true);
      } else {
        container.successes = 0;
        container.failures += 1;
        if (container.ready && container.failures >= (probe.failureThreshold ?? 3)) this.#setReady(pod, container, false);
      }
      if (container.process === child && !this.#closed) container.probeTimer = setTimeout(() => this.#probe(pod, container), PROBE_INTERVAL_MS);
    };
    req.once('response', (res) => {
      res.resume();
      settle(res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 400);
    });
    req.once('timeout', () => settle(false));
    req.once('error', () => settle(false));
    req.end();
  }

  #setReady(pod: KubeObject, container: Container, ready: boolean): void {
    container.ready = ready;
    const updated = this.#setStatus(pod, container, { running: true });
    if (updated !== undefined) this.#options.emit(ready ? 'pod-ready' : 'pod-unready', updated);
  }

  /** Writes the pod's phase, conditions and container status as they are now. */
  #setStatus(pod: KubeObject, container: Container, state: { running: true } | { exitCode: number; reason: string }): KubeObject | undefined {
    const { store } = this.#options;
    if (store.get(PODS, pod.metadata.namespace, pod.metadata.name) === undefined) return undefined;
    return store.modify(PODS, pod, (p) => {
      const ready = 'running' in state && container.ready;
      const status = p.status;
      const spec = p.spec.containers[0];
      if ('running' in state) status.phase = 'Running';
      else if (p.spec.restartPolicy === 'Never' || (p.spec.restartPolicy === 'OnFailure' && state.exitCode === 0)) {
        status.phase = state.exitCode === 0 ? 'Succeeded' : 'Failed';
      }
      const condition = (type: string, value: boolean) => {
        const existing = status.conditions.find((c: { type: string }) => c.type === type);
        const text = value ? 'True' : 'False';
        if (existing === undefined) status.conditions.push({ type, status: text, lastTransitionTime: now() });
        else if (existing.status !== text) Object.assign(existing, { status: text, lastTransitionTime: now() });
      };
      condition('Initialized', true);
      condition('ContainersReady', ready);
      condition('Ready', ready);
      status.containerStatuses = [
        {
          name: spec.name,
          image: spec.image,
          imageID: `fake://${spec.image}`,
          ready,
          started: 'running' in state,
          restartCount: container.restarts,
          state:
            'running' in state
              ? { running: { startedAt: status.containerStatuses?.[0]?.state?.running?.startedAt ?? now() } }
              : { terminated: { exitCode: state.exitCode, reason: state.reason, finishedAt: now() } },
        },
      ];
    });
  }

  #exited(pod: KubeObject, container: Container, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    clearTimeout(container.probeTimer);
    clearTimeout(container.killTimer);
    container.probing = false;
    container.process = undefined;
    container.ready = false;
    for (const res of container.followers) res.end();
    container.followers.clear();
    if (this.#closed) return;
    const exitCode = code ?? 128 + (signal === 'SIGKILL' ? 9 : 15);
    const current = this.#options.store.get(PODS, pod.metadata.namespace, pod.metadata.name);
    this.#options.emit('pod-exited', current ?? pod, { code, signal, pid: child.pid });
    if (current === undefined) return;
    if (container.terminating) return this.#gone(current, container);
    const restart = current.spec.restartPolicy === 'Always' || (current.spec.restartPolicy === 'OnFailure' && exitCode !== 0);
    this.#setStatus(current, container, { exitCode, reason: exitCode === 0 ? 'Completed' : 'Error' });
    if (!restart) {
      container.done = true;
      return;
    }
    container.restarts += 1;
    const delay = Math.min(RESTART_BASE_MS * 2 ** (container.restarts - 1), RESTART_MAX_MS);
    container.restartTimer = setTimeout(() => {
      const latest = this.#options.store.get(PODS, pod.metadata.namespace, pod.metadata.name);
      if (latest !== undefined && !container.terminating) this.#start(latest, container);
    }, delay);
  }

  /** The kubelet's termination: SIGTERM, SIGKILL after the grace period (at once for 0). */
  #terminate(pod: KubeObject, container: Container): void {
    const again = container.terminating;
    container.terminating = true;
    clearTimeout(container.restartTimer);
    clearTimeout(container.killTimer);
    const child = container.process;
    if (child === undefined) {
      if (!again) this.#gone(pod, container);
      return;
    }
    const grace = pod.metadata.deletionGracePeriodSeconds ?? pod.spec.terminationGracePeriodSeconds ?? 30;
    container.grace = grace;
    if (grace <= 0) {
      child.kill('SIGKILL');
      return;
    }
    if (!again) child.kill('SIGTERM');
    container.killTimer = setTimeout(() => child.kill('SIGKILL'), grace * 1000);
  }

  /** The pod's process is gone: its address is free and the API object goes. */
  #gone(pod: KubeObject, container: Container): void {
    container.done = true;
    clearTimeout(container.restartTimer);
    this.#pods.delete(podId(pod));
    const { store } = this.#options;
    const current = store.get(PODS, pod.metadata.namespace, pod.metadata.name);
    if (current !== undefined) store.remove(PODS, current);
    if (typeof pod.status?.podIP === 'string') this.#options.releaseIp(pod.status.podIP);
    this.#options.emit('pod-gone', pod);
  }
}

/** `$(NAME)` replaced by the variable's value when it has one, left as it is otherwise. */
function expand(text: string, env: Record<string, string>): string {
  return text.replaceAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => env[name] ?? whole);
}

function podId(pod: KubeObject): string {
  return `${pod.metadata.namespace}/${pod.metadata.name}/${pod.metadata.uid}`;
}

/** A probe's or Service's port: a number, or the name of one of the container's ports. */
export function resolvePort(pod: KubeObject | undefined, port: number | string): number | undefined {
  if (typeof port === 'number') return port;
  if (/^\d+$/.test(port)) return Number(port);
  for (const container of pod?.spec.containers ?? []) {
    for (const p of container.ports ?? []) if (p.name === port) return p.containerPort;
  }
  return undefined;
}
