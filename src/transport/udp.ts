import { randomUUID } from 'node:crypto';
import { createSocket, type Socket, type SocketType } from 'node:dgram';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { untilAborted } from '../abort.ts';
import { handlesFreed } from '../handles.ts';
import { ClosedError, ConnectionLostError, InvalidArgumentError, NotConnectedError, abortError } from '../errors.ts';
import { checkNumber, checkOptions, invalidArgument, invalidOption, optionNames } from '../options.ts';
import { datagramBytes, frameDatagram } from '../wire/datagram.ts';
import { checkSecret, type Secret } from '../wire/secret.ts';
import type { Connection, Transport } from './transport.ts';

/** Broadcast ids remembered to give their retries the sequence of the first attempt. */
const REMEMBERED_IDS = 1024;

/**
 * The most a UDP datagram carries, podpool's header included: 65,535 bytes less the UDP header
 * (8) and, over IPv4, the IP header (20). Larger is refused before it is sent.
 */
const MAX_DATAGRAM_BYTES: Readonly<Record<SocketType, number>> = { udp4: 65_507, udp6: 65_527 };

/** Options of {@link udpTransport}. */
export interface UdpTransportOptions {
  /** The pods' UDP port, when it is not the endpoint's port (the one discovery reports). */
  port?: number;
  /** Copies of each datagram to send, to ride out loss; receivers drop the extra ones. Default 1. */
  repeat?: number;
  /**
   * Names this sender in every datagram. It must be unique per sender and per process lifetime
   * (a restarted sender that reuses it starts again at sequence 1, which receivers would drop as
   * duplicates). Default: host name, pid and a random suffix.
   */
  senderId?: string;
  /**
   * Signs every datagram (HMAC-SHA256 with a timestamp, datagram version 2) with this secret
   * shared with the pods, whose `datagramReceiver({ secret })` then drops anything unsigned or
   * badly signed. At least 16 bytes.
   */
  secret?: Secret;
}

/** What a send says: how many copies went out, and that nobody confirmed anything. */
export interface UdpSendResult {
  /** Always false: UDP has no acknowledgement; a datagram sent may never arrive. */
  readonly acknowledged: false;
  /** Copies handed to the kernel (the `repeat` option). */
  readonly sent: number;
  /** The sequence number the datagram carried. */
  readonly sequence: number;
  /** Bytes per copy, header included. */
  readonly bytes: number;
}

/** What `use()` and `broadcast()` callbacks get: a sender of datagrams to one pod. */
export interface UdpClient {
  /** This transport's sender id, as every datagram carries it. */
  readonly senderId: string;
  /**
   * Sends `body` to the pod, `repeat` times. Pass the broadcast's delivery (or any `{ id }`) so
   * every pod and every retry of that broadcast gets the same sequence number:
   * `pool.broadcast((client, _endpoint, delivery) => client.send(body, delivery))`. Without an id,
   * each send takes the next sequence number. A body that makes the datagram larger than UDP
   * carries (65,507 bytes to an IPv4 pod, 65,527 to an IPv6 one, header included) is refused
   * with `PODPOOL_INVALID_ARGUMENT`, not counted against the pod; a send the kernel refuses
   * (no route, a firewall) fails with `PODPOOL_NOT_CONNECTED`, the kernel's error as its cause.
   */
  send(body: string | Uint8Array, message?: { readonly id: string; readonly signal?: AbortSignal }): Promise<UdpSendResult>;
}

const OPTIONS = optionNames<UdpTransportOptions>({ port: true, repeat: true, senderId: true, secret: true });

/** One bound socket, shared by every member of one address family. */
interface SharedSocket {
  readonly socket: Socket;
  readonly bound: Promise<void>;
  /** The members using it, told when it breaks. */
  readonly users: Set<(error: Error) => void>;
  /** Resolves on the socket's 'close'. */
  readonly closed: Promise<void>;
  closing: boolean;
}

/**
 * Datagram fan-out: one unicast datagram per pod, framed with this sender's id and a sequence
 * number, optionally repeated. There is no acknowledgement and the result says so. UDP has no
 * connection either, so a member is ready as soon as the sender's socket is bound (one socket per
 * address family, shared by every member), and only a local send error counts against a pod.
 */
