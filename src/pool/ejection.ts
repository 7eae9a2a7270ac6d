import { checkNumber, checkOptions, invalidOption, optionNames } from '../options.ts';

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
  checkNumber('ejection.baseMs', baseMs, { min: 1 });
  checkNumber('ejection.maxMs', maxMs, { min: baseMs });
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
