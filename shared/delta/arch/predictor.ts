import { u32, type InstructionCodec } from './codec.js';

/**
 * The diff-byte predictor shared by patch creation and the applier (docs/delta.md, "Pointer
 * prediction" and "Instruction prediction"). At each copy byte the applier either predicts the new
 * byte from the base byte (plain bsdiff) or, where the base holds a pointer or a PC-relative
 * instruction, predicts a whole *unit* (2..4 bytes): the same word or instruction, re-aimed at
 * where its target has moved. Where targets moved is learned as the new image is produced: one
 * signed displacement per 2 KiB page of target addresses. Creator and applier run this same code,
 * so they cannot disagree.
 */

/** Entries in the displacement table: one per 2 KiB of target address, modulo 512 KiB. */
export const PAGES = 256;
/** A page no reference has been seen into yet. */
export const UNKNOWN = -0x80000000;

export function pageOf(address: number): number {
  return (address >>> 11) & (PAGES - 1);
}

/**
 * ESP8266 pointer classes (transform bit 0): flash-mapped code 0x402xxxxx, data RAM
 * 0x3FFExxxx..0x3FFFxxxx, instruction RAM 0x4010xxxx.
 */
export function isEspPointer(word: number): boolean {
  const hi = word >>> 16;
  return word >>> 20 === 0x402 || hi === 0x3ffe || hi === 0x3fff || hi === 0x4010;
}

export interface PredictorConfig {
  /** ESP8266 pointer classes (transform bit 0). */
  espPointers: boolean;
  /** Words w with lo <= w < hi (unsigned) are pointers; lo = hi = 0: none. */
  pointerRange: [number, number];
  /** Instruction codec, or undefined for none. */
  codec: InstructionCodec | undefined;
  /** Address of the first byte of both images (PC-relative targets become addresses with it). */
  loadAddress: number;
}

/** Reads base byte `oldPos + k` (k < 4, and k < the copy bytes left). */
export type OldByte = (k: number) => number;

const Kind = { none: 0, pointer: 1, code: 2 } as const;

export class Predictor {
  private readonly table = new Int32Array(PAGES).fill(UNKNOWN);
  private kind: number = Kind.none;
  private unitLength = 0;
  private oldWord = 0;
  private oldTarget = 0;
  private newAt = 0;
  private exact = false;
  /** The predicted bytes of the unit begun last, little-endian. */
  predicted = 0;
  /** Units whose prediction differed from the base bytes (0: the predictor changed nothing). */
  changed = 0;

  constructor(private readonly cfg: PredictorConfig) {}

  /** Bytes a device needs for this predictor's state: the table only when something uses it. */
  get workingMemory(): number {
    const c = this.cfg;
    return c.espPointers || c.codec || c.pointerRange[0] !== c.pointerRange[1] ? this.table.byteLength : 0;
  }

  /**
   * At a copy byte that starts no unit in flight: the length of the unit that starts here (its
   * predicted bytes are then in `predicted`), or 0 when this byte is predicted from the base byte.
   * `newPos` is the count of new-image bytes produced so far, `remaining` the copy bytes left
   * counting this one.
   */
  begin(old: OldByte, oldPos: number, newPos: number, remaining: number): number {
    const cfg = this.cfg;
    const avail = remaining < 4 ? remaining : 4;
    let word = -1;
    if (avail === 4 && newPos % 4 === 0 && (cfg.espPointers || cfg.pointerRange[0] !== cfg.pointerRange[1])) {
      word = u32(old(0) | (old(1) << 8) | (old(2) << 16) | (old(3) << 24));
      const [lo, hi] = cfg.pointerRange;
      if ((cfg.espPointers && isEspPointer(word)) || (word >= lo && word < hi)) {
        const d = this.table[pageOf(word)];
        this.kind = Kind.pointer;
        this.unitLength = 4;
        this.oldWord = word;
        this.predicted = u32(word + (d === UNKNOWN ? 0 : d));
        if (this.predicted !== word) this.changed++;
        return 4;
      }
    }
    const codec = cfg.codec;
    if (!codec || newPos % codec.align !== 0) return 0;
    let bytes = 0;
    if (word >= 0) bytes = word;
    else for (let k = 0; k < avail; k++) bytes |= old(k) << (8 * k);
    bytes = u32(bytes);
    // Both images start at loadAddress, so base and new offsets map to addresses alike.
    const ref = codec.decode(bytes, avail, u32(cfg.loadAddress + oldPos));
    if (!ref) return 0;
    const mask = ref.length === 4 ? 0xffffffff : (1 << (8 * ref.length)) - 1;
    this.kind = Kind.code;
    this.unitLength = ref.length;
    this.oldWord = u32(bytes & mask);
    this.oldTarget = ref.target;
    this.exact = ref.exact;
    this.newAt = u32(cfg.loadAddress + newPos);
    const d = this.table[pageOf(ref.target)];
    const re = d === UNKNOWN ? undefined : codec.encode(this.oldWord, this.newAt, u32(ref.target + d));
    this.predicted = re === undefined ? this.oldWord : u32(re & mask);
    if (this.predicted !== this.oldWord) this.changed++;
    return ref.length;
  }

  /** The unit's actual new bytes (little-endian): learn where its target went. */
  end(actual: number): void {
    actual = u32(actual);
    if (this.kind === Kind.pointer) {
      this.table[pageOf(this.oldWord)] = (actual - this.oldWord) | 0;
    } else if (this.kind === Kind.code && this.exact) {
      const codec = this.cfg.codec!;
      const ref = codec.decode(actual, this.unitLength, this.newAt);
      // Learn only from the same instruction re-aimed (same opcode and registers), not from
      // whatever else the new image holds here.
      if (ref && ref.length === this.unitLength && codec.encode(this.oldWord, this.newAt, ref.target) === actual) {
        this.table[pageOf(this.oldTarget)] = (ref.target - this.oldTarget) | 0;
      }
    }
    this.kind = Kind.none;
  }
}
