import { u32, type InstructionCodec } from './codec.js';

/**
 * The diff-byte predictor shared by patch creation and the applier (docs/delta.md, "Prediction").
 * At each copy byte the applier either predicts the new byte from the base byte (plain bsdiff) or,
 * where the base holds a pointer or a PC-relative instruction, predicts a whole *unit* (2..4
 * bytes): the same word or instruction, re-aimed at where its target has moved. Where targets moved
 * is learned as the new image is produced: one signed displacement per page of target addresses.
 * Creator and applier run this same code, so they cannot disagree.
 */

/**
 * Displacement table geometry: version 2 (ESP8266 pointers only: 256 × int32, 2 KiB pages) and
 * version 3 (2048 × int16, 512-byte pages: finer pages predict better, and 16-bit entries keep it at
 * 4 KiB).
 */
export const TABLE = {
  v2: { entries: 256, pageBits: 11, unknown: -0x80000000 },
  v3: { entries: 2048, pageBits: 9, unknown: -0x8000 },
} as const;
export type TableKind = keyof typeof TABLE;

/**
 * ESP8266 pointer classes (transform bit 0): flash-mapped code 0x402xxxxx, data RAM
 * 0x3FFExxxx..0x3FFFxxxx, instruction RAM 0x4010xxxx.
 */
export function isEspPointer(word: number): boolean {
  const hi = word >>> 16;
  return word >>> 20 === 0x402 || hi === 0x3ffe || hi === 0x3fff || hi === 0x4010;
}

export interface PredictorConfig {
  /** Version 2 table (256 × int32, 2 KiB pages) or version 3 (1024 × int16, 1 KiB pages). */
  table: TableKind;
  /** ESP8266 pointer classes (transform bit 0). */
  espPointers: boolean;
  /** Words w with lo <= w < hi (unsigned) are pointers; lo = hi = 0: none. */
  pointerRange: [number, number];
  /** Instruction codec, or undefined for none. */
  codec: InstructionCodec | undefined;
  /** Bit k enables the codec's form k. */
  forms: number;
  /** Version 3: `Fallback` bits, which units look at neighbouring pages when theirs is unknown. */
  fallback: number;
  /** Address of the first byte of both images (PC-relative targets become addresses with it). */
  loadAddress: number;
  /** Base image size (literal checks stay inside it). */
  baseSize: number;
  /** The little-endian u32 at a base offset (0 <= offset <= baseSize - 4); only for literal forms. */
  readBaseWord: (offset: number) => number;
}

/** Version 3 fallback (header byte 97): where a page is unknown, the nearest known page within this many. */
export const FALLBACK_PAGES = 16;
export const Fallback = { pointers: 1, instructions: 2 } as const;

/** Reads base byte `oldPos + k` (k < 4, and k < the copy bytes left). */
export type OldByte = (k: number) => number;

const Kind = { none: 0, pointer: 1, code: 2 } as const;

export class Predictor {
  private readonly table: Int32Array | Int16Array;
  private readonly unknown: number;
  private readonly pageBits: number;
  private readonly pageMask: number;
  private readonly pointers: boolean;
  private kind: number = Kind.none;
  private unitLength = 0;
  private oldWord = 0;
  private oldTarget = 0;
  private newAt = 0;
  private exact = false;
  /** Linear sweep (codecs with size()): base bytes left in the current instruction, and the base offset expected next. */
  private skip = 0;
  private nextOld = -1;
  /** The predicted bytes of the unit begun last, little-endian. */
  predicted = 0;
  /** Units whose prediction differed from the base bytes (0: the predictor changed nothing). */
  changed = 0;

  constructor(private readonly cfg: PredictorConfig) {
    const t = TABLE[cfg.table];
    this.table = cfg.table === 'v2' ? new Int32Array(t.entries) : new Int16Array(t.entries);
    this.table.fill(t.unknown);
    this.unknown = t.unknown;
    this.pageBits = t.pageBits;
    this.pageMask = t.entries - 1;
    this.pointers = cfg.espPointers || cfg.pointerRange[0] !== cfg.pointerRange[1];
  }

  /** Bytes a device needs for this predictor's state (the table; the unit in flight is counted with the decoder state). */
  get workingMemory(): number {
    return this.table.byteLength;
  }

  private page(address: number): number {
    return (address >>> this.pageBits) & this.pageMask;
  }

  /**
   * The displacement for a target: its page's, or (with fallback) that of the nearest known page,
   * looking 1, 2, .. FALLBACK_PAGES pages below then above; `unknown` if none.
   */
  private displacement(address: number, fallback: boolean): number {
    const p = this.page(address);
    const d = this.table[p];
    if (d !== this.unknown || !fallback) return d;
    for (let k = 1; k <= FALLBACK_PAGES; k++) {
      const below = this.table[(p - k) & this.pageMask];
      if (below !== this.unknown) return below;
      const above = this.table[(p + k) & this.pageMask];
      if (above !== this.unknown) return above;
    }
    return this.unknown;
  }

