import { codedFragment } from './fec.js';
import { MAX_FRAGMENT_COUNTER } from './fec-decoder.js';
import { chooseRepairCount, planRepair } from './redundancy.js';
import { encodeRequests, TS004_PORT, type Ts004Request } from './ts004.js';

/**
 * The server side of one TS004 data block (docs/lora.md §7.3–7.4) as a pure state machine: setup, the uncoded
 * then coded fragments, a status request, repair rounds planned from what each node reports, then delete.
 * One member is unicast; several share one fragment stream (multicast) with per-node status and repair that
 * goes unicast when only one node still needs it. Every downlink is a `send` effect; the runtime transmits it
 * when the duty-cycle scheduler allows and answers with `sent`, so the machine paces itself one frame at a time.
 */

export type Target = { kind: 'group' } | { kind: 'node'; devEui: string };

export interface SessionConfig {
  members: readonly string[];
  multicast: boolean;
  fragIndex: number;
  descriptor: number;
  /** The block split into M fragments of fragSize (last one zero-padded). */
  fragments: readonly Uint8Array[];
  padding: number;
  /** Loss assumed for the first round (measured on earlier blocks). */
  loss: number;
  /**
   * Coded fragments in the first round beyond the expected need M·p/(1−p). The repair round, sized from what
   * the node reports, covers the rest: cheaper on average than a p99 first round (docs/lora.md §5).
   */
  firstRoundMargin: number;
  /** Decode probability each repair round aims at (lower: less airtime, more rounds). */
  repairTarget: number;
  /** How long to wait for answers after a setup or status request was transmitted. */
  answerTimeoutMs: number;
  maxRounds: number;
  maxTries: number;
  /**
   * Every member sends ferry's lstatus bitmap pages after its FragSessionStatusAns (a stock TS004 node does not).
   * The first round is then the M uncoded fragments alone: what each node lacks comes back exactly, and repair is
   * planned from it instead of from a presumed loss.
   */
  pages: boolean;
  /**
   * Unicast to a ferry node (docs/lora.md §7.3 step 4): every status request goes with a re-setup of the same block,
   * which keeps the data fragments the node holds and lets it take counters from 1 again, so a repair round resends
   * exactly the uncoded fragments it lacks. Each one received is new to it: airtime M/(1−p) on average, the least any
   * scheme can spend, with no parity row wasted on rank. Needs `pages`.
   */
  resendUncoded: boolean;
  /** Resume: per node, the data fragments it still lacks (after a reboot); the uncoded round is skipped. */
  resumeUnknown?: Readonly<Record<string, readonly number[]>>;
}

interface MemberAnswer {
  missing?: number;
  received?: number;
  memoryError?: boolean;
  /** lstatus key 3: M − rank, exact (StatusAns' MissingFrag stops at 255). */
  deficiency?: number;
  indices: number[];
  lastPage: boolean;
}

export type Phase =
  | { kind: 'idle' }
  | { kind: 'setup'; waiting: string[]; tries: number; deadline: number | null }
  | { kind: 'sending'; counters: number[]; pos: number; to: Target }
  | { kind: 'status'; tries: number; deadline: number | null; answers: Record<string, MemberAnswer> }
  | { kind: 'done' }
  | { kind: 'failed'; reason: string };

export interface SessionState {
  cfg: SessionConfig;
  phase: Phase;
  /** Members still in the session (a member that fails leaves; the others go on). */
  active: string[];
  completed: string[];
  /** Fragments sent that reach each member (group frames reach all). */
  sentTo: Record<string, number>;
  loss: Record<string, number>;
  nextCounter: number;
  rounds: number;
  /** A send is out: nothing else goes until the runtime says `sent`. */
  outstanding: number;
  fragmentsSent: number;
  /** Fragments each member reported received, summed over re-setups (each re-setup restarts its count). */
  heard: Record<string, number>;
}

export type SessionInput =
  | { kind: 'start' }
  | { kind: 'sent' }
  /** The LNS put the last frame sent on the air (its txack): the answer timeout starts now. */
  | { kind: 'onAir' }
  | { kind: 'tick' }
  | { kind: 'setupAns'; devEui: string; ok: boolean; detail: string }
  | { kind: 'statusAns'; devEui: string; received: number; missing: number; memoryError: boolean }
  /** One lstatus page: the node's rank deficiency and some of its unsolved data fragments (0-based). */
  | { kind: 'statusPage'; devEui: string; deficiency: number; indices: readonly number[]; last: boolean }
  /** The LNS refused a frame as too big for the current data rate: the runtime sets up again smaller. */
  | { kind: 'tooBig'; devEui?: string }
  | { kind: 'cancel'; reason: string };

