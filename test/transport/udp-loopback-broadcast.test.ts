import assert from 'node:assert/strict';
import { platform } from 'node:os';
import { describe, it } from 'node:test';
import { run } from '../../examples/loopback-broadcast/main.ts';

// Linux delivers a datagram sent to 127.255.255.255 to every socket bound there with SO_REUSEADDR;
// macOS and FreeBSD don't (the example's README says so), so the test runs on Linux only.
describe('examples/loopback-broadcast', { skip: platform() !== 'linux' && 'loopback broadcast is Linux behaviour', timeout: 30_000 }, () => {
  it('delivers every broadcast once to every receiver process, duplicates dropped', async () => {
    // waitMs only bounds the wait for datagrams that never come; on Linux all arrive first.
    const reports = await run({ receivers: 3, messages: 4, repeat: 3, waitMs: 20_000 });
    assert.equal(reports.length, 3);
    assert.equal(new Set(reports.map((r) => r.pid)).size, 3, 'three separate processes');
    for (const report of reports) {
      assert.deepEqual(report.messages, ['message 1', 'message 2', 'message 3', 'message 4']);
      assert.equal(report.duplicates, 8, 'two extra copies of each of the four were dropped');
      assert.equal(report.gaps, 0);
    }
  });
});
