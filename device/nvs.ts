import { crc32 } from 'node:zlib';
import { SECTOR_SIZE, type Flash } from './flash.js';
import type { Partition } from './layout.js';

/**
 * A small log-structured key/value store in the nvs partition, in the spirit of ESP-IDF NVS.
 *
 * The partition is split into two banks. The active bank is the one with a valid header and the
 * highest generation. A put appends a record at the end of the active bank; nothing is rewritten in
 * place, so a torn append only loses that one record (its CRC fails) and every earlier value stands.
 * When the bank is full (or its tail was torn), the live values are copied into the other bank, whose
 * header is written last: a power cut during compaction leaves the old bank active.
 *
 * Bank header, 16 bytes: u32 magic 'FNVS', u32 generation, u32 crc32(bytes 0..7), u32 0xFFFFFFFF.
 * Record: u16 magic 0xA55A, u8 key, u8 flags (1 = deleted), u32 length, data, u32 crc32 of all
 * preceding record bytes, padded with 0xFF to a multiple of 4.
 */
export const NvsKey = {
  /** Transfer in progress: session, payload digest, sizes, encoding, manifest (device/transfer.ts). */
  transfer: 1,
  /** Image descriptor of slot 0 / slot 1 (device/firmware.ts). */
  slot0: 2,
  slot1: 3,
  /** Activation in flight: which session/version/slot the node rebooted into. */
  activation: 4,
  /** How the last update ended; reported in every Hello. */
  lastOutcome: 5,
  bootCount: 6,
  /** Received-chunk bitmap of the transfer, saved every few chunks. */
  transferBitmap: 7,
  /** An installed image that failed with no way back to the previous one: the node stays in recovery mode on it. */
  failedImage: 8,
  /** LoRa transfer (device/lora/node-store.ts): the loffer fields, blocks done, the verified manifest. */
  loraTransfer: 16,
  /** LoRa: the block in progress, its TS004 setup and received-uncoded bitmap. */
  loraBlock: 17,
} as const;

const BANK_MAGIC = 0x53564e46; // 'FNVS'
const RECORD_MAGIC = 0xa55a;
const HEADER_BYTES = 16;
const RECORD_OVERHEAD = 8 + 4;

export class NvsFullError extends Error {}

export class Nvs {
  private readonly values = new Map<number, Buffer>();
  private bank = 0;
  private generation = 0;
  /** Where the next record goes in the active bank; undefined = the tail is unusable, compact first. */
  private tail: number | undefined;
  private readonly bankSize: number;
  /** Records appended: the wear figure of NVS (compare with chunks received). */
  writes = 0;
  compactions = 0;

  constructor(private readonly flash: Flash, private readonly part: Partition) {
    this.bankSize = part.size / 2;
    if (this.bankSize % SECTOR_SIZE !== 0) throw new RangeError('nvs banks must be whole sectors');
    this.load();
  }

  get(key: number): Buffer | undefined {
    return this.values.get(key);
  }

  keys(): number[] {
    return [...this.values.keys()];
  }

  put(key: number, value: Buffer): void {
    this.append(key, value, false);
    this.values.set(key, Buffer.from(value));
  }

  delete(key: number): void {
    if (!this.values.has(key)) return;
    this.append(key, Buffer.alloc(0), true);
    this.values.delete(key);
  }

  /** Largest value that fits in an empty bank. */
  get capacity(): number {
    return this.bankSize - HEADER_BYTES - RECORD_OVERHEAD - 3;
  }

  private bankOffset(bank: number): number {
    return this.part.offset + bank * this.bankSize;
  }

  private readHeader(bank: number): number | undefined {
    const h = this.flash.read(this.bankOffset(bank), HEADER_BYTES);
    if (h.readUInt32LE(0) !== BANK_MAGIC || crc32(h.subarray(0, 8)) !== h.readUInt32LE(8)) return undefined;
    return h.readUInt32LE(4);
  }

