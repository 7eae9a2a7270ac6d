// The public surface of podpool: everything a user imports comes from here, and only from here.

// First, so that on too old a Node the version check runs before undici is loaded.
import './node-version.ts';

export { createPool, Pool } from './pool/pool.ts';
export type { PoolOptions, UseOptions, ReadyOptions, StateChange, PoolEvents, PoolStats } from './pool/pool.ts';
export type { BeginOptions, PoolConnectivity, AdapterPool } from './pool/adapter-pool.ts';
export type { PoolCall } from './call/call.ts';
export type { BroadcastOptions, BroadcastResult, Delivery, Delivered, DeliveryFailure } from './pool/broadcast.ts';
export type { EjectionOptions } from './pool/ejection.ts';
export type { ReconnectOptions } from './pool/connector.ts';
export type { MemberState, MemberStats, MemberLatency } from './pool/member.ts';
export type { DiscoveryStats } from './pool/membership.ts';
export type { SubsetOptions } from './balance/subset.ts';
export { statefulSetOrdinal } from './balance/subset.ts';
export type { ZoneMode, ZoneOptions, ZoneStats } from './balance/zone.ts';

export { createEndpoint, endpointKey, EndpointSet } from './endpoint.ts';
export type { Endpoint, EndpointInit, EndpointDiff } from './endpoint.ts';
export { addressRange } from './address.ts';
export { CHANNEL_NAMES } from './channels.ts';
export type { CallKind, CallStartMessage, CallEndMessage, CallErrorMessage, MemberStateMessage, SnapshotMessage, DiscoveryErrorMessage } from './channels.ts';
export type { AddressRange } from './address.ts';
export { podpoolMetrics } from './observe/metrics.ts';
export type { PodpoolMetricsOptions, PodpoolMetrics, MetricsRegistry } from './observe/metrics.ts';
export { podpoolDebugServer } from './observe/debug-server.ts';
export type { DebugServer, DebugServerOptions, DebugPool, DebugView, DebugPoolView, DebugMember } from './observe/debug-server.ts';
export {
  PodpoolError,
  ErrorCode,
  InvalidOptionError,
  InvalidArgumentError,
  InvalidEndpointError,
  NoEndpointsError,
  KeyRequiredError,
  TimeoutError,
  AbortedError,
  ClosedError,
  NotConnectedError,
  ConnectFailedError,
  ConnectionLostError,
  EjectedError,
  DiscoveryFailedError,
  NameNotFoundError,
  MessageRejectedError,
  BackpressureError,
  NotSupportedError,
  UnsupportedNodeError,
  ClusterRequestFailedError,
} from './errors.ts';
export type { RejectReason } from './errors.ts';

export type { EndpointSource, SourceSink, SourceWatch } from './discovery/source.ts';
export { staticEndpoints } from './discovery/static.ts';
export type { StaticEndpointsOptions } from './discovery/static.ts';
export { dnsEndpoints } from './discovery/dns.ts';
export type { DnsEndpointsOptions } from './discovery/dns.ts';
export { kubernetesEndpoints } from './discovery/kubernetes.ts';
export type { KubernetesEndpointsOptions } from './discovery/kubernetes.ts';

export type { Balancer, Picker, Pickable, PickerContext } from './balance/balancer.ts';
export { roundRobin } from './balance/round-robin.ts';
export { random } from './balance/random.ts';
export { leastLoaded } from './balance/least-loaded.ts';
export type { LeastLoadedOptions } from './balance/least-loaded.ts';
export { peakEwma } from './balance/peak-ewma.ts';
export type { PeakEwmaOptions } from './balance/peak-ewma.ts';
export { ringHash } from './balance/ring-hash.ts';
export type { RingHashOptions } from './balance/ring-hash.ts';

export type { Transport, Connection, ConnectContext } from './transport/transport.ts';
export { httpTransport } from './transport/http.ts';
export type { HttpTransportOptions } from './transport/http.ts';
export { grpcTransport } from './transport/grpc.ts';
export type { GrpcTransportOptions, GrpcClientConstructor } from './transport/grpc.ts';
export { webSocketTransport } from './transport/websocket.ts';
export type { WebSocketTransportOptions } from './transport/websocket.ts';
export { WebSocketClient } from './transport/websocket-client.ts';
export type { WebSocketRequestOptions } from './transport/websocket-client.ts';
export type { RemoteError } from './wire/request-frame.ts';
export { exclusiveTransport } from './transport/exclusive.ts';
export type { ExclusiveFactory, ExclusiveTransportOptions } from './transport/exclusive.ts';
export { udpTransport } from './transport/udp.ts';
export type { UdpTransportOptions, UdpClient, UdpSendResult } from './transport/udp.ts';
export { encodeDatagram, decodeDatagram } from './wire/datagram.ts';
export type { Datagram } from './wire/datagram.ts';

// Adapters: a grpc-js Channel and an undici Dispatcher over a pool.
export { httpDispatcher, PoolDispatcher } from './adapter/http-dispatcher.ts';
export type { HttpDispatcherOptions, HttpDispatcherRetryOptions } from './adapter/http-dispatcher.ts';
export { grpcChannel, PoolChannel } from './adapter/grpc-channel.ts';
export type { GrpcChannelOptions } from './adapter/grpc-channel.ts';
export type { GrpcServiceConfig, GrpcMethodConfig, GrpcRetryPolicy } from './adapter/grpc-retry.ts';

export { dedupFilter } from './receive/dedup.ts';
export type { DedupFilter, DedupOptions, ReplayMemory, KeepOutcome } from './receive/dedup.ts';
export { datagramReceiver } from './receive/datagram.ts';
export type {
  DatagramReceiver,
  DatagramReceiverOptions,
  DatagramGap,
  DatagramDrop,
  DatagramOutcome,
  DropReason,
  DatagramReceiverStats,
} from './receive/datagram.ts';
export { answerRequests } from './receive/websocket-requests.ts';
export type { WebSocketMessage, WebSocketHandler } from './receive/websocket-requests.ts';
export { signMessage, verifyMessage } from './receive/signing.ts';
export type { Secret, SignedMessage, ReceivedMessage, SignOptions, VerifyOptions } from './receive/signing.ts';
