import { ProtocolError, Reason } from '../errors.js';

/**
 * ferry delta format v2 and v3: a fixed 88-byte (v3: 104-byte) header, then a body of frames that
 * multiplex three raw DEFLATE streams (docs/delta.md has the byte-by-byte layout). A fixed
 * little-endian layout rather than CBOR because the one consumer that matters is a C or
 * MicroPython applier with a few KiB of RAM: it reads the header into a struct.
 */
export const MAGIC = Buffer.from('FRYD', 'ascii');
/** Version this creator writes when a patch needs none of version 3's fields. */
export const FORMAT_VERSION = 2;
/** Version 3: version 2 plus an instruction set, its form mask, a load address and a pointer range (104-byte header). */
export const FORMAT_VERSION_ARCH = 3;
export const HEADER_SIZE = 88;
export const HEADER_SIZE_V3 = 104;
/** The most header bytes an applier must hold. */
export const MAX_HEADER_SIZE = HEADER_SIZE_V3;

/** `2` = three raw DEFLATE streams (control, diff, extra) multiplexed in frames. */
export const Coder = { deflateRaw: 2 } as const;
export type CoderId = (typeof Coder)[keyof typeof Coder];

/** The body's streams, in the order of their frame ids. */
export const Stream = { control: 0, diff: 1, extra: 2 } as const;
export type StreamId = (typeof Stream)[keyof typeof Stream];
export const STREAM_COUNT = 3;

/** DEFLATE windows the format allows; zlib cannot make raw streams with windows below 2^9. */
export const MIN_WINDOW_BITS = 9;
export const MAX_WINDOW_BITS = 15;
/** Per-stream input buffer 2^bufferBits bytes: frames never put more unread bytes in one. */
export const MIN_BUFFER_BITS = 6;
export const MAX_BUFFER_BITS = 12;

/** Transform flags (header byte 6). */
export const Transform = {
  /** ESP8266 pointer prediction on diff bytes (docs/delta.md, "Pointer prediction"). */
  pointerPrediction: 1,
  /** Version 3: words inside the header's pointer range are predicted as pointers. */
  pointerRange: 2,
  /** Version 3: PC-relative instructions of the header's instruction set are predicted. */
  instructions: 4,
  /** The diff stream is sparse: zero-run lengths and explicit bytes (sparse.ts); versions 2 and 3, capability 256. */
  sparseDiff: 8,
} as const;
const KNOWN_TRANSFORMS: Record<number, number> = {
  2: Transform.pointerPrediction | Transform.sparseDiff,
  3: Transform.pointerPrediction | Transform.pointerRange | Transform.instructions | Transform.sparseDiff,
};
/** Transform bits that make the applier predict diff bytes (it keeps a table for them). */
export const PREDICTING_TRANSFORMS = Transform.pointerPrediction | Transform.pointerRange | Transform.instructions;
/** Instruction sets a version 3 header may name (byte 11), see arch/index.ts. */
const MAX_ARCH = 4;
/** Reference forms each instruction set has (bits of header byte 96), see arch/*.ts `forms`. */
const FORM_COUNTS = [0, 4, 3, 4, 2];

export interface PatchHeader {
  version: number;
  coder: CoderId;
  /** The largest of the three stream windows (bits). */
  windowBits: number;
  /** Window bits of the control, diff and extra streams. */
  streamWindowBits: [number, number, number];
  /** Each stream's input buffer holds 2^bufferBits bytes. */
  bufferBits: number;
  /** Transform flags, see `Transform`. */
  transforms: number;
  /** Version 3 only (0 in version 2): instruction set (arch/index.ts `Arch`), its enabled forms, load address, pointer range [lo, hi). */
  arch: number;
  forms: number;
  /** Version 3 only: fallback bits (arch/predictor.ts `Fallback`). */
  fallback: number;
  loadAddress: number;
  pointerRange: [number, number];
  /** 88 (version 2) or 104 (version 3). */
  headerSize: number;
  baseSize: number;
  newSize: number;
  baseDigest: Buffer;
  newDigest: Buffer;
}

