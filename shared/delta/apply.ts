import { createHash, type Hash } from 'node:crypto';
import { ProtocolError, Reason } from '../errors.js';
import { predictorFor, type Predictor } from './arch/index.js';
import { headerSizeOf, MAX_HEADER_SIZE, PREDICTING_TRANSFORMS, readPatchHeader, STREAM_COUNT, Transform, type PatchHeader } from './format.js';
import { NEED_INPUT, RawInflater, STREAM_END } from './inflate.js';
import { SparseDiffReader } from './sparse.js';

const STREAM_NAMES = ['control', 'diff', 'extra'];

/** Old-image bytes read per flash access: small, and diff bytes walk the old image sequentially. */
export const OLD_BUFFER_BYTES = 256;
/** Output bytes gathered before each write() to the other slot. */
export const OUT_BUFFER_BYTES = 256;
/** A SHA-256 context in C (state 32, block 64, length 8, fill counter 4), rounded up. */
const SHA256_CONTEXT_BYTES = 112;
/** Instruction decoder state: phase, varint accumulator, remaining count, old/new positions, 4 recent alignments. */
const DECODER_STATE_BYTES = 48;
/** Sparse diff reader (transform bit 3): zero-run counter, run-length accumulator and shift. */
const SPARSE_STATE_BYTES = 12;

export interface PatchApplierOptions {
  /** Reads `length` bytes of the running (old) image at `offset`; must return exactly that many. */
  readOld: (offset: number, length: number) => Uint8Array;
  /** Receives the new image in order; each call gets a fresh copy it may keep. */
  write: (bytes: Uint8Array) => void;
  /** When given, the header must name this base image digest (checked before anything is written). */
  expectBaseDigest?: Uint8Array;
}

export interface ApplyResult {
  header: PatchHeader;
  newSize: number;
  newDigest: Buffer;
  peakWorkingMemory: number;
}

const Phase = { copyLen: 0, copy: 1, extraLen: 2, extra: 3, adjust: 4, drainDiff: 5, drainExtra: 6, done: 7 } as const;
type PhaseId = (typeof Phase)[keyof typeof Phase];

/** Frame parser state: the frame header varint, or the payload of a frame for one stream. */
const FRAME_STATE_BYTES = 16;

/**
 * Applies a patch as it arrives, in bounded memory: feed patch bytes with push() in any piece sizes,
 * then finish(). Nothing here grows with the patch or the image: the header (88 B), three DEFLATE
 * decoders (window, tables, input buffer each), one small old-image buffer and one small output
 * buffer. The old image is only read; any failure leaves it untouched and makes every later call
 * throw the same error.
 */
export class PatchApplier {
  private readonly opts: PatchApplierOptions;
  private readonly headerBuf = new Uint8Array(MAX_HEADER_SIZE);
  private headerFill = 0;
  /** Header bytes this patch has (known once its version byte has arrived). */
  private headerSize = MAX_HEADER_SIZE;
  private hdr: PatchHeader | undefined;
  private streams: RawInflater[] = [];
  private readonly oldBuf = new Uint8Array(OLD_BUFFER_BYTES);
  private oldBufStart = 0;
  private oldBufLen = 0;
  private readonly outBuf = new Uint8Array(OUT_BUFFER_BYTES);
  private outFill = 0;
  private readonly hash: Hash = createHash('sha256');
  private written = 0;
  private phase: PhaseId = Phase.copyLen;
  private varValue = 0;
  private varShift = 0;
  private remaining = 0;
  private oldPos = 0;
  /** Alignments (oldPos - newPos) of the last 4 steps, most recent first: recent[0] is the current one. */
  private readonly recent = [0, 0, 0, 0];
  /** Frame parsing: header varint in progress, then `frameLeft` payload bytes for `frameStream`. */
  private frameHead = 0;
  private frameShift = 0;
  private frameStream = 0;
  private frameLeft = 0;
  /** Pointer and instruction prediction: the unit in flight (its length, bytes left, new bytes so far). */
  private predictor: Predictor | undefined;
  /** Reads the diff stream's zero runs and explicit bytes when the patch has transform bit 3. */
  private sparse: SparseDiffReader | undefined;
  private unitLength = 0;
  private predictedLeft = 0;
  private newWord = 0;
  private readonly peekOld = (k: number): number => this.oldByte(this.oldPos + k);
  private failure: Error | undefined;
  private finished = false;
  private peak = 0;

  constructor(opts: PatchApplierOptions) {
    this.opts = opts;
    this.notePeak();
  }

  /** Header once its 88 bytes have arrived. */
  get header(): PatchHeader | undefined {
    return this.hdr;
  }

  /** New-image bytes produced so far (written, or waiting in the output buffer). */
  get bytesProduced(): number {
    return this.written + this.outFill;
  }

