import { decodeIntMap, encodeCbor, FieldReader } from '../cbor.js';
import { ProtocolError, Reason } from '../errors.js';

/**
 * ferry's own LoRa control messages on fPort 10 (docs/lora.md §7.2): one CBOR map per frame, key 0 the type.
 * Uplinks must fit EU868 DR0 (51 B) whatever the node's data rate, so the encoders check the size; decoders
 * throw only ProtocolError naming what was wrong.
 */
export const FERRY_LORA_PORT = 10;
export const MAX_UPLINK_BYTES = 51;
/** Data fragments covered by one lstatus bitmap page (16 bytes). */
export const STATUS_PAGE_FRAGMENTS = 128;

export const LType = { hello: 1, status: 2, report: 3, offer: 16, activate: 18, cancel: 19, query: 21 } as const;

export type LoraUp =
  | {
      type: 'hello';
      hw: string;
      version: string;
      digestPrefix: Uint8Array;
      imageState: number;
      bootCount: number;
      battery?: number;
      caps: number;
      transferId?: number;
    }
  | {
      type: 'status';
      transferId: number;
      done: number;
      unknown?: number;
      page?: number;
      bitmap?: Uint8Array;
      flags: number;
    }
  | { type: 'report'; transferId: number; stage: number; reason: number };

export type LoraDown =
  | {
      type: 'offer';
      transferId: number;
      digestPrefix: Uint8Array;
      version: string;
      blocks: number;
      size: number;
      blockKiB: number;
      encoding: number;
      mcAddr?: number;
      classCSeconds?: number;
    }
  | { type: 'activate'; transferId: number }
  | { type: 'cancel'; transferId: number; reason: number }
  | { type: 'query'; transferId?: number };

export const StatusFlag = { resume: 1, lastPage: 2 } as const;

const SHORT_TEXT = 10;
const TEXT_PATTERN = /^[0-9A-Za-z][0-9A-Za-z._+-]*$/;
const U32 = 0xffff_ffff;

function encodeMap(entries: [number, unknown][]): Uint8Array {
  return encodeCbor(new Map(entries.filter(([, v]) => v !== undefined)));
}

export function encodeUp(m: LoraUp): Uint8Array {
  let out: Uint8Array;
  switch (m.type) {
    case 'hello':
      out = encodeMap([[0, LType.hello], [1, m.hw], [2, m.version], [3, m.digestPrefix], [4, m.imageState], [5, m.bootCount], [6, m.battery], [7, m.caps], [8, m.transferId]]);
      break;
    case 'status':
      out = encodeMap([[0, LType.status], [1, m.transferId], [2, m.done], [3, m.unknown], [4, m.page], [5, m.bitmap], [6, m.flags || undefined]]);
      break;
    case 'report':
      out = encodeMap([[0, LType.report], [1, m.transferId], [2, m.stage], [3, m.reason]]);
      break;
  }
  if (out.length > MAX_UPLINK_BYTES) throw new RangeError(`${m.type} uplink is ${out.length} B, over the ${MAX_UPLINK_BYTES} B limit`);
  return out;
}

export function encodeDown(m: LoraDown): Uint8Array {
  switch (m.type) {
    case 'offer':
      if (m.mcAddr !== undefined && m.classCSeconds !== undefined) throw new RangeError('offer: McAddr and Class C seconds are exclusive');
      return encodeMap([
        [0, LType.offer], [1, m.transferId], [2, m.digestPrefix], [3, m.version], [4, m.blocks], [5, m.size], [6, m.blockKiB], [7, m.encoding], [8, m.mcAddr], [9, m.classCSeconds],
      ]);
    case 'activate':
      return encodeMap([[0, LType.activate], [1, m.transferId]]);
    case 'cancel':
      return encodeMap([[0, LType.cancel], [1, m.transferId], [2, m.reason]]);
    case 'query':
      return encodeMap([[0, LType.query], [1, m.transferId]]);
  }
}

function transferId(r: FieldReader, key = 1): number {
  const v = r.uint(key, 'transferId', U32);
  if (v === 0) throw new ProtocolError(Reason.badField, 'transferId: 0 is not a transfer');
  return v;
}

function shortText(r: FieldReader, key: number, name: string): string {
  const v = r.text(key, name, SHORT_TEXT, TEXT_PATTERN);
  if (v.length === 0) throw new ProtocolError(Reason.badField, `${name}: empty`);
  return v;
}

function header(bytes: Uint8Array, what: string, maxBytes: number): { r: FieldReader; type: number } {
  if (bytes.length > maxBytes) throw new ProtocolError(Reason.oversize, `${what}: ${bytes.length} B exceeds ${maxBytes} B`);
  const r = new FieldReader(decodeIntMap(bytes, what), what);
  return { r, type: r.uint(0, 'type', 255) };
}

