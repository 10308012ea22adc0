import { Reason, reasonName } from '../shared/errors.js';
import { Stage, type StageCode } from '../shared/messages.js';
import type { NodeStateName, Outcome } from './types.js';

/**
 * One node's update as a pure state machine: `step(update, input, now, env) -> { update, effects }`.
 * No I/O, no clock, no randomness of its own: the runtime (agent/updates.ts) feeds it inputs and
 * carries out the effects it returns (publish, timers, SQLite, the transfer window).
 */

/** A control message awaiting its answer: resent at `at`; `at` undefined = tries exhausted, waiting for the node. */
export interface Control {
  tries: number;
  at: number | undefined;
}

export type Phase =
  | { kind: 'idle' }
  | { kind: 'queued' }
  /** A transfer slot is held while the payload (full image or delta patch) is made ready. */
  | { kind: 'preparing'; deadline: number }
  | { kind: 'offered'; deadline: number; answer: Control }
  /** `answer`: an Offer went out again (the node lost or changed its transfer) and awaits its answer. */
  | { kind: 'downloading'; deadline: number; answer?: Control }
  | { kind: 'verifying'; deadline: number; answer?: Control }
  | { kind: 'activating'; deadline: number; control: Control }
  /** `askAt` undefined: the next ask would fall at or after the deadline, which ends the wait instead. */
  | { kind: 'deferred'; deadline: number; askAt: number | undefined }
  | { kind: 'confirming'; deadline: number }
  | { kind: 'done'; outcome: Outcome };

export type PhaseKind = Phase['kind'];

export interface Target {
  id: string;
  version: string;
}

export interface Update {
  phase: Phase;
  target: Target | null;
  session: number | null;
  /** Id of the latest Offer sent; only an Ack echoing it is the node's whole truth. */
  offerId: number;
  /** A newer release that waits for the outcome of the current update (activating, confirming). */
  next: Target | null;
}

/** What the runtime worked out from a Hello against the target release and the current payload. */
export interface HelloFacts {
  version: string;
  /** The node runs the target release's image. */
  runsTarget: boolean;
  recovery: boolean;
  pendingVerify: boolean;
  /** The node's last outcome, when it is for the target's version. */
  targetOutcome?: { stage: StageCode; reason: number };
  /** The node holds a download of the target (its image or the current payload). */
  holdsTarget: boolean;
  /** Its transfer-state against the current payload: same payload (and session), something else, or no payload here. */
  transfer: 'none' | 'other' | 'samePayload' | 'sameSession' | 'noPayload';
  /** After taking the Hello's bitmap, the window holds every chunk. */
  complete: boolean;
}

export interface ReportFacts {
  session: number;
  stage: StageCode;
  reason: number;
  version?: string;
  detail?: string;
  retryAfter?: number;
  /** The current session carries a delta patch. */
  deltaPayload: boolean;
}

export type AckVerdict = 'stale' | 'answer' | 'more';

export type TimerKind = 'deadline' | 'control' | 'ask';

export type Input =
  /** A transfer slot is granted for this release: make its payload ready. */
  | { kind: 'begin'; release: Target }
  /** No slot free: wait in line. */
  | { kind: 'queue'; release: Target }
  /** The payload is ready and a session id drawn: offer it. */
  | { kind: 'prepared'; release: string; session: number }
  /** A newer release for the node than the one in progress. */
  | { kind: 'newer'; release: Target }
  /** The policy or the runtime ended the update (already running, refused before offering, unusable payload). */
  | { kind: 'finish'; outcome: Outcome; reason: number; detail: string; release?: Target }
  | { kind: 'ack'; verdict: AckVerdict; session: number; complete: boolean }
  | { kind: 'report'; report: ReportFacts }
  | { kind: 'hello'; hello: HelloFacts }
  | { kind: 'timer'; timer: TimerKind }
  /** The agent (re)connected: poke a node that was mid-transfer or mid-activation. */
  | { kind: 'resume' }
  /** The session's payload cannot be rebuilt after a restart: start the transfer over. */
  | { kind: 'restart' };

