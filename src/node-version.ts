/**
 * Refuses to load on a Node.js older than package.json's `engines` allows. `index.ts` and the
 * command import this module before anything else, because ES modules evaluate in import order:
 * on an older Node, undici's own import would otherwise fail first, with a TypeError that says
 * nothing about the version.
 */
import { UnsupportedNodeError } from './errors.ts';

/** The oldest Node.js podpool runs on: package.json's `engines` (a test keeps the two equal). */
export const MINIMUM_NODE = '22.19.0';

/** The error to raise on Node.js `version` (`process.versions.node`), or undefined when it is new enough. */
export function unsupportedNode(version: string): UnsupportedNodeError | undefined {
  const have = version.split('.').map(Number);
  const need = MINIMUM_NODE.split('.').map(Number);
  for (let i = 0; i < need.length; i++) {
    if ((have[i] ?? 0) > need[i]!) return undefined;
    if ((have[i] ?? 0) < need[i]!) {
      return new UnsupportedNodeError(
        `podpool needs Node.js ${MINIMUM_NODE} or newer; this is Node.js ${version}. Upgrade Node.js to use it.`,
      );
    }
  }
  return undefined;
}

const error = unsupportedNode(process.versions.node);
if (error !== undefined) throw error;
