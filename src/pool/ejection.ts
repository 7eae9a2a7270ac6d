import { EjectedError, type PodpoolError } from '../errors.ts';
import { checkDelay, checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';

/**
 * Outlier ejection, as Envoy's `consecutive_5xx`: a member whose calls fail this many times in a
 * row stops being picked for a while, longer each time it is ejected again, and never more than
 * a share of the members at once (so a bad deploy can't eject everything).
 */
export interface EjectionOptions {
  /** Failures in a row that eject a member. Default 5. */
  consecutiveFailures?: number;
  /** Ejection time the first time; the n-th ejection in a row lasts n × this. Default 10 s. */
  baseMs?: number;
  /** Longest ejection; also how long a member must stay healthy to start again from baseMs. Default 5 min. */
  maxMs?: number;
  /** At most this share (0–100 %) of the connected members are ejected at once. Default 50. */
  maxPercent?: number;
}

/** The checked, complete ejection policy. */
export interface EjectionPolicy {
  readonly consecutiveFailures: number;
  readonly baseMs: number;
  readonly maxMs: number;
  readonly maxPercent: number;
}

const OPTIONS = optionNames<EjectionOptions>({ consecutiveFailures: true, baseMs: true, maxMs: true, maxPercent: true });

/** Checks `ejection` options at the door; `false` turns ejection off. */
export function ejectionPolicy(options: EjectionOptions | false | undefined): EjectionPolicy | undefined {
  if (options === false) return undefined;
  if (options !== undefined && (options === null || typeof options !== 'object')) {
    invalidOption('ejection', 'an object or false', options);
  }
  if (options !== undefined) checkOptions(options, OPTIONS, 'ejection');
  const { consecutiveFailures = 5, baseMs = 10_000, maxMs = 300_000, maxPercent = 50 } = options ?? {};
  checkNumber('ejection.consecutiveFailures', consecutiveFailures, { min: 1, integer: true });
  // Each checked against what a timer holds before maxMs is checked against baseMs: a baseMs of
  // 2^32 is the option to blame, not the default maxMs below it.
  checkDelay('ejection.baseMs', baseMs);
  checkDelay('ejection.maxMs', maxMs, baseMs);
  checkNumber('ejection.maxPercent', maxPercent, { min: 0 });
  if (maxPercent > 100) invalidOption('ejection.maxPercent', 'a number from 0 to 100', maxPercent);
  return { consecutiveFailures, baseMs, maxMs, maxPercent };
}

/** How long the `ejections`-th ejection in a row lasts. */
export function ejectionMs(policy: EjectionPolicy, ejections: number): number {
  return Math.min(policy.baseMs * ejections, policy.maxMs);
}

/** Whether one more member may be ejected when `ejected` of `connected` already are. */
export function mayEject(policy: EjectionPolicy, ejected: number, connected: number): boolean {
  return ejected + 1 <= Math.floor((connected * policy.maxPercent) / 100);
}

/** The members ejection counts over: everything but their states is the policy's own. */
interface Ejectable {
  readonly state: string;
  readonly consecutiveFailures: number;
  readonly lastError: Error | undefined;
  eject(error: PodpoolError): void;
  unejected(): void;
}

/** One member's ejection history: the streak that lengthens each ejection, and its timer. */
interface Record {
  streak: number;
  /** When the member last left `ejected`; a long healthy stretch resets the streak. */
  unejectedAt: number;
  timer: NodeJS.Timeout | undefined;
}

/**
 * The whole ejection policy at work: hears each failure counted against a member, ejects it
 * when its run of failures calls for it and the share of ejected members allows, and lets it
 * back after a time that grows with its streak. The member owns the state; this owns the when.
 */
export class Ejection<M extends Ejectable> {
  readonly #policy: EjectionPolicy;
  readonly #members: () => Iterable<M>;
  readonly #clock: () => number;
  readonly #records = new Map<M, Record>();

  constructor(policy: EjectionPolicy, members: () => Iterable<M>, clock: () => number) {
    this.#policy = policy;
    this.#members = members;
    this.#clock = clock;
  }

  /** A call failed against `member` (counted at `now`). */
  failed(member: M, now: number): void {
    if (member.state === 'ready' && member.consecutiveFailures >= this.#policy.consecutiveFailures) this.#eject(member, now);
  }

  /** `member` left `ejected` another way (lost, drained) or closed: its timer goes. */
  moved(member: M, from: string, to: string): void {
    const record = this.#records.get(member);
    if (record === undefined) return;
    if (from === 'ejected') {
      clearTimeout(record.timer);
      record.timer = undefined;
    }
    if (to === 'closed') this.#records.delete(member);
  }

  #eject(member: M, now: number): void {
    let ejected = 0;
    let connected = 0;
    for (const other of this.#members()) {
      if (other.state === 'ejected') ejected++;
      if (other.state === 'ready' || other.state === 'ejected') connected++;
    }
    if (!mayEject(this.#policy, ejected, connected)) return;
    let record = this.#records.get(member);
    if (record === undefined) {
      record = { streak: 0, unejectedAt: 0, timer: undefined };
      this.#records.set(member, record);
    }
    // A member that stayed healthy for a whole maxMs starts again from the base duration.
    record.streak = record.streak > 0 && now - record.unejectedAt < this.#policy.maxMs ? record.streak + 1 : 1;
    const duration = ejectionMs(this.#policy, record.streak);
    member.eject(
      new EjectedError(`${member.consecutiveFailures} failures in a row; ejected for ${duration} ms`, {
        cause: member.lastError,
      }),
    );
    const current = record;
    current.timer = setTimeout(() => {
      current.timer = undefined;
      if (member.state !== 'ejected') return;
      current.unejectedAt = this.#clock();
      member.unejected();
    }, duration);
  }
}