  private learn(address: number, displacement: number): void {
    // A version 3 entry is 16 bits: a displacement it cannot hold is forgotten rather than wrapped.
    this.table[this.page(address)] = this.cfg.table === 'v3' && (displacement < -0x7fff || displacement > 0x7fff) ? this.unknown : displacement;
  }

  private isPointer(word: number): boolean {
    const [lo, hi] = this.cfg.pointerRange;
    return (this.cfg.espPointers && isEspPointer(word)) || (word >= lo && word < hi);
  }

  /**
   * At a copy byte that starts no unit in flight: the length of the unit that starts here (its
   * predicted bytes are then in `predicted`), or 0 when this byte is predicted from the base byte.
   * `oldPos` is the base offset of this byte, `newPos` the count of new-image bytes produced so
   * far, `remaining` the copy bytes left counting this one.
   */
  begin(old: OldByte, oldPos: number, newPos: number, remaining: number): number {
    const cfg = this.cfg;
    // A new copy (or one after extra bytes or a jump) restarts the sweep at an instruction boundary.
    if (oldPos !== this.nextOld) this.skip = 0;
    this.nextOld = oldPos + 1;
    const avail = remaining < 4 ? remaining : 4;
    let word = -1;
    if (this.pointers && avail === 4 && newPos % 4 === 0) {
      word = u32(old(0) | (old(1) << 8) | (old(2) << 16) | (old(3) << 24));
      if (this.isPointer(word)) {
        const d = this.displacement(word, (cfg.fallback & Fallback.pointers) !== 0);
        this.kind = Kind.pointer;
        this.unitLength = 4;
        this.oldWord = word;
        this.predicted = u32(word + (d === this.unknown ? 0 : d));
        if (this.predicted !== word) this.changed++;
        this.skip = 0;
        this.nextOld = oldPos + 4;
        return 4;
      }
    }
    const codec = cfg.codec;
    if (!codec) return 0;
    if (this.skip > 0) {
      this.skip--;
      return 0;
    }
    if (newPos % codec.align !== 0) return 0;
    let bytes = 0;
    if (word >= 0) bytes = word;
    else for (let k = 0; k < avail; k++) bytes |= old(k) << (8 * k);
    bytes = u32(bytes);
    // Both images start at loadAddress, so base and new offsets map to addresses alike.
    const ref = codec.decode(bytes, avail, u32(cfg.loadAddress + oldPos));
    // Version 3 takes only references into the image (0 <= target - loadAddress < base size).
    if (!ref || !((cfg.forms >>> ref.form) & 1) || (cfg.table === 'v3' && u32(ref.target - cfg.loadAddress) >= cfg.baseSize) || ((codec.literalForms >>> ref.form) & 1 && !this.literalIsPointer(ref.target))) {
      if (codec.size) this.skip = codec.size(bytes) - 1;
      return 0;
    }
    const mask = ref.length === 4 ? 0xffffffff : (1 << (8 * ref.length)) - 1;
    this.kind = Kind.code;
    this.unitLength = ref.length;
    this.oldWord = u32(bytes & mask);
    this.oldTarget = ref.target;
    this.exact = ref.exact;
    this.newAt = u32(cfg.loadAddress + newPos);
    this.nextOld = oldPos + ref.length;
    const d = this.displacement(ref.target, (cfg.fallback & Fallback.instructions) !== 0);
    const re = d === this.unknown ? undefined : codec.encode(this.oldWord, this.newAt, u32(ref.target + d));
    this.predicted = re === undefined ? this.oldWord : u32(re & mask);
    if (this.predicted !== this.oldWord) this.changed++;
    return ref.length;
  }

  /** A literal-loading form counts only where the base word it loads is a pointer. */
  private literalIsPointer(target: number): boolean {
    const off = u32(target - this.cfg.loadAddress);
    return off + 4 <= this.cfg.baseSize && this.isPointer(u32(this.cfg.readBaseWord(off)));
  }

  /** The unit's actual new bytes (little-endian): learn where its target went. */
  end(actual: number): void {
    actual = u32(actual);
    if (this.kind === Kind.pointer) {
      this.learn(this.oldWord, (actual - this.oldWord) | 0);
    } else if (this.kind === Kind.code && this.exact) {
      const codec = this.cfg.codec!;
      const ref = codec.decode(actual, this.unitLength, this.newAt);
      // Learn only from the same instruction re-aimed (same opcode and registers), not from
      // whatever else the new image holds here.
      if (ref && ref.length === this.unitLength && codec.encode(this.oldWord, this.newAt, ref.target) === actual) {
        this.learn(this.oldTarget, (ref.target - this.oldTarget) | 0);
      }
    }
    this.kind = Kind.none;
  }
}
