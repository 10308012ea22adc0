import type { FragmentStore } from '../../shared/lora/fec-decoder.js';
import { SECTOR_SIZE, type Flash } from '../flash.js';
import type { Partition } from '../layout.js';
import { NvsKey, type Nvs } from '../nvs.js';
import type { FragSetup } from './frag-session.js';

/**
 * What a LoRa node persists of a transfer (docs/lora.md §7.5), in NVS, plus where the blocks go in flash.
 *
 * loraTransfer: u32 id, 4 B digest prefix, u8 len + version, u16 blocks, u32 size, u8 blockKiB, u8 encoding,
 *               u32 McAddr (0 = unicast), u16 done, u8 verified, u16 len + manifest (block 0, once complete)
 * loraBlock:    u32 descriptor, u16 NbFrag, u8 FragSize, u8 Padding, u8 FragIndex, u8 McGroupBitMask,
 *               u8 BlockAckDelay, then the received-uncoded bitmap (bit i = data fragment i is in flash)
 *
 * Block k ≥ 1 lives in the download slot at (k − 1)·B KiB; its fragment i at i·FragSize of that, the padding
 * of the last fragment never written (it would land on the next block). Sectors are erased lazily before their
 * first write; after a reset the erased set is re-derived from what is held, as device/transfer.ts does.
 */
export interface LoraTransfer {
  id: number;
  digestPrefix: Buffer;
  version: string;
  blocks: number;
  size: number;
  blockKiB: number;
  encoding: number;
  mcAddr: number;
  done: number;
  verified: boolean;
  manifest?: Buffer;
}

export function saveTransfer(nvs: Nvs, t: LoraTransfer): void {
  const v = Buffer.from(t.version);
  const man = t.manifest ?? Buffer.alloc(0);
  const out = Buffer.alloc(4 + 4 + 1 + v.length + 2 + 4 + 1 + 1 + 4 + 2 + 1 + 2 + man.length);
  let p = out.writeUInt32LE(t.id, 0);
  p += t.digestPrefix.copy(out, p, 0, 4);
  p = out.writeUInt8(v.length, p);
  p += v.copy(out, p);
  p = out.writeUInt16LE(t.blocks, p);
  p = out.writeUInt32LE(t.size, p);
  p = out.writeUInt8(t.blockKiB, p);
  p = out.writeUInt8(t.encoding, p);
  p = out.writeUInt32LE(t.mcAddr, p);
  p = out.writeUInt16LE(t.done, p);
  p = out.writeUInt8(t.verified ? 1 : 0, p);
  p = out.writeUInt16LE(man.length, p);
  man.copy(out, p);
  nvs.put(NvsKey.loraTransfer, out);
}

export function loadTransfer(nvs: Nvs): LoraTransfer | undefined {
  const b = nvs.get(NvsKey.loraTransfer);
  try {
    if (!b) return undefined;
    let p = 0;
    const id = b.readUInt32LE(p); p += 4;
    const digestPrefix = Buffer.from(b.subarray(p, p + 4)); p += 4;
    const vl = b.readUInt8(p); p += 1;
    const version = b.subarray(p, p + vl).toString(); p += vl;
    const blocks = b.readUInt16LE(p); p += 2;
    const size = b.readUInt32LE(p); p += 4;
    const blockKiB = b.readUInt8(p); p += 1;
    const encoding = b.readUInt8(p); p += 1;
    const mcAddr = b.readUInt32LE(p); p += 4;
    const done = b.readUInt16LE(p); p += 2;
    const verified = b.readUInt8(p) === 1; p += 1;
    const ml = b.readUInt16LE(p); p += 2;
    if (p + ml > b.length) return undefined;
    const manifest = ml > 0 ? Buffer.from(b.subarray(p, p + ml)) : undefined;
    return { id, digestPrefix, version, blocks, size, blockKiB, encoding, mcAddr, done, verified, manifest };
  } catch {
    return undefined; // a record this code cannot read is as good as none
  }
}

export interface SavedBlock {
  setup: FragSetup;
  known: number[];
}

