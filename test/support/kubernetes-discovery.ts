/**
 * What the Kubernetes source's tests share: a fake API server per test, the Service's slices, and
 * discovery started with test-sized timings and closed after the test.
 */
import type { TestContext } from 'node:test';
import { kubernetesEndpoints, type KubernetesEndpointsOptions } from '../../src/discovery/kubernetes.ts';
import { endpointSlice, FakeApiServer, podIp, type EndpointSliceObject, type SliceEndpointInit } from '../../testkit/fake-apiserver.ts';
import { RecordingSink } from './recording-sink.ts';

export const SERVICE = 'backend';

/** Pods `from` to `to - 1`, each on its own address and with its own pod name. */
export function pods(from: number, to: number, init: Partial<SliceEndpointInit> = {}): SliceEndpointInit[] {
  const out: SliceEndpointInit[] = [];
  for (let i = from; i < to; i++) out.push({ ip: podIp(i), pod: `backend-${i}`, ...init });
  return out;
}

/** One EndpointSlice of the Service. */
export function slice(name: string, endpoints: SliceEndpointInit[], extra: Partial<Parameters<typeof endpointSlice>[0]> = {}): EndpointSliceObject {
  return endpointSlice({ name, service: SERVICE, endpoints, ...extra });
}

/** A fake API server, closed after the test. */
export async function startServer(t: TestContext, options?: Parameters<typeof FakeApiServer.start>[0]): Promise<FakeApiServer> {
  const server = await FakeApiServer.start(options);
  t.after(() => server.close());
  return server;
}

/** Starts discovery against the fake server with test-sized timings; closes it after the test. */
export function discover(
  t: TestContext,
  server: FakeApiServer,
  options: Partial<KubernetesEndpointsOptions> = {},
): { recorder: RecordingSink; close: () => Promise<void> } {
  const source = kubernetesEndpoints({
    service: SERVICE,
    namespace: 'default',
    port: 'http',
    kubeConfig: server.kubeConfig(),
    stallTimeoutMs: 10_000,
    backoff: { initialMs: 5, maxMs: 40 },
    ...options,
  });
  const recorder = new RecordingSink();
  const watch = source.watch(recorder);
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await watch.close();
  };
  t.after(close);
  return { recorder, close };
}