export type SessionReport =
  | { kind: 'round'; round: number; fragments: number; to: Target }
  | { kind: 'memberDone'; devEui: string; loss: number }
  /** `alone`: the node only fell silent or behind; it may well finish the block by itself (unicast). */
  | { kind: 'memberFailed'; devEui: string; reason: string; alone: boolean }
  | { kind: 'done'; fragmentsSent: number }
  | { kind: 'failed'; reason: string };

export type SessionEffect =
  | { kind: 'send'; to: Target; fPort: number; bytes: Uint8Array; fragment: boolean }
  | { kind: 'wakeAt'; at: number }
  | { kind: 'report'; report: SessionReport };

export interface StepResult {
  state: SessionState;
  effects: SessionEffect[];
}

export function initialSession(cfg: SessionConfig): SessionState {
  if (cfg.members.length === 0) throw new RangeError('a session needs at least one member');
  if (!cfg.multicast && cfg.members.length !== 1) throw new RangeError('a unicast session has exactly one member');
  if (cfg.resendUncoded && (cfg.multicast || !cfg.pages)) throw new RangeError('resending uncoded fragments needs a unicast session with lstatus pages');
  const m = cfg.fragments.length;
  return {
    cfg,
    phase: { kind: 'idle' },
    active: [...cfg.members],
    completed: [],
    sentTo: Object.fromEntries(cfg.members.map((d) => [d, 0])),
    loss: Object.fromEntries(cfg.members.map((d) => [d, cfg.loss])),
    nextCounter: m + 1,
    rounds: 0,
    outstanding: 0,
    fragmentsSent: 0,
    heard: Object.fromEntries(cfg.members.map((d) => [d, 0])),
  };
}

const m = (s: SessionState) => s.cfg.fragments.length;
const groupOrNode = (s: SessionState, devEui?: string): Target =>
  s.cfg.multicast && devEui === undefined ? { kind: 'group' } : { kind: 'node', devEui: devEui ?? s.active[0] };

function ts004(to: Target, req: Ts004Request, fragment = false): SessionEffect {
  return { kind: 'send', to, fPort: TS004_PORT, bytes: encodeRequests([req]), fragment };
}

function setupRequest(s: SessionState): Ts004Request {
  const c = s.cfg;
  return {
    cmd: 'FragSessionSetupReq', fragIndex: c.fragIndex, mcGroupBitMask: c.multicast ? 1 : 0, nbFrag: m(s),
    fragSize: c.fragments[0].length, fragAlgo: 0, blockAckDelay: c.multicast ? 1 : 0, padding: c.padding, descriptor: c.descriptor,
  };
}

function setupEffects(s: SessionState, to: Target[]): SessionEffect[] {
  return to.map((t) => ts004(t, setupRequest(s)));
}

/** A status request; for `resendUncoded` in one frame with the re-setup that readies the node for the next round. */
function statusEffect(s: SessionState, to: Target): SessionEffect {
  const req: Ts004Request = { cmd: 'FragSessionStatusReq', fragIndex: s.cfg.fragIndex, participants: true };
  return { kind: 'send', to, fPort: TS004_PORT, bytes: encodeRequests(s.cfg.resendUncoded ? [req, setupRequest(s)] : [req]), fragment: false };
}

function finish(s: SessionState, effects: SessionEffect[]): StepResult {
  if (s.active.length === 0 && s.completed.length === 0) {
    return { state: { ...s, phase: { kind: 'failed', reason: 'every member failed' } }, effects: [...effects, report({ kind: 'failed', reason: 'every member failed' })] };
  }
  const del = (t: Target) => ts004(t, { cmd: 'FragSessionDeleteReq', fragIndex: s.cfg.fragIndex });
  // A delete on a group is ignored (TS004 takes it unicast only), and one per member would cost a fleet's worth of
  // frames for nothing: a member's finished session simply waits until its FragIndex is set up again.
  const dels = s.cfg.multicast ? [] : s.completed.map((d) => del({ kind: 'node', devEui: d }));
  return { state: { ...s, phase: { kind: 'done' }, outstanding: s.outstanding + dels.length }, effects: [...effects, ...dels, report({ kind: 'done', fragmentsSent: s.fragmentsSent })] };
}

const report = (r: SessionReport): SessionEffect => ({ kind: 'report', report: r });

