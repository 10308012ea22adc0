import type { LastOutcome, StageCode } from '../shared/messages.js';

/**
 * Small NVS values the app keeps across reboots (binary, little-endian).
 *
 * activation: the update the node rebooted into, written before otadata selects the new slot, so the
 * app can tell after any reboot whether the activation took, was confirmed, or was rolled back.
 *   u32 session, u32 otadata seq, u8 slot, u8 trial boots so far, u8 version length, version,
 *   32 B digest of the activated image (absent in records written before boot profiles existed)
 * lastOutcome: u8 stage, u8 reason, u8 version length, version
 * failedImage: 32 B digest, u8 reason: an installed image that failed with no way back (recovery)
 */
export interface Activation {
  session: number;
  /** Sequence number of the otadata record that selects the new slot. */
  seq: number;
  slot: number;
  /** Boots of the new image without a self-test verdict (app-level trial counting, no-rollback nodes). */
  tries: number;
  version: string;
  /** SHA-256 of the activated image: MCUboot moves images between slots, so the slot alone cannot tell. */
  digest?: Buffer;
}

export function encodeActivation(a: Activation): Buffer {
  const v = Buffer.from(a.version, 'ascii');
  const out = Buffer.alloc(11 + v.length + (a.digest ? 32 : 0));
  out.writeUInt32LE(a.session, 0);
  out.writeUInt32LE(a.seq, 4);
  out.writeUInt8(a.slot, 8);
  out.writeUInt8(Math.min(a.tries, 255), 9);
  out.writeUInt8(v.length, 10);
  v.copy(out, 11);
  a.digest?.copy(out, 11 + v.length);
  return out;
}

export function decodeActivation(b: Buffer | undefined): Activation | undefined {
  if (!b || b.length < 11 || b.length < 11 + b[10]) return undefined;
  const end = 11 + b[10];
  const a: Activation = { session: b.readUInt32LE(0), seq: b.readUInt32LE(4), slot: b[8], tries: b[9], version: b.subarray(11, end).toString('ascii') };
  if (b.length >= end + 32) a.digest = Buffer.from(b.subarray(end, end + 32));
  return a;
}

export interface FailedImage {
  digest: Buffer;
  reason: number;
}

export function encodeFailedImage(f: FailedImage): Buffer {
  return Buffer.concat([f.digest, Buffer.from([f.reason])]);
}

export function decodeFailedImage(b: Buffer | undefined): FailedImage | undefined {
  if (!b || b.length < 33) return undefined;
  return { digest: Buffer.from(b.subarray(0, 32)), reason: b[32] };
}

export function encodeOutcome(o: LastOutcome): Buffer {
  const v = Buffer.from(o.version, 'ascii');
  const out = Buffer.alloc(3 + v.length);
  out[0] = o.stage;
  out[1] = o.reason;
  out[2] = v.length;
  v.copy(out, 3);
  return out;
}

export function decodeOutcome(b: Buffer | undefined): LastOutcome | undefined {
  if (!b || b.length < 3 || b.length < 3 + b[2]) return undefined;
  return { stage: b[0] as StageCode, reason: b[1], version: b.subarray(3, 3 + b[2]).toString('ascii') };
}

export function encodeU32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

export function decodeU32(b: Buffer | undefined): number {
  return b && b.length >= 4 ? b.readUInt32LE(0) : 0;
}