  /**
   * Working memory a device applier with this layout needs, in bytes: three DEFLATE decoders
   * (2^windowBits history, tables, input buffer each), header, old and output buffers, SHA-256
   * context, frame and instruction decoder state. The caller's receive buffer (the piece being
   * pushed) is not included: the transport owns it.
   */
  get peakWorkingMemory(): number {
    return this.peak;
  }

  private notePeak(): void {
    const table = (this.predictor?.workingMemory ?? 0) + (this.sparse ? SPARSE_STATE_BYTES : 0);
    let now = table + this.headerBuf.byteLength + this.oldBuf.byteLength + this.outBuf.byteLength + SHA256_CONTEXT_BYTES + DECODER_STATE_BYTES + FRAME_STATE_BYTES;
    for (const s of this.streams) now += s.workingMemory;
    if (now > this.peak) this.peak = now;
  }

  push(piece: Uint8Array): void {
    if (this.failure) throw this.failure;
    if (this.finished) throw new ProtocolError(Reason.deltaFailed, 'patch bytes pushed after finish()');
    try {
      let rest = piece;
      while (!this.hdr && rest.length > 0) {
        // Up to the version byte first: it says how long the header is.
        const want = this.headerFill < 5 ? 5 : this.headerSize;
        const take = Math.min(want - this.headerFill, rest.length);
        this.headerBuf.set(rest.subarray(0, take), this.headerFill);
        this.headerFill += take;
        rest = rest.subarray(take);
        if (this.headerFill === 5) this.headerSize = headerSizeOf(this.headerBuf);
        if (this.headerFill === this.headerSize) this.start(readPatchHeader(this.headerBuf.subarray(0, this.headerSize)));
      }
      if (!this.hdr) return;
      let i = 0;
      while (i < rest.length) {
        if (this.phase === Phase.done) throw new ProtocolError(Reason.deltaFailed, `corrupted patch: ${rest.length - i} bytes after the end of the DEFLATE streams`);
        if (this.frameLeft === 0) {
          this.frameByte(rest[i++]);
          continue;
        }
        const n = Math.min(this.frameLeft, rest.length - i);
        this.streams[this.frameStream].feed(rest.subarray(i, i + n));
        i += n;
        this.frameLeft -= n;
        this.advance();
      }
    } catch (err) {
      this.failure = err instanceof ProtocolError ? err : new ProtocolError(Reason.deltaFailed, `patch failed: ${(err as Error).message}`);
      throw this.failure;
    }
  }

  /** One byte of a frame header: uvarint (payloadLength - 1) * 4 + stream. */
  private frameByte(b: number): void {
    if (this.frameShift >= 21) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: frame header longer than 3 bytes');
    this.frameHead += (b & 0x7f) * 2 ** this.frameShift;
    this.frameShift += 7;
    if (b & 0x80) return;
    const stream = this.frameHead & 3;
    const len = (this.frameHead >>> 2) + 1;
    this.frameHead = 0;
    this.frameShift = 0;
    if (stream >= STREAM_COUNT) throw new ProtocolError(Reason.deltaFailed, `corrupted patch: frame for unknown stream ${stream}`);
    const s = this.streams[stream];
    if (s.done) throw new ProtocolError(Reason.deltaFailed, `corrupted patch: frame for ${STREAM_NAMES[stream]} stream after the end of it`);
    if (len > s.room) throw new ProtocolError(Reason.deltaFailed, `corrupted patch: frame of ${len} bytes overfills the ${STREAM_NAMES[stream]} stream buffer (${s.room} bytes free)`);
    this.frameStream = stream;
    this.frameLeft = len;
  }

  private start(header: PatchHeader): void {
    const want = this.opts.expectBaseDigest;
    if (want && !Buffer.from(want).equals(header.baseDigest)) {
      throw new ProtocolError(
        Reason.deltaBaseMismatch,
        `patch is for base image ${header.baseDigest.toString('hex').slice(0, 16)}…, this image is ${Buffer.from(want).toString('hex').slice(0, 16)}…`,
      );
    }
    this.hdr = header;
    if (header.transforms & PREDICTING_TRANSFORMS) this.predictor = predictorFor(header, (offset) => this.baseWord(offset));
    this.streams = header.streamWindowBits.map((w) => new RawInflater(w, 1 << header.bufferBits));
    const diff = this.streams[1];
    this.sparse = header.transforms & Transform.sparseDiff ? new SparseDiffReader(() => diff.pull()) : undefined;
    this.notePeak();
  }