function startRound(s: SessionState, counters: number[], to: Target, effects: SessionEffect[]): StepResult {
  const rounds = s.rounds + 1;
  const next = { ...s, rounds, phase: { kind: 'sending', counters, pos: 0, to } as Phase };
  return sendNext(next, [...effects, report({ kind: 'round', round: rounds, fragments: counters.length, to })]);
}

/** Sends the next fragment of the round, or the status request once all went out. */
function sendNext(s: SessionState, effects: SessionEffect[]): StepResult {
  const p = s.phase;
  if (p.kind !== 'sending') return { state: s, effects };
  if (p.pos < p.counters.length) {
    const n = p.counters[p.pos];
    const payload = n <= m(s) ? s.cfg.fragments[n - 1] : codedFragment(s.cfg.fragments, n);
    const reached = p.to.kind === 'group' ? s.active : [p.to.devEui];
    const sentTo = { ...s.sentTo };
    for (const d of reached) sentTo[d] = (sentTo[d] ?? 0) + 1;
    const state: SessionState = {
      ...s, sentTo, outstanding: 1, fragmentsSent: s.fragmentsSent + 1, nextCounter: Math.max(s.nextCounter, n + 1),
      phase: { ...p, pos: p.pos + 1 },
    };
    return { state, effects: [...effects, ts004(p.to, { cmd: 'DataFragment', fragIndex: s.cfg.fragIndex, counter: n, payload }, true)] };
  }
  const to = p.to;
  const answers: Record<string, MemberAnswer> = {};
  const state: SessionState = { ...s, outstanding: 1, phase: { kind: 'status', tries: 1, deadline: null, answers } };
  return { state, effects: [...effects, statusEffect(s, to)] };
}

function firstRound(s: SessionState, effects: SessionEffect[]): StepResult {
  const resume = s.cfg.resumeUnknown;
  if (resume) {
    const byNode = s.active.map((d) => resume[d] ?? []);
    if (byNode.every((l) => l.length === 0)) {
      return finish({ ...s, completed: [...s.active], active: [] }, effects);
    }
    return repairRound(s, Object.fromEntries(s.active.map((d, i) => [d, { indices: [...byNode[i]], lastPage: true, deficiency: byNode[i].length }])), effects);
  }
  const loss = Math.max(...s.active.map((d) => s.loss[d]));
  const r = loss === 0 || s.cfg.pages ? 0 : Math.ceil((m(s) * loss) / (1 - loss)) + s.cfg.firstRoundMargin;
  const counters = Array.from({ length: m(s) + r }, (_, i) => i + 1);
  return startRound(s, counters, groupOrNode(s), effects);
}

/** Plans the next round from the members' answers (bitmaps where complete, counts otherwise). */
function repairRound(s: SessionState, needs: Record<string, Pick<MemberAnswer, 'indices' | 'lastPage' | 'deficiency' | 'missing'>>, effects: SessionEffect[]): StepResult {
  const needy = Object.keys(needs);
  const loss = Math.max(0, ...needy.map((d) => s.loss[d]));
  // The unsolved list alone plans exactly only when the node holds no parity rows over it (deficiency = list
  // length, e.g. after a reboot); otherwise fresh rows against the deficiency cost far less than a basis.
  const complete = (a: (typeof needs)[string]) => a.lastPage && a.deficiency !== undefined && a.indices.length === a.deficiency;
  const withLists = needy.filter((d) => complete(needs[d]));
  let counters: number[] = [];
  if (s.cfg.resendUncoded && withLists.length === 1) {
    counters = [...new Set(needs[withLists[0]].indices)].sort((a, b) => a - b).map((i) => i + 1);
    return startRound(s, counters, { kind: 'node', devEui: withLists[0] }, effects);
  }
  try {
    if (withLists.length > 0) counters = planRepair({ m: m(s), missingByNode: withLists.map((d) => needs[d].indices), nextCounter: s.nextCounter, loss, target: s.cfg.repairTarget }).counters;
    const countOnly = needy.filter((d) => !complete(needs[d]));
    const extra = Math.max(0, ...countOnly.map((d) => repairCount(m(s), needs[d].deficiency ?? needs[d].missing ?? 1, s.loss[d], s.cfg.repairTarget)));
    const from = counters.length ? counters[counters.length - 1] + 1 : s.nextCounter;
    for (let k = 0; k < extra; k++) counters.push(from + k);
    if (counters.length && counters[counters.length - 1] > MAX_FRAGMENT_COUNTER) throw new RangeError('counters run past 16,383');
  } catch (err) {
    return fail(s, `repair cannot be planned: ${(err as Error).message}`, effects);
  }
  const to: Target = s.cfg.multicast && needy.length > 1 ? { kind: 'group' } : { kind: 'node', devEui: needy[0] };
  return startRound(s, counters, to, effects);
}