  private load(): void {
    const gens = [this.readHeader(0), this.readHeader(1)];
    if (gens[0] === undefined && gens[1] === undefined) {
      // Blank (or both headers torn, which compaction never allows): start empty; format on first put.
      this.tail = undefined;
      this.generation = 0;
      this.bank = 1;
      return;
    }
    this.bank = gens[1] !== undefined && (gens[0] === undefined || gens[1] > gens[0]) ? 1 : 0;
    this.generation = gens[this.bank]!;
    const bankData = this.flash.read(this.bankOffset(this.bank), this.bankSize);
    let pos = HEADER_BYTES;
    for (;;) {
      if (pos + RECORD_OVERHEAD > this.bankSize) break;
      const magic = bankData.readUInt16LE(pos);
      if (magic === 0xffff && bankData.readUInt32LE(pos + 4) === 0xffffffff) break; // free space
      if (magic !== RECORD_MAGIC) { pos = -1; break; }
      const key = bankData[pos + 2];
      const flags = bankData[pos + 3];
      const len = bankData.readUInt32LE(pos + 4);
      const end = pos + 8 + len;
      if (end + 4 > this.bankSize) { pos = -1; break; }
      if (crc32(bankData.subarray(pos, end)) !== bankData.readUInt32LE(end)) { pos = -1; break; }
      if (flags & 1) this.values.delete(key);
      else this.values.set(key, Buffer.from(bankData.subarray(pos + 8, end)));
      pos = align4(end + 4);
    }
    // A torn record ends the log; everything after it is unknown, so the next put compacts first.
    this.tail = pos < 0 ? undefined : pos;
  }

  private append(key: number, value: Buffer, deleted: boolean): void {
    const rec = encodeRecord(key, value, deleted);
    if (rec.length > this.bankSize - HEADER_BYTES) throw new NvsFullError(`nvs value of ${value.length} bytes exceeds the bank size`);
    if (this.tail === undefined || this.tail + rec.length > this.bankSize) {
      const live = new Map(this.values);
      if (deleted) live.delete(key);
      else live.set(key, value);
      this.compact(live);
      return;
    }
    this.flash.write(this.bankOffset(this.bank) + this.tail, rec);
    this.tail += rec.length;
    this.writes++;
  }

  /** Copies the live values into the other bank and makes it active by writing its header last. */
  private compact(live: Map<number, Buffer>): void {
    const target = 1 - this.bank;
    const base = this.bankOffset(target);
    const records = [...live].map(([k, v]) => encodeRecord(k, v, false));
    const total = records.reduce((n, r) => n + r.length, HEADER_BYTES);
    if (total > this.bankSize) throw new NvsFullError(`nvs live data (${total} bytes) exceeds a bank (${this.bankSize})`);
    this.flash.erase(base, this.bankSize);
    let pos = HEADER_BYTES;
    for (const r of records) {
      this.flash.write(base + pos, r);
      pos += r.length;
      this.writes++;
    }
    const header = Buffer.alloc(HEADER_BYTES, 0xff);
    header.writeUInt32LE(BANK_MAGIC, 0);
    header.writeUInt32LE(this.generation + 1, 4);
    header.writeUInt32LE(crc32(header.subarray(0, 8)), 8);
    this.flash.write(base, header);
    this.bank = target;
    this.generation++;
    this.tail = pos;
    this.compactions++;
  }
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function encodeRecord(key: number, value: Buffer, deleted: boolean): Buffer {
  const len = 8 + value.length + 4;
  const out = Buffer.alloc(align4(len), 0xff);
  out.writeUInt16LE(RECORD_MAGIC, 0);
  out[2] = key;
  out[3] = deleted ? 1 : 0;
  out.writeUInt32LE(value.length, 4);
  value.copy(out, 8);
  out.writeUInt32LE(crc32(out.subarray(0, 8 + value.length)), 8 + value.length);
  return out;
}
