import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, watch } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { createPool, httpTransport, staticEndpoints, type StateChange } from '../../src/index.ts';
import { burst } from '../support/burst.ts';

// A real nginx as the pods: it closes a keep-alive connection after 100 requests and an idle
// one after 1 s, as production servers do. Debian's `nginx` package; .ci/run installs it.
const nginx = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((path) => existsSync(path));
const addresses = ['127.0.0.171', '127.0.0.172'];

/** A free port on `address` (nginx binds it right after). */
async function freePort(address: string): Promise<number> {
  const server = createServer().listen(0, address);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

it('against a real nginx with keepalive_requests 100 and keepalive_timeout 1s, 1,000 requests all succeed', { skip: nginx === undefined ? 'nginx is not installed (apt-get install nginx)' : false }, async (t) => {
  const prefix = await mkdtemp(join(tmpdir(), 'podpool-nginx-'));
  t.after(() => rm(prefix, { recursive: true, force: true }));
  const ports = await Promise.all(addresses.map(freePort));
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((name) => `${name}_temp_path ${join(prefix, name)};`).join('\n  ');
  await writeFile(
    join(prefix, 'nginx.conf'),
    `daemon off;
master_process off;
pid ${join(prefix, 'nginx.pid')};
error_log ${join(prefix, 'error.log')} warn;
events { worker_connections 256; }
http {
  access_log off;
  ${temp}
  keepalive_requests 100;
  keepalive_timeout 1s;
  server {
    ${addresses.map((address, i) => `listen ${address}:${ports[i]};`).join('\n    ')}
    location / { return 200 "$server_addr"; }
  }
}
`,
  );
  assert.equal(spawnSync(nginx!, ['-t', '-p', prefix, '-c', join(prefix, 'nginx.conf')]).status, 0, 'the config is valid');
  // nginx writes its pid file once it listens: wait for the file, not for a time.
  const pidFile = join(prefix, 'nginx.pid');
  const watcher = watch(prefix);
  const listening = new Promise<void>((resolve) => {
    watcher.on('change', () => {
      if (existsSync(pidFile)) resolve();
    });
    if (existsSync(pidFile)) resolve();
  });
  const server = spawn(nginx!, ['-p', prefix, '-c', join(prefix, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = once(server, 'exit');
  t.after(async () => {
    watcher.close();
    server.kill('SIGQUIT');
    await exited;
  });
  await Promise.race([listening, exited.then(() => assert.fail('nginx exited before it listened'))]);
  watcher.close();

  const pool = createPool({
    source: staticEndpoints(addresses.map((address, i) => ({ address, port: ports[i] }))),
    transport: httpTransport(),
  });
  t.after(() => pool.close());
  await pool.ready({ minEndpoints: 2 });
  const states: StateChange[] = [];
  pool.on('state', (change) => states.push(change));

  const served = new Map<string, number>();
  const { failed } = await burst(1_000, 16, async () => {
    const body = await pool.use(async (client) => {
      const res = await client.request({ method: 'GET', path: '/' });
      assert.equal(res.statusCode, 200);
      return res.body.text();
    });
    served.set(body, (served.get(body) ?? 0) + 1);
  });
  assert.deepEqual(failed, []);
  assert.deepEqual([...served.keys()].sort(), addresses, 'both pods served');
  assert.equal([...served.values()].reduce((a, b) => a + b), 1_000);
  // A pod is out of the picks only while it has no socket open (nginx closed one, the next is
  // opening): never lost, never ejected.
  for (const change of states) {
    assert.deepEqual(
      [change.from, change.to, change.error?.code],
      change.to === 'connecting' ? ['ready', 'connecting', 'PODPOOL_NOT_CONNECTED'] : ['connecting', 'ready', undefined],
    );
  }
  // The last response may have closed a socket whose replacement is still opening.
  await pool.ready({ minEndpoints: 2 });
  assert.deepEqual(
    pool.stats().members.map((m) => [m.state, m.failures, m.connects]),
    [
      ['ready', 0, 1],
      ['ready', 0, 1],
    ],
  );
});
