/**
 * `podpool bench manifests <scenario> …`: the objects `bench --cluster` would create, as YAML for
 * `kubectl apply -f -`, for people who may not (or would rather not) let a program create
 * objects in their cluster. The results are then collected with `podpool bench collect`.
 */
import { dumpYaml } from '@kubernetes/client-node';
import type { ScenarioOptions } from '../scenarios/options.ts';
import { benchObjects, creationOrder, newRunId, ownNamespaceName, rfc3339, runBoundS, type BenchSpec } from './objects.ts';
import { DEADLINE_ANNOTATION, LABELS, NAMES } from './protocol.ts';

/** What `manifests` takes beside the scenario's options: the image, and a namespace to use instead of an own one. */
export interface ManifestFlags {
  image: string;
  namespace?: string;
}

/**
 * The spec of a run's objects from the command line: an own namespace `podpool-bench-<runId>`
 * unless one was given, and a deadline at the end of the run's bound from now.
 */
export function benchSpec(
  scenario: string,
  options: ScenarioOptions,
  flags: ManifestFlags,
  runnerArgs: readonly string[],
  extra: { runId?: string; now?: Date; clusterIp?: string } = {},
): BenchSpec {
  const runId = extra.runId ?? newRunId();
  const now = extra.now ?? new Date();
  return {
    runId,
    namespace: flags.namespace ?? ownNamespaceName(runId),
    ownNamespace: flags.namespace === undefined,
    image: flags.image,
    scenario,
    runnerArgs,
    pods: options.pods,
    concurrency: options.concurrency,
    serviceMs: options.serviceMs,
    deadline: new Date(now.getTime() + runBoundS(options.durationS) * 1000),
    ...(extra.clusterIp !== undefined && { clusterIp: extra.clusterIp }),
  };
}

/** The multi-document YAML, a comment header first saying how to apply, collect and delete. */
export function manifests(spec: BenchSpec): string {
  const objects = benchObjects(spec);
  const ns = spec.namespace;
  const selector = `${LABELS.run}=${spec.runId}`;
  const remove = spec.ownNamespace
    ? `kubectl delete namespace ${ns}`
    : `kubectl -n ${ns} delete job,deployment,service,rolebinding,role,serviceaccount -l ${selector}`;
  const header = [
    `podpool bench ${spec.scenario} on your cluster (run ${spec.runId}), for people who apply it by hand.`,
    '',
    `Creates in namespace ${ns}${spec.ownNamespace ? ' (created here too)' : ''}:`,
    `  Deployment ${NAMES.deployment}: ${spec.pods} pods of \`podpool pod\` (image ${spec.image})`,
    `  Service ${NAMES.headless} (headless: podpool's DNS and EndpointSlice sources read it)`,
    `  Service ${NAMES.service} (ClusterIP: what kube-proxy balances)`,
    `  ServiceAccount, Role, RoleBinding ${NAMES.serviceAccount}: get/list/watch EndpointSlices, nothing else`,
    `  Job ${NAMES.job}: runs the scenario inside the cluster and writes its report to its log`,
    '',
    'Apply, then collect at once (the runner asks the collector to scale, restart or delete pods,',
    'and the results and charts are written where collect runs):',
    `  podpool bench manifests ${spec.scenario} … | kubectl apply -f -`,
    `  podpool bench collect ${spec.scenario} --namespace ${ns}`,
    'Delete everything afterwards (collect does not):',
    `  ${remove}`,
    '  (or kubectl delete -f with this file)',
    `Every object carries ${LABELS.run}=${spec.runId}; a later \`podpool bench --cluster\` run deletes`,
    `them after ${rfc3339(spec.deadline)} (its ${DEADLINE_ANNOTATION} annotation).`,
  ];
  // Every string quoted: js-yaml leaves a value such as the run id 1e5230 bare, which YAML readers
  // (kubectl's among them) take for a number (here, infinity), and a label must be a string.
  const documents = creationOrder(objects).map((object) => dumpYaml(object, { forceQuotes: true }));
  return `${header.map((line) => (line === '' ? '#' : `# ${line}`)).join('\n')}\n---\n${documents.join('---\n')}`;
}
