import { ChunkBitmap } from '../shared/bitmap.js';
import { Encoding } from '../shared/messages.js';
import { sha256 } from '../shared/manifest.js';
import { SECTOR_SIZE, type Flash } from './flash.js';
import type { Partition } from './layout.js';
import { NvsKey, type Nvs } from './nvs.js';

/**
 * A download into the inactive slot, and its persistence in NVS.
 *
 * Chunk i is written at i * chunkSize of the slot. Chunks may arrive in any order, so each flash
 * sector is erased lazily right before the first write into it; which sectors are erased is kept in
 * RAM and, after a reboot, re-derived from the saved bitmap (a sector holding a saved chunk was
 * erased before that chunk was written). A sector erased after the last save is simply erased again.
 *
 * NVS holds two values:
 *   transfer        written when a transfer starts or changes session (rare):
 *                   u32 session, u8 encoding, u32 payloadSize, u32 chunkSize, 32 B payload digest,
 *                   u8 has-base, 32 B base digest, u16 manifest length, manifest
 *   transferBitmap  written every `saveEvery` new chunks and when the payload completes:
 *                   8 B payload digest prefix (ties it to its transfer), bitmap bytes
 * Nothing loaded is trusted: the final digest of what the slot holds decides.
 */
export interface TransferMeta {
  session: number;
  encoding: number;
  payloadSize: number;
  chunkSize: number;
  payloadDigest: Buffer;
  baseDigest?: Buffer;
  manifest: Buffer;
}

export const DEFAULT_SAVE_EVERY = 16;

export function encodeMeta(m: TransferMeta): Buffer {
  const out = Buffer.alloc(4 + 1 + 4 + 4 + 32 + 1 + 32 + 2 + m.manifest.length);
  let p = 0;
  p = out.writeUInt32LE(m.session, p);
  p = out.writeUInt8(m.encoding, p);
  p = out.writeUInt32LE(m.payloadSize, p);
  p = out.writeUInt32LE(m.chunkSize, p);
  p += m.payloadDigest.copy(out, p);
  p = out.writeUInt8(m.baseDigest ? 1 : 0, p);
  if (m.baseDigest) m.baseDigest.copy(out, p);
  p += 32;
  p = out.writeUInt16LE(m.manifest.length, p);
  m.manifest.copy(out, p);
  return out;
}

export function decodeMeta(b: Buffer | undefined): TransferMeta | undefined {
  if (!b || b.length < 80) return undefined;
  let p = 0;
  const session = b.readUInt32LE(p); p += 4;
  const encoding = b.readUInt8(p); p += 1;
  const payloadSize = b.readUInt32LE(p); p += 4;
  const chunkSize = b.readUInt32LE(p); p += 4;
  const payloadDigest = Buffer.from(b.subarray(p, p + 32)); p += 32;
  const hasBase = b.readUInt8(p) === 1; p += 1;
  const baseDigest = hasBase ? Buffer.from(b.subarray(p, p + 32)) : undefined; p += 32;
  const mlen = b.readUInt16LE(p); p += 2;
  if (p + mlen > b.length || chunkSize === 0 || payloadSize === 0) return undefined;
  return { session, encoding, payloadSize, chunkSize, payloadDigest, baseDigest, manifest: Buffer.from(b.subarray(p, p + mlen)) };
}

/**
 * Where a payload sits in the inactive slot. A full image starts at 0. A delta patch is parked at the
 * top of the slot (sector-aligned) so the image it produces can grow from 0 without overwriting the
 * patch it is still reading: the node needs no extra partition for patches.
 */
export function payloadOffset(encoding: number, slotSize: number, payloadSize: number): number {
  if (encoding !== Encoding.delta) return 0;
  return Math.floor((slotSize - payloadSize) / SECTOR_SIZE) * SECTOR_SIZE;
}

export function chunkCount(payloadSize: number, chunkSize: number): number {
  return Math.ceil(payloadSize / chunkSize);
}

export type StoreResult = 'stored' | 'duplicate';

export class Download {
  readonly bitmap: ChunkBitmap;
  /** Offset of the payload inside the slot (0 for full images, the top of the slot for patches). */
  readonly offset: number;
  private readonly erased = new Set<number>();
  private sinceSave = 0;
  /** Set once the stored bytes were hashed and matched, in this boot. */
  verified = false;

