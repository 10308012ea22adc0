import { SECTOR_SIZE, type Flash } from './flash.js';

/**
 * MCUboot's image trailer, after mcu-tools/mcuboot docs/design.md ("Image Trailer", "Swap Status"):
 * a record at the very end of a slot (and of the scratch area) that says whether an image is waiting
 * to be tested, whether a swap completed, whether the running image was confirmed, and how far an
 * interrupted swap got. Every field starts erased (0xFF) and is written once, so nothing is ever
 * rewritten in place on NOR flash; a new state means erasing the trailer sector.
 *
 * Here the trailer has a sector of its own at the end of each slot (sector-relative offsets):
 *
 *   S-16 .. S     magic (16 bytes)            good = the MCUboot magic, unset = all 0xFF, else bad
 *   S-24          image_ok (1 byte + 7 pad)   0x01 set, 0xFF unset
 *   S-32          copy_done                   0x01 set, 0xFF unset
 *   S-40          swap_info                   low nibble: swap type being performed (TEST, PERM, REVERT)
 *   S-48 .. S-44  swap_size (u32)             bytes of image area being swapped
 *   below         swap status: 3 one-byte records per sector index, the reversed list of indices
 *                 (index MAX-1 first), records 0x01, 0x02, 0x03 as each of the three steps ends
 *
 * The magic is design.md's boot_img_magic (four u32 words in host order, little-endian here).
 */
export const TRAILER_MAGIC = Buffer.from([
  0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f, 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80,
]);

/** MCUboot's BOOT_SWAP_TYPE_* numbers for the swap types the simulator performs. */
export const SwapType = { none: 1, test: 2, perm: 3, revert: 4 } as const;
export type SwapTypeCode = (typeof SwapType)[keyof typeof SwapType];

export type Magic = 'good' | 'unset' | 'bad';
export type Flag = 'set' | 'unset' | 'bad';

const S = SECTOR_SIZE;
const MAGIC_OFF = S - 16;
const IMAGE_OK_OFF = S - 24;
const COPY_DONE_OFF = S - 32;
const SWAP_INFO_OFF = S - 40;
const SWAP_SIZE_OFF = S - 48;
/** Swap status records fit below swap_size: 3 per sector index. */
export const MAX_STATUS_SECTORS = Math.floor(SWAP_SIZE_OFF / 3);

export interface Trailer {
  magic: Magic;
  imageOk: Flag;
  copyDone: Flag;
  /** The swap type recorded at swap start, if any. */
  swapType: SwapTypeCode | undefined;
  /** Bytes being swapped (recorded at swap start), if any. */
  swapSize: number | undefined;
}

function flag(b: number): Flag {
  return b === 0x01 ? 'set' : b === 0xff ? 'unset' : 'bad';
}

export function readTrailer(flash: Flash, at: number): Trailer {
  const t = flash.read(at + SWAP_SIZE_OFF, S - SWAP_SIZE_OFF);
  const magic = t.subarray(MAGIC_OFF - SWAP_SIZE_OFF);
  const info = t[SWAP_INFO_OFF - SWAP_SIZE_OFF];
  const type = info & 0x0f;
  const size = t.readUInt32LE(0);
  return {
    magic: magic.equals(TRAILER_MAGIC) ? 'good' : magic.every((b) => b === 0xff) ? 'unset' : 'bad',
    imageOk: flag(t[IMAGE_OK_OFF - SWAP_SIZE_OFF]),
    copyDone: flag(t[COPY_DONE_OFF - SWAP_SIZE_OFF]),
    swapType: info !== 0xff && type >= SwapType.test && type <= SwapType.revert ? (type as SwapTypeCode) : undefined,
    swapSize: size === 0xffffffff ? undefined : size,
  };
}

export function writeMagic(flash: Flash, at: number): void {
  flash.write(at + MAGIC_OFF, TRAILER_MAGIC);
}

export function writeImageOk(flash: Flash, at: number): void {
  flash.write(at + IMAGE_OK_OFF, Buffer.from([0x01]));
}

export function writeCopyDone(flash: Flash, at: number): void {
  flash.write(at + COPY_DONE_OFF, Buffer.from([0x01]));
}

/** Swap size and type, written at the start of a swap (before the magic that makes them count). */
export function writeSwapInfo(flash: Flash, at: number, type: SwapTypeCode, size: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(size);
  flash.write(at + SWAP_SIZE_OFF, b);
  flash.write(at + SWAP_INFO_OFF, Buffer.from([type]));
}

function statusOffset(index: number, step: number, maxSectors: number): number {
  // design.md: the region holds the reversed list of indices, index MAX-1 first.
  return SWAP_SIZE_OFF - 3 * maxSectors + 3 * (maxSectors - 1 - index) + step;
}

/** How many of the three steps of sector `index` completed: 0..3 (records must read 0x01, 0x02, 0x03 in order). */
export function readSwapStatus(flash: Flash, at: number, index: number, maxSectors: number): number {
  const r = flash.read(at + statusOffset(index, 0, maxSectors), 3);
  let done = 0;
  while (done < 3 && r[done] === done + 1) done++;
  return done;
}

export function writeSwapStatus(flash: Flash, at: number, index: number, step: number, maxSectors: number): void {
  flash.write(at + statusOffset(index, step, maxSectors), Buffer.from([step + 1]));
}

export function eraseTrailer(flash: Flash, at: number): void {
  flash.erase(at, S);
}
