import { reasonName } from '../shared/errors.js';
import { Encoding } from '../shared/messages.js';
import type { Release } from './catalog.js';
import type { NodeRow } from './types.js';
import type { TransferWindow } from './window.js';

/** The retained per-node status document (docs/protocol.md §8). JSON, for operators and scripts. */
export interface NodeStatus {
  id: string;
  /** The serving agent's name (its identity: Agent.name): which site or gateway the node is at. */
  agent: string;
  hw: string;
  state: string;
  runningVersion: string;
  targetVersion: string | null;
  /** First 8 hex digits of the target release's image digest: tells two builds of one version apart. */
  digest: string | null;
  /** Chunks of the session's payload: of the patch for a delta session, of the image for a full one. */
  received: number;
  total: number;
  /** Payload bytes the node holds (patch bytes for a delta session). */
  bytes: number;
  /** What the session carries: the full image or a delta patch; null before any session. */
  payload: 'full' | 'delta' | null;
  /** received / total (0..1): the fraction of the session payload (patch or image) transferred. */
  progress: number;
  /**
   * Bytes of the session payload: the patch for a delta session, the image for a full one; null
   * before any session, and for a delta session that is over (whole chunks only are known then).
   */
  payloadSize: number | null;
  /** Bytes of the image being installed (the target release's), whatever payload carries it; null without a target. */
  imageSize: number | null;
  /**
   * Image-equivalent progress in bytes: `progress × imageSize`, what the transferred share of the
   * payload stands for. For a delta session the node writes the new image only when it applies the
   * whole patch after the last chunk, so this is not bytes written to flash.
   */
  imageEquivalent: number;
  acks: number;
  attempts: number;
  retransmits: number;
  reason: string | null;
  detail: string;
  imageState: string;
  slot: number;
  lastSeen: string | null;
  online: boolean;
  warnings: string[];
  /** Rollout id the node's current/last update belongs to, and its wave there (0 = canary). */
  rollout: string | null;
  wave: number | null;
}

const IMAGE_STATES = ['new', 'pendingVerify', 'valid', 'invalid', 'aborted', 'undefined', 'recovery'];

/**
 * `payloadSize`: the live session's payload size, when one is in progress (exact byte counts).
 * `agent`: the name of the agent serving the node.
 */
export function nodeStatus(row: NodeRow, target: Release | undefined, window: TransferWindow | undefined, online: boolean, warnings: string[], payloadSize?: number, agent = ''): NodeStatus {
  const total = row.chunkCount;
  const received = window ? window.received : row.state === 'confirmed' ? total : countBits(row.bitmap);
  const delta = row.payloadEncoding === Encoding.delta;
  const imageSize = target?.row.size ?? null;
  const progress = total === 0 ? 0 : Math.round((received / total) * 1000) / 1000;
  return {
    id: row.id,
    agent,
    hw: row.hw,
    state: row.state,
    runningVersion: row.runningVersion,
    targetVersion: target?.row.version ?? null,
    digest: target ? target.row.digest.toString('hex').slice(0, 8) : null,
    received,
    total,
    bytes: Math.min(payloadSize ?? (delta ? total * row.chunkSize : target?.row.size ?? 0), received * row.chunkSize),
    payload: total === 0 ? null : row.payloadEncoding === Encoding.delta ? 'delta' : 'full',
    progress,
    payloadSize: total === 0 ? null : (payloadSize ?? (delta ? null : imageSize)),
    imageSize,
    imageEquivalent: imageSize === null ? 0 : received === total && total > 0 ? imageSize : Math.round(progress * imageSize),
    acks: row.acks,
    attempts: row.attempts,
    retransmits: row.retransmits,
    reason: row.reason ? reasonName(row.reason) : null,
    detail: row.detail,
    imageState: IMAGE_STATES[row.imageState] ?? String(row.imageState),
    slot: row.slot,
    lastSeen: row.lastSeen ? new Date(row.lastSeen).toISOString() : null,
    online,
    warnings,
    rollout: row.rollout ?? null,
    wave: row.wave ?? null,
  };
}

function countBits(b: Buffer | null): number {
  if (!b) return 0;
  let n = 0;
  for (const byte of b) for (let v = byte; v; v &= v - 1) n++;
  return n;
}
