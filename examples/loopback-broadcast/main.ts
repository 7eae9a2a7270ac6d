// Kernel UDP broadcast between processes on one host: several receivers all get each datagram
// sent to 127.255.255.255, because the sender sets SO_BROADCAST and the receivers bind that
// address with SO_REUSEADDR. Linux only; see the README for macOS and FreeBSD, and for why a
// cluster needs udpTransport's unicast fan-out instead.
//   npm run example:loopback-broadcast
import { fork, type ChildProcess } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { encodeDatagram } from 'podpool';

const BROADCAST = '127.255.255.255';

/** What one receiver process reported. */
export interface ReceiverReport {
  readonly pid: number;
  /** Bodies delivered once each, in arrival order. */
  readonly messages: readonly string[];
  readonly gaps: number;
  /** Copies dropped as duplicates. */
  readonly duplicates: number;
}

export interface RunOptions {
  receivers?: number;
  messages?: number;
  /** Copies of each datagram, to show the receivers dropping them. */
  repeat?: number;
  /** How long to wait for the datagrams before reporting what arrived (none may, off Linux). */
  waitMs?: number;
}

/** Forks the receivers, broadcasts, and returns what each one got. */
export async function run(options: RunOptions = {}): Promise<ReceiverReport[]> {
  const { receivers = 3, messages = 5, repeat = 2, waitMs = 2_000 } = options;

  // A free port on the broadcast address: this socket holds it (with address reuse, so the
  // receivers can bind it too) until they all have.
  const holder = createSocket({ type: 'udp4', reuseAddr: true });
  holder.bind(0, BROADCAST);
  await once(holder, 'listening');
  const port = holder.address().port;
  let holding = true;
  const release = (): void => {
    if (holding) holder.close();
    holding = false;
  };

  const children: ChildProcess[] = [];
  const reports = new Map<ChildProcess, { pid: number; messages: string[]; gaps: number; duplicates: number }>();
  let delivered = 0;
  let allDelivered: () => void = () => {};
  const done = new Promise<void>((resolve) => (allDelivered = resolve));
  const receiverPath = fileURLToPath(new URL('./receiver.ts', import.meta.url));
  for (let i = 0; i < receivers; i++) {
    // The receivers run with this process's flags (--conditions=podpool-source among them), not the test runner's.
    const execArgv = process.execArgv.filter((flag) => !flag.startsWith('--test'));
    const child = fork(receiverPath, [String(port)], { execArgv, stdio: 'inherit' });
    const report = { pid: child.pid!, messages: [] as string[], gaps: 0, duplicates: 0 };
    reports.set(child, report);
    child.on('message', (m: { type: string; body?: string; duplicates?: number }) => {
      if (m.type === 'message') {
        report.messages.push(m.body!);
        if (++delivered === receivers * messages) allDelivered();
      } else if (m.type === 'gap') report.gaps++;
      else if (m.type === 'stats') report.duplicates = m.duplicates!;
    });
    children.push(child);
  }
  try {
    await Promise.all(children.map((c) => waitFor(c, 'ready')));
    release();

    const sender = createSocket('udp4');
    sender.bind(0, '127.0.0.1');
    await once(sender, 'listening');
    // Without SO_BROADCAST, a send to a broadcast address fails with EACCES.
    sender.setBroadcast(true);
    const senderId = `loopback-${process.pid}`;
    for (let sequence = 1; sequence <= messages; sequence++) {
      const datagram = encodeDatagram({ sender: senderId, sequence, body: `message ${sequence}` });
      for (let copy = 0; copy < repeat; copy++) await send(sender, datagram, port);
    }
    sender.close();

    // UDP says nothing about arrival: wait for the receivers' reports, for a bounded time.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([done, new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
    clearTimeout(timer);
  } finally {
    await Promise.all(
      children.map(async (c) => {
        if (!c.connected) return;
        const stats = waitFor(c, 'stats');
        const exited = once(c, 'exit');
        c.send({ type: 'stop' });
        await stats;
        await exited;
      }),
    );
    release();
  }
  return children.map((c) => reports.get(c)!);
}

function send(socket: Socket, datagram: Buffer, port: number): Promise<void> {
  return new Promise((resolve, reject) => socket.send(datagram, port, BROADCAST, (error) => (error ? reject(error) : resolve())));
}

function waitFor(child: ChildProcess, type: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: { type: string }): void => {
      if (m.type !== type) return;
      child.off('message', onMessage);
      child.off('exit', onExit);
      resolve();
    };
    const onExit = (code: number | null): void => reject(new Error(`receiver ${child.pid} exited (${code}) before it was ${type}`));
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

if (import.meta.main) {
  const messages = 5;
  const reports = await run({ receivers: 3, messages, repeat: 2 });
  console.table(
    reports.map((r) => ({
      receiver: r.pid,
      delivered: `${r.messages.length} of ${messages}`,
      'duplicates dropped': r.duplicates,
      gaps: r.gaps,
    })),
  );
  const everyone = reports.every((r) => r.messages.length === messages);
  console.log(
    everyone
      ? `every receiver got all ${messages} broadcasts once: the kernel delivered each datagram to every socket bound to ${BROADCAST}`
      : `not every receiver got every broadcast: this kernel does not deliver loopback broadcasts to every socket (see README)`,
  );
}