  private constructor(
    private readonly flash: Flash,
    private readonly nvs: Nvs,
    readonly slot: number,
    private readonly part: Partition,
    public meta: TransferMeta,
    bitmapBytes: Buffer | undefined,
    private readonly saveEvery: number,
  ) {
    this.bitmap = new ChunkBitmap(chunkCount(meta.payloadSize, meta.chunkSize), bitmapBytes);
    this.offset = payloadOffset(meta.encoding, part.size, meta.payloadSize);
    for (let i = 0; i < this.bitmap.size; i++) {
      if (this.bitmap.has(i)) for (const s of this.sectorsOf(i)) this.erased.add(s);
    }
  }

  /** Starts a fresh download: the metadata is saved before the first erase touches the slot. */
  static begin(flash: Flash, nvs: Nvs, slot: number, part: Partition, meta: TransferMeta, saveEvery = DEFAULT_SAVE_EVERY): Download {
    nvs.delete(NvsKey.transferBitmap);
    nvs.put(NvsKey.transfer, encodeMeta(meta));
    return new Download(flash, nvs, slot, part, meta, undefined, saveEvery);
  }

  /** The saved download, if NVS holds a consistent one for this slot. */
  static load(flash: Flash, nvs: Nvs, slot: number, part: Partition, saveEvery = DEFAULT_SAVE_EVERY): Download | undefined {
    const meta = decodeMeta(nvs.get(NvsKey.transfer));
    if (!meta || meta.payloadSize > part.size) return undefined;
    const saved = nvs.get(NvsKey.transferBitmap);
    const bits = saved && saved.length >= 8 && saved.subarray(0, 8).equals(meta.payloadDigest.subarray(0, 8)) ? saved.subarray(8) : undefined;
    return new Download(flash, nvs, slot, part, meta, bits, saveEvery);
  }

  static discard(nvs: Nvs): void {
    nvs.delete(NvsKey.transferBitmap);
    nvs.delete(NvsKey.transfer);
  }

  get total(): number {
    return this.bitmap.size;
  }

  get complete(): boolean {
    return this.bitmap.complete;
  }

  /** The agent re-offered the same payload under a new session: keep the bitmap, remember the session. */
  adoptSession(meta: TransferMeta): void {
    this.meta = meta;
    this.nvs.put(NvsKey.transfer, encodeMeta(meta));
  }

  expectedLength(index: number): number {
    const { payloadSize, chunkSize } = this.meta;
    return Math.min(chunkSize, payloadSize - index * chunkSize);
  }

  /** Stores one chunk: erase what is still unerased under it, write it, mark it. */
  store(index: number, data: Uint8Array): StoreResult {
    if (this.bitmap.has(index)) return 'duplicate';
    const at = this.part.offset + this.offset + index * this.meta.chunkSize;
    for (const s of this.sectorsOf(index)) {
      if (this.erased.has(s)) continue;
      this.flash.erase(this.part.offset + s * SECTOR_SIZE, SECTOR_SIZE);
      this.erased.add(s);
    }
    this.flash.write(at, data);
    this.bitmap.set(index);
    this.verified = false;
    if (++this.sinceSave >= this.saveEvery || this.bitmap.complete) this.save();
    return 'stored';
  }

  save(): void {
    this.nvs.put(NvsKey.transferBitmap, Buffer.concat([this.meta.payloadDigest.subarray(0, 8), this.bitmap.toBytes()]));
    this.sinceSave = 0;
  }

  /** Reads the payload back from flash and hashes it: the only thing that makes stored data trusted. */
  digestOfStored(): Buffer {
    return sha256(this.readStored());
  }

  readStored(): Buffer {
    return this.flash.read(this.part.offset + this.offset, this.meta.payloadSize);
  }

  /** Slot sectors (relative to the slot) that chunk `index` touches. */
  private sectorsOf(index: number): number[] {
    const start = this.offset + index * this.meta.chunkSize;
    const end = start + this.expectedLength(index);
    const out: number[] = [];
    for (let s = Math.floor(start / SECTOR_SIZE); s * SECTOR_SIZE < end; s++) out.push(s);
    return out;
  }
}
