/**
 * Received-chunk bitmap. Bit i lives in byte i>>3 at bit position i&7 (LSB first), the convention
 * AWS IoT stream bitmaps use, so a node author has one rule to learn. Trailing bits past `size` are 0.
 */
export class ChunkBitmap {
  readonly size: number;
  private readonly bits: Uint8Array;
  private setCount = 0;
  /** Every chunk below floor is known received: acks and scans start there instead of at 0. */
  private floor = 0;

  constructor(size: number, bytes?: Uint8Array) {
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`bitmap size ${size} is not a count`);
    this.size = size;
    this.bits = new Uint8Array(Math.ceil(size / 8));
    if (bytes) {
      // Tolerate short input (missing tail = not received) and ignore bits past the end.
      this.bits.set(bytes.subarray(0, this.bits.length));
      const spare = this.bits.length * 8 - size;
      if (spare > 0 && this.bits.length > 0) this.bits[this.bits.length - 1] &= 0xff >> spare;
      for (const b of this.bits) this.setCount += popcount(b);
    }
  }

  has(i: number): boolean {
    return i >= 0 && i < this.size && (this.bits[i >> 3] & (1 << (i & 7))) !== 0;
  }

  /** Marks chunk i received; returns false if it already was (duplicates are harmless). */
  set(i: number): boolean {
    if (i < 0 || i >= this.size) throw new RangeError(`chunk ${i} outside 0..${this.size - 1}`);
    const mask = 1 << (i & 7);
    if (this.bits[i >> 3] & mask) return false;
    this.bits[i >> 3] |= mask;
    this.setCount++;
    return true;
  }

  get count(): number {
    return this.setCount;
  }

  get complete(): boolean {
    return this.setCount === this.size;
  }

  /** Index of the first chunk not yet received, or `size` when complete. */
  firstMissing(from = 0): number {
    for (let i = Math.max(from, this.floor); i < this.size; i++) {
      if ((i & 7) === 0 && this.bits[i >> 3] === 0xff && i + 8 <= this.size) {
        i += 7;
        continue;
      }
      if (!this.has(i)) {
        if (from <= this.floor) this.floor = i;
        return i;
      }
    }
    if (from <= this.floor) this.floor = this.size;
    return this.size;
  }

  toBytes(): Buffer {
    return Buffer.from(this.bits);
  }

  /** Bits from `base` on, re-based to 0: the selective part of an ack. Empty when nothing past base is set. */
  slice(base: number, maxBits: number): Buffer {
    let last = -1;
    const end = Math.min(this.size, base + maxBits);
    for (let i = end - 1; i >= base; i--) if (this.has(i)) { last = i; break; }
    if (last < 0) return Buffer.alloc(0);
    const out = Buffer.alloc(Math.ceil((last - base + 1) / 8));
    for (let i = base; i <= last; i++) if (this.has(i)) out[(i - base) >> 3] |= 1 << ((i - base) & 7);
    return out;
  }

  /** Applies an ack: every chunk below `base` plus the bits of `sel` relative to base. Returns newly set indices. */
  applyAck(base: number, sel?: Uint8Array): number[] {
    const fresh: number[] = [];
    const top = Math.min(base, this.size);
    for (let i = this.floor; i < top; i++) if (this.set(i)) fresh.push(i);
    if (top > this.floor) this.floor = top;
    if (sel) {
      for (let j = 0; j < sel.length * 8; j++) {
        const i = base + j;
        if (i >= this.size) break;
        if (sel[j >> 3] & (1 << (j & 7)) && this.set(i)) fresh.push(i);
      }
    }
    return fresh;
  }
}

function popcount(b: number): number {
  let n = 0;
  for (let v = b; v; v &= v - 1) n++;
  return n;
}