export type Effect =
  | { kind: 'prepare' }
  /** Open the transfer window for the new session (the runtime holds the prepared payload). */
  | { kind: 'open'; session: number }
  /** Offer and Activate carry the update's session (and the Offer its offerId); Cancel names the session it abandons. */
  | { kind: 'send'; msg: 'offer' | 'activate' }
  | { kind: 'cancel'; session: number }
  | { kind: 'pump' }
  | { kind: 'persistBitmap' }
  /** The delta was refused for a reason that is not the release's: remember it and make the full image ready. */
  | { kind: 'fallBackToFull'; reason: number; detail: string }
  /** Forget the window and payload of the session. */
  | { kind: 'dropTransfer' }
  | { kind: 'outcome'; outcome: Outcome; reason: number; detail: string; refuse: boolean }
  | { kind: 'event'; event: string; detail: string }
  /**
   * Look again at which release the node should run (a waiting release, or a Hello with nothing in
   * progress). `lostDownload`: the node was activating but its Hello holds no download of the target.
   */
  | { kind: 'consider'; lostDownload?: boolean };

export interface FsmConfig {
  deadlines: { download: number; verify: number; install: number; confirm: number };
  maxControlRetries: number;
}

export interface Env {
  cfg: FsmConfig;
  /** The node's current retransmission timeout (ms). */
  rto: number;
  /** Uniform in [0, 1): jitter for control resends. */
  random: () => number;
}

export interface StepResult {
  update: Update;
  effects: Effect[];
}

/** Delta refusals of the release itself: a full image would be refused too, so the update ends on them. */
const RELEASE_REFUSALS: ReadonlySet<number> = new Set([
  Reason.badSignature, Reason.unknownKey, Reason.wrongHardware, Reason.downgrade, Reason.securityDowngrade, Reason.noRollbackSupport, Reason.unsupportedVersion,
]);

export function assertNever(x: never): never {
  throw new Error(`unhandled case: ${JSON.stringify(x)}`);
}

export const IDLE: Update = { phase: { kind: 'idle' }, target: null, session: null, offerId: 0, next: null };

/** Phases that hold one of the maxConcurrent transfer slots. */
export function holdsSlot(p: Phase): boolean {
  return p.kind === 'preparing' || p.kind === 'offered' || p.kind === 'downloading' || p.kind === 'verifying';
}

/** Phases an update is in progress in: each has a deadline. */
export function inProgress(p: Phase): p is Extract<Phase, { deadline: number }> {
  switch (p.kind) {
    case 'idle':
    case 'queued':
    case 'done':
      return false;
    case 'preparing':
    case 'offered':
    case 'downloading':
    case 'verifying':
    case 'activating':
    case 'deferred':
    case 'confirming':
      return true;
    default:
      return assertNever(p);
  }
}

type TransferPhase = Extract<Phase, { kind: 'offered' | 'downloading' | 'verifying' }>;
function isTransfer(p: Phase): p is TransferPhase {
  return p.kind === 'offered' || p.kind === 'downloading' || p.kind === 'verifying';
}

/** The name stored and shown for a phase (preparing shows as offered: the slot is claimed for the Offer). */
export function stateName(p: Phase): NodeStateName {
  switch (p.kind) {
    case 'done':
      return p.outcome;
    case 'preparing':
      return 'offered';
    case 'idle':
    case 'queued':
    case 'offered':
    case 'downloading':
    case 'verifying':
    case 'activating':
    case 'deferred':
    case 'confirming':
      return p.kind;
    default:
      return assertNever(p);
  }
}

/** Timers the phase needs, keyed by kind, with when they fire. */
export function timersOf(u: Update): Partial<Record<TimerKind, number>> {
  const p = u.phase;
  const out: Partial<Record<TimerKind, number>> = {};
  if (inProgress(p)) out.deadline = p.deadline;
  switch (p.kind) {
    case 'offered':
    case 'downloading':
    case 'verifying':
      if (p.answer?.at !== undefined) out.control = p.answer.at;
      break;
    case 'activating':
      if (p.control.at !== undefined) out.control = p.control.at;
      break;
    case 'deferred':
      if (p.askAt !== undefined) out.ask = p.askAt;
      break;
    default:
      break;
  }
  return out;
}

