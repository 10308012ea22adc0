import { createHash, type Hash } from 'node:crypto';
import { ProtocolError, Reason } from '../errors.js';
import { HEADER_SIZE, readPatchHeader, type PatchHeader } from './format.js';
import { RawInflater } from './inflate.js';

/** Old-image bytes read per flash access: small, and diff bytes walk the old image sequentially. */
export const OLD_BUFFER_BYTES = 256;
/** Output bytes gathered before each write() to the other slot. */
export const OUT_BUFFER_BYTES = 256;
/** A SHA-256 context in C (state 32, block 64, length 8, fill counter 4), rounded up. */
const SHA256_CONTEXT_BYTES = 112;
/** Instruction decoder state: phase, varint accumulator, remaining count, old/new positions. */
const DECODER_STATE_BYTES = 32;

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

const Phase = { copyLen: 0, copy: 1, extraLen: 2, extra: 3, seek: 4 } as const;
type PhaseId = (typeof Phase)[keyof typeof Phase];

/**
 * Applies a patch as it arrives, in bounded memory: feed patch bytes with push() in any piece sizes,
 * then finish(). Nothing here grows with the patch or the image: the header (84 B), the DEFLATE
 * window and tables, one small old-image buffer and one small output buffer. The old image is only
 * read; any failure leaves it untouched and makes every later call throw the same error.
 */
export class PatchApplier {
  private readonly opts: PatchApplierOptions;
  private readonly headerBuf = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  private hdr: PatchHeader | undefined;
  private inflater: RawInflater | undefined;
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
  private failure: Error | undefined;
  private finished = false;
  private peak = 0;

  constructor(opts: PatchApplierOptions) {
    this.opts = opts;
    this.notePeak();
  }

  /** Header once its 84 bytes have arrived. */
  get header(): PatchHeader | undefined {
    return this.hdr;
  }

  /** New-image bytes produced so far (written, or waiting in the output buffer). */
  get bytesProduced(): number {
    return this.written + this.outFill;
  }

  /**
   * Working memory a device applier with this layout needs, in bytes: DEFLATE window (2^windowBits)
   * and tables, header, old and output buffers, SHA-256 context and decoder state. The caller's
   * receive buffer (the piece being pushed) is not included: the transport owns it.
   */
  get peakWorkingMemory(): number {
    return this.peak;
  }

  private notePeak(): void {
    const now =
      (this.inflater?.workingMemory ?? 0) +
      this.headerBuf.byteLength +
      this.oldBuf.byteLength +
      this.outBuf.byteLength +
      SHA256_CONTEXT_BYTES +
      DECODER_STATE_BYTES;
    if (now > this.peak) this.peak = now;
  }

  push(piece: Uint8Array): void {
    if (this.failure) throw this.failure;
    if (this.finished) throw new ProtocolError(Reason.deltaFailed, 'patch bytes pushed after finish()');
    try {
      let rest = piece;
      if (!this.hdr) {
        const take = Math.min(HEADER_SIZE - this.headerFill, rest.length);
        this.headerBuf.set(rest.subarray(0, take), this.headerFill);
        this.headerFill += take;
        rest = rest.subarray(take);
        if (this.headerFill < HEADER_SIZE) return;
        this.start(readPatchHeader(this.headerBuf));
      }
      this.inflater!.push(rest);
    } catch (err) {
      this.failure = err instanceof ProtocolError ? err : new ProtocolError(Reason.deltaFailed, `patch failed: ${(err as Error).message}`);
      throw this.failure;
    }
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
    this.inflater = new RawInflater(header.windowBits, (b) => this.onByte(b));
    this.notePeak();
  }

  /** The instruction stream, one decompressed byte at a time (docs/delta.md, "Instruction stream"). */
  private onByte(b: number): void {
    switch (this.phase) {
      case Phase.copy:
        this.out((b + this.oldByte(this.oldPos++)) & 0xff);
        if (--this.remaining === 0) this.phase = Phase.extraLen;
        return;
      case Phase.extra:
        this.out(b);
        if (--this.remaining === 0) this.phase = Phase.seek;
        return;
      default:
        this.varint(b);
    }
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
        this.phase = v > 0 ? Phase.extra : Phase.seek;
        return;
      case Phase.seek: {
        const seek = v % 2 === 1 ? -(v + 1) / 2 : v / 2; // zigzag
        const to = this.oldPos + seek;
        if (to < 0 || to > header.baseSize) {
          throw new ProtocolError(Reason.deltaFailed, `corrupted patch: seek to old offset ${to} outside the ${header.baseSize}-byte base image`);
        }
        this.oldPos = to;
        this.phase = Phase.copyLen;
        return;
      }
    }
  }

  private tooLong(v: number): ProtocolError {
    return new ProtocolError(Reason.oversize, `patch output longer than declared: ${this.bytesProduced + v} bytes > new size ${this.hdr!.newSize}`);
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
      if (!header) throw new ProtocolError(Reason.deltaFailed, `truncated patch: only ${this.headerFill} of ${HEADER_SIZE} header bytes`);
      if (!this.inflater!.done) {
        throw new ProtocolError(Reason.deltaFailed, `truncated patch: compressed stream ends early (${this.bytesProduced} of ${header.newSize} output bytes)`);
      }
      if (this.phase !== Phase.copyLen || this.varShift !== 0) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: instruction stream ends in the middle of a step');
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