  /**
   * Runs the instruction stream (docs/delta.md, "Instructions") as far as the delivered bytes allow:
   * each field is pulled from its own stream, and a stream that needs input it has not got yet
   * stops the loop until the next frame.
   */
  private advance(): void {
    const [control, diff, extra] = this.streams;
    for (;;) {
      switch (this.phase) {
        case Phase.copy: {
          const b = this.sparse ? this.sparse.pull() : diff.pull();
          if (b === NEED_INPUT) return;
          if (b === STREAM_END) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: diff stream ends before the copy does');
          this.out((b + this.predict(this.oldPos)) & 0xff);
          this.oldPos++;
          if (--this.remaining === 0) this.phase = Phase.extraLen;
          break;
        }
        case Phase.extra: {
          const b = extra.pull();
          if (b === NEED_INPUT) return;
          if (b === STREAM_END) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: extra stream ends before the step does');
          this.out(b);
          if (--this.remaining === 0) this.phase = Phase.adjust;
          break;
        }
        case Phase.drainDiff:
        case Phase.drainExtra: {
          if (this.phase === Phase.drainDiff && this.sparse && !this.sparse.finish()) return;
          const s = this.phase === Phase.drainDiff ? diff : extra;
          const b = s.pull();
          if (b === NEED_INPUT) return;
          if (b !== STREAM_END) throw new ProtocolError(Reason.deltaFailed, `corrupted patch: ${this.phase === Phase.drainDiff ? 'diff' : 'extra'} stream holds bytes no step uses`);
          this.phase = this.phase === Phase.drainDiff ? Phase.drainExtra : Phase.done;
          break;
        }
        case Phase.done:
          for (let k = 0; k < STREAM_COUNT; k++) {
            if (this.streams[k].pending > 0) throw new ProtocolError(Reason.deltaFailed, `corrupted patch: ${this.streams[k].pending} bytes after the end of the ${STREAM_NAMES[k]} DEFLATE stream`);
          }
          return;
        default: {
          const b = control.pull();
          if (b === NEED_INPUT) return;
          if (b === STREAM_END) {
            if (this.phase !== Phase.copyLen || this.varShift !== 0) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: control stream ends in the middle of a step');
            this.phase = Phase.drainDiff;
            break;
          }
          this.varint(b);
        }
      }
    }
  }

  /**
   * The byte the diff byte is added to: the base byte, or with a predictor, the matching byte of the
   * unit (pointer or instruction) that starts here or is in flight (docs/delta.md).
   */
  private predict(oldPos: number): number {
    const p = this.predictor;
    if (!p) return this.oldByte(oldPos);
    if (this.predictedLeft > 0) return (p.predicted >>> (8 * (this.unitLength - this.predictedLeft))) & 0xff;
    const n = p.begin(this.peekOld, oldPos, this.bytesProduced, this.remaining);
    if (n === 0) return this.oldByte(oldPos);
    this.unitLength = n;
    this.predictedLeft = n;
    this.newWord = 0;
    return p.predicted & 0xff;
  }

  private varint(b: number): void {
    if (this.varShift >= 35) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: varint longer than 5 bytes');
    this.varValue += (b & 0x7f) * 2 ** this.varShift;
    this.varShift += 7;
    if (b & 0x80) return;
    const v = this.varValue;
    this.varValue = 0;
    this.varShift = 0;
    const header = this.hdr!;
    const room = header.newSize - this.bytesProduced;
    switch (this.phase) {
      case Phase.copyLen:
        if (v > room) throw this.tooLong(v);
        if (this.oldPos + v > header.baseSize) {
          throw new ProtocolError(Reason.deltaFailed, `corrupted patch: copy of ${v} bytes at old offset ${this.oldPos} runs past the ${header.baseSize}-byte base image`);
        }
        this.remaining = v;
        this.phase = v > 0 ? Phase.copy : Phase.extraLen;
        return;
      case Phase.extraLen:
        if (v > room) throw this.tooLong(v);
        this.remaining = v;
        this.oldPos += v; // the old cursor moves along with the new one, then jumps
        this.phase = v > 0 ? Phase.extra : Phase.adjust;
        return;
      case Phase.adjust: {
        // low 2 bits: which recent alignment to start from; the rest: zigzag change to it
        const sel = v % 4;
        const z = Math.floor(v / 4);
        const delta = z % 2 === 1 ? -(z + 1) / 2 : z / 2;
        const r = this.recent;
        const offset = r[sel] + delta;
        const to = this.bytesProduced + offset;
        if (to < 0 || to > header.baseSize) {
          throw new ProtocolError(Reason.deltaFailed, `corrupted patch: seek to old offset ${to} outside the ${header.baseSize}-byte base image`);
        }
        this.oldPos = to;
        r[3] = r[2];
        r[2] = r[1];
        r[1] = r[0];
        r[0] = offset;
        this.phase = Phase.copyLen;
        return;
      }
    }
  }

  private tooLong(v: number): ProtocolError {
    return new ProtocolError(Reason.oversize, `patch output longer than declared: ${this.bytesProduced + v} bytes > new size ${this.hdr!.newSize}`);
  }

