import { ProtocolError, Reason } from '../errors.js';

/**
 * A pull-driven raw DEFLATE (RFC 1951) decoder with a 2^windowBits history ring, a small input ring
 * and nothing else of size: the same memory a microcontroller's decoder (MicroPython's
 * `deflate`/uzlib) needs, so the figure the delta applier reports is what a device would really
 * spend, not what node:zlib spends. The caller asks for one output byte at a time; the decoder takes
 * an input byte only when it needs a bit of it (as uzlib does), which is what lets the patch creator
 * compute exactly how many compressed bytes each output byte needs (docs/delta.md, "Frames").
 */

// RFC 1951 §3.2.5: base values and extra-bit counts of length codes 257..285 and distance codes 0..29.
const LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
const DIST_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
// RFC 1951 §3.2.7: order in which code-length code lengths are sent.
const CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/** Canonical Huffman code as counts per length plus symbols sorted by code: decoded bit by bit. */
class Huffman {
  readonly counts = new Uint16Array(16);
  readonly symbols: Uint16Array;
  constructor(maxSymbols: number) {
    this.symbols = new Uint16Array(maxSymbols);
  }
  get bytes(): number {
    return this.counts.byteLength + this.symbols.byteLength;
  }
  build(lengths: Uint8Array, start: number, n: number, what: string): void {
    this.counts.fill(0);
    for (let i = 0; i < n; i++) this.counts[lengths[start + i]]++;
    let left = 1;
    for (let len = 1; len < 16; len++) {
      left = (left << 1) - this.counts[len];
      if (left < 0) throw corrupt(`${what} Huffman code is over-subscribed`);
    }
    const offsets = [0, 0];
    for (let len = 1; len < 15; len++) offsets[len + 1] = offsets[len] + this.counts[len];
    for (let i = 0; i < n; i++) {
      const len = lengths[start + i];
      if (len !== 0) this.symbols[offsets[len]++] = i;
    }
  }
}

function corrupt(what: string): ProtocolError {
  return new ProtocolError(Reason.deltaFailed, `corrupted patch: ${what}`);
}

/** pull() results besides a byte value. */
export const NEED_INPUT = -1;
export const STREAM_END = -2;

export class RawInflater {
  readonly windowSize: number;
  private readonly window: Uint8Array;
  private produced = 0;
  private readonly lit = new Huffman(288);
  private readonly dist = new Huffman(30);
  private readonly lengths = new Uint8Array(320);
  /** Compressed bytes delivered but not yet taken, as a ring. */
  private readonly ring: Uint8Array;
  private ringStart = 0;
  private ringFill = 0;
  /** Compressed bytes taken so far. */
  consumed = 0;
  private bitBuf = 0;
  private bitCount = 0;
  private finished = false;
  private readonly run: Generator<number, void, void>;

  /** `inputBytes`: how many delivered-but-unread compressed bytes the input ring holds. */
  constructor(windowBits: number, inputBytes: number) {
    this.windowSize = 1 << windowBits;
    this.window = new Uint8Array(this.windowSize);
    this.ring = new Uint8Array(inputBytes);
    this.run = this.decode();
  }

  /** Bytes a device decoder needs: history ring, Huffman tables, code lengths, bit state, input ring. */
  get workingMemory(): number {
    return this.window.byteLength + this.lit.bytes + this.dist.bytes + this.lengths.byteLength + 32 + this.ring.byteLength;
  }

  get done(): boolean {
    return this.finished;
  }

  /** Total bytes decoded so far. */
  get outputLength(): number {
    return this.produced;
  }

  /** Room left in the input ring. */
  get room(): number {
    return this.ring.length - this.ringFill;
  }

  /** Compressed bytes delivered and not yet taken. */
  get pending(): number {
    return this.ringFill;
  }

  /** Adds compressed bytes to the input ring; the caller checks `room` first. */
  feed(bytes: Uint8Array): void {
    if (bytes.length > this.room) throw corrupt(`frame of ${bytes.length} bytes overfills a ${this.ring.length}-byte stream buffer`);
    for (let i = 0; i < bytes.length; i++) this.ring[(this.ringStart + this.ringFill + i) % this.ring.length] = bytes[i];
    this.ringFill += bytes.length;
  }

  /** Next decoded byte, NEED_INPUT when the input ring ran dry first, or STREAM_END. */
  pull(): number {
    if (this.finished) return STREAM_END;
    const r = this.run.next();
    if (r.done) {
      this.finished = true;
      return STREAM_END;
    }
    return r.value;
  }

