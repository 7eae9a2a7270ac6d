/**
 * staticEndpoints: a list checked at the call, so a mistake fails where it was written, with a
 * code and the index of the bad entry, and never later inside a pool; and a snapshot of it once
 * the watch has started.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { staticEndpoints } from '../../src/discovery/static.ts';
import { createEndpoint, type EndpointInit } from '../../src/endpoint.ts';
import { ErrorCode, PodpoolError } from '../../src/errors.ts';
import { RecordingSink } from '../support/recording-sink.ts';

/** Asserts `call` throws a PodpoolError with `code` whose message matches `message`. */
function throwsCoded(call: () => unknown, code: string, message: RegExp): void {
  assert.throws(call, (error: unknown) => {
    assert.ok(error instanceof PodpoolError, `a PodpoolError, got ${String(error)}`);
    assert.equal(error.code, code);
    assert.match(error.message, message);
    return true;
  });
}

describe('staticEndpoints', () => {
  it('reports the list as one snapshot once watched', async () => {
    const source = staticEndpoints([{ address: '10.0.0.2', port: 80 }, { address: '10.0.0.1', port: 80, podName: 'web-1' }]);
    assert.equal(source.kind, 'static');
    const sink = new RecordingSink();
    const watch = source.watch(sink);
    await sink.until((s) => s.snapshots.length === 1);
    assert.deepEqual(sink.keys, ['10.0.0.1:80', '10.0.0.2:80']);
    assert.equal(sink.last!.get('10.0.0.1:80')!.podName, 'web-1');
    await watch.close();
  });

  describe('a list that is not one', () => {
    for (const value of [null, undefined, 42, '10.0.0.1:80', { address: '10.0.0.1', port: 80 }]) {
      it(`refuses ${JSON.stringify(value)} with PODPOOL_INVALID_ARGUMENT`, () => {
        throwsCoded(
          () => staticEndpoints(value as unknown as EndpointInit[]),
          ErrorCode.INVALID_ARGUMENT,
          /^argument endpoints must be an array of \{ address, port \} objects, got /,
        );
      });
    }
  });

  describe('a bad entry, named by its index', () => {
    const cases: [string, unknown[], RegExp][] = [
      ['undefined', [{ address: '10.0.0.1', port: 80 }, undefined], /^staticEndpoints: endpoints\[1\]: an endpoint must be an object, got undefined$/],
      ['null', [null], /^staticEndpoints: endpoints\[0\]: an endpoint must be an object, got null$/],
      ['a number', [7], /^staticEndpoints: endpoints\[0\]: an endpoint must be an object, got 7$/],
      ['an empty object', [{}], /^staticEndpoints: endpoints\[0\]: endpoint address must be an IPv4 or IPv6 address, got undefined$/],
      ['a host name', [{ address: 'backend', port: 80 }], /^staticEndpoints: endpoints\[0\]: endpoint address must be an IPv4 or IPv6 address, got "backend"$/],
      ['port 0', [{ address: '10.0.0.1', port: 80 }, { address: '10.0.0.2', port: 0 }], /^staticEndpoints: endpoints\[1\]: endpoint port must be an integer/],
      // A frozen look-alike of an Endpoint is checked as any other entry.
      ['a frozen fake endpoint', [Object.freeze({ key: 'x', address: 'x', port: 1 })], /^staticEndpoints: endpoints\[0\]: endpoint address must be/],
    ];
    for (const [name, list, message] of cases) {
      it(`refuses ${name} with PODPOOL_INVALID_ENDPOINT`, () => {
        throwsCoded(() => staticEndpoints(list as EndpointInit[]), ErrorCode.INVALID_ENDPOINT, message);
      });
    }
  });

  describe('addresses nobody should dial', () => {
    const refused: [string, string][] = [
      ['0.0.0.0', 'unspecified'],
      ['::', 'unspecified'],
      ['169.254.169.254', 'link-local'],
      ['fe80::1', 'link-local'],
      ['224.0.0.1', 'multicast'],
      ['ff02::1', 'multicast'],
      ['255.255.255.255', 'broadcast'],
      ['::ffff:169.254.169.254', 'link-local'],
    ];
    for (const [address, range] of refused) {
      it(`refuses ${address} (${range}) by default, naming the address and the option`, () => {
        throwsCoded(
          () => staticEndpoints([{ address: '10.0.0.1', port: 80 }, { address, port: 80 }]),
          ErrorCode.INVALID_ENDPOINT,
          new RegExp(`^staticEndpoints: endpoints\\[1\\]: ${address.replaceAll('.', '\\.')} is an? ${range} address, which this source refuses unless its allowAddresses option includes "${range}"$`),
        );
      });
    }

    it('refuses a ready-made Endpoint with such an address too', () => {
      throwsCoded(() => staticEndpoints([createEndpoint({ address: '0.0.0.0', port: 80 })]), ErrorCode.INVALID_ENDPOINT, /0\.0\.0\.0 is an unspecified address/);
    });

    it('accepts loopback by default, for tests and local development', async () => {
      const sink = new RecordingSink();
      const watch = staticEndpoints([{ address: '127.0.0.1', port: 80 }, { address: '::1', port: 80 }]).watch(sink);
      await sink.until((s) => s.snapshots.length === 1);
      assert.deepEqual(sink.keys, ['127.0.0.1:80', '[::1]:80']);
      await watch.close();
    });

    it('accepts a range allowAddresses names, and refuses loopback when the list leaves it out', () => {
      assert.equal(staticEndpoints([{ address: '169.254.10.1', port: 80 }], { allowAddresses: ['link-local'] }).kind, 'static');
      assert.equal(staticEndpoints([{ address: '0.0.0.0', port: 80 }], { allowAddresses: ['unspecified', 'loopback'] }).kind, 'static');
      throwsCoded(
        () => staticEndpoints([{ address: '127.0.0.1', port: 80 }], { allowAddresses: ['link-local'] }),
        ErrorCode.INVALID_ENDPOINT,
        /127\.0\.0\.1 is a loopback address, which this source refuses unless its allowAddresses option includes "loopback"/,
      );
    });
  });

  describe('options', () => {
    for (const [options, message] of [
      [null, /^option options must be an object, got null$/],
      [{ allowAddresses: 'loopback' }, /^option allowAddresses must be an array of address ranges/],
      [{ allowAddresses: ['localhost'] }, /^option allowAddresses must be an array of address ranges/],
      [{ allowAdresses: ['loopback'] }, /^unknown option allowAdresses \(did you mean allowAddresses\?\)/],
    ] as const) {
      it(`refuses ${JSON.stringify(options)} with PODPOOL_INVALID_OPTION`, () => {
        throwsCoded(() => staticEndpoints([], options as never), ErrorCode.INVALID_OPTION, message);
      });
    }
  });
});
