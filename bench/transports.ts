/**
 * podpool modes over the gRPC and WebSocket transports, and the discovery sources the scenarios
 * compare.
 */
import { grpcTransport } from '../src/transport/grpc.ts';
import { webSocketTransport, type WebSocketClient } from '../src/transport/websocket.ts';
import { dnsSource, onePerPod, openPodpool, type Mode, type SourceFactory } from './clients.ts';
import { EchoClient, POD_PORTS, type EchoClientInstance } from './pods.ts';
import type { Cluster } from './cluster.ts';

/** podpool's WebSocket transport: one socket per pod, requests correlated by id. */
export function wsPodpool(balancer: string, source?: SourceFactory): Mode {
  return {
    client: `podpool ${balancer}`,
    wire: 'ws',
    kind: 'podpool',
    connections: onePerPod,
    async open(cluster) {
      const pool = await openPodpool<WebSocketClient>(cluster, {
        port: POD_PORTS.ws,
        transport: webSocketTransport({ requestTimeoutMs: 10_000 }),
        balancer,
        source,
      });
      return {
        call: () => pool.use((ws) => ws.request<string>(null)),
        close: () => pool.close(),
      };
    },
  };
}

/** podpool's gRPC transport: one grpc-js client per pod, a pick per call. */
export function grpcPodpool(balancer: string, source?: SourceFactory): Mode {
  return {
    client: `podpool ${balancer}`,
    wire: 'grpc',
    kind: 'podpool',
    connections: onePerPod,
    async open(cluster) {
      const pool = await openPodpool<EchoClientInstance>(cluster, {
        port: POD_PORTS.grpc,
        transport: grpcTransport(EchoClient as never),
        balancer,
        source,
      });
      const empty = Buffer.alloc(0);
      return {
        call: () =>
          pool.use(
            (client) =>
              new Promise<string>((resolve, reject) => {
                client.call(empty, (error, reply) => (error ? reject(error) : resolve(String(reply))));
              }),
          ),
        close: () => pool.close(),
      };
    },
  };
}

/**
 * The discovery sources podpool can use in the stand-in cluster, by report name: the Kubernetes
 * API (a fake API server speaking list/watch) and, once it exists, cluster DNS.
 */
export function discoverySources(_cluster: Cluster): Record<string, SourceFactory> {
  return {
    dns: dnsSource,
    kubernetes: (cluster, port) => cluster.kubernetesSource(port),
  };
}
