/**
 * Option checks every factory shares, so a bad option fails the same way wherever it is passed:
 * at the door, with `PODPOOL_INVALID_OPTION`, naming the option, what it must be and (unless it
 * may be a secret) what it got. Arguments that are not options fail the same way, with
 * `PODPOOL_INVALID_ARGUMENT`.
 */
import { InvalidArgumentError, InvalidOptionError } from './errors.ts';

/** The option names a factory takes; build it with {@link optionNames} so none can be forgotten. */
export type OptionNames = readonly string[];

/**
 * The names of every option of `T`. Written as a record so the compiler fails when an option is
 * added to the interface and not here (or here and not there): the list can't drift.
 */
export function optionNames<T extends object>(names: { readonly [K in keyof Required<T>]: true }): OptionNames {
  return Object.freeze(Object.keys(names));
}

/**
 * Checks that `options` is an object whose every key is one of `known`, so a misspelled option
 * (`ballancer`) fails instead of being ignored. `name` is the option's own name for nested
 * objects (`reconnect`), which prefixes the keys in the message; `options` at the top level.
 */
export function checkOptions(options: unknown, known: OptionNames, name = 'options'): asserts options is object {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) invalidOption(name, 'an object', options);
  const prefix = name === 'options' ? '' : `${name}.`;
  // for…in, not Object.keys: no array per call, and verifyMessage checks its options per message.
  for (const key in options) {
    if (known.includes(key) || !Object.hasOwn(options, key)) continue;
    const meant = closest(key, known);
    const hint = meant === undefined ? '' : ` (did you mean ${prefix}${meant}?)`;
    const list = known.length === 0 ? `${name === 'options' ? 'it takes' : `${name} takes`} no options` : `the options are ${known.map((k) => prefix + k).join(', ')}`;
    throw new InvalidOptionError(`unknown option ${prefix}${key}${hint}; ${list}`);
  }
}

/** Throws `PODPOOL_INVALID_OPTION` naming the option, what it must be and what it got. */
export function invalidOption(name: string, expected: string, got: unknown): never {
  throw new InvalidOptionError(`option ${name} must be ${expected}, got ${describe(name, got)}`);
}

/**
 * Throws `PODPOOL_INVALID_ARGUMENT` naming an argument that is not an option (a message's id, a
 * datagram's sender), what it must be and (unless it may be a secret) what it got.
 */
export function invalidArgument(name: string, expected: string, got: unknown): never {
  throw invalidArgumentError(name, expected, got);
}

/** The error {@link invalidArgument} throws, for a caller that reports it instead (a source's bad snapshot). */
export function invalidArgumentError(name: string, expected: string, got: unknown): InvalidArgumentError {
  return new InvalidArgumentError(`argument ${name} must be ${expected}, got ${describe(name, got)}`);
}

/**
 * Checks an option that must be an `AbortSignal` when given: a wrong one would fail later, in
 * a timer or a listener, where nobody can catch it.
 */
export function checkSignal(name: string, value: unknown): asserts value is AbortSignal | undefined {
  if (value !== undefined && !(value instanceof AbortSignal)) invalidOption(name, 'an AbortSignal', value);
}

/** Checks a numeric option at the door: finite, at least `min` (and integral when asked). */
export function checkNumber(
  name: string,
  value: unknown,
  { min = 0, integer = false, allowInfinity = false }: { min?: number; integer?: boolean; allowInfinity?: boolean } = {},
): number {
  const ok =
    typeof value === 'number' &&
    !Number.isNaN(value) &&
    value >= min &&
    (Number.isFinite(value) ? !integer || Number.isInteger(value) : allowInfinity);
  if (!ok) {
    const kind = integer ? 'an integer' : 'a number';
    invalidOption(name, `${kind} >= ${min}${allowInfinity ? ' (or Infinity)' : ''}`, value);
  }
  return value as number;
}

/** Node's timers take at most 2^31 - 1 ms; a longer delay fires after 1 ms instead, which would spin a loop. */
export const MAX_DELAY_MS = 2 ** 31 - 1;

/**
 * A deadline option: a delay a timer can hold (see {@link checkDelay}), or `Infinity` for none.
 */
export function checkDeadline(name: string, value: unknown, min = 1): number {
  return value === Infinity ? Infinity : checkDelay(name, value, min);
}

/** Checks a delay option at the door: a number of ms from `min` to what a timer can hold. */
export function checkDelay(name: string, value: unknown, min = 1): number {
  const ms = checkNumber(name, value, { min });
  if (ms > MAX_DELAY_MS) invalidOption(name, `a number of ms from ${min} to ${MAX_DELAY_MS}`, value);
  return ms;
}

/** Checks that an option is a function; `expected` says what it must do (`a function returning milliseconds`). */
export function checkFunction(name: string, value: unknown, expected = 'a function'): void {
  if (typeof value !== 'function') invalidOption(name, expected, value);
}

