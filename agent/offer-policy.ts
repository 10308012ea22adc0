import { Reason } from '../shared/errors.js';
import { ManifestFlag } from '../shared/manifest.js';
import { Capability, ImageState } from '../shared/messages.js';
import { compareVersions } from '../shared/version.js';
import { holdsSlot, type Target, type Update } from './update-fsm.js';
import type { NodeRow, Release } from './types.js';

export type Decision =
  | { kind: 'none' }
  | { kind: 'finish'; outcome: 'confirmed' | 'rejected'; reason: number; detail: string; release: Target }
  /** A newer release than the one in progress. */
  | { kind: 'newer'; release: Target }
  /** Offer this release (through admission). */
  | { kind: 'start'; release: Target };

/**
 * Whether a node should get the latest release for its hardware (pure). The agent itself refuses
 * what the node would refuse: releases the node refused or rolled back from, versions not newer
 * than it runs, lower security versions, and releases needing a rollback its bootloader lacks.
 * `lostDownload`: the node's Hello shows an activation in progress whose download it no longer holds.
 */
export function decide(row: NodeRow, u: Update, release: Release | undefined, refused: boolean, lostDownload = false): Decision {
  if (!release) return { kind: 'none' };
  const r = release.row;
  const target: Target = { id: r.id, version: r.version };
  const p = u.phase;
  // Running the release is not enough to be confirmed: not while its trial boot awaits the
  // self-test (pending-verify), nor in recovery mode (it runs it because it failed).
  const settled = row.imageState !== ImageState.pendingVerify && row.imageState !== ImageState.recovery;
  if (row.runningDigest && r.digest.equals(row.runningDigest) && settled) {
    if (u.target?.id !== r.id || p.kind !== 'done' || p.outcome !== 'confirmed') {
      return { kind: 'finish', outcome: 'confirmed', reason: Reason.none, detail: `already running ${r.version}`, release: target };
    }
    return { kind: 'none' };
  }
  if (refused) return { kind: 'none' }; // rolled back or rejected before: not offered again
  if (compareVersions(r.version, row.runningVersion) <= 0) return { kind: 'none' };
  if (r.securityVersion < row.securityVersion) return { kind: 'none' };
  if (!(row.caps & Capability.rollback) && !(r.flags & ManifestFlag.allowNoRollback)) {
    if (u.target?.id !== r.id || p.kind !== 'done' || p.outcome !== 'rejected') {
      const detail = 'bootloader cannot roll back and the release does not allow that (publish with --allow-no-rollback)';
      return { kind: 'finish', outcome: 'rejected', reason: Reason.noRollbackSupport, detail, release: target };
    }
    return { kind: 'none' };
  }
  const sameTarget = u.target?.id === r.id;
  if (sameTarget && (holdsSlot(p) || p.kind === 'queued' || p.kind === 'confirming')) return { kind: 'none' };
  if (sameTarget && (p.kind === 'activating' || p.kind === 'deferred') && !lostDownload) return { kind: 'none' };
  const busy = holdsSlot(p) || p.kind === 'queued' || p.kind === 'deferred' || p.kind === 'activating' || p.kind === 'confirming';
  if (busy && !sameTarget) return { kind: 'newer', release: target };
  return { kind: 'start', release: target };
}