export function decodeUp(bytes: Uint8Array): LoraUp {
  const { r, type } = header(bytes, 'lora uplink', MAX_UPLINK_BYTES);
  switch (type) {
    case LType.hello:
      return {
        type: 'hello',
        hw: shortText(r, 1, 'hw'),
        version: shortText(r, 2, 'version'),
        digestPrefix: r.bytes(3, 'digestPrefix', 4, 4),
        imageState: r.uint(4, 'imageState', 6),
        bootCount: r.uint(5, 'bootCount', 0xffff),
        battery: r.optUint(6, 'battery', 100),
        caps: r.uint(7, 'caps', 255),
        transferId: r.has(8) ? transferId(r, 8) : undefined,
      };
    case LType.status: {
      const bitmap = r.optBytes(5, 'bitmap', 16);
      const page = r.optUint(4, 'page', 127);
      if (bitmap !== undefined && (bitmap.length === 0 || page === undefined)) throw new ProtocolError(Reason.badField, 'lstatus: a bitmap needs a page and at least one byte');
      return { type: 'status', transferId: transferId(r), done: r.uint(2, 'done', 1024), unknown: r.optUint(3, 'unknown', 16383), page, bitmap, flags: r.optUint(6, 'flags', 3) ?? 0 };
    }
    case LType.report:
      return { type: 'report', transferId: r.uint(1, 'transferId', U32), stage: r.uint(2, 'stage', 7), reason: r.uint(3, 'reason', 255) };
    default:
      throw new ProtocolError(Reason.unknownType, `lora uplink: unknown type ${type}`);
  }
}

export function decodeDown(bytes: Uint8Array): LoraDown {
  const { r, type } = header(bytes, 'lora downlink', 242);
  switch (type) {
    case LType.offer: {
      const m: LoraDown = {
        type: 'offer',
        transferId: transferId(r),
        digestPrefix: r.bytes(2, 'digestPrefix', 4, 4),
        version: shortText(r, 3, 'version'),
        blocks: r.uint(4, 'blocks', 1024),
        size: r.uint(5, 'size', 67_108_864),
        blockKiB: r.uint(6, 'blockKiB', 255),
        encoding: r.uint(7, 'encoding', 1),
        mcAddr: r.optUint(8, 'mcAddr', U32),
        classCSeconds: r.optUint(9, 'classCSeconds', 65535),
      };
      if (m.blocks < 2 || m.blockKiB < 1 || m.size < 1) throw new ProtocolError(Reason.badField, 'loffer: blocks ≥ 2, blockKiB ≥ 1 and size ≥ 1 required');
      return m;
    }
    case LType.activate:
      return { type: 'activate', transferId: transferId(r) };
    case LType.cancel:
      return { type: 'cancel', transferId: transferId(r), reason: r.uint(2, 'reason', 255) };
    case LType.query:
      return { type: 'query', transferId: r.has(1) ? transferId(r) : undefined };
    default:
      throw new ProtocolError(Reason.unknownType, `lora downlink: unknown type ${type}`);
  }
}

/**
 * The lstatus pages of a block in progress: `deficiency` (M − rank) and the unsolved data fragments, only pages
 * holding one, the last flagged.
 */
export function statusPages(transferId: number, done: number, deficiency: number, unknownIndices: readonly number[], flags = 0): LoraUp[] {
  const pages = new Map<number, Uint8Array>();
  for (const i of unknownIndices) {
    const p = Math.floor(i / STATUS_PAGE_FRAGMENTS);
    const bm = pages.get(p) ?? new Uint8Array(16);
    const j = i % STATUS_PAGE_FRAGMENTS;
    bm[j >> 3] |= 1 << (j & 7);
    pages.set(p, bm);
  }
  const sorted = [...pages.keys()].sort((a, b) => a - b);
  return sorted.map((page, k) => ({
    type: 'status' as const,
    transferId,
    done,
    unknown: deficiency,
    page,
    bitmap: pages.get(page)!,
    flags: flags | (k === sorted.length - 1 ? StatusFlag.lastPage : 0),
  }));
}

/** Unknown fragment indices named by one bitmap page. */
export function pageIndices(page: number, bitmap: Uint8Array): number[] {
  const out: number[] = [];
  for (let j = 0; j < bitmap.length * 8; j++) if (bitmap[j >> 3] & (1 << (j & 7))) out.push(page * STATUS_PAGE_FRAGMENTS + j);
  return out;
}
