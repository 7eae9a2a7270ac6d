import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as podpool from '../src/index.ts';
import { ErrorCode, MessageRejectedError, PodpoolError } from '../src/index.ts';

/** The class exported for each code: `PODPOOL_NO_ENDPOINTS` → `NoEndpointsError`. */
const classNameOf = (key: string): string =>
  key
    .toLowerCase()
    .split('_')
    .map((word) => word[0].toUpperCase() + word.slice(1))
    .join('') + 'Error';

describe('errors', () => {
  it('exports one PodpoolError subclass per code, with that code and its own name', () => {
    for (const [key, code] of Object.entries(ErrorCode)) {
      const name = classNameOf(key);
      const Class = (podpool as Record<string, unknown>)[name] as (new (...args: never[]) => PodpoolError) | undefined;
      assert.equal(typeof Class, 'function', `${name} is exported for ${code}`);
      const cause = new Error('underneath');
      const error =
        Class === MessageRejectedError
          ? new MessageRejectedError('replay', 'seen before', { cause })
          : new (Class as unknown as new (message: string, options: { cause: unknown }) => PodpoolError)('what happened', { cause });
      assert.ok(error instanceof PodpoolError, `${name} extends PodpoolError`);
      assert.ok(error instanceof Error);
      assert.equal(error.code, code);
      assert.equal(error.name, name);
      assert.equal(error.cause, cause);
      assert.match(String(error.stack), new RegExp(`^${name}: `));
    }
  });

  it('keeps new PodpoolError(code, message) working for any code', () => {
    const error = new PodpoolError(ErrorCode.TIMEOUT, 'too slow', { cause: 'x' });
    assert.equal(error.code, 'PODPOOL_TIMEOUT');
    assert.equal(error.name, 'PodpoolError');
    assert.equal(error.message, 'too slow');
    assert.equal(error.cause, 'x');
  });

  it('MessageRejectedError carries the reason to branch on', () => {
    const error = new MessageRejectedError('stale', 'too old');
    assert.equal(error.reason, 'stale');
    assert.equal(error.code, ErrorCode.MESSAGE_REJECTED);
  });
});