function fail(s: SessionState, reason: string, effects: SessionEffect[]): StepResult {
  return { state: { ...s, phase: { kind: 'failed', reason }, outstanding: 0 }, effects: [...effects, report({ kind: 'failed', reason })] };
}

function dropMember(s: SessionState, devEui: string, reason: string, effects: SessionEffect[], alone = false): SessionState {
  effects.push(report({ kind: 'memberFailed', devEui, reason, alone }));
  return { ...s, active: s.active.filter((d) => d !== devEui) };
}

/** All answers are in (or the deadline passed): members done leave, the rest get a repair round. */
function judgeStatus(s: SessionState, answers: Record<string, MemberAnswer>, effects: SessionEffect[]): StepResult {
  let next = s;
  const needs: Record<string, MemberAnswer> = {};
  for (const d of s.active) {
    const a = answers[d];
    if (a.memoryError) {
      next = dropMember(next, d, 'not enough matrix memory', effects);
      continue;
    }
    if (a.received !== undefined && next.sentTo[d] > 0) {
      const heard = s.cfg.resendUncoded ? next.heard[d] + a.received : a.received;
      next = { ...next, heard: { ...next.heard, [d]: heard }, loss: { ...next.loss, [d]: measuredLoss(next.sentTo[d], heard, s.cfg.loss) } };
    }
    if (a.missing === 0) {
      next = { ...next, active: next.active.filter((x) => x !== d), completed: [...next.completed, d] };
      effects.push(report({ kind: 'memberDone', devEui: d, loss: next.loss[d] }));
    } else needs[d] = a;
  }
  if (next.active.length === 0) return finish(next, effects);
  if (next.rounds >= s.cfg.maxRounds) {
    for (const d of [...next.active]) next = dropMember(next, d, `still missing fragments after ${s.cfg.maxRounds} rounds`, effects, true);
    return finish(next, effects);
  }
  return repairRound(next, needs, effects);
}

/** chooseRepairCount, or for a block too small for the model (M < 4: sparse or empty rows) twice the deficiency plus 2. */
function repairCount(m: number, deficiency: number, loss: number, target: number): number {
  try {
    return chooseRepairCount(m, deficiency, loss, target);
  } catch {
    return 2 * deficiency + 2;
  }
}

/** Loss seen by one node, with the session's prior worth 10 fragments so a small block cannot swing it wildly. */
function measuredLoss(sent: number, received: number, prior: number): number {
  const lost = Math.max(0, sent - Math.min(received, sent));
  return Math.min(MAX_PLANNED_LOSS, (lost + prior * PRIOR_WEIGHT) / (sent + PRIOR_WEIGHT));
}
const PRIOR_WEIGHT = 10;
/**
 * A request handed to the LNS but not yet reported on the air is given this many answer timeouts: a Class A
 * frame waits there for the node's next uplink, and an LNS that never reports the transmission still gets retried.
 */
export const AIR_WAIT_FACTOR = 4;
/** Beyond this the repair planner is asked for no more margin: another round costs less than a blind flood. */
const MAX_PLANNED_LOSS = 0.6;

const answered = (s: SessionState, a: MemberAnswer | undefined) =>
  a !== undefined && a.missing !== undefined && (a.missing === 0 || a.memoryError === true || a.lastPage || !s.cfg.pages);

