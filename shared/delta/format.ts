import { ProtocolError, Reason } from '../errors.js';

/**
 * ferry delta format v1, fixed 84-byte header then a raw DEFLATE body (docs/delta.md has the
 * byte-by-byte layout). A fixed little-endian layout rather than CBOR because the one consumer that
 * matters is a C or MicroPython applier with a few KiB of RAM: it reads 84 bytes into a struct.
 */
export const MAGIC = Buffer.from('FRYD', 'ascii');
export const FORMAT_VERSION = 1;
export const HEADER_SIZE = 84;

export const Coder = { deflateRaw: 1 } as const;
export type CoderId = (typeof Coder)[keyof typeof Coder];

/** DEFLATE windows the format allows; zlib cannot make raw streams with windows below 2^9. */
export const MIN_WINDOW_BITS = 9;
export const MAX_WINDOW_BITS = 15;

export interface PatchHeader {
  version: number;
  coder: CoderId;
  windowBits: number;
  /** Reserved for executable-aware transforms; v1 patches carry 0. */
  transforms: number;
  baseSize: number;
  newSize: number;
  baseDigest: Buffer;
  newDigest: Buffer;
}

export function encodeHeader(h: Omit<PatchHeader, 'version'>): Buffer {
  const out = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(out, 0);
  out[4] = FORMAT_VERSION;
  out[5] = h.coder;
  out[6] = h.windowBits;
  out[7] = h.transforms;
  out.writeUInt32LE(h.baseSize, 8);
  out.writeUInt32LE(h.newSize, 12);
  h.baseDigest.copy(out, 16);
  h.newDigest.copy(out, 48);
  out.writeUInt32LE(crc32(out.subarray(0, 80)), 80);
  return out;
}

/**
 * Parses and checks the header at the start of a patch (only the first 84 bytes are needed), so a
 * node can compare baseDigest with the image it runs before it writes anything.
 */
export function readPatchHeader(bytes: Uint8Array): PatchHeader {
  if (bytes.length < HEADER_SIZE) {
    throw new ProtocolError(Reason.malformed, `truncated patch: header needs ${HEADER_SIZE} bytes, got ${bytes.length}`);
  }
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  if (!b.subarray(0, 4).equals(MAGIC)) {
    throw new ProtocolError(Reason.malformed, `not a ferry delta patch: magic is ${b.subarray(0, 4).toString('hex')}, expected ${MAGIC.toString('hex')} ("FRYD")`);
  }
  if (b[4] !== FORMAT_VERSION) throw new ProtocolError(Reason.malformed, `unknown delta format version ${b[4]} (this applier reads version ${FORMAT_VERSION})`);
  const want = b.readUInt32LE(80);
  const got = crc32(b.subarray(0, 80));
  if (want !== got) throw new ProtocolError(Reason.malformed, `corrupted patch header: CRC-32 is ${got.toString(16)}, header says ${want.toString(16)}`);
  if (b[5] !== Coder.deflateRaw) throw new ProtocolError(Reason.malformed, `unknown delta compression ${b[5]} (known: 1 = raw DEFLATE)`);
  const windowBits = b[6];
  if (windowBits < MIN_WINDOW_BITS || windowBits > MAX_WINDOW_BITS) {
    throw new ProtocolError(Reason.malformed, `delta window bits ${windowBits} outside ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}`);
  }
  if (b[7] !== 0) throw new ProtocolError(Reason.malformed, `unknown delta transform flags 0x${b[7].toString(16)}`);
  return {
    version: b[4],
    coder: b[5] as CoderId,
    windowBits,
    transforms: b[7],
    baseSize: b.readUInt32LE(8),
    newSize: b.readUInt32LE(12),
    baseDigest: Buffer.from(b.subarray(16, 48)),
    newDigest: Buffer.from(b.subarray(48, 80)),
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
  result(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}
