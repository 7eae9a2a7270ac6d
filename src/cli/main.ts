#!/usr/bin/env node
/**
 * The `podpool` command.
 *
 *   podpool endpoints --dns <host> --port <port> [--server <ip:port>] [--watch]
 *   podpool demo
 *   podpool bench <scenario> [--pods N] [--clients C] [--duration S] [--json]
 *
 * `demo` and `bench` run the stand-in cluster of the repository's bench/ directory, which is
 * loaded only when asked for, so `endpoints` works without it.
 */
import { runEndpoints, ENDPOINTS_USAGE } from './endpoints.ts';

const USAGE = `usage: podpool <command>
  demo                      the balance and slow-pod scenarios at a small size, with an HTML page of charts
  bench <scenario> [flags]  one benchmark scenario (podpool bench --help)
  endpoints [flags]         print what a discovery source finds
${ENDPOINTS_USAGE}`;

interface BenchModule {
  main(command: 'bench' | 'demo', args: string[]): Promise<number>;
  UsageError: new (message: string) => Error;
}

async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'demo':
    case 'bench': {
      // A computed specifier: the bench is repository code, not part of the published library.
      const specifier = new URL('../../bench/main.ts', import.meta.url).href;
      const bench = (await import(specifier)) as BenchModule;
      const code = await bench.main(command, rest);
      // A client that failed to close (the report says which) must not keep the bench alive.
      process.exit(code);
    }
    case 'endpoints':
      return runEndpoints(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(`${USAGE}\n`);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`podpool: unknown command ${JSON.stringify(command)}\n${USAGE}\n`);
      return 2;
  }
}

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const usage = error instanceof Error && (error.name === 'UsageError' || String((error as { code?: string }).code).startsWith('ERR_PARSE_ARGS'));
    process.stderr.write(`podpool: ${error instanceof Error ? (usage ? error.message : (error.stack ?? error.message)) : String(error)}\n`);
    process.exitCode = usage ? 2 : 1;
  },
);
