/**
 * The bench and the demo on a machine with no network at all: inside a network namespace this
 * test creates, holding only `lo`, on the userspace stand-in (what laptops and CI runners without
 * root or iptables get). It runs the bench smoke tests (test/bench.test.ts, `podpool demo --quick`
 * among them) there, and they must pass: nothing they do may need an address outside
 * loopback, the machine's DNS resolver included.
 *
 * Where it can, the namespace also routes every other address into `lo` behind an iptables rule
 * that drops and counts what is sent to it, so an attempt to leave that fails quietly (a DNS
 * query nobody waits for) is seen too: the count must be 0.
 *
 * As root it uses `unshare --net`; otherwise `unshare --user --map-root-user --net` where the
 * kernel allows it; else it skips, saying why.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** How this machine can make a namespace of its own, or why it can't. */
function unshareCommand(): { argv: string[] } | { skip: string } {
  if (process.platform !== 'linux') return { skip: `network namespaces are Linux only (${process.platform})` };
  const tries = process.getuid?.() === 0 ? [['--net'], ['--user', '--map-root-user', '--net']] : [['--user', '--map-root-user', '--net']];
  const errors: string[] = [];
  for (const flags of tries) {
    const probe = spawnSync('unshare', [...flags, 'ip', 'link', 'set', 'lo', 'up'], { encoding: 'utf8' });
    if (probe.status === 0) return { argv: ['unshare', ...flags] };
    errors.push(`unshare ${flags.join(' ')}: ${(probe.error?.message ?? probe.stderr).trim() || `exit ${probe.status}`}`);
  }
  return { skip: `cannot create a network namespace here (${errors.join('; ')})` };
}

const how = unshareCommand();

// Runs inside the namespace. A catch-all route into lo plus a DROP rule that counts: a packet
// for any other address is counted rather than failing unseen (without them, sending fails at
// once with ENETUNREACH, which the run must survive just the same).
const SCRIPT = `
set -u
ip link set lo up || exit 90
counting=0
if command -v iptables >/dev/null && ip route add default dev lo 2>/dev/null && iptables -w -A OUTPUT ! -d 127.0.0.0/8 -j DROP 2>/dev/null; then
  counting=1
fi
echo "interfaces: $(ip -o link show | awk -F': ' '{print $2}' | tr '\\n' ' ')" > "$OUT/namespace"
"$NODE" --conditions=podpool-source --test --test-reporter=tap --test-concurrency=1 test/bench.test.ts > "$OUT/tests.out" 2>&1
echo "tests: $?" >> "$OUT/namespace"
if [ "$counting" = 1 ]; then
  echo "outside: $(iptables -w -L OUTPUT -v -n -x | awk '$3 == "DROP" {print $1}')" >> "$OUT/namespace"
fi
`;

test(
  'demo --quick and the bench smoke tests pass in a namespace with only loopback (userspace stand-in)',
  { timeout: 400_000, skip: 'skip' in how ? how.skip : false },
  async (t) => {
    if ('skip' in how) return;
    const out = mkdtempSync(join(tmpdir(), 'podpool-netns-'));
    try {
      const env: NodeJS.ProcessEnv = { ...process.env, OUT: out, NODE: process.execPath, PODPOOL_BENCH_STANDIN: 'userspace', PODPOOL_BENCH_RESULTS: out };
      // Set when this file runs under `node --test`: the inner run would then report to it in
      // the runner's binary protocol instead of writing TAP to its file.
      delete env.NODE_TEST_CONTEXT;
      const child = spawn(how.argv[0]!, [...how.argv.slice(1), 'sh', '-c', SCRIPT], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'], env });
      const [code] = (await once(child, 'exit')) as [number | null];
      const status = readFileSync(join(out, 'namespace'), 'utf8');
      t.diagnostic(status.trim().replace(/\n/g, '; '));
      assert.equal(code, 0, status);
      assert.match(status, /^interfaces: lo $/m, 'the namespace holds only lo');
      const tests = readFileSync(join(out, 'tests.out'), 'utf8');
      assert.match(status, /^tests: 0$/m, tests);
      assert.match(tests, /^# fail 0$/m, tests);
      assert.doesNotMatch(tests, /^# pass 0$/m, 'the smoke tests ran');
      // The demo is one of them: its smallest form ran here, whole.
      assert.match(tests, /^ok \d+ - demo --quick/m, tests);
      const outside = /^outside: (\d+)$/m.exec(status);
      if (outside) assert.equal(outside[1], '0', 'packets sent to an address outside loopback');
      else t.diagnostic('iptables could not count packets in this namespace; it held only lo, so none could leave');
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  },
);
