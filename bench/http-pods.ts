/**
 * Small node:http pods for the broadcast bench, one per loopback address (127.0.0.11, …):
 * each answers `POST /invalidate` with `{"ok":true}` and counts requests and connections, so
 * the bench can check every broadcast reached every pod.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';

export class HttpPod {
  readonly address: string;
  readonly server: Server;
  requests = 0;
  /** TCP connections ever accepted: keep-alive keeps this at 1 per client. */
  connections = 0;
  readonly #sockets = new Set<Socket>();

  private constructor(address: string) {
    this.address = address;
    this.server = createServer((req, res) => {
      // The body is read, as a pod acting on the message would.
      req.resume();
      req.once('end', () => {
        this.requests++;
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
      });
    });
    this.server.keepAliveTimeout = 60_000;
    this.server.on('connection', (socket: Socket) => {
      this.connections++;
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
  }

  static async start(address: string): Promise<HttpPod> {
    const pod = new HttpPod(address);
    pod.server.listen(0, address);
    await once(pod.server, 'listening');
    return pod;
  }

  get port(): number {
    return (this.server.address() as { port: number }).port;
  }

  get endpoint(): { address: string; port: number } {
    return { address: this.address, port: this.port };
  }

  async close(): Promise<void> {
    const closed = once(this.server, 'close');
    this.server.close();
    for (const socket of this.#sockets) socket.destroy();
    await closed;
  }
}

/** `count` pods on 127.0.0.(first), 127.0.0.(first + 1), … */
export async function startHttpPods(count: number, first = 11): Promise<HttpPod[]> {
  if (first + count - 1 > 254) throw new RangeError(`127.0.0.${first}… has no room for ${count} pods`);
  const pods: HttpPod[] = [];
  try {
    for (let i = 0; i < count; i++) pods.push(await HttpPod.start(`127.0.0.${first + i}`));
  } catch (error) {
    await Promise.all(pods.map((p) => p.close()));
    throw error;
  }
  return pods;
}
