/**
 * podpool's version, for `podpool --version` and the bench's runner, in a module of its own so
 * that reading it loads none of the commands.
 */
import { findPackageJSON } from 'node:module';
import { readFileSync } from 'node:fs';

/** The version in podpool's package.json, found from this file in the sources and in dist alike. */
export function version(): string {
  const path = findPackageJSON(new URL('.', import.meta.url));
  if (path === undefined) return 'unknown';
  return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
}
