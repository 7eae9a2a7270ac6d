/**
 * The names dnsEndpoints can ask, and what to say when one does not exist. It asks a name exactly
 * as written, with no search domains, so names that only getaddrinfo would complete are refused
 * at the door, and a name cluster DNS answers NXDOMAIN for gets advice on what to check.
 */
import { isIP } from 'node:net';
import { invalidOption } from '../options.ts';

// A DNS label as resolvers take it: letters, digits, hyphens (not at either end) and the
// underscores of SRV names, 1 to 63 of them.
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/i;

/**
 * Refuses, saying what to pass instead, whatever is not a DNS name this source can ask: a URL, a
 * host with a port or a path (pasted from a connection string), an address, a malformed name, and
 * names that only a resolver applying search domains would complete: a single label, or a
 * Kubernetes name cut before the cluster domain (`backend.default.svc`).
 */
export function checkHost(host: unknown): asserts host is string {
  const example = 'a fully qualified DNS name such as "backend.default.svc.cluster.local"';
  if (typeof host !== 'string' || host.length === 0) invalidOption('host', example, host);
  if (isIP(host) !== 0) invalidOption('host', 'a DNS name, not an address (use staticEndpoints for addresses)', host);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(host)) {
    let hostname = '';
    try {
      hostname = ` (${new URL(host).hostname})`;
    } catch {
      // not even a URL: the advice alone
    }
    invalidOption('host', `a DNS name, not a URL: pass the host part alone${hostname} and the port as the port option`, host);
  }
  if (host.includes('/')) invalidOption('host', `${example}, without a path`, host);
  if (host.includes(':')) invalidOption('host', `${example}, without a port: pass the port as the port option`, host);
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  const labels = name.split('.');
  if (name.length > 253 || !labels.every((label) => LABEL.test(label))) {
    invalidOption('host', `${example}: labels of letters, digits and hyphens, at most 63 each, joined by dots`, host);
  }
  if (labels.length === 1 && !host.endsWith('.')) {
    invalidOption(
      'host',
      `a fully qualified name such as "${host}.<namespace>.svc.cluster.local": no search domains are applied, so "${host}" ` +
        `would be asked as is and not found (a single-label name your DNS does serve, a Docker service name say, is written with a final dot: "${host}.")`,
      host,
    );
  }
  if (labels.at(-1)!.toLowerCase() === 'svc') {
    invalidOption('host', `the name with its cluster domain, such as "${name}.cluster.local": no search domains are applied`, host);
  }
}

/** What to check when a name does not exist, after "DNS name … does not exist". */
export function notFoundAdvice(host: string, port: number | string): string {
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  const labels = name.split('.');
  const portName = typeof port === 'string' ? `, that "${port}" is the name of one of its TCP ports` : '';
  // Two labels: perhaps <service>.<namespace>, which a pod's getaddrinfo completes from its
  // search domains and this resolver does not.
  const short =
    labels.length !== 2
      ? ''
      : ` If "${name}" is <service>.<namespace>, pass the full name, "${name}.svc.cluster.local" (or your cluster's domain): no search domains are applied.`;
  return (
    `Check the Service and namespace names in it${portName}, that the Service is headless (clusterIP: None) ` +
    `and that it has a ready pod: cluster DNS answers NXDOMAIN for a headless Service without one.${short}`
  );
}
