import { ImageState, type Hello } from '../shared/messages.js';
import type { ReleaseCatalog } from './catalog.js';
import { inProgress, stateName, type HelloFacts, type Phase, type Target, type Update } from './update-fsm.js';
import type { NodeRow, Payload } from './types.js';
import type { TransferWindow } from './window.js';

/** A node first heard of by its Hello. */
export function blankRow(id: string, h: Hello, now: number): NodeRow {
  return {
    id, hw: h.hw, runningVersion: h.version, runningDigest: h.digest, securityVersion: h.securityVersion, slot: h.slot, imageState: h.imageState,
    caps: h.caps, maxMessage: h.maxMessage, window: h.window, state: 'idle', targetRelease: null, session: null, chunkSize: 0, chunkCount: 0,
    bitmap: null, payloadEncoding: 0, acks: 0, attempts: 0, retransmits: 0, bytesSent: 0, reason: 0, detail: '', stageDeadline: null,
    lastSeen: now, offerId: 0, nextRelease: null, updatedAt: now, rollout: null, wave: null,
  };
}

function target(id: string | null, catalog: ReleaseCatalog): Target | null {
  return id ? { id, version: catalog.get(id)?.row.version ?? '?' } : null;
}

/** The update state machine's state, rebuilt from the stored row (after a restart). Control timers start when the agent resumes. */
export function updateFromRow(row: NodeRow, catalog: ReleaseCatalog, now: number, downloadMs: number): Update {
  const deadline = row.stageDeadline ?? now + downloadMs;
  const waiting = { tries: 0, at: undefined };
  let phase: Phase;
  switch (row.state) {
    case 'idle':
    case 'queued':
      phase = { kind: row.state };
      break;
    case 'offered':
      phase = row.session === null ? { kind: 'preparing', deadline } : { kind: 'offered', deadline, answer: waiting };
      break;
    case 'downloading':
    case 'verifying':
      phase = { kind: row.state, deadline };
      break;
    case 'activating':
      phase = { kind: 'activating', deadline, control: waiting };
      break;
    case 'deferred':
      phase = { kind: 'deferred', deadline, askAt: undefined };
      break;
    case 'confirming':
      phase = { kind: 'confirming', deadline };
      break;
    default:
      phase = { kind: 'done', outcome: row.state };
  }
  return { phase, target: target(row.targetRelease, catalog), session: row.session, offerId: row.offerId, next: target(row.nextRelease, catalog) };
}

/** Copies the machine's state into the row; true when something worth writing at once changed. */
export function syncRow(row: NodeRow, u: Update): boolean {
  const before = `${row.state}|${row.session}|${row.targetRelease}|${row.stageDeadline}|${row.offerId}|${row.nextRelease}`;
  row.state = stateName(u.phase);
  row.session = u.session;
  if (u.target) row.targetRelease = u.target.id;
  row.stageDeadline = inProgress(u.phase) ? u.phase.deadline : null;
  row.offerId = u.offerId;
  row.nextRelease = u.next?.id ?? null;
  return before !== `${row.state}|${row.session}|${row.targetRelease}|${row.stageDeadline}|${row.offerId}|${row.nextRelease}`;
}

/**
 * What a Hello says against the update in progress. Mid-transfer, the node's bitmap is the truth
 * (after a power cut it may hold less than it acked), so it replaces the window's: chunks of this
 * session sent since the node came back stay in flight (they are on their way to it).
 */
export function helloFacts(h: Hello, u: Update, catalog: ReleaseCatalog, transfer: { payload: Payload; chunkSize: number; session: number; window: TransferWindow } | undefined, now: number): HelloFacts {
  const release = catalog.get(u.target?.id);
  const t = h.transfer;
  const o = h.lastOutcome;
  const inTransfer = u.phase.kind === 'offered' || u.phase.kind === 'downloading' || u.phase.kind === 'verifying';
  let kind: HelloFacts['transfer'] = 'none';
  let complete = false;
  if (inTransfer && !transfer) kind = 'noPayload';
  else if (inTransfer && transfer) {
    const same = t !== undefined && t.digest.equals(transfer.payload.digest) && t.chunkSize === transfer.chunkSize;
    const sameSession = same && t.session === transfer.session;
    kind = sameSession ? 'sameSession' : same ? 'samePayload' : 'other';
    transfer.window.resync(same ? t.bitmap : new Uint8Array(0), sameSession ? now : undefined);
    complete = transfer.window.complete;
  }
  return {
    version: h.version,
    runsTarget: release !== undefined && h.digest.equals(release.row.digest),
    recovery: h.imageState === ImageState.recovery,
    pendingVerify: h.imageState === ImageState.pendingVerify,
    targetOutcome: release && o && o.version === release.row.version ? { stage: o.stage, reason: o.reason } : undefined,
    holdsTarget: t !== undefined && ((release !== undefined && t.digest.equals(release.row.digest)) || (transfer?.payload.digest.equals(t.digest) ?? false)),
    transfer: kind,
    complete,
  };
}