  private *bits(n: number): Generator<number, number, void> {
    while (this.bitCount < n) {
      while (this.ringFill === 0) yield NEED_INPUT;
      this.bitBuf |= this.ring[this.ringStart] << this.bitCount;
      this.ringStart = (this.ringStart + 1) % this.ring.length;
      this.ringFill--;
      this.consumed++;
      this.bitCount += 8;
    }
    const v = this.bitBuf & ((1 << n) - 1);
    this.bitBuf >>>= n;
    this.bitCount -= n;
    return v;
  }

  private *symbol(h: Huffman, what: string): Generator<number, number, void> {
    let code = 0;
    let first = 0;
    let index = 0;
    for (let len = 1; len < 16; len++) {
      code |= yield* this.bits(1);
      const count = h.counts[len];
      if (code - first < count) return h.symbols[index + code - first];
      index += count;
      first = (first + count) << 1;
      code <<= 1;
    }
    throw corrupt(`invalid ${what} code`);
  }

  private keep(byte: number): number {
    this.window[this.produced & (this.windowSize - 1)] = byte;
    this.produced++;
    return byte;
  }

  private *decode(): Generator<number, void, void> {
    let last = 0;
    while (!last) {
      last = yield* this.bits(1);
      const type = yield* this.bits(2);
      if (type === 0) yield* this.stored();
      else if (type === 1) {
        this.fixedTables();
        yield* this.codes();
      } else if (type === 2) {
        yield* this.dynamicTables();
        yield* this.codes();
      } else throw corrupt('invalid DEFLATE block type 3');
    }
  }

  private *stored(): Generator<number, void, void> {
    this.bitBuf = 0; // a stored block starts at the next byte boundary
    this.bitCount = 0;
    const len = yield* this.bits(16);
    const nlen = yield* this.bits(16);
    if ((len ^ 0xffff) !== nlen) throw corrupt('stored block length check failed');
    for (let i = 0; i < len; i++) yield this.keep(yield* this.bits(8));
  }

  private fixedTables(): void {
    const l = this.lengths;
    l.fill(8, 0, 144);
    l.fill(9, 144, 256);
    l.fill(7, 256, 280);
    l.fill(8, 280, 288);
    this.lit.build(l, 0, 288, 'literal/length');
    l.fill(5, 0, 30);
    this.dist.build(l, 0, 30, 'distance');
  }

  private *dynamicTables(): Generator<number, void, void> {
    const nlit = (yield* this.bits(5)) + 257;
    const ndist = (yield* this.bits(5)) + 1;
    const ncode = (yield* this.bits(4)) + 4;
    if (nlit > 286 || ndist > 30) throw corrupt('too many literal/length or distance codes');
    const l = this.lengths;
    l.fill(0, 0, 19);
    for (let i = 0; i < ncode; i++) l[CODE_LENGTH_ORDER[i]] = yield* this.bits(3);
    // The code-length code borrows the literal table; it is rebuilt right after.
    this.lit.build(l, 0, 19, 'code-length');
    let i = 0;
    while (i < nlit + ndist) {
      const sym = yield* this.symbol(this.lit, 'code-length');
      if (sym < 16) {
        l[i++] = sym;
        continue;
      }
      let repeat: number;
      let value = 0;
      if (sym === 16) {
        if (i === 0) throw corrupt('code-length repeat with no previous length');
        value = l[i - 1];
        repeat = 3 + (yield* this.bits(2));
      } else if (sym === 17) repeat = 3 + (yield* this.bits(3));
      else repeat = 11 + (yield* this.bits(7));
      if (i + repeat > nlit + ndist) throw corrupt('code lengths overflow the table');
      l.fill(value, i, i + repeat);
      i += repeat;
    }
    if (l[256] === 0) throw corrupt('no end-of-block code');
    this.lit.build(l, 0, nlit, 'literal/length');
    this.dist.build(l, nlit, ndist, 'distance');
  }

  private *codes(): Generator<number, void, void> {
    for (;;) {
      const sym = yield* this.symbol(this.lit, 'literal/length');
      if (sym < 256) {
        yield this.keep(sym);
        continue;
      }
      if (sym === 256) return;
      const li = sym - 257;
      if (li >= 29) throw corrupt(`invalid length symbol ${sym}`);
      const length = LENGTH_BASE[li] + (yield* this.bits(LENGTH_EXTRA[li]));
      const di = yield* this.symbol(this.dist, 'distance');
      if (di >= 30) throw corrupt(`invalid distance symbol ${di}`);
      const distance = DIST_BASE[di] + (yield* this.bits(DIST_EXTRA[di]));
      if (distance > this.windowSize) throw corrupt(`match distance ${distance} exceeds the ${this.windowSize}-byte window the header declares`);
      if (distance > this.produced) throw corrupt(`match distance ${distance} reaches before the start of the stream`);
      const mask = this.windowSize - 1;
      for (let k = 0; k < length; k++) yield this.keep(this.window[(this.produced - distance) & mask]);
    }
  }
}
