// The public surface of podpool: everything a user imports comes from here, and only from here.

export { createPool, Pool } from './pool/pool.ts';
export type { PoolOptions, UseOptions, ReadyOptions, StateChange, PoolEvents, PoolStats, PoolCall } from './pool/pool.ts';
export type { BroadcastOptions, BroadcastResult, Delivery, Delivered, DeliveryFailure } from './pool/broadcast.ts';
export type { EjectionOptions } from './pool/ejection.ts';
export type { MemberState, MemberStats } from './pool/member.ts';

export { createEndpoint, endpointKey, EndpointSet } from './endpoint.ts';
export type { Endpoint, EndpointInit, EndpointDiff } from './endpoint.ts';
export { PodpoolError, ErrorCode } from './errors.ts';

export type { EndpointSource, SourceSink, SourceWatch } from './discovery/source.ts';
export { staticEndpoints } from './discovery/static.ts';
export { kubernetesEndpoints } from './discovery/kubernetes.ts';
export type { KubernetesEndpointsOptions } from './discovery/kubernetes.ts';

export type { Balancer, Picker, Pickable, PickerContext } from './balance/balancer.ts';
export { roundRobin } from './balance/round-robin.ts';
export { random } from './balance/random.ts';
export { leastLoaded } from './balance/least-loaded.ts';
export { peakEwma } from './balance/peak-ewma.ts';
export { ringHash } from './balance/ring-hash.ts';

export type { Transport, Connection, ConnectContext } from './transport/transport.ts';
export { httpTransport, httpDispatcher, PoolDispatcher } from './transport/http.ts';
export type { HttpTransportOptions } from './transport/http.ts';
export { grpcTransport, grpcChannel, PoolChannel } from './transport/grpc.ts';
export type { GrpcTransportOptions, GrpcChannelOptions, GrpcClientConstructor } from './transport/grpc.ts';
