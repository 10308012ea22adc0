import { constants, deflateRawSync } from 'node:zlib';
import { ProtocolError, Reason } from '../errors.js';
import { sha256 } from '../manifest.js';
import { Arch, codecFor, Fallback, Predictor, type ArchName } from './arch/index.js';
import { ByteWriter, Coder, encodeHeader, HEADER_SIZE, HEADER_SIZE_V3, MAX_WINDOW_BITS, MIN_WINDOW_BITS, Transform, type PatchHeader } from './format.js';
import { detectImage, layoutFor } from './detect.js';
import { deflateOptimal } from './deflate.js';
import { multiplex } from './frames.js';
import { findSteps, MatchFinder, type MatchOptions, type Step } from './match.js';
import { sparseConsumption, toSparse } from './sparse.js';

/**
 * Upper bound on each stream's DEFLATE window, in bits (the `windowBits` option lowers it further).
 * ferry uses 2^9 for the control stream and 2^12 for the diff and extra streams: with three
 * decoders' tables and input buffers the device-side total stays under 16 KiB (the applier reports
 * the exact figure). Larger windows gain under 0.3 % on the fixtures.
 */
export const DEFAULT_WINDOW_BITS = 13;
/** Preferred window bits of the control, diff and extra streams. */
const STREAM_WINDOW_BITS: [number, number, number] = [9, 12, 12];
/**
 * Version 3 patches: the extra stream's window drops to 2^11 so that the applier's 4 KiB
 * displacement table fits the same 16 KiB (measured: +62 B on the ESP8266 pair's extra stream).
 */
const STREAM_WINDOW_BITS_V3: [number, number, number] = [9, 12, 11];
/** Each stream's input buffer: 2^9 bytes. */
const BUFFER_BITS = 9;

export interface CreatePatchOptions {
  /** Largest DEFLATE window (bits) any stream may use; default 13. */
  windowBits?: number;
  /**
   * ESP8266 pointer prediction on diff bytes (format version 2, transform bit 0); default on, and
   * dropped by itself when it would change nothing, which spares the applier its 1 KiB table.
   */
  pointerPrediction?: boolean;
  /**
   * Instruction set whose PC-relative references and pointers are predicted (format version 3):
   * `auto` detects it from the images (detect.ts); `none` (the default, readable by every
   * delta-capable node) makes a version 2 patch. Only name one the receiving node announces
   * (choose.ts, deltaArchFor).
   * Every candidate the option allows is made and the smallest patch is kept, so asking for a
   * transform never makes a patch larger than leaving it out.
   */
  arch?: ArchName | 'auto';
  /**
   * Also try the diff stream in sparse form (transform bit 3, docs/delta.md "Sparse diff") and keep
   * whichever patch is smaller; default off. Only for a node that announces capability 256
   * (choose.ts, deltaOptionsFor): appliers without it reject the bit.
   */
  sparse?: boolean;
  /** Matcher settings (match.ts), for experiments; default: ferry's tuned ones. */
  match?: Omit<MatchOptions, 'onProgress'>;
  /** Make only the candidate transform with this name (stats.transform), for benchmarks; default: the smallest. */
  only?: string;
  /** Called with bytes of the new image matched so far, then with the compression phase. */
  onProgress?: (done: number, total: number, phase: 'match' | 'compress') => void;
}

export interface PatchStats {
  steps: number;
  copyBytes: number;
  extraBytes: number;
  /** Uncompressed control + diff + extra bytes. */
  streamBytes: number;
  /** Compressed bytes of the control, diff and extra streams, and frame headers. */
  controlBytes: number;
  diffBytes: number;
  extraStreamBytes: number;
  frameHeaderBytes: number;
  frames: number;
  /** The transform the patch uses, e.g. `none`, `esp8266 pointers`, `thumb2 + pointers`. */
  transform: string;
}

/** One way of predicting the diff bytes, as the header will describe it. */
export interface Candidate extends Pick<PatchHeader, 'transforms' | 'arch' | 'forms' | 'fallback' | 'loadAddress' | 'pointerRange' | 'headerSize'> {
  name: string;
  predictor: () => Predictor | undefined;
}

/**
 * The transforms worth trying for this pair under `opts`: none, ESP8266 pointer prediction
 * (version 2), and for an instruction set its instruction prediction with and without pointers.
 */
