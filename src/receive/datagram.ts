import type { RemoteInfo, Socket } from 'node:dgram';
import { checkFunction, checkNumber, checkOptions, optionNames } from '../options.ts';
import { decodeDatagram, type Datagram } from '../wire/datagram.ts';

/** Options of {@link datagramReceiver}. */
export interface DatagramReceiverOptions {
  /**
   * Sequence numbers remembered per sender, counting back from the highest seen: a duplicate
   * inside the window is dropped, a datagram older than it is dropped as stale. Default 1024
   * (rounded up to a multiple of 32); memory is `window / 8` bytes per sender, whatever the
   * number of messages.
   */
  window?: number;
  /** Senders tracked at once; the one heard from least recently is forgotten first. Default 1024. */
  maxSenders?: number;
  /** Each message, once: the first copy of every (sender, sequence). */
  onMessage(message: Datagram, from: RemoteInfo | undefined): void;
  /** Sequence numbers a sender skipped: datagrams lost, or broadcasts sent while this pod was away. */
  onGap?(gap: DatagramGap): void;
  /** Every datagram dropped, and why. */
  onDrop?(drop: DatagramDrop): void;
}

/** `from` to `to` (inclusive) of `sender` never arrived before a later sequence did. */
export interface DatagramGap {
  readonly sender: string;
  readonly from: number;
  readonly to: number;
  /** `to - from + 1`. */
  readonly missing: number;
}

/**
 * Why a datagram was dropped: a copy of one already delivered (`duplicate`), older than the
 * window so it can't be told from one (`stale`), or not a podpool datagram (`malformed`).
 */
export type DropReason = 'duplicate' | 'stale' | 'malformed';

/** One dropped datagram. */
export interface DatagramDrop {
  readonly reason: DropReason;
  /** Absent for `malformed`. */
  readonly sender?: string;
  readonly sequence?: number;
  readonly from: RemoteInfo | undefined;
}

/** What `accept()` did with a datagram. */
export type DatagramOutcome = 'accepted' | DropReason;

/** Counters since the receiver was made. */
export interface DatagramReceiverStats {
  /** Senders tracked now (at most `maxSenders`). */
  readonly senders: number;
  readonly accepted: number;
  readonly duplicates: number;
  readonly stale: number;
  readonly malformed: number;
  /** Sequence numbers reported missing in gaps (a late arrival that fills one is still counted). */
  readonly missing: number;
}

/** A pod's side of {@link udpTransport}'s datagrams. */
export interface DatagramReceiver {
  /** Takes one datagram: calls `onMessage` for a first copy, `onGap` when sequences were skipped. */
  accept(datagram: Uint8Array, from?: RemoteInfo): DatagramOutcome;
  /** Feeds it every datagram `socket` receives; returns a function that stops. */
  listen(socket: Socket): () => void;
  stats(): DatagramReceiverStats;
}

/**
 * One sender's window: the highest sequence seen and a ring of bits, bit `s % size` standing
 * for sequence `s` for the `size` sequences up to `highest`.
 */
interface SenderWindow {
  highest: number;
  readonly bits: Uint32Array;
}

const OPTIONS = optionNames<DatagramReceiverOptions>({ window: true, maxSenders: true, onMessage: true, onGap: true, onDrop: true });

/**
 * Drops duplicates by (sender, sequence) in a bounded sliding window per sender and reports gaps,
 * as IPsec's and DTLS's anti-replay windows do. The first datagram heard from a sender sets its
 * starting point: nothing before it counts as missing. A datagram that arrives late but inside
 * the window is delivered (UDP may reorder); one older than the window is dropped as stale.
 */
export function datagramReceiver(options: DatagramReceiverOptions): DatagramReceiver {
  checkOptions(options, OPTIONS);
  const { window = 1024, maxSenders = 1024, onMessage, onGap, onDrop } = options;
  checkNumber('window', window, { min: 1, integer: true });
  checkNumber('maxSenders', maxSenders, { min: 1, integer: true });
  checkFunction('onMessage', onMessage);
  if (onGap !== undefined) checkFunction('onGap', onGap);
  if (onDrop !== undefined) checkFunction('onDrop', onDrop);
  const words = Math.ceil(window / 32);
  const size = words * 32;

  /** In least-recently-heard order: a sender heard from moves to the end. */
  const senders = new Map<string, SenderWindow>();
  let accepted = 0;
  let duplicates = 0;
  let stale = 0;
  let malformed = 0;
  let missing = 0;

  const isSet = (w: SenderWindow, sequence: number): boolean => {
    const bit = sequence % size;
    return (w.bits[bit >>> 5] & (1 << (bit & 31))) !== 0;
  };
  const set = (w: SenderWindow, sequence: number): void => {
    const bit = sequence % size;
    w.bits[bit >>> 5] |= 1 << (bit & 31);
  };
  const clear = (w: SenderWindow, sequence: number): void => {
    const bit = sequence % size;
    w.bits[bit >>> 5] &= ~(1 << (bit & 31));
  };

  const drop = (reason: DropReason, from: RemoteInfo | undefined, message?: Datagram): DatagramOutcome => {
    if (reason === 'duplicate') duplicates++;
    else if (reason === 'stale') stale++;
    else malformed++;
    onDrop?.({ reason, ...(message !== undefined && { sender: message.sender, sequence: message.sequence }), from });
    return reason;
  };

  const accept = (datagram: Uint8Array, from?: RemoteInfo): DatagramOutcome => {
    const message = decodeDatagram(datagram);
    if (message === undefined) return drop('malformed', from);
    const { sender, sequence } = message;
    let w = senders.get(sender);
    if (w === undefined) {
      if (senders.size >= maxSenders) senders.delete(senders.keys().next().value as string);
      w = { highest: sequence, bits: new Uint32Array(words) };
    } else {
      senders.delete(sender);
    }
    senders.set(sender, w);

    let gap: DatagramGap | undefined;
    if (sequence > w.highest) {
      if (sequence - w.highest >= size) w.bits.fill(0);
      else for (let s = w.highest + 1; s < sequence; s++) clear(w, s);
      if (sequence > w.highest + 1) {
        gap = { sender, from: w.highest + 1, to: sequence - 1, missing: sequence - 1 - w.highest };
        missing += gap.missing;
      }
      w.highest = sequence;
    } else if (w.highest - sequence >= size) {
      return drop('stale', from, message);
    } else if (isSet(w, sequence)) {
      return drop('duplicate', from, message);
    }
    set(w, sequence);
    accepted++;
    if (gap !== undefined) onGap?.(gap);
    onMessage(message, from);
    return 'accepted';
  };

  return {
    accept,
    listen(socket) {
      const onDatagram = (datagram: Buffer, from: RemoteInfo): void => {
        accept(datagram, from);
      };
      socket.on('message', onDatagram);
      return () => {
        socket.off('message', onDatagram);
      };
    },
    stats: () => ({ senders: senders.size, accepted, duplicates, stale, malformed, missing }),
  };
}
