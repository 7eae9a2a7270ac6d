/**
 * EndpointSlices as discovery reads them, and their merge into one snapshot: the part of the
 * Kubernetes source that needs no API server.
 */
import { isIP } from 'node:net';
import { createEndpoint, EndpointSet, endpointKey, type EndpointInit } from '../endpoint.ts';

/** The EndpointSlice fields discovery reads: the client's `V1EndpointSlice` and a watch event's raw JSON both fit. */
export interface EndpointSliceLike {
  metadata?: { name?: string; resourceVersion?: string };
  addressType?: string;
  endpoints?: readonly {
    addresses?: readonly string[];
    conditions?: { ready?: boolean | null; serving?: boolean | null; terminating?: boolean | null } | null;
    targetRef?: { kind?: string; name?: string; namespace?: string; uid?: string } | null;
    nodeName?: string | null;
    zone?: string | null;
    hints?: { forZones?: readonly { name?: string }[] | null } | null;
  }[] | null;
  ports?: readonly { name?: string | null; port?: number | null }[] | null;
}

/** Merges all the slices of a Service into one snapshot, each `address:port` once and each dual-stack pod once. */
export function mergeEndpointSlices(slices: Iterable<EndpointSliceLike>, port: string | number): EndpointSet {
  // An address moving from one slice to another sits in both for a moment: it counts once, and its
  // ready view wins (then serving, then not terminating, then the slice whose name sorts first),
  // so the result does not depend on the order slices arrive in. Slices without the named port,
  // and FQDN slices, say nothing about this port.
  const ordered = [...slices].sort((a, b) => compare(a.metadata?.name ?? '', b.metadata?.name ?? ''));
  const chosen = new Map<string, { init: EndpointInit; rank: number; pod: string | undefined }>();
  for (const slice of ordered) {
    if (slice.addressType !== 'IPv4' && slice.addressType !== 'IPv6') continue;
    const number = typeof port === 'number' ? port : slice.ports?.find((p) => (p.name ?? '') === port)?.port;
    if (typeof number !== 'number' || !Number.isInteger(number) || number < 1 || number > 65535) continue;
    for (const endpoint of slice.endpoints ?? []) {
      // The API gives no meaning to addresses beyond the first, and kube-proxy ignores them too.
      const address = endpoint.addresses?.[0];
      if (typeof address !== 'string' || isIP(address) === 0) continue;
      // Unset conditions as the API documents them: ready unless said otherwise, serving as ready.
      // A terminating pod takes no new work even when the slice calls it ready (a Service that
      // publishes not-ready addresses does): it is going away, in-flight work only.
      const terminating = endpoint.conditions?.terminating ?? false;
      const sliceReady = endpoint.conditions?.ready ?? true;
      const serving = endpoint.conditions?.serving ?? sliceReady;
      const ready = sliceReady && !terminating;
      const ref = endpoint.targetRef?.kind === 'Pod' ? endpoint.targetRef : undefined;
      const hintZones = endpoint.hints?.forZones?.flatMap((z) => (typeof z.name === 'string' ? [z.name] : []));
      const init: EndpointInit = {
        address,
        port: number,
        ready,
        serving,
        terminating,
        ...(typeof ref?.name === 'string' && { podName: ref.name }),
        ...(typeof endpoint.nodeName === 'string' && { nodeName: endpoint.nodeName }),
        ...(typeof endpoint.zone === 'string' && { zone: endpoint.zone }),
        ...(hintZones !== undefined && hintZones.length > 0 && { hintZones }),
      };
      const rank = (ready ? 4 : 0) + (serving ? 2 : 0) + (terminating ? 0 : 1);
      const key = endpointKey(address, number);
      const seen = chosen.get(key);
      if (seen === undefined || rank > seen.rank) {
        const pod = ref === undefined ? undefined : ref.uid || `${ref.namespace ?? ''}/${ref.name ?? ''}`;
        chosen.set(key, { init, rank, pod });
      }
    }
  }
  // A dual-stack Service lists each pod under both families: one pod must be one member (a
  // broadcast reaches it once, a balancer weighs it once), so it counts by its IPv4 address.
  const podsWithIPv4 = new Set<string>();
  for (const { init, pod } of chosen.values()) if (pod !== undefined && isIP(init.address) === 4) podsWithIPv4.add(pod);
  const endpoints = [];
  for (const { init, pod } of chosen.values()) {
    if (pod !== undefined && isIP(init.address) === 6 && podsWithIPv4.has(pod)) continue;
    endpoints.push(createEndpoint(init));
  }
  return new EndpointSet(endpoints);
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
