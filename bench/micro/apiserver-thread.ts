// The fake API server on a worker thread, for benches that time the Kubernetes source: the
// server's own work (cloning and serialising 10,000 endpoints) then no longer counts in the
// event-loop blocks measured on the main thread, which are podpool's alone. The main thread
// drives it as it would the server itself (apply, remove, openWatches, kubeConfig).
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import { KubeConfig } from '@kubernetes/client-node';
import { endpointSlice, FakeApiServer, podIp, slicesFor, type Delivery, type SliceEndpointInit } from '../../testkit/fake-apiserver.ts';

/**
 * Pods `from` to `to` (exclusive) of a Service, in slices of `perSlice` named `<service>-<n>`
 * (or one slice named `name`), pod `notReady` (if any) not ready. Built on the worker, so the main
 * thread never clones 10,000 endpoints into a message.
 */
export interface PodsSpec {
  readonly service: string;
  readonly from: number;
  readonly to: number;
  readonly perSlice?: number;
  /** Cut them into slices starting at this one's number (slice `<service>-<firstSlice>`), default 0. */
  readonly firstSlice?: number;
  /** One slice of this name instead. */
  readonly name?: string;
  readonly notReady?: number;
}

type Request = { id: number; op: 'apply'; spec: PodsSpec } | { id: number; op: 'remove'; names: string[] } | { id: number; op: 'watches' } | { id: number; op: 'close' };

function slicesOf(spec: PodsSpec) {
  const pods: SliceEndpointInit[] = [];
  for (let i = spec.from; i < spec.to; i++) pods.push({ ip: podIp(i), pod: `${spec.service}-${i}`, ready: i !== spec.notReady });
  if (spec.name !== undefined) return [endpointSlice({ name: spec.name, service: spec.service, endpoints: pods })];
  const perSlice = spec.perSlice ?? 100;
  const first = spec.firstSlice ?? 0;
  return slicesFor(spec.service, pods, { perSlice }).map((s, i) => (first === 0 ? s : { ...s, metadata: { ...s.metadata, name: `${spec.service}-${first + i}` } }));
}

/** The main thread's handle on a FakeApiServer running in a worker. */
export class ApiServerThread {
  readonly #worker: Worker;
  readonly #pending = new Map<number, (value: unknown) => void>();
  #next = 0;
  /** Where the worker's `performance.now()` starts, on the main thread's clock. */
  readonly #offsetMs: number;
  readonly url: string;
  readonly token: string;

  private constructor(worker: Worker, url: string, token: string, timeOrigin: number) {
    this.#worker = worker;
    this.url = url;
    this.token = token;
    this.#offsetMs = timeOrigin - performance.timeOrigin;
    worker.on('message', ({ id, value }: { id: number; value: unknown }) => {
      this.#pending.get(id)?.(value);
      this.#pending.delete(id);
    });
  }

  static async start(token: string): Promise<ApiServerThread> {
    const worker = new Worker(new URL(import.meta.url), { execArgv: process.execArgv, workerData: { token } });
    const [ready] = (await new Promise((resolve, reject) => {
      worker.once('message', (m) => resolve([m]));
      worker.once('error', reject);
    })) as [{ url: string; timeOrigin: number }];
    return new ApiServerThread(worker, ready.url, token, ready.timeOrigin);
  }

  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: this.url, skipTLSVerify: true }],
      users: [{ name: 'fake-user', token: this.token }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'fake-user' }],
      currentContext: 'fake',
    });
    return kc;
  }

  /** As FakeApiServer.apply with the slices of `spec`; `writtenAt` on this thread's clock. */
  async apply(spec: PodsSpec): Promise<Delivery> {
    return this.#delivery(await this.#ask({ id: this.#next++, op: 'apply', spec }));
  }

  async remove(names: string[]): Promise<Delivery> {
    return this.#delivery(await this.#ask({ id: this.#next++, op: 'remove', names }));
  }

  openWatches(): Promise<number> {
    return this.#ask({ id: this.#next++, op: 'watches' }) as Promise<number>;
  }

  async close(): Promise<void> {
    await this.#ask({ id: this.#next++, op: 'close' });
    await this.#worker.terminate();
  }

  #delivery(value: unknown): Delivery {
    const d = value as Delivery;
    return { ...d, writtenAt: d.writtenAt + this.#offsetMs };
  }

  #ask(request: Request): Promise<unknown> {
    return new Promise((resolve) => {
      this.#pending.set(request.id, resolve);
      this.#worker.postMessage(request);
    });
  }
}

if (!isMainThread) {
  const { workerData } = await import('node:worker_threads');
  const api = await FakeApiServer.start({ token: (workerData as { token: string }).token });
  const port = parentPort!;
  port.on('message', async (request: Request) => {
    let value: unknown;
    if (request.op === 'apply') value = await api.apply(...slicesOf(request.spec));
    else if (request.op === 'remove') value = await api.remove(request.names);
    else if (request.op === 'watches') value = api.openWatches;
    else {
      await api.close();
      value = undefined;
    }
    port.postMessage({ id: request.id, value });
  });
  port.postMessage({ url: api.kubeConfig().getCurrentCluster()!.server, timeOrigin: performance.timeOrigin });
}
