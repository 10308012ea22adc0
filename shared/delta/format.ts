import { ProtocolError, Reason } from '../errors.js';

/**
 * ferry delta format v2: fixed 88-byte header, then a body of frames that multiplex three raw
 * DEFLATE streams (docs/delta.md has the byte-by-byte layout). A fixed little-endian layout rather
 * than CBOR because the one consumer that matters is a C or MicroPython applier with a few KiB of
 * RAM: it reads 88 bytes into a struct.
 */
export const MAGIC = Buffer.from('FRYD', 'ascii');
export const FORMAT_VERSION = 2;
export const HEADER_SIZE = 88;

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
  /** Xtensa literal-pool pointer prediction on diff bytes (docs/delta.md, "Pointer prediction"). */
  pointerPrediction: 1,
} as const;
export const KNOWN_TRANSFORMS = Transform.pointerPrediction;

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
  baseSize: number;
  newSize: number;
  baseDigest: Buffer;
  newDigest: Buffer;
}

export function encodeHeader(h: Omit<PatchHeader, 'version' | 'windowBits'>): Buffer {
  const out = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(out, 0);
  out[4] = FORMAT_VERSION;
  out[5] = h.coder;
  out[6] = h.transforms;
  out[7] = h.bufferBits;
  out[8] = h.streamWindowBits[0];
  out[9] = h.streamWindowBits[1];
  out[10] = h.streamWindowBits[2];
  out[11] = 0;
  out.writeUInt32LE(h.baseSize, 12);
  out.writeUInt32LE(h.newSize, 16);
  h.baseDigest.copy(out, 20);
  h.newDigest.copy(out, 52);
  out.writeUInt32LE(crc32(out.subarray(0, 84)), 84);
  return out;
}

/**
 * Parses and checks the header at the start of a patch (only the first 88 bytes are needed), so a
 * node can compare baseDigest with the image it runs before it writes anything.
 */
export function readPatchHeader(bytes: Uint8Array): PatchHeader {
  if (bytes.length < 5) {
    throw new ProtocolError(Reason.malformed, `truncated patch: header needs ${HEADER_SIZE} bytes, got ${bytes.length}`);
  }
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.length, HEADER_SIZE));
  if (!b.subarray(0, 4).equals(MAGIC)) {
    throw new ProtocolError(Reason.malformed, `not a ferry delta patch: magic is ${b.subarray(0, 4).toString('hex')}, expected ${MAGIC.toString('hex')} ("FRYD")`);
  }
  if (b[4] !== FORMAT_VERSION) throw new ProtocolError(Reason.malformed, `unknown delta format version ${b[4]} (this applier reads version ${FORMAT_VERSION})`);
  if (bytes.length < HEADER_SIZE) {
    throw new ProtocolError(Reason.malformed, `truncated patch: header needs ${HEADER_SIZE} bytes, got ${bytes.length}`);
  }
  const want = b.readUInt32LE(84);
  const got = crc32(b.subarray(0, 84));
  if (want !== got) throw new ProtocolError(Reason.malformed, `corrupted patch header: CRC-32 is ${got.toString(16)}, header says ${want.toString(16)}`);
  if (b[5] !== Coder.deflateRaw) throw new ProtocolError(Reason.malformed, `unknown delta compression ${b[5]} (known: 2 = multiplexed raw DEFLATE)`);
  if (b[6] & ~KNOWN_TRANSFORMS) throw new ProtocolError(Reason.malformed, `unknown delta transform flags 0x${b[6].toString(16)}`);
  const bufferBits = b[7];
  if (bufferBits < MIN_BUFFER_BITS || bufferBits > MAX_BUFFER_BITS) {
    throw new ProtocolError(Reason.malformed, `delta buffer bits ${bufferBits} outside ${MIN_BUFFER_BITS}..${MAX_BUFFER_BITS}`);
  }
  const streamWindowBits: [number, number, number] = [b[8], b[9], b[10]];
  for (const w of streamWindowBits) {
    if (w < MIN_WINDOW_BITS || w > MAX_WINDOW_BITS) throw new ProtocolError(Reason.malformed, `delta window bits ${w} outside ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}`);
  }
  if (b[11] !== 0) throw new ProtocolError(Reason.malformed, `reserved header byte 11 is ${b[11]}, must be 0`);
  return {
    version: b[4],
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
