/**
 * The `podpool` command, once main.ts has checked the Node version.
 *
 *   podpool endpoints --dns <host> --port <port> [--server <ip:port>] [--watch]
 *   podpool top <url> [--interval <ms>] [--once]
 *   podpool demo [flags]
 *   podpool bench <scenario> [flags]
 *   podpool pod [flags]
 *   podpool --version | --help | <command> --help
 *
 * `demo` and `bench` run the stand-in cluster of bench/harness/ (compiled into the package as
 * dist/bench/harness, with the testkit/ servers it runs), loaded only when asked for: the
 * library never imports it, and `endpoints` works without the packages only the bench needs.
 */
import { runEndpoints, ENDPOINTS_USAGE } from './endpoints.ts';
import { runTop, TOP_USAGE } from './top.ts';
import { ErrorCode, PodpoolError } from '../errors.ts';
import { version } from './version.ts';

const USAGE = `usage: podpool <command> [flags]
  demo [flags]              the balance and slow-pod scenarios at a small size, with an HTML page of charts
  bench <scenario> [flags]  one benchmark scenario
  pod [flags]               the bench's backend pod (HTTP, gRPC, WebSocket, UDP) with a control endpoint, for a container
  endpoints [flags]         print what a discovery source finds
  top <url> [flags]         a live table of a running service's pools (its podpoolDebugServer() endpoint)
  podpool <command> --help  a command's flags
  podpool --version         podpool's version

${ENDPOINTS_USAGE}`;

/** What `demo` and `bench` load from bench/harness/main.ts. */
interface BenchModule {
  main(command: 'bench' | 'demo', args: string[]): Promise<number>;
  USAGE: string;
}

/**
 * Packages only the bench loads (its DNS server, its charts). They are optional dependencies, so
 * `npm install --omit=optional` leaves them out of a service's image; the bench then says so
 * rather than failing inside an import.
 */
const BENCH_PACKAGES = ['dns-packet', 'vega', 'vega-lite'];

/** Runs the command `argv` (the arguments after `podpool`); resolves with the exit code. */
export async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'demo':
    case 'bench':
      return bench(command, rest);
    case 'pod':
      return pod(rest);
    case 'endpoints':
      return guard(() => runEndpoints(rest), ENDPOINTS_USAGE);
    case 'top':
      return guard(() => runTop(rest), TOP_USAGE);
    case '-v':
    case '--version':
      process.stdout.write(`${version()}\n`);
      return 0;
    case '-h':
    case '--help':
    case 'help':
      if (rest[0] !== undefined) return run([rest[0], '--help']);
      process.stdout.write(`${USAGE}\n`);
      return 0;
    case undefined:
      process.stderr.write(`${USAGE}\n`);
      return 2;
    default:
      process.stderr.write(`podpool: unknown ${command.startsWith('-') ? 'option' : 'command'} ${JSON.stringify(command)}\n${USAGE}\n`);
      return 2;
  }
}

async function bench(command: 'bench' | 'demo', args: string[]): Promise<number> {
  const missing = BENCH_PACKAGES.filter((name) => !resolvable(name));
  if (missing.length > 0) {
    process.stderr.write(
      `podpool ${command} needs ${missing.join(', ')}, optional dependencies of podpool that this install left out ` +
        `(npm install --omit=optional). Install them next to podpool: npm install ${missing.join(' ')}\n`,
    );
    return 1;
  }
  // A literal specifier, so the build rewrites it to the compiled bench/harness/main.js.
  const module = (await import('../../bench/harness/main.ts')) as BenchModule;
  const code = await guard(() => module.main(command, args), module.USAGE);
  // A client that failed to close (the report says which) must not keep the bench alive.
  process.exit(code);
}

/** `podpool pod`: loaded only when asked for, and without the bench's packages (a pod needs none). */
async function pod(args: string[]): Promise<number> {
  // A literal specifier, so the build rewrites it to the compiled bench/harness/pod-server.js.
  const module = (await import('../../bench/harness/pod-server.ts')) as { runPod(args: string[]): Promise<number>; POD_USAGE: string };
  return guard(() => module.runPod(args), module.POD_USAGE);
}

function resolvable(name: string): boolean {
  try {
    import.meta.resolve(name);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs a command, turning a usage mistake (an unknown flag, a bad value, an option the library
 * refuses) into exit code 2 with the command's usage, a podpool error into exit code 1 with its
 * message and code, and anything else into exit code 1 with its stack.
 */
async function guard(command: () => Promise<number>, usage: string): Promise<number> {
  try {
    return await command();
  } catch (error) {
    if (isUsageError(error)) {
      process.stderr.write(`podpool: ${error.message}\n${error.message.includes(usage) ? '' : `${usage}\n`}`);
      return 2;
    }
    if (error instanceof PodpoolError) {
      process.stderr.write(`podpool: ${error.message} (${error.code})\n`);
      return 1;
    }
    process.stderr.write(`podpool: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    return 1;
  }
}

function isUsageError(error: unknown): error is Error {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  return (
    error.name === 'UsageError' ||
    code === ErrorCode.INVALID_OPTION ||
    (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))
  );
}
