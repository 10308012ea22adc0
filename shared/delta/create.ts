import { constants, deflateRawSync } from 'node:zlib';
import { ProtocolError, Reason } from '../errors.js';
import { sha256 } from '../manifest.js';
import { ByteWriter, Coder, encodeHeader, MAX_WINDOW_BITS, MIN_WINDOW_BITS } from './format.js';
import { findSteps, type Step } from './match.js';

/**
 * Default DEFLATE window: 2^13 = 8 KiB. With the decoder's tables and the applier's buffers the
 * device-side total stays under 16 KiB (the applier reports the exact figure); 2^14 would not.
 */
export const DEFAULT_WINDOW_BITS = 13;

export interface CreatePatchOptions {
  windowBits?: number;
  /** Called with bytes of the new image matched so far, then with the compression phase. */
  onProgress?: (done: number, total: number, phase: 'match' | 'compress') => void;
}

export interface PatchStats {
  steps: number;
  copyBytes: number;
  extraBytes: number;
  /** Uncompressed instruction stream size. */
  streamBytes: number;
}

/** Lays the steps out as the applier consumes them: see docs/delta.md, "Instruction stream". */
export function encodeSteps(old: Uint8Array, target: Uint8Array, steps: readonly Step[]): Buffer {
  const w = new ByteWriter();
  let newPos = 0;
  for (let s = 0; s < steps.length; s++) {
    const step = steps[s];
    w.uvarint(step.copyLen);
    const diff = Buffer.allocUnsafe(step.copyLen);
    for (let i = 0; i < step.copyLen; i++) diff[i] = (target[newPos + i] - old[step.oldPos + i]) & 0xff;
    w.bytes(diff);
    newPos += step.copyLen;
    w.uvarint(step.extraLen);
    w.bytes(target.subarray(newPos, newPos + step.extraLen));
    newPos += step.extraLen;
    // The last seek leads nowhere; 0 keeps the old position in range for strict appliers.
    w.svarint(s === steps.length - 1 ? 0 : step.seek);
  }
  return w.result();
}

/**
 * Smallest raw DEFLATE of `data` with the given window. zlib's memLevel sets how many symbols go in
 * one block, hence how often Huffman tables adapt: on the interleaved diff/extra stream smaller
 * blocks often win (ESP8266 pair: memLevel 6 is 0.7 % smaller than 9), so several are tried. None
 * of this changes what the decoder needs.
 */
export function compress(data: Uint8Array, windowBits: number): Buffer {
  let best: Buffer | undefined;
  const tries: [number, number][] = [5, 6, 7, 8, 9].map((m) => [m, constants.Z_DEFAULT_STRATEGY]);
  tries.push([9, constants.Z_FILTERED]);
  for (const [memLevel, strategy] of tries) {
    const out = deflateRawSync(data, { windowBits, level: 9, memLevel, strategy });
    if (!best || out.length < best.length) best = out;
  }
  return best!;
}

/** Makes a patch that turns `oldImage` into `newImage`; apply it with PatchApplier. */
export function createPatch(oldImage: Uint8Array, newImage: Uint8Array, opts: CreatePatchOptions = {}): Buffer {
  return createPatchWithStats(oldImage, newImage, opts).patch;
}

export function createPatchWithStats(oldImage: Uint8Array, newImage: Uint8Array, opts: CreatePatchOptions = {}): { patch: Buffer; stats: PatchStats } {
  const windowBits = opts.windowBits ?? DEFAULT_WINDOW_BITS;
  if (!Number.isInteger(windowBits) || windowBits < MIN_WINDOW_BITS || windowBits > MAX_WINDOW_BITS) {
    throw new ProtocolError(Reason.badField, `window bits ${windowBits} outside ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}`);
  }
  for (const [what, img] of [['old', oldImage], ['new', newImage]] as const) {
    if (img.length > 0xffffffff) throw new ProtocolError(Reason.oversize, `${what} image of ${img.length} bytes exceeds the 4 GiB the format can describe`);
  }
  const steps = findSteps(oldImage, newImage, { onProgress: (d, t) => opts.onProgress?.(d, t, 'match') });
  const stream = encodeSteps(oldImage, newImage, steps);
  opts.onProgress?.(0, 1, 'compress');
  const body = compress(stream, windowBits);
  opts.onProgress?.(1, 1, 'compress');
  const header = encodeHeader({
    coder: Coder.deflateRaw,
    windowBits,
    transforms: 0,
    baseSize: oldImage.length,
    newSize: newImage.length,
    baseDigest: sha256(oldImage),
    newDigest: sha256(newImage),
  });
  let copyBytes = 0;
  let extraBytes = 0;
  for (const s of steps) {
    copyBytes += s.copyLen;
    extraBytes += s.extraLen;
  }
  return { patch: Buffer.concat([header, body]), stats: { steps: steps.length, copyBytes, extraBytes, streamBytes: stream.length } };
}
