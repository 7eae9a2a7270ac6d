import type { Wire } from '../client-modes.ts';
import type { ChartSpec, ScenarioReport } from '../report.ts';

/** What every scenario takes (the CLI's flags, with defaults filled in). */
export interface ScenarioOptions {
  pods: number;
  /** Whether --pods was given (broadcast then runs that one size instead of 5, 50, 200). */
  podsGiven?: boolean;
  clients: number;
  /** Seconds of load per client mode. */
  durationS: number;
  /** Requests in flight per client. */
  inflight: number;
  /** A pod's capacity: requests at once, and service time of one. */
  concurrency: number;
  serviceMs: number;
  /** Wire protocols to compare (balance, overhead). */
  wires?: readonly Wire[];
  /** podpool balancers to compare. */
  balancers?: readonly string[];
}

/** What a scenario hands the CLI: the report, its chart and its table. */
export interface ScenarioOutput {
  report: ScenarioReport;
  chart?: ChartSpec;
  table: string;
}
