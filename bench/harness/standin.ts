/**
 * What stands in for a Kubernetes node's Service plumbing.
 *
 * - `iptables` (root and `iptables` present): the bench runs inside a network namespace it
 *   creates, one address per pod on the namespace's `lo`, a ClusterIP whose `nat` table holds the
 *   rules kube-proxy's iptables mode writes (a `KUBE-SVC-…` chain of `-m statistic --mode random
 *   --probability 1/(n-i)` jumps to one `KUBE-SEP-…` DNAT chain per pod).
 * - `userspace` (anywhere else): pods on 127.1.x.y, and a proxy on 127.0.0.1 that picks a random
 *   pod per new connection: kube-proxy's semantics, without the kernel.
 *
 * The namespace is created by the process the user started, which then runs itself again inside
 * it (`ip netns exec`) and removes it when the child exits, on Ctrl-C, and at the start of the
 * next run if a crash left it behind.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * What plays the Service's part: `iptables` and `userspace` are this machine's stand-ins;
 * `kubernetes` is a real cluster (`podpool bench --cluster`).
 */
export type StandIn = 'iptables' | 'userspace' | 'kubernetes';

/** Names of namespaces this tool creates; leftovers of a crashed run are recognised by it. */
export const NETNS_PREFIX = 'podpool-bench-';
/** Set in the child that runs inside the namespace. */
const NETNS_ENV = 'PODPOOL_BENCH_NETNS';

/** The namespace this process runs in, when it was started inside one by {@link runInNamespace}. */
export function currentNamespace(): string | undefined {
  return process.env[NETNS_ENV] || undefined;
}

/** Which stand-in this machine can run, and why not the other. */
export function detectStandIn(): { standIn: StandIn; reason: string } {
  if (currentNamespace()) return { standIn: 'iptables', reason: `inside network namespace ${currentNamespace()}` };
  if (process.env.PODPOOL_BENCH_STANDIN === 'userspace') return { standIn: 'userspace', reason: 'PODPOOL_BENCH_STANDIN=userspace' };
  if (process.platform !== 'linux') return { standIn: 'userspace', reason: `not Linux (${process.platform})` };
  if (process.getuid?.() !== 0) return { standIn: 'userspace', reason: 'not root' };
  for (const tool of ['ip', 'iptables', 'iptables-restore']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return { standIn: 'userspace', reason: `${tool} not found` };
  }
  return { standIn: 'iptables', reason: 'root, ip and iptables present' };
}

/** This tool's namespaces that exist now, its own and other runs' alike. */
export function benchNamespaces(): string[] {
  const out = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (out.status !== 0) return [];
  return out.stdout
    .split('\n')
    .map((line) => line.split(' ')[0]!)
    .filter((name) => name.startsWith(NETNS_PREFIX));
}

/**
 * Namespaces a previous run left behind: named for a process that is gone (it crashed or was
 * killed). A run still going (another terminal, a parallel test) keeps its namespace.
 */
export function leftoverNamespaces(): string[] {
  return benchNamespaces().filter((name) => !alive(Number(name.slice(NETNS_PREFIX.length))));
}

function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function removeNamespace(name: string): void {
  spawnSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  // Runs before this one gave the namespace a resolv.conf here; a crashed one may have left it.
  rmSync(`/etc/netns/${name}`, { recursive: true, force: true });
}

/**
 * Creates a namespace, runs this same command inside it, removes the namespace when the child
 * ends (or on SIGINT/SIGTERM, after the child had a moment to clean up) and resolves with the
 * child's exit code.
 */
