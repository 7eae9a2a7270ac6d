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
  // The shape (20 clients × 50 pods) unless told otherwise.
  subset: (options, cluster) => subset({ ...options, ...(!options.podsGiven && { pods: 50 }), ...(!options.clientsGiven && { clients: 20 }) }, cluster),
};
