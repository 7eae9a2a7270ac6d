#!/usr/bin/env node
/**
 * The `podpool` command's entry point. It imports nothing statically: every command loads undici,
 * which on a Node older than `engines` allows fails with a TypeError, so the version check has to
 * run (and speak in one line, not a stack) before any of them is loaded.
 */
try {
  await import('../node-version.ts');
} catch (error) {
  process.stderr.write(`podpool: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
const { run } = await import('./commands.ts');
process.exitCode = await run(process.argv.slice(2));
