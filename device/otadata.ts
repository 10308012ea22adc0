import { crc32 } from 'node:zlib';
import { ImageState, type ImageStateCode } from '../shared/messages.js';
import { SECTOR_SIZE, type Flash } from './flash.js';
import type { Layout } from './layout.js';

/**
 * otadata: two flash sectors, each holding at most one boot selection record, like ESP-IDF's
 * esp_ota_select_entry_t. A record is valid when its CRC matches; among valid records that the
 * bootloader may boot, the highest sequence number wins. A torn write leaves a record with a bad
 * CRC, which is simply ignored, so the other sector (the previous selection) still stands.
 *
 * Record, little-endian, 12 bytes at the start of the sector (the rest stays 0xFF):
 *   0  u32  seq     selection sequence number, 1.. (0xFFFFFFFF = blank)
 *   4  u8   slot    0 or 1
 *   5  u8   state   ImageState (new, pending-verify, valid, invalid, aborted, undefined)
 *   6  u16  left    trial boots left (boot counting); 0xFFFF = none recorded
 *   8  u32  crc     CRC-32 of bytes 0..7
 *
 * ESP-IDF's own record has no boot counter: it gives a new image exactly one trial boot. `left`
 * models a bootloader with boot counting (as U-Boot's bootcount/bootlimit does): a PENDING_VERIFY
 * record with boots left is booted again, and ABORTED only when none are left.
 */
export interface OtaRecord {
  seq: number;
  slot: number;
  state: ImageStateCode;
  /** Trial boots left for a NEW / PENDING_VERIFY record; absent = none. */
  left?: number;
}

export interface OtaEntry extends OtaRecord {
  /** Which otadata sector (0 or 1) holds it. */
  sector: number;
}

const RECORD_BYTES = 12;

export function encodeOtaRecord(r: OtaRecord): Buffer {
  const b = Buffer.alloc(RECORD_BYTES);
  b.writeUInt32LE(r.seq, 0);
  b.writeUInt8(r.slot, 4);
  b.writeUInt8(r.state, 5);
  b.writeUInt16LE(r.left === undefined ? 0xffff : Math.min(Math.max(0, r.left), 0xfffe), 6);
  b.writeUInt32LE(crc32(b.subarray(0, 8)), 8);
  return b;
}

export function decodeOtaRecord(b: Buffer): OtaRecord | undefined {
  if (b.length < RECORD_BYTES) return undefined;
  const seq = b.readUInt32LE(0);
  if (seq === 0 || seq === 0xffffffff) return undefined;
  if (crc32(b.subarray(0, 8)) !== b.readUInt32LE(8)) return undefined;
  const slot = b.readUInt8(4);
  const state = b.readUInt8(5);
  const left = b.readUInt16LE(6);
  if (slot > 1 || state > ImageState.undefined) return undefined;
  return left === 0xffff ? { seq, slot, state: state as ImageStateCode } : { seq, slot, state: state as ImageStateCode, left };
}

/** Both sectors' records; undefined where a sector is blank or torn. */
export function readOtadata(flash: Flash, layout: Layout): [OtaEntry | undefined, OtaEntry | undefined] {
  const read = (sector: number): OtaEntry | undefined => {
    const r = decodeOtaRecord(flash.read(layout.otadata.offset + sector * SECTOR_SIZE, RECORD_BYTES));
    return r && { ...r, sector };
  };
  return [read(0), read(1)];
}

/** States the bootloader never selects: the image failed (or was refused) on a previous boot. */
export function isDead(state: ImageStateCode): boolean {
  return state === ImageState.invalid || state === ImageState.aborted;
}

/**
 * The record the bootloader follows: the highest seq among valid records. With rollback enabled,
 * records for failed images (invalid/aborted) are skipped, which falls back to the previous one.
 */
export function selectEntry(entries: readonly (OtaEntry | undefined)[], rollback: boolean, exclude: ReadonlySet<number> = new Set()): OtaEntry | undefined {
  let best: OtaEntry | undefined;
  for (const e of entries) {
    if (!e || exclude.has(e.sector)) continue;
    if (rollback && isDead(e.state)) continue;
    if (!best || e.seq > best.seq) best = e;
  }
  return best;
}

/** The newest valid record whatever its state: tells the app how the last activation ended. */
export function newestEntry(entries: readonly (OtaEntry | undefined)[]): OtaEntry | undefined {
  let best: OtaEntry | undefined;
  for (const e of entries) if (e && (!best || e.seq > best.seq)) best = e;
  return best;
}

/** Erase-then-write one otadata sector. The only way records change. */
export function writeOtaRecord(flash: Flash, layout: Layout, sector: number, r: OtaRecord): OtaEntry {
  const at = layout.otadata.offset + sector * SECTOR_SIZE;
  flash.erase(at, SECTOR_SIZE);
  flash.write(at, encodeOtaRecord(r));
  return { ...r, sector };
}

/**
 * Selects `slot` for the next boot with a fresh record in the sector that does NOT hold the current
 * selection, so a power cut during this write leaves the current selection untouched.
 */
export function selectSlot(flash: Flash, layout: Layout, slot: number, state: ImageStateCode, rollback: boolean, left?: number): OtaEntry {
  const entries = readOtadata(flash, layout);
  const current = selectEntry(entries, rollback);
  const newest = newestEntry(entries);
  const sector = current ? 1 - current.sector : entries[0] ? 1 : 0;
  return writeOtaRecord(flash, layout, sector, { seq: (newest?.seq ?? 0) + 1, slot, state, left });
}

/** The seq the next selectSlot will write (the app notes it before selecting, to recognise it later). */
export function nextSeq(flash: Flash, layout: Layout): number {
  return (newestEntry(readOtadata(flash, layout))?.seq ?? 0) + 1;
}

/**
 * Changes the state of an existing record in place (same seq), as ESP-IDF does when it marks an
 * image pending-verify, valid, invalid or aborted. A tear here loses the record, and the other
 * sector (the previous image) is selected: never a brick, at worst a rollback.
 */
export function setEntryState(flash: Flash, layout: Layout, entry: OtaEntry, state: ImageStateCode, left?: number): OtaEntry {
  return writeOtaRecord(flash, layout, entry.sector, { seq: entry.seq, slot: entry.slot, state, left });
}