// What an error message shows of a value it got, so that it (and every log it reaches) never
// holds a credential: for an option whose name says it may hold one (`tls.key`, `headers`,
// `apiKey`, `x-api-key`, `privateKey`, `auth`, …), only what kind of value it was; elsewhere the
// value, with every field of such a name, every byte array and every string that looks like a
// credential (a PEM block, `Bearer …`, `token=…`, a JWT) or is too long to read replaced by its
// kind, at any depth. Over-redacting is cheap (`keyFn` prints "a function" either way).
const SECRET_NAME = /key|cert|pfx|^cas?$|pass|pwd|secret|token|credential|^tls$|header|auth|bearer|cookie|session|signature|jwt|private/i;
/** Options whose every value is sensitive, whatever the field's own name (`headers['x-tenant']`). */
const SECRET_CONTAINER = /^(?:headers?|credentials?|secrets?|auth|tls|cookies?)$/i;
const SECRET_VALUE =
  /-----BEGIN|\b(?:bearer|basic|digest|negotiate)\s+\S|\beyJ[\w-]{8,}\.[\w-]{8,}|(?:token|key|secret|passw(?:or)?d|pwd|auth|sig(?:nature)?|credential|session)[\w-]*\s*[=:]/i;
/** Longer strings are shown by their kind: an opaque value that long is more likely a secret than a slip. */
const MAX_SHOWN_STRING = 64;
/** A message shows at most this much of an object. */
const MAX_SHOWN = 200;

/** Whether the option `name` (`tls.key`, `headers['x-api-key']`, `channelOptions`) may hold a secret. */
function isSecretName(name: string): boolean {
  const segments = name.split(/[.[\]'"]+/).filter((s) => s !== '');
  const last = segments.at(-1) ?? name;
  return SECRET_NAME.test(last) || segments.some((s) => SECRET_CONTAINER.test(s));
}

function isBytes(value: unknown): boolean {
  return ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof SharedArrayBuffer;
}

/** Whether a value shown inside a message must be replaced by its kind. */
function hidden(value: unknown): boolean {
  return isBytes(value) || (typeof value === 'string' && (value.length > MAX_SHOWN_STRING || SECRET_VALUE.test(value)));
}

function describe(name: string, value: unknown): string {
  if (isSecretName(name) || hidden(value)) return kindOf(value);
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return 'a function';
  if (value === null || typeof value !== 'object') return String(value);
  let shown: string | undefined;
  try {
    shown = JSON.stringify(value, function (this: Record<string, unknown>, field: string, v: unknown): unknown {
      if (field === '') return v;
      // `this[field]`, not `v`: JSON.stringify has already turned a Buffer into { type, data } by now.
      const original = this[field];
      return SECRET_NAME.test(field) || hidden(original) ? `(${kindOf(original)})` : v;
    });
  } catch {
    // A cycle, a BigInt: the kind of object is what there is to say.
  }
  if (shown === undefined) return Object.prototype.toString.call(value);
  return shown.length > MAX_SHOWN ? `${shown.slice(0, MAX_SHOWN)}…` : shown;
}

function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof SharedArrayBuffer) return `${value.byteLength} bytes`;
  if (typeof value === 'string') return `a string of ${Buffer.byteLength(value)} bytes`;
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'function') return 'a function';
  return typeof value === 'number' || typeof value === 'boolean' || value === undefined ? String(value) : typeof value;
}

/**
 * The known name closest to `key` when it is close enough to be a slip: the case ignored,
 * within one edit for short names and a third of the length for longer ones, or the start of a
 * name left without its unit, or its singular for its plural (`ballancer` finds `balancer`,
 * `decay` finds `decayMs`, `retry` finds `retries`, `port` does not find `path`).
 */
function closest(key: string, known: OptionNames): string | undefined {
  const lower = key.toLowerCase();
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(key.length / 3)) + 1;
  for (const name of known) {
    const other = name.toLowerCase();
    const d = (lower.length >= 3 && other.startsWith(lower)) || singular(lower) === singular(other) ? 1 : distance(lower, other);
    if (d < bestDistance) {
      best = name;
      bestDistance = d;
    }
  }
  return best;
}

/** `retries` → `retry`, `choices` → `choice`: a plural for a singular is a slip, however many letters it takes. */
function singular(name: string): string {
  if (name.endsWith('ies')) return `${name.slice(0, -3)}y`;
  return name.endsWith('s') ? name.slice(0, -1) : name;
}

/** Edit distance counting a swap of two neighbours as one edit (optimal string alignment). */
function distance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => {
    const row = new Array<number>(b.length + 1).fill(0);
    row[0] = i;
    return row;
  });
  for (let j = 0; j <= b.length; j++) rows[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, rows[i - 2][j - 2] + 1);
      rows[i][j] = d;
    }
  }
  return rows[a.length][b.length];
}
