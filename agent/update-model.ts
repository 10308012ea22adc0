import { Stage, type Report, type StageCode } from '../shared/messages.js';
import type { NodeStateName, Outcome } from './types.js';

/**
 * The model of one node's update: its state (a discriminated union of phases), the inputs the state
 * machine of agent/update-fsm.ts takes, the effects it returns, and pure views of the state (its
 * timers, its stored name, which Acks and reports it takes).
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

/** A node's Report as the step function sees it. */
export interface ReportFacts extends Omit<Report, 'type'> {
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
  /** An operator withdrew this release (by id): an update to it that has not reached the node's boot selection ends. */
  | { kind: 'withdrawn'; release: string }
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

export type TransferPhase = Extract<Phase, { kind: 'offered' | 'downloading' | 'verifying' }>;
export function isTransfer(p: Phase): p is TransferPhase {
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
