import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ADDRESS_RANGES, addressRange, checkAllowAddresses, refusedAddress } from '../src/address.ts';
import { ErrorCode, PodpoolError } from '../src/errors.ts';

describe('addressRange', () => {
  it('names the range of every address nobody should dial by accident, IPv4-mapped ones included', () => {
    const cases: [string, string | undefined][] = [
      ['0.0.0.0', 'unspecified'],
      ['0.12.0.1', 'unspecified'],
      ['::', 'unspecified'],
      ['::ffff:0.0.0.0', 'unspecified'],
      ['127.0.0.1', 'loopback'],
      ['127.255.0.9', 'loopback'],
      ['::1', 'loopback'],
      ['::ffff:127.0.0.1', 'loopback'],
      ['169.254.169.254', 'link-local'],
      ['::ffff:169.254.169.254', 'link-local'],
      ['fe80::1', 'link-local'],
      ['febf:ffff::1', 'link-local'],
      ['224.0.0.1', 'multicast'],
      ['239.255.255.250', 'multicast'],
      ['ff02::1', 'multicast'],
      ['255.255.255.255', 'broadcast'],
    ];
    for (const [address, range] of cases) assert.equal(addressRange(address), range, address);
  });

  it('leaves ordinary pod addresses alone, the edges of each range included', () => {
    for (const address of ['10.0.0.1', '1.0.0.0', '126.255.255.255', '128.0.0.0', '169.253.255.255', '169.255.0.0', '223.255.255.255', '240.0.0.1', '255.255.255.254', 'fd00::1', 'fec0::1', '2001:db8::1', '::2', '::ffff:10.0.0.1']) {
      assert.equal(addressRange(address), undefined, address);
    }
  });
});

describe('checkAllowAddresses', () => {
  it('takes the default when absent, and a given list replaces it', () => {
    assert.deepEqual([...checkAllowAddresses(undefined, ['loopback'])], ['loopback']);
    assert.deepEqual([...checkAllowAddresses([], ['loopback'])], []);
    assert.deepEqual([...checkAllowAddresses(['link-local', 'multicast'], [])], ['link-local', 'multicast']);
  });

  it('refuses anything but an array of known range names, naming them', () => {
    for (const bad of ['loopback', ['loopbak'], [null], {}, 1]) {
      assert.throws(
        () => checkAllowAddresses(bad, []),
        (error: unknown) => error instanceof PodpoolError && error.code === ErrorCode.INVALID_OPTION && /allowAddresses/.test(error.message) && ADDRESS_RANGES.every((r) => error.message.includes(r)),
      );
    }
  });
});

describe('refusedAddress', () => {
  it('says why an address is refused and which range would allow it, unless allowed', () => {
    assert.match(refusedAddress('0.0.0.0', new Set())!, /0\.0\.0\.0 is an unspecified address.*"unspecified"/);
    assert.match(refusedAddress('169.254.169.254', new Set(['loopback']))!, /link-local.*"link-local"/);
    assert.equal(refusedAddress('127.0.0.1', new Set(['loopback'])), undefined);
    assert.equal(refusedAddress('10.1.2.3', new Set()), undefined);
  });
});
