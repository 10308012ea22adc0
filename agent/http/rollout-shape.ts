/**
 * The rollout view the status page and metrics show. Identical to `RolloutView` of
 * agent/rollout-view.ts (fixed interface 2 of the wave-3 plan); declared here so this module builds
 * before rollouts exist. Structural typing makes the two interchangeable; import that one once merged.
 */
export interface RolloutView {
  id: string;
  hw: string;
  version: string;
  state: 'running' | 'paused' | 'halted' | 'aborted' | 'done';
  /** Why halted/aborted, human readable. */
  reason: string | null;
  /** 0 = canary. */
  currentWave: number;
  waves: { index: number; target: number; nodes: number; confirmed: number; failed: number; inProgress: number; state: 'pending' | 'running' | 'done' | 'halted' }[];
  failures: { device: string; outcome: string; reason: string | null; detail: string }[];
}

/** The agent's rollouts, or none when the agent has no rollouts (yet). */
export function rolloutsOf(agent: object): RolloutView[] {
  const f = (agent as { rollouts?: () => RolloutView[] }).rollouts;
  return typeof f === 'function' ? f.call(agent) : [];
}