/** Writes a version 2 header when no version 3 field is in use, else version 3. */
export function encodeHeader(h: Omit<PatchHeader, 'version' | 'windowBits' | 'headerSize'>): Buffer {
  const v3 = (h.transforms & (Transform.pointerRange | Transform.instructions)) !== 0 || h.arch !== 0;
  const size = v3 ? HEADER_SIZE_V3 : HEADER_SIZE;
  const out = Buffer.alloc(size);
  MAGIC.copy(out, 0);
  out[4] = v3 ? FORMAT_VERSION_ARCH : FORMAT_VERSION;
  out[5] = h.coder;
  out[6] = h.transforms;
  out[7] = h.bufferBits;
  out[8] = h.streamWindowBits[0];
  out[9] = h.streamWindowBits[1];
  out[10] = h.streamWindowBits[2];
  out[11] = h.arch;
  out.writeUInt32LE(h.baseSize, 12);
  out.writeUInt32LE(h.newSize, 16);
  h.baseDigest.copy(out, 20);
  h.newDigest.copy(out, 52);
  if (v3) {
    out.writeUInt32LE(h.loadAddress >>> 0, 84);
    out.writeUInt32LE(h.pointerRange[0] >>> 0, 88);
    out.writeUInt32LE(h.pointerRange[1] >>> 0, 92);
    out[96] = h.forms;
    out[97] = h.fallback;
  }
  out.writeUInt32LE(crc32(out.subarray(0, size - 4)), size - 4);
  return out;
}

/**
 * Header size of the patch that starts with `bytes` (at least 5 of them): 88 for version 2, 100 for
 * version 3. Throws on a wrong magic or an unknown version.
 */
export function headerSizeOf(bytes: Uint8Array): number {
  if (bytes.length < 5) throw new ProtocolError(Reason.malformed, `truncated patch: header needs ${HEADER_SIZE} bytes, got ${bytes.length}`);
  const magic = Buffer.from(bytes.buffer, bytes.byteOffset, 4);
  if (!magic.equals(MAGIC)) {
    throw new ProtocolError(Reason.malformed, `not a ferry delta patch: magic is ${magic.toString('hex')}, expected ${MAGIC.toString('hex')} ("FRYD")`);
  }
  if (bytes[4] === FORMAT_VERSION) return HEADER_SIZE;
  if (bytes[4] === FORMAT_VERSION_ARCH) return HEADER_SIZE_V3;
  throw new ProtocolError(Reason.malformed, `unknown delta format version ${bytes[4]} (this applier reads versions ${FORMAT_VERSION} and ${FORMAT_VERSION_ARCH})`);
}

/**
 * Parses and checks the header at the start of a patch (only the first 88 or 100 bytes are
 * needed), so a node can compare baseDigest with the image it runs before it writes anything.
 */
