import { reasonName } from '../shared/errors.js';
import { Encoding } from '../shared/messages.js';
import type { Release } from './catalog.js';
import type { NodeRow } from './types.js';
import type { TransferWindow } from './window.js';

/** The retained per-node status document (docs/protocol.md §8). JSON, for operators and scripts. */
export interface NodeStatus {
  id: string;
  hw: string;
  state: string;
  runningVersion: string;
  targetVersion: string | null;
  /** Chunks of the session's payload: of the patch for a delta session, of the image for a full one. */
  received: number;
  total: number;
  /** Payload bytes the node holds (patch bytes for a delta session). */
  bytes: number;
  /** What the session carries: the full image or a delta patch; null before any session. */
  payload: 'full' | 'delta' | null;
  /** received / total (0..1): the same fraction of the update whichever payload travels. */
  progress: number;
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

/** `payloadSize`: the live session's payload size, when one is in progress (exact byte counts). */
export function nodeStatus(row: NodeRow, target: Release | undefined, window: TransferWindow | undefined, online: boolean, warnings: string[], payloadSize?: number): NodeStatus {
  const total = row.chunkCount;
  const received = window ? window.received : row.state === 'confirmed' ? total : countBits(row.bitmap);
  return {
    id: row.id,
    hw: row.hw,
    state: row.state,
    runningVersion: row.runningVersion,
    targetVersion: target?.row.version ?? null,
    received,
    total,
    bytes: Math.min(payloadSize ?? (row.payloadEncoding === Encoding.delta ? total * row.chunkSize : target?.row.size ?? 0), received * row.chunkSize),
    payload: total === 0 ? null : row.payloadEncoding === Encoding.delta ? 'delta' : 'full',
    progress: total === 0 ? 0 : Math.round((received / total) * 1000) / 1000,
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