/** Whether an Ack is stale, the answer to the latest Offer, or news about more chunks. */
export function classifyAck(u: Update, ack: { session: number; answers?: number }): AckVerdict {
  if (ack.session !== u.session || !isTransfer(u.phase)) return 'stale';
  return ack.answers !== undefined && ack.answers === u.offerId ? 'answer' : 'more';
}

/** Whether a report can be news in this phase; anything else is a duplicate or arrived too late. */
export function reportFits(r: { session: number; stage: number }, p: Phase): boolean {
  const transfer = isTransfer(p);
  const awaitingBoot = p.kind === 'activating' || p.kind === 'deferred' || p.kind === 'confirming';
  switch (r.stage) {
    case Stage.rejected:
      // Session 0: the node refused a message it could not even read; only a live transfer cares.
      // Once the node said it is rebooting into the image, a refusal for the session is a late
      // answer to a resent Activate: the boot that follows says how it went.
      return r.session === 0 ? transfer : transfer || p.kind === 'activating' || p.kind === 'deferred';
    case Stage.verified:
      return transfer;
    case Stage.busy:
    case Stage.rebooting:
      return p.kind === 'activating' || p.kind === 'deferred';
    case Stage.confirmed:
      return transfer || awaitingBoot;
    case Stage.rolledBack:
    case Stage.failed:
      return awaitingBoot;
    default:
      return false;
  }
}

function controlAfter(tries: number, now: number, env: Env): Control {
  if (tries >= env.cfg.maxControlRetries) return { tries, at: undefined };
  const ms = env.rto * 2 ** Math.min(tries, 6);
  return { tries: tries + 1, at: now + Math.round(ms / 2 + env.random() * (ms / 2)) };
}

function stageOfPhase(p: PhaseKind): string {
  switch (p) {
    case 'preparing':
    case 'offered':
    case 'downloading':
      return 'download';
    case 'verifying':
      return 'verify';
    case 'activating':
    case 'deferred':
      return 'install';
    default:
      return 'confirm';
  }
}

/** Ends the update with an outcome; a release waiting for it is considered at once. */
function finish(u: Update, outcome: Outcome, reason: number, detail: string, effects: Effect[]): StepResult {
  const refuse = outcome === 'rolledBack' || outcome === 'rejected';
  effects.push({ kind: 'outcome', outcome, reason, detail, refuse });
  const waiting = u.next !== null;
  const update: Update = { ...u, phase: { kind: 'done', outcome }, session: outcome === 'confirmed' ? u.session : null, next: null };
  if (waiting) effects.push({ kind: 'consider' });
  return { update, effects };
}

function sendOffer(u: Update, p: TransferPhase, now: number, env: Env, effects: Effect[], tries = 0): Update {
  effects.push({ kind: 'send', msg: 'offer' });
  const answer = controlAfter(tries, now, env);
  const phase: Phase = p.kind === 'offered' ? { ...p, answer } : { ...p, answer };
  return { ...u, offerId: u.offerId + 1, phase };
}

function sendActivate(u: Update, deadline: number, now: number, env: Env, effects: Effect[], tries = 0): Update {
  effects.push({ kind: 'send', msg: 'activate' });
  return { ...u, phase: { kind: 'activating', deadline, control: controlAfter(tries, now, env) } };
}