export function saveBlock(nvs: Nvs, setup: FragSetup, known: Iterable<number>): void {
  const bitmap = Buffer.alloc(Math.ceil(setup.nbFrag / 8));
  for (const i of known) bitmap[i >> 3] |= 1 << (i & 7);
  const head = Buffer.alloc(11);
  head.writeUInt32LE(setup.descriptor >>> 0, 0);
  head.writeUInt16LE(setup.nbFrag, 4);
  head.writeUInt8(setup.fragSize, 6);
  head.writeUInt8(setup.padding, 7);
  head.writeUInt8(setup.fragIndex, 8);
  head.writeUInt8(setup.mcGroupBitMask, 9);
  head.writeUInt8(setup.blockAckDelay, 10);
  nvs.put(NvsKey.loraBlock, Buffer.concat([head, bitmap]));
}

export function loadBlock(nvs: Nvs): SavedBlock | undefined {
  const b = nvs.get(NvsKey.loraBlock);
  if (!b || b.length < 11) return undefined;
  const setup: FragSetup = {
    descriptor: b.readUInt32LE(0), nbFrag: b.readUInt16LE(4), fragSize: b.readUInt8(6), padding: b.readUInt8(7), fragIndex: b.readUInt8(8) & 3,
    mcGroupBitMask: b.readUInt8(9), blockAckDelay: b.readUInt8(10),
  };
  if (setup.nbFrag === 0 || setup.fragSize === 0 || b.length < 11 + Math.ceil(setup.nbFrag / 8)) return undefined;
  const known: number[] = [];
  for (let i = 0; i < setup.nbFrag; i++) if (b[11 + (i >> 3)] & (1 << (i & 7))) known.push(i);
  return { setup, known };
}

export function forgetTransfer(nvs: Nvs): void {
  nvs.delete(NvsKey.loraBlock);
  nvs.delete(NvsKey.loraTransfer);
}

/** A block's fragments in the download slot. */
export class SlotBlockStore implements FragmentStore {
  constructor(
    private readonly flash: Flash,
    private readonly slot: Partition,
    /** Byte offset of the block inside the slot. */
    private readonly base: number,
    private readonly blockLength: number,
    private readonly fragSize: number,
    /** Slot sectors (relative to the slot) already erased in this transfer; shared across the transfer's blocks. */
    private readonly erased: Set<number>,
  ) {
    if (base + blockLength > slot.size) throw new RangeError(`block at ${base}+${blockLength} exceeds the ${slot.size}-byte slot`);
  }

  read(index: number): Uint8Array {
    const out = new Uint8Array(this.fragSize);
    const [from, len] = this.span(index);
    if (len > 0) out.set(this.flash.read(this.slot.offset + from, len));
    return out;
  }

  write(index: number, data: Uint8Array): void {
    const [from, len] = this.span(index);
    if (len <= 0) return;
    for (let s = Math.floor(from / SECTOR_SIZE); s * SECTOR_SIZE < from + len; s++) {
      if (this.erased.has(s)) continue;
      this.flash.erase(this.slot.offset + s * SECTOR_SIZE, SECTOR_SIZE);
      this.erased.add(s);
    }
    this.flash.write(this.slot.offset + from, data.subarray(0, len));
  }

  /** Marks the sectors under held fragments erased (after a reset). */
  markHeld(indices: Iterable<number>): void {
    for (const i of indices) {
      const [from, len] = this.span(i);
      for (let s = Math.floor(from / SECTOR_SIZE); s * SECTOR_SIZE < from + len; s++) this.erased.add(s);
    }
  }

  private span(index: number): [number, number] {
    const from = index * this.fragSize;
    return [this.base + from, Math.min(this.fragSize, this.blockLength - from)];
  }
}

/** Sectors of the slot the completed blocks 1..done−1 cover. */
export function erasedByDoneBlocks(done: number, blockKiB: number): Set<number> {
  const out = new Set<number>();
  const end = Math.max(0, done - 1) * blockKiB * 1024;
  for (let s = 0; s * SECTOR_SIZE < end; s++) out.add(s);
  return out;
}
