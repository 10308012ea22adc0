import type { RolloutSpec } from '../shared/rollout.js';
import { failuresOf, merged, type AgentRolloutState, type NodeEntry, type RolloutStatus } from './rollout-fsm.js';

/** A rollout as operators see it: the fleet-wide merge of every agent's published state. */
export interface RolloutView {
  id: string; hw: string; version: string;
  state: 'running' | 'paused' | 'halted' | 'aborted' | 'done';
  reason: string | null;            // why halted/aborted, human readable
  currentWave: number;              // 0 = canary
  waves: { index: number; target: number; nodes: number; confirmed: number; failed: number; inProgress: number;
           state: 'pending' | 'running' | 'done' | 'halted' }[];
  failures: { device: string; outcome: string; reason: string | null; detail: string }[];
}

const SEVERITY: RolloutStatus['kind'][] = ['done', 'running', 'paused', 'halted', 'aborted'];

/**
 * Merges agents' states into one status: the most severe wins (one halted agent halts the view),
 * the wave is the furthest any agent reached.
 */
export function combine(states: AgentRolloutState[]): AgentRolloutState {
  let status: RolloutStatus = { kind: 'running' };
  let wave = 0;
  const nodes: Record<string, NodeEntry> = {};
  states.forEach((s, i) => {
    if (i === 0 || SEVERITY.indexOf(s.status.kind) > SEVERITY.indexOf(status.kind)) status = s.status;
    wave = Math.max(wave, s.wave);
    Object.assign(nodes, s.nodes);
  });
  return { status, wave, nodes };
}

/** The view of a rollout from its document and the merged node entries of all agents. */
export function rolloutView(spec: RolloutSpec, own: AgentRolloutState, peers: Record<string, AgentRolloutState> = {}): RolloutView {
  const all = merged({ ...own, peers });
  const waves: RolloutView['waves'] = [];
  const count = spec.waves.length + 1;
  const halted = own.status.kind === 'halted' || own.status.kind === 'aborted';
  for (let i = 0; i < count; i++) {
    const members = [...all.values()].filter((e) => e.wave === i);
    const confirmed = members.filter((e) => e.phase === 'confirmed' || e.phase === 'reverting' || e.phase === 'reverted').length;
    const failed = members.filter((e) => e.phase === 'failed').length;
    const inProgress = members.filter((e) => e.phase === 'inProgress').length;
    const state = i < own.wave || own.status.kind === 'done' ? 'done' : i === own.wave ? (halted ? 'halted' : 'running') : 'pending';
    // target: the nodes planned for the wave at start (the plan), else those it holds now.
    waves.push({ index: i, target: spec.plan?.counts[i] ?? members.length, nodes: members.length, confirmed, failed, inProgress, state });
  }
  return {
    id: spec.id,
    hw: spec.hw,
    version: spec.version,
    state: own.status.kind,
    reason: own.status.kind === 'halted' || own.status.kind === 'aborted' ? own.status.reason : null,
    currentWave: own.wave,
    waves,
    failures: failuresOf(all).map(([device, e]) => ({ device, outcome: e.outcome ?? 'failed', reason: e.reason, detail: e.detail })),
  };
}