export function step(u: Update, input: Input, now: number, env: Env): StepResult {
  const effects: Effect[] = [];
  const p = u.phase;
  const d = env.cfg.deadlines;
  switch (input.kind) {
    case 'begin': {
      const sameTarget = u.target?.id === input.release.id;
      if (holdsSlot(p) && sameTarget) return { update: u, effects };
      const busy = holdsSlot(p) || p.kind === 'deferred' || p.kind === 'activating' || p.kind === 'confirming';
      if (busy && !sameTarget) return stepNewer(u, input.release, now, env, effects);
      // From idle, done, or an activation whose download the node has lost: a fresh transfer.
      effects.push({ kind: 'dropTransfer' }, { kind: 'prepare' });
      return { update: { ...u, phase: { kind: 'preparing', deadline: now + d.download }, target: input.release, session: null }, effects };
    }

    case 'queue':
      if (holdsSlot(p) || p.kind === 'deferred') return stepNewer(u, input.release, now, env, effects);
      effects.push({ kind: 'dropTransfer' });
      return { update: { ...u, phase: { kind: 'queued' }, target: input.release, session: null }, effects };

    case 'prepared': {
      if (p.kind !== 'preparing' || u.target?.id !== input.release) return { update: u, effects };
      effects.push({ kind: 'open', session: input.session });
      const offered: Update = { ...u, session: input.session, phase: { kind: 'offered', deadline: p.deadline, answer: { tries: 0, at: undefined } } };
      return { update: sendOffer(offered, offered.phase as TransferPhase, now, env, effects), effects };
    }

    case 'newer':
      return stepNewer(u, input.release, now, env, effects);

    case 'finish':
      effects.push({ kind: 'dropTransfer' });
      return finish(input.release ? { ...u, target: input.release } : u, input.outcome, input.reason, input.detail, effects);

    case 'ack':
      return stepAck(u, input, now, env, effects);

    case 'report':
      return stepReport(u, input.report, now, env, effects);

    case 'hello':
      return stepHello(u, input.hello, now, env, effects);

    case 'timer':
      return stepTimer(u, input.timer, now, env, effects);

    case 'resume':
      if (isTransfer(p) && u.session !== null) return { update: sendOffer(u, p, now, env, effects), effects };
      if (p.kind === 'preparing') {
        effects.push({ kind: 'prepare' });
        return { update: u, effects };
      }
      if ((p.kind === 'activating' || p.kind === 'deferred') && u.session !== null) return { update: sendActivate(u, p.deadline, now, env, effects), effects };
      return { update: u, effects };

    case 'restart':
      if (!isTransfer(p)) return { update: u, effects };
      effects.push({ kind: 'dropTransfer' }, { kind: 'prepare' });
      return { update: { ...u, session: null, phase: { kind: 'preparing', deadline: now + d.download } }, effects };

    default:
      return assertNever(input);
  }
}

/**
 * A newer release than the one in progress. Before activation the session is abandoned (Cancel, then
 * the newer release is considered at once); while the node activates or boots the image, the newer
 * release waits for that outcome.
 */
function stepNewer(u: Update, release: Target, now: number, env: Env, effects: Effect[]): StepResult {
  const p = u.phase;
  if (u.target?.id === release.id) return { update: u, effects };
  switch (p.kind) {
    case 'idle':
    case 'done':
      effects.push({ kind: 'consider' });
      return { update: u, effects };
    case 'queued':
      return { update: { ...u, target: release }, effects };
    case 'preparing':
      effects.push({ kind: 'prepare' });
      return { update: { ...u, target: release }, effects };
    case 'offered':
    case 'downloading':
    case 'verifying':
    case 'deferred': {
      if (u.session !== null) effects.push({ kind: 'cancel', session: u.session });
      effects.push({ kind: 'dropTransfer' });
      const r = finish({ ...u, next: release }, 'cancelled', Reason.cancelled, `replaced by ${release.version}`, effects);
      return r;
    }
    case 'activating':
    case 'confirming':
      return { update: { ...u, next: release }, effects };
    default:
      return assertNever(p);
  }
}