export function step(s: SessionState, input: SessionInput, now: number): StepResult {
  const p = s.phase;
  if (p.kind === 'done' || p.kind === 'failed') return { state: s, effects: [] };
  if (input.kind === 'cancel') return fail(s, input.reason, []);
  if (input.kind === 'tooBig') return fail(s, 'fragment too big for the data rate', []);
  switch (input.kind) {
    case 'start': {
      if (p.kind !== 'idle') return { state: s, effects: [] };
      const targets: Target[] = s.cfg.multicast ? [{ kind: 'group' }] : [{ kind: 'node', devEui: s.active[0] }];
      const effects = setupEffects(s, targets);
      return { state: { ...s, outstanding: effects.length, phase: { kind: 'setup', waiting: [...s.active], tries: 1, deadline: null } }, effects };
    }
    case 'sent': {
      const outstanding = Math.max(0, s.outstanding - 1);
      const next = { ...s, outstanding };
      if (p.kind === 'sending') return outstanding === 0 ? sendNext(next, []) : { state: next, effects: [] };
      if (p.kind === 'status' && outstanding === 0 && s.active.every((d) => answered(s, p.answers[d]))) return judgeStatus(next, p.answers, []);
      if ((p.kind === 'setup' || p.kind === 'status') && outstanding === 0) {
        // Until the LNS says the frame is on the air (onAir), it may be waiting for a Class A window.
        const at = now + AIR_WAIT_FACTOR * s.cfg.answerTimeoutMs;
        return { state: { ...next, phase: { ...p, deadline: at } }, effects: [{ kind: 'wakeAt', at }] };
      }
      return { state: next, effects: [] };
    }
    case 'onAir': {
      if ((p.kind !== 'setup' && p.kind !== 'status') || s.outstanding > 0 || p.deadline === null) return { state: s, effects: [] };
      const at = now + s.cfg.answerTimeoutMs;
      return { state: { ...s, phase: { ...p, deadline: at } }, effects: [{ kind: 'wakeAt', at }] };
    }
    case 'tick': {
      if ((p.kind !== 'setup' && p.kind !== 'status') || p.deadline === null || now < p.deadline) return { state: s, effects: [] };
      if (p.kind === 'setup') {
        if (p.tries >= s.cfg.maxTries) {
          const effects: SessionEffect[] = [];
          let next = s;
          for (const d of p.waiting) next = dropMember(next, d, `no FragSessionSetupAns after ${p.tries} tries`, effects, true);
          if (next.active.length === 0) return fail(next, 'no member answered the setup', effects);
          return firstRound(next, effects);
        }
        const targets: Target[] = s.cfg.multicast ? [{ kind: 'group' }] : p.waiting.map((d) => ({ kind: 'node', devEui: d }));
        const effects = setupEffects(s, targets);
        return { state: { ...s, outstanding: effects.length, phase: { ...p, tries: p.tries + 1, deadline: null } }, effects };
      }
      const silent = s.active.filter((d) => !answered(s, p.answers[d]));
      if (silent.length === 0) return judgeStatus(s, p.answers, []);
      if (p.tries >= s.cfg.maxTries) {
        const effects: SessionEffect[] = [];
        let next = s;
        const answers = { ...p.answers };
        for (const d of silent) {
          // A count without its full bitmap is still an answer; total silence is not.
          if (answers[d]?.missing !== undefined) answers[d] = { ...answers[d], lastPage: true };
          else next = dropMember(next, d, `no FragSessionStatusAns after ${p.tries} tries`, effects, true);
        }
        if (next.active.length === 0) return fail(next, 'no member answered the status request', effects);
        return judgeStatus(next, answers, effects);
      }
      const to = s.cfg.multicast && silent.length > 1 ? [{ kind: 'group' } as Target] : silent.map((d) => ({ kind: 'node', devEui: d }) as Target);
      const effects = to.map((t) => statusEffect(s, t));
      return { state: { ...s, outstanding: effects.length, phase: { ...p, tries: p.tries + 1, deadline: null } }, effects };
    }
    case 'setupAns': {
      if (p.kind !== 'setup' || !p.waiting.includes(input.devEui)) return { state: s, effects: [] };
      const effects: SessionEffect[] = [];
      let next: SessionState = { ...s, phase: { ...p, waiting: p.waiting.filter((d) => d !== input.devEui) } };
      if (!input.ok) next = dropMember(next, input.devEui, `setup refused: ${input.detail}`, effects);
      const np = next.phase as Extract<Phase, { kind: 'setup' }>;
      if (next.active.length === 0) return fail(next, 'every member refused the setup', effects);
      if (np.waiting.length > 0) return { state: next, effects };
      return firstRound(next, effects);
    }
    case 'statusAns':
    case 'statusPage': {
      if (p.kind !== 'status' || !s.active.includes(input.devEui)) return { state: s, effects: [] };
      const prev = p.answers[input.devEui] ?? { indices: [], lastPage: false };
      const a: MemberAnswer =
        input.kind === 'statusAns'
          ? { ...prev, missing: input.missing, received: input.received, memoryError: input.memoryError }
          : { ...prev, deficiency: input.deficiency, indices: [...new Set([...prev.indices, ...input.indices])], lastPage: prev.lastPage || input.last };
      const answers = { ...p.answers, [input.devEui]: a };
      const next = { ...s, phase: { ...p, answers } };
      if (!s.active.every((d) => answered(s, answers[d]))) return { state: next, effects: [] };
      if (s.outstanding > 0) return { state: next, effects: [] };
      return judgeStatus(next, answers, []);
    }
  }
}

/** True once the session will send nothing more. */
export function isFinished(s: SessionState): boolean {
  return s.phase.kind === 'done' || s.phase.kind === 'failed';
}
