/**
 * What the DNS source's tests share: per test, a DNS test server on loopback and watches of
 * dnsEndpoints asking it, all closed after the test whatever it asserted.
 */
import { afterEach, beforeEach } from 'node:test';
import { dnsEndpoints, type DnsEndpointsOptions } from '../../src/discovery/dns.ts';
import type { SourceWatch } from '../../src/discovery/source.ts';
import { DnsServer } from '../../testkit/dns-server.ts';
import { RecordingSink } from './recording-sink.ts';

/**
 * Call inside a `describe`: starts a server before each test (handed to `started`) and closes it
 * and every watch after. `watch(options)` starts dnsEndpoints with `defaults(server)` and
 * `options` over them; `track(watch)` closes a watch started by hand after the test too.
 */
export function dnsWatches(
  defaults: (server: DnsServer) => DnsEndpointsOptions,
  started: (server: DnsServer) => void,
): { watch(options?: Partial<DnsEndpointsOptions>): RecordingSink; track(watch: SourceWatch): void } {
  let server: DnsServer;
  let watches: SourceWatch[] = [];
  beforeEach(async () => {
    server = await DnsServer.start();
    watches = [];
    started(server);
  });
  afterEach(async () => {
    await Promise.all(watches.map((w) => w.close()));
    await server.close();
  });
  return {
    watch(options = {}) {
      const sink = new RecordingSink();
      watches.push(dnsEndpoints({ ...defaults(server), ...options }).watch(sink));
      return sink;
    },
    track(watch) {
      watches.push(watch);
    },
  };
}