function stepAck(u: Update, a: { verdict: AckVerdict; complete: boolean }, now: number, env: Env, effects: Effect[]): StepResult {
  const p = u.phase;
  if (a.verdict === 'stale' || !isTransfer(p)) return { update: u, effects };
  if (a.verdict === 'answer') {
    if (a.complete) {
      if (p.kind === 'verifying') return { update: { ...u, phase: { kind: 'verifying', deadline: p.deadline } }, effects };
      effects.push({ kind: 'persistBitmap' });
      return { update: { ...u, phase: { kind: 'verifying', deadline: now + env.cfg.deadlines.verify } }, effects };
    }
    effects.push({ kind: 'pump' });
    const deadline = p.kind === 'verifying' ? now + env.cfg.deadlines.download : p.deadline;
    return { update: { ...u, phase: { kind: 'downloading', deadline } }, effects };
  }
  // More chunks, not the answer: it never ends the wait for the answer.
  if (a.complete && p.kind !== 'verifying' && p.kind !== 'offered') {
    effects.push({ kind: 'persistBitmap' });
    return { update: { ...u, phase: { kind: 'verifying', deadline: now + env.cfg.deadlines.verify } }, effects };
  }
  if (p.kind === 'downloading' && !p.answer) effects.push({ kind: 'pump' });
  return { update: u, effects };
}

function stepReport(u: Update, r: ReportFacts, now: number, env: Env, effects: Effect[]): StepResult {
  const p = u.phase;
  if ((r.session !== 0 && r.session !== u.session) || !reportFits(r, p)) {
    effects.push({ kind: 'event', event: 'stale-report', detail: `session ${r.session} stage ${r.stage} in state ${stateName(p)}` });
    return { update: u, effects };
  }
  effects.push({ kind: 'event', event: 'report', detail: `stage ${r.stage} reason ${reasonName(r.reason)}${r.detail ? ` (${r.detail})` : ''}` });
  const d = env.cfg.deadlines;
  switch (r.stage) {
    case Stage.rejected:
      if (r.deltaPayload && r.session === u.session && !RELEASE_REFUSALS.has(r.reason) && isTransfer(p)) {
        effects.push({ kind: 'fallBackToFull', reason: r.reason, detail: r.detail ?? '' }, { kind: 'dropTransfer' }, { kind: 'prepare' });
        return { update: { ...u, session: null, phase: { kind: 'preparing', deadline: now + d.download } }, effects };
      }
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'rejected', r.reason, r.detail ?? reasonName(r.reason), effects);
    case Stage.verified:
      effects.push({ kind: 'persistBitmap' });
      return { update: sendActivate(u, now + d.install, now, env, effects), effects };
    case Stage.busy: {
      // At least a second between asks (a node saying retry-after 0 must not get an Activate storm).
      // An ask that would come at or after the install deadline is not made: the deadline ends the wait.
      const deadline = p.kind === 'activating' || p.kind === 'deferred' ? p.deadline : now + d.install;
      const at = now + Math.max(1, r.retryAfter ?? 5) * 1000;
      return { update: { ...u, phase: { kind: 'deferred', deadline, askAt: at < deadline ? at : undefined } }, effects };
    }
    case Stage.rebooting:
      return { update: { ...u, phase: { kind: 'confirming', deadline: now + d.confirm } }, effects };
    case Stage.confirmed:
      if (!r.version || r.version === u.target?.version) {
        effects.push({ kind: 'dropTransfer' });
        return finish(u, 'confirmed', Reason.none, r.version ? `running ${r.version}` : 'confirmed', effects);
      }
      return { update: u, effects };
    case Stage.rolledBack:
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'rolledBack', r.reason, r.detail ?? reasonName(r.reason), effects);
    case Stage.failed:
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'failed', r.reason, r.detail ?? `${reasonName(r.reason)}, no previous image to return to`, effects);
    default:
      return { update: u, effects };
  }
}

