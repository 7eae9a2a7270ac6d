/**
 * `podpool endpoints`: prints what a discovery source finds, the way the pool would see it, so a
 * user can check DNS or RBAC before wiring a pool. With `--watch` it prints every new snapshot.
 */
import { parseArgs } from 'node:util';
import { ADDRESS_RANGES, type AddressRange } from '../address.ts';
import { EndpointSet, type Endpoint } from '../endpoint.ts';
import type { EndpointSource } from '../discovery/source.ts';
import { dnsEndpoints } from '../discovery/dns.ts';
import { kubernetesEndpoints } from '../discovery/kubernetes.ts';
import { PodpoolError } from '../errors.ts';

export const ENDPOINTS_USAGE = `podpool endpoints flags:
  --dns <host> --port <number|name> [--server <ip[:port]>]       a headless Service's DNS name (A/AAAA; SRV for a port name)
  --kubernetes <service> --namespace <ns> --port <name|number>   EndpointSlices through the API server
  --allow-addresses <ranges>  also accept these address ranges, comma-separated (${ADDRESS_RANGES.join(', ')});
                            refused by default, and reported instead of listed
  --watch                   keep printing snapshots until Ctrl-C (default: the first one, then exit)
  --timeout <s>             give up waiting for the first snapshot after this long (default 10)
  --json                    one JSON array per snapshot
  --help                    this text`;

/** Formats a snapshot as a table: address, port, conditions, pod, node, zone. */
export function formatEndpoints(endpoints: EndpointSet): string {
  const rows = endpoints.toArray().map((e: Endpoint) => [
    e.address,
    String(e.port),
    e.ready ? 'ready' : e.terminating ? (e.serving ? 'terminating (serving)' : 'terminating') : 'not ready',
    e.podName ?? '',
    e.nodeName ?? '',
    e.zone ?? '',
  ]);
  const header = ['ADDRESS', 'PORT', 'CONDITION', 'POD', 'NODE', 'ZONE'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

/** `--allow-addresses loopback,link-local` as the sources' allowAddresses option. */
function allowAddressesOf(value: string | boolean | undefined): { allowAddresses?: AddressRange[] } {
  if (typeof value !== 'string') return {};
  const ranges = value.split(',').map((range) => range.trim()).filter((range) => range !== '');
  const unknown = ranges.find((range) => !ADDRESS_RANGES.includes(range as AddressRange));
  if (unknown !== undefined) throw usage(`--allow-addresses takes ${ADDRESS_RANGES.join(', ')}, got ${JSON.stringify(unknown)}`);
  return { allowAddresses: ranges as AddressRange[] };
}

function sourceOf(values: Record<string, string | boolean | undefined>): EndpointSource {
  const port = values.port;
  if (typeof port !== 'string') throw usage('--port is required');
  const portValue = /^\d+$/.test(port) ? Number(port) : port;
  const allow = allowAddressesOf(values['allow-addresses']);
  if (typeof values.dns === 'string') {
    const servers = typeof values.server === 'string' ? [values.server] : undefined;
    return dnsEndpoints({ host: values.dns, port: portValue, ...(servers && { servers }), ...allow });
  }
  if (typeof values.kubernetes === 'string') {
    if (typeof values.namespace !== 'string') throw usage('--kubernetes needs --namespace');
    return kubernetesEndpoints({ service: values.kubernetes, namespace: values.namespace, port: portValue, ...allow });
  }
  throw usage('say where to look: --dns <host> or --kubernetes <service>');
}

function usage(message: string): Error {
  const error = new Error(`${message}\n${ENDPOINTS_USAGE}`);
  error.name = 'UsageError';
  return error;
}

export async function runEndpoints(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      dns: { type: 'string' },
      server: { type: 'string' },
      kubernetes: { type: 'string' },
      namespace: { type: 'string' },
      port: { type: 'string' },
      'allow-addresses': { type: 'string' },
      watch: { type: 'boolean' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${ENDPOINTS_USAGE}\n`);
    return 0;
  }
  const timeoutS = values.timeout === undefined ? 10 : Number(values.timeout);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw usage(`--timeout must be a positive number, got ${values.timeout}`);
  const source = sourceOf(values);
  const print = (set: EndpointSet): void => {
    if (values.json) process.stdout.write(`${JSON.stringify(set.toArray())}\n`);
    else process.stdout.write(`${formatEndpoints(set)}\n${values.watch ? '\n' : ''}`);
  };
  return new Promise<number>((resolve) => {
    let done = false;
    const finish = (code: number): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      process.off('SIGINT', onSignal);
      void watch.close().then(() => resolve(code));
    };
    const onSignal = (): void => finish(0);
    let first = true;
    const watch = source.watch({
      snapshot(set) {
        first = false;
        print(set);
        if (!values.watch) finish(0);
      },
      error(error: PodpoolError) {
        process.stderr.write(`podpool: ${error.code}: ${error.message}\n`);
      },
    });
    const timer = setTimeout(() => {
      if (!first) return;
      process.stderr.write(`podpool: no snapshot from ${source.kind} discovery after ${timeoutS} s\n`);
      finish(1);
    }, timeoutS * 1000);
    process.once('SIGINT', onSignal);
  });
}
