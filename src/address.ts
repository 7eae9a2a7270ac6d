/**
 * Addresses nobody should dial by accident. A discovery answer is input from the network: an
 * answer of `0.0.0.0` or `127.0.0.1` would send a caller's requests (and their `Authorization`
 * headers) to whatever listens on the client's own host, and `169.254.169.254` to the cloud's
 * metadata service. Every source refuses these ranges unless its `allowAddresses` option names
 * them; Kubernetes itself refuses loopback and link-local addresses in an EndpointSlice.
 */
import { BlockList } from 'node:net';
import { invalidOption } from './options.ts';

/**
 * A range of addresses a source refuses unless its `allowAddresses` option names it:
 * - `unspecified`: `0.0.0.0/8` and `::` (dialling them reaches the local host);
 * - `loopback`: `127.0.0.0/8` and `::1`;
 * - `link-local`: `169.254.0.0/16` (the cloud metadata address among them) and `fe80::/10`;
 * - `multicast`: `224.0.0.0/4` and `ff00::/8`;
 * - `broadcast`: `255.255.255.255`.
 *
 * IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) fall in the range of their IPv4 address.
 */
export type AddressRange = 'unspecified' | 'loopback' | 'link-local' | 'multicast' | 'broadcast';

/** Every range, in the order messages list them. */
export const ADDRESS_RANGES: readonly AddressRange[] = Object.freeze(['unspecified', 'loopback', 'link-local', 'multicast', 'broadcast']);

const RANGES: readonly (readonly [AddressRange, BlockList])[] = (
  [
    ['unspecified', [['0.0.0.0', 8, 'ipv4'], ['::', 128, 'ipv6']]],
    ['loopback', [['127.0.0.0', 8, 'ipv4'], ['::1', 128, 'ipv6']]],
    ['link-local', [['169.254.0.0', 16, 'ipv4'], ['fe80::', 10, 'ipv6']]],
    ['multicast', [['224.0.0.0', 4, 'ipv4'], ['ff00::', 8, 'ipv6']]],
    ['broadcast', [['255.255.255.255', 32, 'ipv4']]],
  ] as const
).map(([range, subnets]) => {
  // Node's own matcher: it reads IPv4-mapped IPv6 addresses as their IPv4 address.
  const list = new BlockList();
  for (const [network, prefix, family] of subnets) list.addSubnet(network, prefix, family);
  return [range, list] as const;
});

/** The range `address` (an IP address) falls in, or undefined for an ordinary unicast address. */
export function addressRange(address: string): AddressRange | undefined {
  // Most answers are ordinary IPv4 addresses, whose first octet rules every range out; BlockList
  // costs about 2 µs an address, which a Service of 10,000 pods would pay on every relist.
  const first = address.includes(':') ? NaN : Number(address.slice(0, address.indexOf('.')));
  if (first > 0 && first < 224 && first !== 127 && first !== 169) return undefined;
  const family = address.includes(':') ? 'ipv6' : 'ipv4';
  for (const [range, list] of RANGES) if (list.check(address, family)) return range;
  return undefined;
}

/**
 * Which ranges a source accepts: checks its `allowAddresses` option (an array of
 * {@link AddressRange} names), or takes the source's default when the option is absent.
 */
export function checkAllowAddresses(value: unknown, defaults: readonly AddressRange[]): ReadonlySet<AddressRange> {
  if (value === undefined) return new Set(defaults);
  const expected = `an array of address ranges to accept (${ADDRESS_RANGES.map((r) => JSON.stringify(r)).join(', ')})`;
  if (!Array.isArray(value)) invalidOption('allowAddresses', expected, value);
  for (const range of value) if (!ADDRESS_RANGES.includes(range)) invalidOption('allowAddresses', expected, value);
  return new Set(value as AddressRange[]);
}

/**
 * Why `address` is refused under `allowed`, as the end of a sentence ("… is a loopback address
 * …"), or undefined when it may be dialled.
 */
export function refusedAddress(address: string, allowed: ReadonlySet<AddressRange>): string | undefined {
  const range = addressRange(address);
  if (range === undefined || allowed.has(range)) return undefined;
  return `${address} is ${range === 'unspecified' ? 'an unspecified' : `a ${range}`} address, which this source refuses unless its allowAddresses option includes "${range}"`;
}