export function candidates(oldImage: Uint8Array, newImage: Uint8Array, opts: CreatePatchOptions): Candidate[] {
  const esp = opts.pointerPrediction ?? true;
  const readBaseWord = (off: number): number => (oldImage[off] | (oldImage[off + 1] << 8) | (oldImage[off + 2] << 16) | (oldImage[off + 3] << 24)) >>> 0;
  const list: Candidate[] = [{ name: 'none', transforms: 0, arch: 0, forms: 0, fallback: 0, loadAddress: 0, pointerRange: [0, 0], headerSize: HEADER_SIZE, predictor: () => undefined }];
  const v2Esp = (): Candidate => ({
    name: 'esp8266 pointers',
    transforms: Transform.pointerPrediction,
    arch: 0,
    forms: 0,
    fallback: 0,
    loadAddress: 0,
    pointerRange: [0, 0],
    headerSize: HEADER_SIZE,
    predictor: () =>
      new Predictor({ table: 'v2', espPointers: true, pointerRange: [0, 0], codec: undefined, forms: 0, fallback: 0, loadAddress: 0, baseSize: oldImage.length, readBaseWord }),
  });
  if (esp) list.push(v2Esp());
  const want = opts.arch ?? 'none';
  if (want === 'none') return list;
  const size = Math.max(oldImage.length, newImage.length);
  const layout = want === 'auto' ? detectImage(newImage, size) : layoutFor(want, newImage, size);
  if (layout.arch === 'none') return list;
  const id = Arch[layout.arch];
  const ranged = layout.pointerRange[0] < layout.pointerRange[1];
  const usesEsp = esp && layout.espPointers;
  const codec = codecFor(id)!;
  const make = (forms: number, fallback: number, pointers: boolean): Candidate => {
    const formNames = codec.forms.filter((_, k) => (forms >> k) & 1).join(', ');
    const range: [number, number] = pointers && ranged ? layout.pointerRange : [0, 0];
    if (!pointers) fallback &= ~Fallback.pointers;
    return {
      name: forms ? `${layout.arch} ${formNames}${pointers ? ' + pointers' : ''}` : `${layout.arch} pointers`,
      transforms: (forms ? Transform.instructions : 0) | (pointers && ranged ? Transform.pointerRange : 0) | (pointers && usesEsp ? Transform.pointerPrediction : 0),
      arch: forms ? id : 0,
      forms,
      fallback,
      loadAddress: layout.loadAddress,
      pointerRange: range,
      headerSize: HEADER_SIZE_V3,
      predictor: () =>
        new Predictor({ table: 'v3', espPointers: pointers && usesEsp, pointerRange: range, codec: forms ? codec : undefined, forms, fallback, loadAddress: layout.loadAddress, baseSize: oldImage.length, readBaseWord }),
    };
  };
  // With pointers (where the image has any), every preset; the first without pointers; pointers alone.
  const first = codec.presets[0];
  if (ranged || usesEsp) for (const p of codec.presets) list.push(make(p.forms, p.fallback, true));
  list.push(make(first.forms, first.fallback, false));
  if (ranged) list.push(make(0, Fallback.pointers, true));
  return list;
}

/** The three uncompressed streams of a patch (docs/delta.md, "Instructions"). */
export interface Streams {
  control: Buffer;
  diff: Buffer;
  extra: Buffer;
  /** Units whose prediction differed from the plain base bytes (0: the transform is moot). */
  predictedWords: number;
}

