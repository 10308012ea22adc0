import { Reason, reasonName } from '../shared/errors.js';
import { Stage } from '../shared/messages.js';
import type { Outcome } from './types.js';
import {
  assertNever, holdsSlot, inProgress, isTransfer, reportFits, stateName, timersOf,
  type AckVerdict, type Control, type Effect, type Env, type HelloFacts, type Input, type Phase, type PhaseKind, type ReportFacts, type StepResult,
  type Target, type TimerKind, type TransferPhase, type Update,
} from './update-model.js';

export * from './update-model.js';

/**
 * One node's update as a pure state machine: `step(update, input, now, env) -> { update, effects }`.
 * No I/O, no clock, no randomness of its own: the runtime (agent/updates.ts) feeds it inputs and
 * carries out the effects it returns (publish, timers, SQLite, the transfer window). Every phase
 * kind and input kind is handled by a switch ending in assertNever, so tsc fails on a missing case.
 */

/** Delta refusals of the release itself: a full image would be refused too, so the update ends on them. */
const RELEASE_REFUSALS: ReadonlySet<number> = new Set([
  Reason.badSignature, Reason.unknownKey, Reason.wrongHardware, Reason.downgrade, Reason.securityDowngrade, Reason.noRollbackSupport, Reason.unsupportedVersion,
]);

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
  return { ...u, offerId: u.offerId + 1, phase: { ...p, answer } as TransferPhase };
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
    case 'begin':
    case 'queue': {
      const sameTarget = u.target?.id === input.release.id;
      if (holdsSlot(p) && sameTarget) return { update: u, effects };
      const busy = holdsSlot(p) || p.kind === 'deferred' || p.kind === 'activating' || p.kind === 'confirming';
      if (busy && !sameTarget) return stepNewer(u, input.release, now, env, effects);
      // From idle, done, or an activation whose download the node has lost: a fresh transfer, now or in line.
      effects.push({ kind: 'dropTransfer' });
      if (input.kind === 'queue') return { update: { ...u, phase: { kind: 'queued' }, target: input.release, session: null }, effects };
      effects.push({ kind: 'prepare' });
      return { update: { ...u, phase: { kind: 'preparing', deadline: now + d.download }, target: input.release, session: null }, effects };
    }

    case 'prepared': {
      if (p.kind !== 'preparing' || u.target?.id !== input.release) return { update: u, effects };
      effects.push({ kind: 'open', session: input.session });
      const offered: Update = { ...u, session: input.session, phase: { kind: 'offered', deadline: p.deadline, answer: { tries: 0, at: undefined } } };
      return { update: sendOffer(offered, offered.phase as TransferPhase, now, env, effects), effects };
    }

    case 'newer':
      return stepNewer(u, input.release, now, env, effects);

    case 'withdrawn':
      return stepWithdrawn(u, input.release, effects);

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

/**
 * A withdrawn release: before activation the update ends `cancelled` (Cancel for a session the node
 * holds, section 5.6); once activation began the node decides, as with a newer release. A waiting
 * `next` that is withdrawn is dropped.
 */
function stepWithdrawn(u: Update, release: string, effects: Effect[]): StepResult {
  const p = u.phase;
  const base = u.next?.id === release ? { ...u, next: null } : u;
  if (u.target?.id !== release) return { update: base, effects };
  switch (p.kind) {
    case 'idle':
    case 'done':
    case 'activating':
    case 'confirming':
      return { update: base, effects };
    case 'queued':
    case 'preparing':
    case 'offered':
    case 'downloading':
    case 'verifying':
    case 'deferred':
      if (u.session !== null && p.kind !== 'queued' && p.kind !== 'preparing') effects.push({ kind: 'cancel', session: u.session });
      effects.push({ kind: 'dropTransfer' });
      return finish(base, 'cancelled', Reason.cancelled, 'withdrawn by the operator', effects);
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