export function readPatchHeader(bytes: Uint8Array): PatchHeader {
  const size = headerSizeOf(bytes);
  if (bytes.length < size) {
    throw new ProtocolError(Reason.malformed, `truncated patch: header needs ${size} bytes, got ${bytes.length}`);
  }
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, size);
  const want = b.readUInt32LE(size - 4);
  const got = crc32(b.subarray(0, size - 4));
  if (want !== got) throw new ProtocolError(Reason.malformed, `corrupted patch header: CRC-32 is ${got.toString(16)}, header says ${want.toString(16)}`);
  if (b[5] !== Coder.deflateRaw) throw new ProtocolError(Reason.malformed, `unknown delta compression ${b[5]} (known: 2 = multiplexed raw DEFLATE)`);
  const version = b[4];
  if (b[6] & ~KNOWN_TRANSFORMS[version]) throw new ProtocolError(Reason.malformed, `unknown delta transform flags 0x${b[6].toString(16)} for version ${version}`);
  const bufferBits = b[7];
  if (bufferBits < MIN_BUFFER_BITS || bufferBits > MAX_BUFFER_BITS) {
    throw new ProtocolError(Reason.malformed, `delta buffer bits ${bufferBits} outside ${MIN_BUFFER_BITS}..${MAX_BUFFER_BITS}`);
  }
  const streamWindowBits: [number, number, number] = [b[8], b[9], b[10]];
  for (const w of streamWindowBits) {
    if (w < MIN_WINDOW_BITS || w > MAX_WINDOW_BITS) throw new ProtocolError(Reason.malformed, `delta window bits ${w} outside ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}`);
  }
  let arch = 0;
  let loadAddress = 0;
  let pointerRange: [number, number] = [0, 0];
  let forms = 0;
  let fallback = 0;
  if (version === FORMAT_VERSION) {
    if (b[11] !== 0) throw new ProtocolError(Reason.malformed, `reserved header byte 11 is ${b[11]}, must be 0`);
  } else {
    arch = b[11];
    if (arch > MAX_ARCH) throw new ProtocolError(Reason.malformed, `unknown delta instruction set ${arch} (known: 0..${MAX_ARCH})`);
    if ((arch !== 0) !== ((b[6] & Transform.instructions) !== 0)) {
      throw new ProtocolError(Reason.malformed, `delta instruction set ${arch} does not agree with transform flags 0x${b[6].toString(16)}`);
    }
    loadAddress = b.readUInt32LE(84);
    pointerRange = [b.readUInt32LE(88), b.readUInt32LE(92)];
    const ranged = (b[6] & Transform.pointerRange) !== 0;
    if (ranged ? pointerRange[0] >= pointerRange[1] : pointerRange[0] !== 0 || pointerRange[1] !== 0) {
      throw new ProtocolError(Reason.malformed, `delta pointer range 0x${pointerRange[0].toString(16)}..0x${pointerRange[1].toString(16)} does not agree with transform flags 0x${b[6].toString(16)}`);
    }
    forms = b[96];
    if ((arch === 0) !== (forms === 0)) throw new ProtocolError(Reason.malformed, `delta form mask 0x${forms.toString(16)} does not agree with instruction set ${arch}`);
    if (arch !== 0 && forms >= 1 << FORM_COUNTS[arch]) throw new ProtocolError(Reason.malformed, `delta form mask 0x${forms.toString(16)} names forms instruction set ${arch} does not have`);
    fallback = b[97];
    if (fallback > 3) throw new ProtocolError(Reason.malformed, `unknown delta fallback flags 0x${fallback.toString(16)}`);
    if (b[98] !== 0 || b[99] !== 0) throw new ProtocolError(Reason.malformed, 'reserved header bytes 98..99 must be 0');
  }
  return {
    version,
    arch,
    forms,
    fallback,
    loadAddress,
    pointerRange,
    headerSize: size,
    coder: b[5] as CoderId,
    windowBits: Math.max(...streamWindowBits),
    streamWindowBits,
    bufferBits,
    transforms: b[6],
    baseSize: b.readUInt32LE(12),
    newSize: b.readUInt32LE(16),
    baseDigest: Buffer.from(b.subarray(20, 52)),
    newDigest: Buffer.from(b.subarray(52, 84)),
  };
}

let crcTable: Uint32Array | undefined;

/** CRC-32 as in zlib/PNG (reflected polynomial 0xEDB88320): a C applier has it already. */
export function crc32(bytes: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Growable byte sink for the instruction stream the creator builds before compressing it. */
export class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  private len = 0;
  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }
  byte(b: number): void {
    this.room(1);
    this.buf[this.len++] = b;
  }
  /** Unsigned LEB128. */
  uvarint(v: number): void {
    while (v >= 0x80) {
      this.byte((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.byte(v);
  }
  /** Zigzag then LEB128, so small negative seeks stay one or two bytes. */
  svarint(v: number): void {
    this.uvarint(v < 0 ? -2 * v - 1 : 2 * v);
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  get length(): number {
    return this.len;
  }
  result(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}