/** Lays the steps out as the applier consumes them: see docs/delta.md, "Instructions". */
export function encodeSteps(old: Uint8Array, target: Uint8Array, steps: readonly Step[], predictor: Predictor | undefined): Streams {
  const control = new ByteWriter();
  const diff = Buffer.allocUnsafe(steps.reduce((n, s) => n + s.copyLen, 0));
  const extra = new ByteWriter();
  const recent = [0, 0, 0, 0];
  let d = 0;
  let newPos = 0;
  let oldPos = 0;
  let base = 0;
  const peek = (k: number): number => old[base + k];
  for (let s = 0; s < steps.length; s++) {
    const step = steps[s];
    control.uvarint(step.copyLen);
    const end = newPos + step.copyLen;
    const o0 = step.oldPos - newPos;
    for (let i = newPos; i < end; ) {
      if (predictor) {
        base = i + o0;
        const n = predictor.begin(peek, base, i, end - i);
        if (n > 0) {
          const p = predictor.predicted;
          let actual = 0;
          for (let k = 0; k < n; k++) {
            diff[d++] = (target[i + k] - ((p >>> (8 * k)) & 0xff)) & 0xff;
            actual |= target[i + k] << (8 * k);
          }
          predictor.end(actual >>> 0);
          i += n;
          continue;
        }
      }
      diff[d++] = (target[i] - old[i + o0]) & 0xff;
      i++;
    }
    newPos = end;
    oldPos = step.oldPos + step.copyLen;
    control.uvarint(step.extraLen);
    extra.bytes(target.subarray(newPos, newPos + step.extraLen));
    newPos += step.extraLen;
    oldPos += step.extraLen;
    // The jump: start from one of the last 4 alignments (recent[0] is the current one) and change it
    // by a zigzag delta; the one that needs the smallest delta wins. The last jump leads nowhere:
    // it only keeps the old position inside the base for strict appliers.
    const offset = s + 1 < steps.length ? steps[s + 1].oldPos - newPos : oldPos + clampAdjust(oldPos, old.length) - newPos;
    let sel = 0;
    for (let k = 1; k < 4; k++) if (Math.abs(offset - recent[k]) < Math.abs(offset - recent[sel])) sel = k;
    const delta = offset - recent[sel];
    control.uvarint((delta < 0 ? -2 * delta - 1 : 2 * delta) * 4 + sel);
    recent.unshift(offset);
    recent.length = 4;
  }
  return { control: control.result(), diff, extra: extra.result(), predictedWords: predictor?.changed ?? 0 };
}

/** Last step: leave the cursor inside the base image (it may have run past it with extra bytes). */
function clampAdjust(oldPos: number, oldLen: number): number {
  return oldPos > oldLen ? oldLen - oldPos : 0;
}

/**
 * Smallest raw DEFLATE of `data` with the given window: ferry's optimal-parse encoder
 * (deflate.ts), or zlib at level 9 with several memLevels (block lengths) and strategies if one of
 * those happens to be smaller. None of this changes what the decoder needs.
 */
export function compress(data: Uint8Array, windowBits: number): Buffer {
  let best: Buffer | undefined = deflateOptimal(data, windowBits);
  for (const memLevel of [5, 6, 7, 8, 9]) {
    for (const strategy of [constants.Z_DEFAULT_STRATEGY, constants.Z_FILTERED]) {
      const out = deflateRawSync(data, { windowBits, level: 9, memLevel, strategy });
      if (!best || out.length < best.length) best = out;
    }
  }
  return best!;
}

/**
 * The matchers every patch is tried with: ferry's tuned settings (cheap jumps near recent
 * alignments, many short steps; best on the ESP8266 and most Cortex-M pairs) and bsdiff's
 * thresholds (every jump must gain 8 bytes, copies extended while half their bytes agree; best where one
 * displacement runs through a long copy, as after a small change early in an image).
 */
const MATCHERS: Omit<MatchOptions, 'onProgress'>[] = [{}, { minGain: 8, minGainNear: 8, minGainRepeat: 8, extendWeight: 2 }];

/** What the candidates made from one matcher's steps share: the steps, and their compressed control and extra streams. */
interface Shared {
  steps: Step[];
  control: Buffer | undefined;
  extras: Map<number, Buffer>;
}

/** One way to make the patch: a matcher's steps, a transform, and the diff stream's form. */
interface Variant {
  shared: Shared;
  raw: Streams;
  candidate: Candidate;
  diffRaw: Buffer;
  diffAfterStep?: number[];
  transforms: number;
  estimate: number;
}

