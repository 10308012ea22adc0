import { createHash } from 'node:crypto';
import { describeAmount, inWindow, resolveAmount, type RolloutSpec } from '../shared/rollout.js';

/**
 * One rollout as one agent runs it: a pure machine. `step(state, input, now)` returns the next state
 * and the effects the runtime (agent/rollouts.ts) carries out. Several agents (Redis scale-out) run
 * the same rollout each over the nodes it serves; they agree on waves and halts because every input
 * that decides them (the union of the agents' published node entries, the signed document) is the
 * same for all, and wave membership is a pure function of (rollout id, device id).
 */

/** Where one node stands in the rollout. */
export type NodePhase =
  /** Not offered yet: its wave has not come, the window is closed, or the rollout does not run. */
  | 'waiting'
  /** Left out for now (battery below --min-battery): does not hold its wave back. */
  | 'skipped'
  | 'inProgress'
  | 'confirmed'
  /** rolledBack, rejected, failed or timedOut: counts against --max-failures. */
  | 'failed'
  /** Halted with --auto-revert: being offered its previous release. */
  | 'reverting'
  | 'reverted';

export interface NodeEntry {
  /** Wave the node belongs to (0 = canary). */
  wave: number;
  phase: NodePhase;
  /** The update outcome name when it ended (confirmed, rolledBack, ...). */
  outcome: string | null;
  reason: string | null;
  detail: string;
  /** Hex digest of the image the node ran when its update started: what auto-revert returns it to. */
  from: string | null;
}

export type RolloutStatus =
  | { kind: 'running' }
  | { kind: 'paused' }
  | { kind: 'halted'; reason: string }
  | { kind: 'aborted'; reason: string }
  | { kind: 'done' };

/** What one agent publishes (retained) about the rollout, and what it reads from its peers. */
export interface AgentRolloutState {
  status: RolloutStatus;
  wave: number;
  nodes: Record<string, NodeEntry>;
}

export interface RolloutState extends AgentRolloutState {
  spec: RolloutSpec;
  /** Failures the operator accepted by resuming a halted rollout: the threshold counts only later ones. */
  accepted: number;
  /** The window was open at the last step (an opening wakes waiting nodes). */
  windowOpen: boolean;
  peers: Record<string, AgentRolloutState>;
}

/** What the runtime knows of one of its nodes, as it concerns this rollout. */
export interface NodeFacts {
  id: string;
  hw: string;
  groups: readonly string[];
  /** Percent; null: mains powered (no battery field in its Hello). */
  battery: number | null;
  /** Its update toward this rollout's release: not started, under way, or how it ended. */
  progress: 'none' | 'inProgress' | 'confirmed' | 'rolledBack' | 'rejected' | 'failed' | 'timedOut' | 'cancelled';
  reason: string | null;
  detail: string;
  /** Hex digest of the image it runs, and whether that image is settled (not on trial, not recovery). */
  running: string | null;
  settled: boolean;
}

export type RolloutInput =
  /** A newer signed document (a command: run, pause, abort). */
  | { kind: 'command'; spec: RolloutSpec }
  | { kind: 'facts'; nodes: NodeFacts[] }
  /** Forget a node this agent no longer serves. */
  | { kind: 'forget'; id: string }
  | { kind: 'peer'; agent: string; state: AgentRolloutState | null }
  | { kind: 'tick' };

export type RolloutEffect =
  /** These nodes may now be offered something (the runtime asks offerFor for each). */
  | { kind: 'consider'; devices: string[] }
  /** The agent's own state changed: persist it and publish it retained. */
  | { kind: 'publish' }
  | { kind: 'event'; detail: string };

const FAILED = new Set(['rolledBack', 'rejected', 'failed', 'timedOut']);
const FINISHED = new Set<NodePhase>(['skipped', 'confirmed', 'failed', 'reverting', 'reverted']);

export function initial(spec: RolloutSpec): RolloutState {
  const status: RolloutStatus = spec.command === 'abort' ? { kind: 'aborted', reason: 'aborted by the operator' } : spec.command === 'pause' ? { kind: 'paused' } : { kind: 'running' };
  return { spec, status, wave: 0, nodes: {}, accepted: 0, windowOpen: false, peers: {} };
}