export async function runInNamespace(): Promise<number> {
  for (const stale of leftoverNamespaces()) removeNamespace(stale);
  const name = `${NETNS_PREFIX}${process.pid}`;
  let removed = false;
  const cleanup = (): void => {
    if (removed) return;
    removed = true;
    removeNamespace(name);
  };
  process.once('exit', cleanup);
  try {
    execFileSync('ip', ['netns', 'add', name], { stdio: 'inherit' });
    execFileSync('ip', ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  } catch (error) {
    cleanup();
    throw error;
  }
  const child = spawn('ip', ['netns', 'exec', name, process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, [NETNS_ENV]: name },
  });
  // Ctrl-C reaches the child too (same process group); give it time to close its pods, then
  // remove the namespace whatever it did.
  const onSignal = (signal: NodeJS.Signals): void => {
    child.kill(signal);
    setTimeout(() => {
      child.kill('SIGKILL');
      cleanup();
      process.exit(130);
    }, 5_000).unref();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  cleanup();
  process.off('exit', cleanup);
  return code ?? (signal ? 128 + 1 : 1);
}

/** A Service port: what clients dial on the ClusterIP, and the pods' target port. */
export interface ServicePort {
  readonly name: string;
  readonly port: number;
  readonly targetPort: number;
}

/** kube-proxy names chains with a hash of the service port; so do we (hex, not base32). */
function chainName(prefix: 'KUBE-SVC-' | 'KUBE-SEP-', text: string): string {
  return prefix + createHash('sha256').update(text).digest('hex').slice(0, 16).toUpperCase();
}

/**
 * The `nat` table kube-proxy's iptables mode writes for one ClusterIP, as `iptables-restore`
 * input: locally generated traffic (`OUTPUT`) to `clusterIp:port` jumps to the service chain,
 * which picks endpoint i of n with probability 1/(n-i) (the last one unconditionally), so each
 * new connection lands on a uniformly random pod and stays there.
 */
export function kubeProxyRules(service: string, clusterIp: string, ports: readonly ServicePort[], podAddresses: readonly string[]): string {
  const chains: string[] = ['KUBE-SERVICES'];
  const rules: string[] = ['-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'];
  for (const port of ports) {
    const svcName = `${service}:${port.name}`;
    const svc = chainName('KUBE-SVC-', `${svcName}/tcp`);
    chains.push(svc);
    rules.push(
      `-A KUBE-SERVICES -d ${clusterIp}/32 -p tcp -m comment --comment "${svcName} cluster IP" -m tcp --dport ${port.port} -j ${svc}`,
    );
    const n = podAddresses.length;
    podAddresses.forEach((address, i) => {
      const target = `${address}:${port.targetPort}`;
      const sep = chainName('KUBE-SEP-', `${svcName}/tcp/${target}`);
      chains.push(sep);
      const statistic = i < n - 1 ? ` -m statistic --mode random --probability ${(1 / (n - i)).toFixed(11)}` : '';
      rules.push(`-A ${svc} -m comment --comment "${svcName} -> ${target}"${statistic} -j ${sep}`);
      rules.push(`-A ${sep} -p tcp -m comment --comment "${svcName}" -m tcp -j DNAT --to-destination ${target}`);
    });
    // No endpoint: kube-proxy rejects rather than letting the connection hang.
    if (n === 0) rules.push(`-A ${svc} -p tcp -j REJECT`);
  }
  return [
    '*nat',
    ':PREROUTING ACCEPT [0:0]',
    ':INPUT ACCEPT [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    ':POSTROUTING ACCEPT [0:0]',
    ...chains.map((c) => `:${c} - [0:0]`),
    ...rules,
    'COMMIT',
    '',
  ].join('\n');
}

/** Applies a whole `nat` table atomically, as kube-proxy does with `iptables-restore`. */
export function applyRules(text: string): void {
  execFileSync('iptables-restore', [], { input: text, stdio: ['pipe', 'ignore', 'inherit'] });
}

/** The kernel's rules as `iptables-save` prints them, for the report and tests. */
export function savedRules(): string {
  return execFileSync('iptables-save', ['-t', 'nat'], { encoding: 'utf8' });
}

/** Adds addresses to the namespace's `lo`, in one `ip` process. */
export function addAddresses(addresses: readonly string[]): void {
  if (addresses.length === 0) return;
  execFileSync('ip', ['-batch', '-'], { input: addresses.map((a) => `addr add ${a}/32 dev lo\n`).join('') });
}

/** Where a proxied connection goes: a ready pod's address and the Service port's target port there. */
export interface ProxyTarget {
  readonly host: string;
  readonly port: number;
}

/**
 * kube-proxy's userspace mode, in short: one listener per Service port, a random ready pod per
 * new connection, bytes copied both ways until either side closes. No ready pod: the connection
 * is closed at once, as iptables' REJECT does. The stand-in listens on 127.0.0.1 at a port the
 * kernel picks; the fake cluster on a ClusterIP at the Service's port.
 */
export class UserspaceProxy {
  readonly #server: Server;
  readonly #sockets: Set<Socket>;
  readonly port: number;

  private constructor(server: Server, port: number, sockets: Set<Socket>) {
    this.#server = server;
    this.port = port;
    this.#sockets = sockets;
  }

  static async start(targets: () => readonly ProxyTarget[], listen: { host?: string; port?: number } = {}): Promise<UserspaceProxy> {
    const sockets = new Set<Socket>();
    const server = createServer((client) => {
      const pods = targets();
      if (pods.length === 0) {
        client.on('error', () => {});
        client.destroy();
        return;
      }
      const target = pods[Math.floor(Math.random() * pods.length)]!;
      const upstream = connect({ host: target.host, port: target.port, noDelay: true });
      client.setNoDelay(true);
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.once('close', () => sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
      client.once('close', () => upstream.destroy());
      upstream.once('close', () => client.destroy());
    });
    server.listen(listen.port ?? 0, listen.host ?? '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    return new UserspaceProxy(server, typeof address === 'object' && address ? address.port : 0, sockets);
  }

  async close(): Promise<void> {
    const closed = new Promise((r) => this.#server.close(r));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }
}