function extraFor(shared: Shared, raw: Streams, w: number): Buffer {
  let e = shared.extras.get(w);
  if (!e) shared.extras.set(w, (e = compress(raw.extra, w)));
  return e;
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
  const list = candidates(oldImage, newImage, opts).filter((c) => opts.only === undefined || c.name === opts.only);
  if (list.length === 0) throw new ProtocolError(Reason.badField, `no transform named ${opts.only} applies to these images`);
  const windows = (v3: boolean) => (v3 ? STREAM_WINDOW_BITS_V3 : STREAM_WINDOW_BITS).map((w) => Math.min(w, windowBits)) as [number, number, number];
  const quick = (data: Uint8Array, w: number): number => deflateRawSync(data, { windowBits: w, level: 9, memLevel: 9 }).length;
  // Each matcher's steps, under each candidate transform, with the diff stream dense and (if the node
  // reads it) sparse: every combination is ranked by zlib's quick estimate of the whole patch, and
  // only those within 3 % of the best estimate get the (slow) optimal encoder; the smallest wins.
  const finder = new MatchFinder(oldImage);
  const matchers = opts.match ? [opts.match] : MATCHERS;
  const tried: Variant[] = [];
  for (let m = 0; m < matchers.length; m++) {
    const steps = findSteps(oldImage, newImage, { ...matchers[m], onProgress: (d, t) => opts.onProgress?.((m + d / t) / matchers.length, 1, 'match') }, finder);
    const copyLens = steps.map((s) => s.copyLen);
    const shared: Shared = { steps, control: undefined, extras: new Map() };
    let controlEstimate = -1;
    const extraEstimates = new Map<number, number>();
    for (const candidate of list) {
      const raw = encodeSteps(oldImage, newImage, steps, candidate.predictor());
      // The same bytes as plain, and a table for nothing:
      if (candidate.transforms !== 0 && raw.predictedWords === 0 && opts.only === undefined) continue;
      const w = windows(candidate.headerSize !== HEADER_SIZE);
      if (controlEstimate < 0) controlEstimate = quick(raw.control, w[0]);
      if (!extraEstimates.has(w[2])) extraEstimates.set(w[2], quick(raw.extra, w[2]));
      const forms: Pick<Variant, 'diffRaw' | 'diffAfterStep' | 'transforms'>[] = [{ diffRaw: raw.diff, transforms: candidate.transforms }];
      if (opts.sparse) {
        const sparse = toSparse(raw.diff);
        forms.push({ diffRaw: sparse, diffAfterStep: sparseConsumption(sparse, copyLens), transforms: candidate.transforms | Transform.sparseDiff });
      }
      for (const f of forms) {
        const estimate = controlEstimate + extraEstimates.get(w[2])! + quick(f.diffRaw, w[1]) + candidate.headerSize;
        tried.push({ shared, raw, ...f, candidate, estimate });
      }
    }
  }
  opts.onProgress?.(0, 1, 'compress');
  // One matcher goes on: the one whose best variant has the best estimate (the matchers' order
  // agrees across transforms and diff forms on every pair measured), which halves the encoder's work.
  const lowest = tried.reduce((a, b) => (b.estimate < a.estimate ? b : a));
  const cutoff = lowest.estimate * 1.03;
  let best: (Variant & { diff: Buffer; size: number }) | undefined;
  for (const t of tried) {
    if (t.estimate > cutoff || t.shared !== lowest.shared) continue;
    const w = windows(t.candidate.headerSize !== HEADER_SIZE);
    t.shared.control ??= compress(t.raw.control, w[0]);
    const diff = compress(t.diffRaw, w[1]);
    const size = t.shared.control.length + diff.length + extraFor(t.shared, t.raw, w[2]).length + t.candidate.headerSize;
    if (!best || size < best.size) best = { ...t, diff, size };
  }
  const { shared, raw, diff, diffRaw, diffAfterStep, transforms, candidate } = best!;
  const steps = shared.steps;
  const streamWindowBits = windows(candidate.headerSize !== HEADER_SIZE);
  const packed = [shared.control!, diff, extraFor(shared, raw, streamWindowBits[2])];
  const { body, frames, headerBytes } = multiplex(steps, { ...raw, diff: diffRaw, diffAfterStep }, packed, streamWindowBits, BUFFER_BITS);
  opts.onProgress?.(1, 1, 'compress');
  const header = encodeHeader({
    coder: Coder.deflateRaw,
    streamWindowBits,
    bufferBits: BUFFER_BITS,
    transforms,
    arch: candidate.arch,
    forms: candidate.forms,
    fallback: candidate.fallback,
    loadAddress: candidate.loadAddress,
    pointerRange: candidate.pointerRange,
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
  return {
    patch: Buffer.concat([header, body]),
    stats: {
      steps: steps.length,
      copyBytes,
      extraBytes,
      streamBytes: raw.control.length + diffRaw.length + raw.extra.length,
      controlBytes: packed[0].length,
      diffBytes: packed[1].length,
      extraStreamBytes: packed[2].length,
      frameHeaderBytes: headerBytes,
      frames,
      transform: transforms & Transform.sparseDiff ? `${candidate.name}, sparse diff` : candidate.name,
    },
  };
}
