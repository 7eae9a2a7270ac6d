import type { RemoteInfo, Socket } from 'node:dgram';
import { checkDelay, checkFunction, checkNumber, checkOptions, invalidArgument, invalidOption, optionNames } from '../options.ts';
import { decodeDatagram, type Datagram } from '../wire/datagram.ts';
import { checkSecret, type Secret } from '../wire/secret.ts';

/** Options of {@link datagramReceiver}. */
export interface DatagramReceiverOptions {
  /**
   * Sequence numbers remembered per sender, counting back from the highest seen: a duplicate
   * inside the window is dropped, a datagram older than it is dropped as stale. Default 1024
   * (rounded up to a multiple of 32); memory is `window / 8` bytes per sender, whatever the
   * number of messages.
   */
  window?: number;
  /**
   * The furthest one datagram may move a sender ahead. Default 65,536 (or the window, when
   * larger): the sequence space is shared by every pod, so a pod sees a sender jump by the
   * datagrams it sent other pods in between. A datagram further ahead is dropped (`jump`) and
   * remembered; the next one from that sender at or after it (within `maxJump`) confirms the
   * sender really moved, and is taken: a sender that jumped loses the one datagram (inside the
   * gap then reported), none when it sends each one twice (`repeat: 2`). Without a `secret`, two
   * datagrams in a row behind the window likewise confirm a sender that went back: a forged
   * datagram that pushed a sender ahead costs it one real datagram, never all the ones after.
   * Set it to the window to cost nothing at all, if no pod falls that far behind its senders.
   */
  maxJump?: number;
  /** Senders tracked at once. Default 1024. */
  maxSenders?: number;
  /**
   * With `maxSenders` tracked, a new sender takes the place of the one heard from least recently
   * only once that one has been silent (no datagram accepted) for longer than this; until then
   * the newcomer's datagrams are dropped (`full`), so a flood of new sender ids can't push out
   * established senders. Default `2 × maxAgeMs` (120 s), the least it may be with a `secret`: a
   * sender is then never forgotten while a replay of its last datagram could still pass.
   */
  senderIdleMs?: number;
  /**
   * The secret `udpTransport({ secret })` signs with: signed datagrams are checked, and (with
   * `requireSignature`, the default) anything unsigned or badly signed is dropped (`signature`).
   */
  secret?: Secret;
  /** With a `secret`: drop unsigned datagrams. Default true; false to take both while senders move to signing. */
  requireSignature?: boolean;
  /** A signed datagram dated further than this from `clock` (either way) is dropped (`expired`). Default 60 s. */
  maxAgeMs?: number;
  /**
   * Drops (`expired`) a signed datagram signed before this instant (ms since the epoch). Give it
   * the receiver's start time to make it restart-safe: a restarted receiver knows no sender, so it
   * would take a replay of a datagram sent in the `maxAgeMs` before it started. The price: a
   * datagram signed before the start and arriving after it is dropped.
   */
  notBefore?: number;
  /** Milliseconds since the epoch, for signed datagrams' age and senders' silence; default `Date.now`. */
  clock?: () => number;
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
 * Why a datagram was dropped:
 * - `duplicate`: a copy of one already delivered;
 * - `stale`: older than the sender's window, so it can't be told from one;
 * - `malformed`: not a podpool datagram;
 * - `jump`: further ahead of its sender than `maxJump`, until the sender's next datagram confirms it;
 * - `full`: from a new sender while `maxSenders` are tracked and none has been silent for `senderIdleMs`;
 * - `signature`: badly signed, or unsigned where a signature is required;
 * - `expired`: signed further than `maxAgeMs` from now, or before `notBefore`.
 */
export type DropReason = 'duplicate' | 'stale' | 'malformed' | 'jump' | 'full' | 'signature' | 'expired';

/** One dropped datagram. */
export interface DatagramDrop {
  readonly reason: DropReason;
  /** What the datagram says (not proven unless it was signed); absent for `malformed`. */
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
  /** Dropped as too far a jump (`jump`). */
  readonly jumps: number;
  /** Senders whose window moved by more than `maxJump`, once confirmed. */
  readonly resyncs: number;
  /** Dropped because the sender table was full of active senders (`full`). */
  readonly full: number;
  /** Senders forgotten to make room for a new one, after `senderIdleMs` of silence. */
  readonly evicted: number;
  /** Dropped for a bad or missing signature (`signature`). */
  readonly badSignatures: number;
  /** Dropped as signed too long ago, too far ahead, or before `notBefore` (`expired`). */
  readonly expired: number;
}

/** A pod's side of {@link udpTransport}'s datagrams. */
export interface DatagramReceiver {
  /**
   * Takes one datagram: calls `onMessage` for a first copy, `onGap` when sequences were skipped.
   * Throws `PODPOOL_INVALID_ARGUMENT` when `datagram` is not bytes; anything else it can't take
   * is dropped, never thrown.
   */
  accept(datagram: Uint8Array, from?: RemoteInfo): DatagramOutcome;
  /** Feeds it every datagram `socket` receives; returns a function that stops. `PODPOOL_INVALID_ARGUMENT` when `socket` is not one. */
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
  /** When a datagram of it was last accepted, by `clock`. */
  heard: number;
  /** A sequence beyond reach seen last (0: none), which the next one may confirm. */
  candidate: number;
}

const DEFAULT_MAX_JUMP = 65_536;

const OPTIONS = optionNames<DatagramReceiverOptions>({
  window: true,
  maxJump: true,
  maxSenders: true,
  senderIdleMs: true,
  secret: true,
  requireSignature: true,
  maxAgeMs: true,
  notBefore: true,
  clock: true,
  onMessage: true,
  onGap: true,
  onDrop: true,
});

/**
 * Drops duplicates by (sender, sequence) in a bounded sliding window per sender and reports gaps,
 * as IPsec's and DTLS's anti-replay windows do. The first datagram heard from a sender sets its
 * starting point: nothing before it counts as missing. A datagram that arrives late but inside
 * the window is delivered (UDP may reorder); one older than the window is dropped as stale.
 *
 * Without a `secret`, anyone who can send to the pod can forge a datagram; the bounds on jumps
 * and on the sender table keep one forged datagram (or a flood of forged senders) from costing
 * real senders more than a datagram each. With a `secret`, forged datagrams are dropped unread, and
 * replays are bounded by the window, `maxAgeMs` and `notBefore`.
 */
export function datagramReceiver(options: DatagramReceiverOptions): DatagramReceiver {
  checkOptions(options, OPTIONS);
  const { window = 1024, maxSenders = 1024, secret, maxAgeMs = 60_000, notBefore, clock = Date.now, onMessage, onGap, onDrop } = options;
  checkNumber('window', window, { min: 1, integer: true });
  checkNumber('maxSenders', maxSenders, { min: 1, integer: true });
  if (secret !== undefined) checkSecret(secret);
  const requireSignature = options.requireSignature ?? secret !== undefined;
  if (typeof requireSignature !== 'boolean') invalidOption('requireSignature', 'a boolean', requireSignature);
  if (requireSignature && secret === undefined) invalidOption('requireSignature', 'false without a secret (only a secret can check signatures)', requireSignature);
  checkDelay('maxAgeMs', maxAgeMs);
  if (notBefore !== undefined) checkNumber('notBefore', notBefore);
  const senderIdleMs = options.senderIdleMs ?? 2 * maxAgeMs;
  checkNumber('senderIdleMs', senderIdleMs, { min: 0, allowInfinity: true });
  if (secret !== undefined && senderIdleMs < 2 * maxAgeMs) {
    invalidOption('senderIdleMs', `at least 2 × maxAgeMs (${2 * maxAgeMs}) with a secret, so a sender is not forgotten while its datagrams can be replayed`, senderIdleMs);
  }
  checkFunction('clock', clock, 'a function returning ms since the epoch');
  checkFunction('onMessage', onMessage);
  if (onGap !== undefined) checkFunction('onGap', onGap);
  if (onDrop !== undefined) checkFunction('onDrop', onDrop);
  const words = Math.ceil(window / 32);
  const size = words * 32;
  const maxJump = options.maxJump ?? Math.max(size, DEFAULT_MAX_JUMP);
  checkNumber('maxJump', maxJump, { min: 1, integer: true });
  // Going back on two datagrams' word would let a replay of two old signed ones reopen the window.
  const mayGoBack = secret === undefined;
  const decodeOptions = { secret };

  /** In least-recently-heard order: a sender whose datagram is accepted moves to the end. */
  const senders = new Map<string, SenderWindow>();
  const counts = { accepted: 0, duplicates: 0, stale: 0, malformed: 0, missing: 0, jumps: 0, resyncs: 0, full: 0, evicted: 0, badSignatures: 0, expired: 0 };

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
  /** Whether `sequence` confirms the far sequence last seen from `w`: at or after it, within reach. */
  const confirms = (w: SenderWindow, sequence: number): boolean => w.candidate !== 0 && sequence >= w.candidate && sequence - w.candidate <= maxJump;

  const drop = (reason: DropReason, from: RemoteInfo | undefined, message?: Datagram): DatagramOutcome => {
    if (reason === 'duplicate') counts.duplicates++;
    else if (reason === 'stale') counts.stale++;
    else if (reason === 'malformed') counts.malformed++;
    else if (reason === 'jump') counts.jumps++;
    else if (reason === 'full') counts.full++;
    else if (reason === 'signature') counts.badSignatures++;
    else counts.expired++;
    onDrop?.({ reason, ...(message !== undefined && { sender: message.sender, sequence: message.sequence }), from });
    return reason;
  };

  /** The window of a sender heard for the first time, or undefined when the table is full of active ones. */
  const admit = (sequence: number, now: number): SenderWindow | undefined => {
    if (senders.size >= maxSenders) {
      const [oldest, w] = senders.entries().next().value as [string, SenderWindow];
      if (now - w.heard <= senderIdleMs) return undefined;
      senders.delete(oldest);
      counts.evicted++;
    }
    // Just below the first sequence, so the advance below takes it with no gap.
    return { highest: sequence - 1, bits: new Uint32Array(words), heard: now, candidate: 0 };
  };

  const accept = (datagram: Uint8Array, from?: RemoteInfo): DatagramOutcome => {
    const message = decodeDatagram(datagram, decodeOptions);
    if (message === undefined) return drop('malformed', from);
    if (message.signature === 'invalid' || (requireSignature && message.signature !== 'valid')) return drop('signature', from, message);
    const now = clock();
    if (message.signature === 'valid') {
      const timestamp = message.timestamp!;
      if (Math.abs(now - timestamp) > maxAgeMs || (notBefore !== undefined && timestamp < notBefore)) return drop('expired', from, message);
    }
    const { sender, sequence } = message;
    const known = senders.get(sender);
    const w = known ?? admit(sequence, now);
    if (w === undefined) return drop('full', from, message);

    let gap: DatagramGap | undefined;
    if (sequence > w.highest) {
      if (known !== undefined && sequence - w.highest > maxJump) {
        if (!confirms(w, sequence)) {
          w.candidate = sequence;
          return drop('jump', from, message);
        }
        counts.resyncs++;
      }
      if (sequence - w.highest >= size) w.bits.fill(0);
      else for (let s = w.highest + 1; s < sequence; s++) clear(w, s);
      if (known !== undefined && sequence > w.highest + 1) {
        gap = { sender, from: w.highest + 1, to: sequence - 1, missing: sequence - 1 - w.highest };
        counts.missing += gap.missing;
      }
      w.highest = sequence;
    } else if (w.highest - sequence >= size) {
      if (!mayGoBack || !confirms(w, sequence)) {
        if (mayGoBack) w.candidate = sequence;
        return drop('stale', from, message);
      }
      // The sender went back (forged datagrams had pushed it ahead, or it restarted with its id).
      counts.resyncs++;
      w.bits.fill(0);
      w.highest = sequence;
    } else if (isSet(w, sequence)) {
      return drop('duplicate', from, message);
    }
    set(w, sequence);
    w.candidate = 0;
    w.heard = now;
    if (known !== undefined) senders.delete(sender);
    senders.set(sender, w);
    counts.accepted++;
    if (gap !== undefined) onGap?.(gap);
    onMessage(message, from);
    return 'accepted';
  };

  return {
    accept,
    listen(socket) {
      if (socket === null || typeof socket !== 'object' || typeof socket.on !== 'function' || typeof socket.off !== 'function') {
        invalidArgument('socket', 'a dgram Socket', socket);
      }
      const onDatagram = (datagram: Buffer, from: RemoteInfo): void => {
        accept(datagram, from);
      };
      socket.on('message', onDatagram);
      return () => {
        socket.off('message', onDatagram);
      };
    },
    stats: () => ({ senders: senders.size, ...counts }),
  };
}
