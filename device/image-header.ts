import { crc32 } from 'node:zlib';
import { decodeDescriptor, encodeDescriptor, type SlotDescriptor } from './firmware.js';
import { SECTOR_SIZE, type Flash } from './flash.js';

/**
 * The image metadata an MCUboot slot carries inside the slot itself, so that it travels with the
 * image when the bootloader swaps or copies sectors. On MCUboot this is the image header at the
 * start of the image plus the TLV area after it (hash, signature, security counter); here the image
 * bytes stay exactly the published image (its manifest digest covers them from byte 0), so the
 * metadata lives in one reserved sector just below the trailer instead:
 *
 *   slot:  [ image area: capacity bytes ][ header sector ][ trailer sector ]
 *
 * Header sector, little-endian: u32 magic 'FIMG', u32 length, SlotDescriptor bytes, u32 crc32 of
 * everything before it; the rest 0xFF. A torn or erased sector reads as "no image".
 */
const MAGIC = 0x474d4946; // 'FIMG'

export function writeImageHeader(flash: Flash, at: number, d: SlotDescriptor): void {
  const body = encodeDescriptor(d);
  const out = Buffer.alloc(8 + body.length + 4);
  out.writeUInt32LE(MAGIC, 0);
  out.writeUInt32LE(body.length, 4);
  body.copy(out, 8);
  out.writeUInt32LE(crc32(out.subarray(0, 8 + body.length)), 8 + body.length);
  if (out.length > SECTOR_SIZE) throw new RangeError(`image header of ${out.length} bytes exceeds a sector`);
  // NOR: a sector holding anything must be erased before it can take new bytes.
  if (!flash.isErased(at, SECTOR_SIZE)) flash.erase(at, SECTOR_SIZE);
  flash.write(at, out);
}

export function readImageHeader(flash: Flash, at: number): SlotDescriptor | undefined {
  const head = flash.read(at, 8);
  if (head.readUInt32LE(0) !== MAGIC) return undefined;
  const len = head.readUInt32LE(4);
  if (len > SECTOR_SIZE - 12) return undefined;
  const all = flash.read(at, 8 + len + 4);
  if (crc32(all.subarray(0, 8 + len)) !== all.readUInt32LE(8 + len)) return undefined;
  return decodeDescriptor(all.subarray(8, 8 + len));
}

export function eraseImageHeader(flash: Flash, at: number): void {
  if (!flash.isErased(at, SECTOR_SIZE)) flash.erase(at, SECTOR_SIZE);
}