function stepHello(u: Update, h: HelloFacts, now: number, env: Env, effects: Effect[]): StepResult {
  const p = u.phase;
  const d = env.cfg.deadlines;
  const target = u.target;
  // A node we told to activate: reconcile what it runs now against what we expected.
  if (target && (p.kind === 'activating' || p.kind === 'deferred' || p.kind === 'confirming')) {
    if (h.runsTarget && h.recovery) {
      // Installed, failed, and nothing older left to boot (MCUboot overwrite-only): not confirmed.
      const reason = h.targetOutcome?.stage === Stage.failed ? h.targetOutcome.reason : Reason.bootFailed;
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'failed', reason, `runs ${h.version} in recovery mode: ${reasonName(reason)}, no previous image to return to`, effects);
    }
    if (h.runsTarget) {
      if (h.pendingVerify) return { update: { ...u, phase: { kind: 'confirming', deadline: now + d.confirm } }, effects };
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'confirmed', Reason.none, `running ${h.version}`, effects);
    }
    if (h.targetOutcome?.stage === Stage.rolledBack) {
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'rolledBack', h.targetOutcome.reason, `back on ${h.version}: ${reasonName(h.targetOutcome.reason)}`, effects);
    }
    if (p.kind === 'confirming') {
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'rolledBack', Reason.bootFailed, `expected ${target.version}, node booted ${h.version}`, effects);
    }
    if (h.holdsTarget) return { update: sendActivate(u, p.deadline, now, env, effects), effects };
  }
  // A node that reports how its last update ended, for the release in progress.
  if (target && h.targetOutcome && inProgress(p)) {
    if (h.targetOutcome.stage === Stage.rolledBack) {
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'rolledBack', h.targetOutcome.reason, reasonName(h.targetOutcome.reason), effects);
    }
    if (h.targetOutcome.stage === Stage.failed) {
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'failed', h.targetOutcome.reason, `${reasonName(h.targetOutcome.reason)}, no previous image to return to`, effects);
    }
  }
  // Mid-transfer: the node says what it holds (the runtime took its bitmap into the window). Same
  // session: carry on sending. Another session, lost progress, or all held (the Offer makes the
  // node verify): offer again, and its answer says the rest.
  if (isTransfer(p) && h.transfer !== 'noPayload') {
    effects.push({ kind: 'persistBitmap' });
    let phase: TransferPhase;
    if (p.kind === 'verifying' && !h.complete) phase = { kind: 'downloading', deadline: now + d.download };
    else if (p.kind === 'offered') phase = p;
    else phase = h.complete ? { kind: 'verifying', deadline: p.kind === 'verifying' ? p.deadline : now + d.verify } : { kind: 'downloading', deadline: p.deadline };
    const next: Update = { ...u, phase };
    if (h.transfer === 'sameSession' && !h.complete && phase.kind !== 'offered') {
      effects.push({ kind: 'pump' });
      return { update: { ...next, phase: { ...phase, answer: undefined } as TransferPhase }, effects };
    }
    return { update: sendOffer(next, phase, now, env, effects), effects };
  }
  if (isTransfer(p) || p.kind === 'preparing') return { update: u, effects };
  effects.push({ kind: 'consider', lostDownload: p.kind === 'activating' || p.kind === 'deferred' });
  return { update: u, effects };
}

function stepTimer(u: Update, timer: TimerKind, now: number, env: Env, effects: Effect[]): StepResult {
  const p = u.phase;
  const due = timersOf(u)[timer];
  if (due === undefined || due > now) return { update: u, effects };
  switch (timer) {
    case 'deadline': {
      effects.push({ kind: 'dropTransfer' });
      return finish(u, 'timedOut', Reason.timeout, `${stageOfPhase(p.kind)} deadline passed in state ${stateName(p)}`, effects);
    }
    case 'control':
      if (isTransfer(p) && p.answer) {
        const tries = p.answer.tries;
        const update = sendOffer(u, p, now, env, effects, tries);
        if ((update.phase as TransferPhase).answer?.at === undefined) effects.push({ kind: 'event', event: 'silent', detail: `no answer after ${tries} tries; waiting for the node` });
        return { update, effects };
      }
      if (p.kind === 'activating') {
        const update = sendActivate(u, p.deadline, now, env, effects, p.control.tries);
        if ((update.phase as Extract<Phase, { kind: 'activating' }>).control.at === undefined) effects.push({ kind: 'event', event: 'silent', detail: `no answer after ${p.control.tries} tries; waiting for the node` });
        return { update, effects };
      }
      return { update: u, effects };
    case 'ask':
      if (p.kind === 'deferred') return { update: sendActivate(u, p.deadline, now, env, effects), effects };
      return { update: u, effects };
    default:
      return assertNever(timer);
  }
}
