import { balance } from './balance.ts';
import type { ScenarioOptions, ScenarioOutput } from './options.ts';
import { slowPod } from './slow-pod.ts';
import { scaleUp } from './scale-up.ts';
import { rollingRestart } from './rolling-restart.ts';
import { broadcast } from './broadcast.ts';
import { overhead } from './overhead.ts';
import { serverRecycles } from './server-recycles.ts';
import { killedPod } from './killed-pod.ts';
import { subset } from './subset.ts';
import type { BenchCluster } from '../cluster.ts';

/**
 * What a scenario runs with unless told otherwise, where it differs from the bench's defaults.
 * Applied to the flags before anything starts, so that on a cluster the Deployment the command
 * creates and the runner inside agree (both read the same flags the same way).
 */
export const SCENARIO_DEFAULTS: Readonly<Record<string, Partial<ScenarioOptions>>> = {
  // The shape: 20 clients × 50 pods.
  subset: { pods: 50, clients: 20 },
  // Pods that answer at once with no capacity limit: the client process is what is measured.
  overhead: { concurrency: 1_000_000, serviceMs: 0 },
};

/** Every scenario `podpool bench` runs, by name. */
export const SCENARIOS: Record<string, (options: ScenarioOptions, cluster?: BenchCluster) => Promise<ScenarioOutput>> = {
  balance,
  'slow-pod': slowPod,
  'scale-up': scaleUp,
  'rolling-restart': rollingRestart,
  'server-recycles': serverRecycles,
  'killed-pod': killedPod,
  broadcast: (options, cluster) => broadcast(options.podsGiven ? { ...options, sizes: [options.pods] } : options, cluster),
  overhead,
  subset,
};