  /**
   * A literal word of the base for the predictor: read directly (4 bytes from flash), leaving the
   * sequential read buffer alone.
   */
  private baseWord(offset: number): number {
    const got = this.opts.readOld(offset, 4);
    if (got.length !== 4) throw new ProtocolError(Reason.deltaBaseMismatch, `old image read at ${offset} returned ${got.length} bytes, wanted 4: base image shorter than the patch says`);
    return (got[0] | (got[1] << 8) | (got[2] << 16) | (got[3] << 24)) >>> 0;
  }

  private oldByte(pos: number): number {
    if (pos < this.oldBufStart || pos >= this.oldBufStart + this.oldBufLen) {
      const len = Math.min(this.oldBuf.length, this.hdr!.baseSize - pos);
      const got = this.opts.readOld(pos, len);
      if (got.length !== len) throw new ProtocolError(Reason.deltaBaseMismatch, `old image read at ${pos} returned ${got.length} bytes, wanted ${len}: base image shorter than the patch says`);
      this.oldBuf.set(got);
      this.oldBufStart = pos;
      this.oldBufLen = len;
    }
    return this.oldBuf[pos - this.oldBufStart];
  }

  private out(b: number): void {
    if (this.predictedLeft > 0) {
      this.newWord = (this.newWord | (b << (8 * (this.unitLength - this.predictedLeft)))) >>> 0;
      if (--this.predictedLeft === 0) this.predictor!.end(this.newWord);
    }
    this.outBuf[this.outFill++] = b;
    if (this.outFill === this.outBuf.length) this.flush();
  }

  private flush(): void {
    if (this.outFill === 0) return;
    const chunk = this.outBuf.slice(0, this.outFill);
    this.hash.update(chunk);
    this.written += this.outFill;
    this.outFill = 0;
    this.opts.write(chunk);
  }

  /** Checks the patch ended cleanly and the output is the image the header promised. */
  finish(): ApplyResult {
    if (this.failure) throw this.failure;
    if (this.finished) throw new ProtocolError(Reason.deltaFailed, 'finish() called twice');
    try {
      const header = this.hdr;
      if (!header) throw new ProtocolError(Reason.deltaFailed, `truncated patch: only ${this.headerFill} of ${this.headerSize} header bytes`);
      if (this.phase !== Phase.done) {
        throw new ProtocolError(Reason.deltaFailed, `truncated patch: compressed streams end early (${this.bytesProduced} of ${header.newSize} output bytes)`);
      }
      this.flush();
      if (this.written !== header.newSize) {
        throw new ProtocolError(Reason.deltaFailed, `patch output is ${this.written} bytes, header declares ${header.newSize}`);
      }
      const digest = this.hash.digest();
      if (!digest.equals(header.newDigest)) {
        throw new ProtocolError(Reason.deltaFailed, `patched image digest ${digest.toString('hex').slice(0, 16)}… differs from the header's ${header.newDigest.toString('hex').slice(0, 16)}… (wrong base image or corrupted patch)`);
      }
      this.finished = true;
      return { header, newSize: this.written, newDigest: digest, peakWorkingMemory: this.peak };
    } catch (err) {
      this.failure = err as Error;
      throw err;
    }
  }
}

/**
 * Whole-buffer convenience for hosts (CLI, agent, tests): checks the base digest first, then
 * streams through PatchApplier so the same code path is exercised as on a node.
 */
export function applyPatch(oldImage: Uint8Array, patch: Uint8Array, opts: { pieceSize?: number } = {}): { image: Buffer; result: ApplyResult } {
  const header = readPatchHeader(patch);
  checkBase(header, oldImage);
  const parts: Uint8Array[] = [];
  const applier = new PatchApplier({
    readOld: (offset, length) => oldImage.subarray(offset, offset + length),
    write: (bytes) => parts.push(bytes),
  });
  const step = opts.pieceSize ?? 4096;
  for (let i = 0; i < patch.length; i += step) applier.push(patch.subarray(i, i + step));
  const result = applier.finish();
  return { image: Buffer.concat(parts), result };
}

/** Throws deltaBaseMismatch unless `oldImage` is the base the patch was made from. */
export function checkBase(header: PatchHeader, oldImage: Uint8Array): void {
  if (oldImage.length !== header.baseSize) {
    throw new ProtocolError(Reason.deltaBaseMismatch, `wrong base image: patch is for a ${header.baseSize}-byte image, this one has ${oldImage.length} bytes`);
  }
  const digest = createHash('sha256').update(oldImage).digest();
  if (!digest.equals(header.baseDigest)) {
    throw new ProtocolError(
      Reason.deltaBaseMismatch,
      `wrong base image: patch is for ${header.baseDigest.toString('hex').slice(0, 16)}…, this image is ${digest.toString('hex').slice(0, 16)}…`,
    );
  }
}