/** Does the node belong to this rollout at all (hw class, groups, device list)? */
export function targets(spec: RolloutSpec, f: Pick<NodeFacts, 'id' | 'hw' | 'groups'>): boolean {
  if (f.hw !== spec.hw) return false;
  if (spec.devices.length > 0 && !spec.devices.includes(f.id)) return false;
  if (spec.groups.length > 0 && !spec.groups.some((g) => f.groups.includes(g))) return false;
  return true;
}

const ranks = new Map<string, string>();

/** A node's place in the rollout's order: the same on every agent. (Memoised: waves are recomputed at every step.) */
export function rank(rolloutId: string, deviceId: string): string {
  const key = `${rolloutId}\0${deviceId}`;
  let r = ranks.get(key);
  if (r === undefined) {
    if (ranks.size >= 100_000) ranks.clear();
    r = createHash('sha256').update(key).digest('hex');
    ranks.set(key, r);
  }
  return r;
}

export function minuteOfDay(now: number): number {
  const d = new Date(now);
  return d.getHours() * 60 + d.getMinutes();
}

/** Every node of the rollout, from all agents (this agent's entries win for its own nodes). */
export function merged(s: AgentRolloutState & { peers: Record<string, AgentRolloutState> }): Map<string, NodeEntry> {
  const out = new Map<string, NodeEntry>();
  for (const agent of Object.keys(s.peers).sort()) for (const [id, e] of Object.entries(s.peers[agent].nodes)) out.set(id, e);
  for (const [id, e] of Object.entries(s.nodes)) out.set(id, e);
  return out;
}

/** Cumulative node counts at the end of each wave (index 0 = canary) for `total` nodes. */
export function waveBounds(spec: RolloutSpec, total: number): number[] {
  const canary = Math.min(total, resolveAmount(spec.canary, total));
  return [canary, ...spec.waves.map((p) => Math.min(total, Math.max(canary, Math.ceil((p * total) / 100 - 1e-9))))];
}

/** Wave of every node: by the plan's rank ranges when the document has one, else by rank among `ids`. */
export function assignWaves(spec: Pick<RolloutSpec, 'id' | 'canary' | 'waves'> & { plan?: RolloutSpec['plan'] }, ids: Iterable<string>): Map<string, number> {
  const sorted = [...ids].map((id) => ({ id, r: rank(spec.id, id) })).sort((a, b) => (a.r < b.r ? -1 : a.r > b.r ? 1 : 0));
  const out = new Map<string, number>();
  const plan = spec.plan;
  if (plan) {
    const lastWave = plan.last.length - 1;
    for (const { id, r } of sorted) {
      const w = plan.last.findIndex((last, k) => plan.counts[k] > 0 && r <= last);
      out.set(id, w < 0 ? lastWave : w);
    }
    return out;
  }
  const bounds = waveBounds(spec as RolloutSpec, sorted.length);
  let w = 0;
  sorted.forEach(({ id }, i) => {
    while (w < bounds.length - 1 && i >= bounds[w]) w++;
    out.set(id, w);
  });
  return out;
}

/** The plan an operator tool writes into the document from the fleet it sees (RolloutSpec.plan). */
export function planFor(spec: Pick<RolloutSpec, 'id' | 'canary' | 'waves'>, ids: string[]): NonNullable<RolloutSpec['plan']> {
  const waves = assignWaves({ ...spec, plan: null }, ids);
  const n = spec.waves.length + 1;
  const last: string[] = Array.from({ length: n }, () => '');
  const counts: number[] = Array.from({ length: n }, () => 0);
  for (const [id, w] of waves) {
    counts[w]++;
    const r = rank(spec.id, id);
    if (r > last[w]) last[w] = r;
  }
  return { last, counts };
}

export function failuresOf(all: Map<string, NodeEntry>): [string, NodeEntry][] {
  return [...all].filter(([, e]) => e.phase === 'failed').sort(([a], [b]) => (a < b ? -1 : 1));
}

