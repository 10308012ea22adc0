import type { Manifest } from '../shared/manifest.js';

/** A release the agent holds: its stored row, the verified manifest and the image bytes. */
export interface ReleaseRow {
  id: string;
  hw: string;
  version: string;
  securityVersion: number;
  size: number;
  digest: Buffer;
  manifest: Buffer;
  flags: number;
  receivedAt: number;
}

export interface Release {
  row: ReleaseRow;
  manifest: Manifest;
  image: Buffer;
}

/** What travels in a session: the full image, or a patch from the node's running image. */
export interface Payload {
  bytes: Buffer;
  encoding: number;
  digest: Buffer;
  baseDigest?: Buffer;
}

/** How an update ended. */
export type Outcome = 'confirmed' | 'rolledBack' | 'rejected' | 'timedOut' | 'failed' | 'cancelled';

/** A node's update state as stored and shown in its status (docs/protocol.md §8). */
export type NodeStateName = 'idle' | 'queued' | 'offered' | 'downloading' | 'verifying' | 'activating' | 'deferred' | 'confirming' | Outcome;

/** The durable record of one node: what it last said about itself, and where its update stands. */
export interface NodeRow {
  id: string;
  hw: string;
  runningVersion: string;
  runningDigest: Buffer | null;
  securityVersion: number;
  slot: number;
  imageState: number;
  caps: number;
  maxMessage: number;
  window: number;
  state: NodeStateName;
  targetRelease: string | null;
  session: number | null;
  chunkSize: number;
  chunkCount: number;
  bitmap: Buffer | null;
  /** What the current session carries: 0 full image, 1 delta patch from the node's running image. */
  payloadEncoding: number;
  acks: number;
  attempts: number;
  retransmits: number;
  bytesSent: number;
  reason: number;
  detail: string;
  stageDeadline: number | null;
  lastSeen: number;
  /** Id of the latest Offer sent to the node (Offer key 8): its answer echoes it. */
  offerId: number;
  /** A newer release waiting for the current update's outcome (the node was activating or confirming). */
  nextRelease: string | null;
  updatedAt: number;
  /** The rollout the node's current (or last) update belongs to, and its wave there (0 = canary). */
  rollout: string | null;
  wave: number | null;
}

/** Why a release is not offered to a node again: it refused or rolled back the release, or a delta of it failed. */
export type RefusalKind = 'release' | 'delta';
