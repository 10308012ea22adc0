import type { LoraTimer } from './clock.js';
import type { LoraUp } from '../../shared/lora/control.js';
import type { Region } from '../../shared/lora/regions.js';
import type { SessionState } from '../../shared/lora/session.js';
import type { NodeRow } from '../types.js';
import type { Transfer } from './transfer-fsm.js';

/**
 * A LoRa node in ferry's per-node truth: the same NodeRow in the agent's SQLite store and the same retained
 * NodeStatus as an MQTT node. A LoRa row is told apart by maxMessage 0 (an MQTT node's Hello says ≥ 128), so the
 * MQTT update machinery leaves it alone. Progress counts blocks: chunkCount = blocks, chunkSize = block bytes,
 * bitmap = completed blocks.
 */
export interface LoraNode {
  row: NodeRow;
  bootCount: number;
  battery: number | undefined;
  /** Data rate and frequency of the latest uplink. */
  dr: number;
  /** Highest downlink DR the LNS accepted frames at, after a DOWNLINK_PAYLOAD_SIZE refusal (it may use another DR than §7.1's). */
  drCap: number | undefined;
  frequencyHz: number | undefined;
  /** Downlink loss measured by the last finished block (first round sizing of the next). */
  loss: number;
  transfer: Transfer | undefined;
  /** The block session running unicast; `ids`: LNS ids of its frames (an LNS error about another frame is not its). */
  session: { index: number; state: SessionState; dr: number; ids: Set<string> } | undefined;
  transferTimer: LoraTimer | undefined;
  sessionTimer: LoraTimer | undefined;
  online: boolean;
  warnings: string[];
  /** McAddr of the multicast group the node's transfer belongs to. */
  groupAddr?: number;
}

export function isLoraRow(row: NodeRow): boolean {
  return row.maxMessage === 0;
}

export function loraRow(devEui: string, h: Extract<LoraUp, { type: 'hello' }>, now: number): NodeRow {
  return {
    id: devEui, hw: h.hw, runningVersion: h.version, runningDigest: Buffer.from(h.digestPrefix), securityVersion: 0, slot: 0, imageState: h.imageState,
    caps: h.caps, maxMessage: 0, window: 0, state: 'idle', targetRelease: null, session: null, chunkSize: 0, chunkCount: 0, bitmap: null,
    payloadEncoding: 0, acks: 0, attempts: 0, retransmits: 0, bytesSent: 0, reason: 0, detail: '', stageDeadline: null, lastSeen: now,
    offerId: 0, nextRelease: null, updatedAt: now, rollout: null, wave: null,
  };
}

export function newLoraNode(row: NodeRow, initialLoss: number): LoraNode {
  return { row, bootCount: 0, battery: undefined, dr: 0, drCap: undefined, frequencyHz: undefined, loss: initialLoss, transfer: undefined, session: undefined, transferTimer: undefined, sessionTimer: undefined, online: false, warnings: [] };
}

/** The next lower downlink DR, or undefined at the region's lowest. */
export function lowerDr(region: Region['name'], dr: number): number | undefined {
  const lowest = region === 'US915' ? 8 : 0;
  return dr > lowest ? dr - 1 : undefined;
}

/** Downlink DR from the latest uplink DR (docs/lora.md §7.1): EU868 RX1 offset 0; US915 d → min(d + 10, 13). */
export function downlinkDr(region: Region['name'], uplinkDr: number): number {
  return region === 'US915' ? Math.min(uplinkDr + 10, 13) : Math.min(uplinkDr, 6);
}

export function setBlockDone(row: NodeRow, index: number): void {
  const bytes = Math.ceil(row.chunkCount / 8);
  if (!row.bitmap || row.bitmap.length !== bytes) row.bitmap = Buffer.alloc(bytes);
  row.bitmap[index >> 3] |= 1 << (index & 7);
}

/** Unicast repair rounds shrink the gap by the loss each time (exact resend): 30 % loss takes ~7 to close 275 fragments. */
export const UNICAST_ROUNDS = 12;
