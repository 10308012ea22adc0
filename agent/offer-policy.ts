import { Reason } from '../shared/errors.js';
import { ManifestFlag } from '../shared/manifest.js';
import { Capability, ImageState } from '../shared/messages.js';
import { compareVersions } from '../shared/version.js';
import { holdsSlot, type Target, type Update } from './update-fsm.js';
import type { NodeRow, Release } from './types.js';
import type { ReleaseCatalog } from './catalog.js';
import type { ReleaseChoice } from './rollouts.js';

/**
 * The release a node may be offered now: its rollout's (maybe an authorised downgrade, with the
 * permit for the Offer), or under offer policy `auto` with no rollout governing it, the newest of
 * its class; with the rollout and wave to record in its status.
 */
export function releaseOf(choice: ReleaseChoice, hw: string, policy: 'auto' | 'rollout', catalog: ReleaseCatalog): {
  release: Release | undefined; downgrade: boolean; permit: Buffer | undefined; rollout: string | null; wave: number | null;
} {
  if (choice.kind === 'rollout') return { release: choice.release, downgrade: choice.downgrade, permit: choice.downgrade ? choice.permit : undefined, rollout: choice.rollout, wave: choice.wave };
  return { release: policy === 'auto' ? catalog.offerableFor(hw) : undefined, downgrade: false, permit: undefined, rollout: null, wave: null };
}

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
 * `downgrade`: a rollout authorised an older release (auto-revert): the version check is skipped,
 * never the security version.
 */
export function decide(row: NodeRow, u: Update, release: Release | undefined, refused: boolean, lostDownload = false, downgrade = false): Decision {
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
  // What the node would refuse is not sent: the status says why instead of a silent idle.
  const refuse = (reason: number, why: string): Decision => {
    if (u.target?.id === r.id && p.kind === 'done' && p.outcome === 'rejected') return { kind: 'none' };
    return { kind: 'finish', outcome: 'rejected', reason, detail: `not offered by the agent: ${why}`, release: target };
  };
  if (!downgrade && compareVersions(r.version, row.runningVersion) <= 0) {
    // Running it unsettled (trial boot, recovery), or an update to it in progress: that update
    // decides the outcome.
    if (row.runningDigest?.equals(r.digest) || (u.target?.id === r.id && p.kind !== 'done')) return { kind: 'none' };
    return refuse(Reason.downgrade, `${r.version} is not newer than the running ${row.runningVersion}`);
  }
  if (r.securityVersion < row.securityVersion) {
    return refuse(Reason.securityDowngrade, `security version ${r.securityVersion} is below the node's ${row.securityVersion}`);
  }
  if (!(row.caps & Capability.rollback) && !(r.flags & ManifestFlag.allowNoRollback)) {
    return refuse(Reason.noRollbackSupport, 'bootloader cannot roll back and the release does not allow that (publish with --allow-no-rollback)');
  }
  const sameTarget = u.target?.id === r.id;
  if (sameTarget && (holdsSlot(p) || p.kind === 'queued' || p.kind === 'confirming')) return { kind: 'none' };
  if (sameTarget && (p.kind === 'activating' || p.kind === 'deferred') && !lostDownload) return { kind: 'none' };
  const busy = holdsSlot(p) || p.kind === 'queued' || p.kind === 'deferred' || p.kind === 'activating' || p.kind === 'confirming';
  if (busy && !sameTarget) return { kind: 'newer', release: target };
  return { kind: 'start', release: target };
}