function phaseOf(f: NodeFacts, prev: NodeEntry | undefined, spec: RolloutSpec): NodePhase {
  if (prev?.phase === 'reverting' || prev?.phase === 'reverted') return prev.from && f.running === prev.from && f.settled ? 'reverted' : 'reverting';
  if (f.progress === 'confirmed') return 'confirmed';
  if (FAILED.has(f.progress)) return 'failed';
  if (f.progress === 'inProgress') return 'inProgress';
  if (spec.minBattery !== null && f.battery !== null && f.battery < spec.minBattery) return 'skipped';
  return 'waiting';
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

export function step(prev: RolloutState, input: RolloutInput, now: number): { state: RolloutState; effects: RolloutEffect[] } {
  const effects: RolloutEffect[] = [];
  let s: RolloutState = { ...prev, nodes: { ...prev.nodes }, peers: { ...prev.peers } };
  const wake = new Set<string>();
  switch (input.kind) {
    case 'command': {
      if (input.spec.seq <= s.spec.seq || input.spec.id !== s.spec.id) return { state: prev, effects };
      s.spec = input.spec;
      const c = input.spec.command;
      const k = s.status.kind;
      if (c === 'abort' && k !== 'aborted') {
        s.status = { kind: 'aborted', reason: 'aborted by the operator' };
        effects.push({ kind: 'event', detail: `rollout ${s.spec.id} aborted by the operator` });
      } else if (c === 'pause' && (k === 'running' || k === 'halted')) {
        s.status = { kind: 'paused' };
        effects.push({ kind: 'event', detail: `rollout ${s.spec.id} paused` });
      } else if (c === 'run' && (k === 'paused' || k === 'halted')) {
        if (k === 'halted') s.accepted = failuresOf(merged(s)).length;
        s.status = { kind: 'running' };
        effects.push({ kind: 'event', detail: `rollout ${s.spec.id} resumed at wave ${s.wave}` });
        for (const id of Object.keys(s.nodes)) wake.add(id);
      }
      break;
    }
    case 'facts':
      for (const f of input.nodes) {
        const had = s.nodes[f.id];
        if (!targets(s.spec, f)) {
          if (had && had.phase === 'waiting') delete s.nodes[f.id];
          continue;
        }
        const phase = phaseOf(f, had, s.spec);
        const ended = phase === 'confirmed' || phase === 'failed';
        const entry: NodeEntry = {
          wave: had?.wave ?? 0,
          phase,
          outcome: ended ? f.progress : had?.phase === 'reverting' || had?.phase === 'reverted' ? had.outcome : null,
          reason: ended || phase === 'reverting' ? f.reason : phase === 'skipped' ? 'battery' : null,
          detail: phase === 'skipped' ? `battery ${f.battery}% is below --min-battery ${s.spec.minBattery}%` : ended || phase === 'reverting' ? f.detail.slice(0, 200) : '',
          // The image before the rollout's: kept from the update's start for auto-revert.
          from: had?.from ?? (phase === 'waiting' || phase === 'skipped' || phase === 'inProgress' ? (f.running !== s.spec.digest ? f.running : null) : null),
        };
        // Halted with auto-revert: a node whose update was under way at the halt goes back once it confirms.
        if (phase === 'confirmed' && entry.from && s.status.kind === 'halted' && s.spec.autoRevert) {
          Object.assign(entry, { phase: 'reverting', detail: 'auto-revert: offered its previous release' });
          wake.add(f.id);
        }
        if (had?.phase === 'skipped' && phase === 'waiting') wake.add(f.id);
        if (!had) wake.add(f.id);
        if (!had || !same(had, entry)) s.nodes[f.id] = entry;
      }
      break;
    case 'forget':
      delete s.nodes[input.id];
      break;
    case 'peer':
      if (input.state) s.peers[input.agent] = input.state;
      else delete s.peers[input.agent];
      break;
    case 'tick':
      break;
  }
  // Waves are recomputed only when the set of nodes may have changed (a sort over the fleet).
  const members = input.kind === 'peer' || input.kind === 'forget' || Object.keys(s.nodes).length !== Object.keys(prev.nodes).length;
  s = settle(s, now, effects, wake, members);
  if (wake.size > 0) effects.push({ kind: 'consider', devices: [...wake].sort() });
  // Entries are replaced only when they change, so comparing references finds every change cheaply.
  const keys = Object.keys(s.nodes);
  const nodesChanged = keys.length !== Object.keys(prev.nodes).length || keys.some((k) => prev.nodes[k] !== s.nodes[k]);
  if (nodesChanged || !same(prev.status, s.status) || prev.wave !== s.wave) effects.unshift({ kind: 'publish' });
  return { state: s, effects };
}

/** Waves, halts and completion from the merged view of all agents. */
function settle(s: RolloutState, now: number, effects: RolloutEffect[], wake: Set<string>, members: boolean): RolloutState {
  // Wave membership: a node keeps the wave it was offered in; the others are placed by rank.
  if (members) {
    const waves = assignWaves(s.spec, merged(s).keys());
    for (const [id, e] of Object.entries(s.nodes)) {
      const w = waves.get(id) ?? e.wave;
      if ((e.phase === 'waiting' || e.phase === 'skipped') && e.wave !== w) s.nodes[id] = { ...e, wave: w };
    }
  }
  const view = merged(s);
  const open = inWindow(s.spec.window, minuteOfDay(now));
  if (open && !s.windowOpen) for (const id of Object.keys(s.nodes)) wake.add(id);
  s.windowOpen = open;
  if (s.status.kind !== 'running' && s.status.kind !== 'done') return s;
  const failures = failuresOf(view);
  const limit = resolveAmount(s.spec.maxFailures, view.size);
  if (!s.spec.auto && failures.length - s.accepted > limit && s.status.kind === 'running') {
    const list = failures.map(([id, e]) => `${id} ${e.outcome}${e.reason ? ` (${e.reason})` : ''}`).join(', ');
    const reason = `halted in wave ${s.wave}${s.wave === 0 ? ' (canary)' : ''}: ${failures.length - s.accepted} failure(s) passed --max-failures ${describeAmount(s.spec.maxFailures)}: ${list}`;
    s.status = { kind: 'halted', reason };
    effects.push({ kind: 'event', detail: `rollout ${s.spec.id} ${reason}` });
    if (s.spec.autoRevert) {
      for (const [id, e] of Object.entries(s.nodes)) {
        if (e.phase !== 'confirmed' || !e.from) continue;
        s.nodes[id] = { ...e, phase: 'reverting', detail: 'auto-revert: offered its previous release' };
        wake.add(id);
      }
    }
    return s;
  }
  const last = s.spec.waves.length;
  // With a plan, a wave also waits until as many of its nodes as planned have reported (from
  // whichever agent serves them): an agent does not run ahead of a peer it has not heard yet.
  const planned = (w: number) => (s.spec.plan ? s.spec.plan.counts.slice(0, w + 1).reduce((a, b) => a + b, 0) : 0);
  const waveDone = (w: number) => {
    const members = [...view.values()].filter((e) => e.wave <= w);
    return members.every((e) => FINISHED.has(e.phase)) && members.length >= planned(w);
  };
  while (s.wave < last && waveDone(s.wave)) {
    s.wave++;
    effects.push({ kind: 'event', detail: `rollout ${s.spec.id}: wave ${s.wave} of ${last} starts` });
    for (const [id, e] of Object.entries(s.nodes)) if (e.wave <= s.wave && e.phase === 'waiting') wake.add(id);
  }
  if (s.wave === last && waveDone(last) && view.size > 0 && s.status.kind === 'running') {
    s.status = { kind: 'done' };
    effects.push({ kind: 'event', detail: `rollout ${s.spec.id} done` });
  }
  return s;
}

export type OfferVerdict = { kind: 'offer'; wave: number } | { kind: 'revert'; to: string; wave: number } | { kind: 'hold'; why: string };

/** Whether the rollout lets this node be offered its release now (pure; `now` gives the window). */
export function offerFor(s: RolloutState, id: string, now: number): OfferVerdict {
  const e = s.nodes[id];
  if (!e) return { kind: 'hold', why: 'not in the rollout' };
  if (e.phase === 'reverting' && e.from) return { kind: 'revert', to: e.from, wave: e.wave };
  switch (s.status.kind) {
    case 'aborted':
      return { kind: 'hold', why: 'rollout aborted' };
    case 'paused':
      return { kind: 'hold', why: 'rollout paused' };
    case 'halted':
      return { kind: 'hold', why: 'rollout halted' };
    default:
  }
  if (e.phase === 'skipped') return { kind: 'hold', why: e.detail };
  // Done: nodes that show up later join the last wave.
  if (s.status.kind === 'running' && e.wave > s.wave) return { kind: 'hold', why: `waiting for wave ${e.wave}` };
  if (!inWindow(s.spec.window, minuteOfDay(now))) return { kind: 'hold', why: `outside the window ${s.spec.window}` };
  return { kind: 'offer', wave: e.wave };
}