export function udpTransport(options: UdpTransportOptions = {}): Transport<UdpClient> {
  checkOptions(options, OPTIONS);
  const { port, repeat = 1, senderId = `${hostname()}/${process.pid}/${randomUUID().slice(0, 8)}`, secret } = options;
  if (port !== undefined && (!Number.isInteger(port) || port < 1 || port > 65535)) {
    invalidOption('port', 'an integer from 1 to 65535', port);
  }
  checkNumber('repeat', repeat, { min: 1, integer: true });
  if (typeof senderId !== 'string' || Buffer.byteLength(senderId) < 1 || Buffer.byteLength(senderId) > 255) {
    invalidOption('senderId', 'a string of 1 to 255 UTF-8 bytes', senderId);
  }
  if (secret !== undefined) checkSecret(secret);
  const sender = Buffer.from(senderId, 'utf8');

  const sockets = new Map<SocketType, SharedSocket>();
  /** Errors thrown by a send, the only ones that say something about the path to a pod. */
  const sendErrors = new WeakSet<object>();
  /** The sender's counter; one sequence space for every pod, so a pod can tell it missed a broadcast. */
  let nextSequence = 1;
  const sequenceOfId = new Map<string, number>();

  const sequenceFor = (id: string | undefined): number => {
    if (id === undefined) return nextSequence++;
    let sequence = sequenceOfId.get(id);
    if (sequence === undefined) {
      sequence = nextSequence++;
      sequenceOfId.set(id, sequence);
      if (sequenceOfId.size > REMEMBERED_IDS) sequenceOfId.delete(sequenceOfId.keys().next().value as string);
    }
    return sequence;
  };

  const shared = (type: SocketType): SharedSocket => {
    const existing = sockets.get(type);
    if (existing !== undefined && !existing.closing) return existing;
    const socket = createSocket({ type });
    const entry: SharedSocket = {
      socket,
      users: new Set(),
      closed: new Promise<void>((resolve) => socket.once('close', () => resolve(handlesFreed()))),
      closing: false,
      bound: new Promise<void>((resolve, reject) => {
        const onError = (error: Error): void => reject(error);
        socket.once('error', onError);
        socket.bind(0, () => {
          socket.off('error', onError);
          resolve();
        });
      }),
    };
    entry.bound.then(
      () => {
        const broke = (error: Error): void => {
          if (entry.closing) return;
          retire(type, entry);
          for (const user of [...entry.users]) user(error);
        };
        socket.on('error', broke);
        socket.once('close', () => broke(new Error('the UDP socket closed')));
      },
      () => retire(type, entry),
    );
    sockets.set(type, entry);
    return entry;
  };

  /** Stops handing out `entry` and closes its socket. */
  const retire = (type: SocketType, entry: SharedSocket): Promise<void> => {
    if (sockets.get(type) === entry) sockets.delete(type);
    if (!entry.closing) {
      entry.closing = true;
      try {
        entry.socket.close();
      } catch {
        // Not running: it closed by itself, and 'close' has fired.
      }
    }
    return entry.closed;
  };

  return {
    name: 'udp',
    async connect(endpoint, { signal, lost }): Promise<Connection<UdpClient>> {
      signal.throwIfAborted();
      const type: SocketType = isIP(endpoint.address) === 6 ? 'udp6' : 'udp4';
      const entry = shared(type);
      let open = true;
      const onBroken = (error: Error): void => {
        if (!open) return;
        open = false;
        entry.users.delete(onBroken);
        lost(error);
      };
      entry.users.add(onBroken);
      const release = (): Promise<void> => {
        entry.users.delete(onBroken);
        open = false;
        return entry.users.size === 0 ? retire(type, entry) : Promise.resolve();
      };
      try {
        await untilAborted(entry.bound, signal, `connecting to ${endpoint.key}`);
      } catch (error) {
        await release();
        throw error;
      }
      const target = { key: endpoint.key, address: endpoint.address, port: port ?? endpoint.port };
      const maxBytes = MAX_DATAGRAM_BYTES[type];
      const client: UdpClient = {
        senderId,
        async send(body, message) {
          if (typeof body !== 'string' && !(body instanceof Uint8Array)) invalidArgument('body', 'a string or bytes', body);
          if (message !== undefined && (message === null || typeof message.id !== 'string')) {
            invalidArgument('message', 'an object with a string id (the delivery)', message);
          }
          if (message?.signal?.aborted) throw abortError(message.signal, `a send to ${endpoint.key}`);
          if (!open) throw new ConnectionLostError(`the UDP sender for ${endpoint.key} is closed`);
          const bytes = datagramBytes(sender.length, typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength, secret !== undefined);
          if (bytes > maxBytes) {
            // The message's fault, not the pod's: refused before it takes a sequence number.
            throw new InvalidArgumentError(
              `argument body makes a datagram of ${bytes} bytes (header included); UDP carries at most ${maxBytes} to ${endpoint.key}: send less per datagram`,
            );
          }
          const sequence = sequenceFor(message?.id);
          const datagram = frameDatagram(sender, sequence, body, secret, Date.now());
          for (let copy = 0; copy < repeat; copy++) {
            await sendOnce(entry.socket, datagram, target, sendErrors);
          }
          return { acknowledged: false, sent: repeat, sequence, bytes: datagram.length };
        },
      };
      return {
        client,
        close: release,
      };
    },
    isPodFailure(error) {
      return error !== null && typeof error === 'object' && sendErrors.has(error);
    },
  };
}

/**
 * Sends one copy. The kernel's errors come back as PodpoolErrors, the original as the cause: a
 * datagram too big for the path (EMSGSIZE) is the message's fault; any other (no route, a
 * firewall's EPERM, EACCES for a broadcast address) says the pod can't be reached from here, and
 * counts against it.
 */
function sendOnce(socket: Socket, datagram: Buffer, target: { key: string; address: string; port: number }, sendErrors: WeakSet<object>): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (error: NodeJS.ErrnoException): void => {
      const what = `sending a datagram of ${datagram.length} bytes to ${target.key} failed (${error.code ?? error.message})`;
      if (error.code === 'EMSGSIZE') return reject(new InvalidArgumentError(`${what}: the message is too big for the path; send less per datagram`, { cause: error }));
      const wrapped = new NotConnectedError(`${what}: the pod can't be reached from here`, { cause: error });
      sendErrors.add(wrapped);
      reject(wrapped);
    };
    try {
      socket.send(datagram, target.port, target.address, (error) => (error ? fail(error) : resolve()));
    } catch (error) {
      // The socket closed under us (ERR_SOCKET_DGRAM_NOT_RUNNING): ours to report, not the pod's.
      reject(new ClosedError(`the UDP socket sending to ${target.key} closed under the send`, { cause: error }));
    }
  });
}
