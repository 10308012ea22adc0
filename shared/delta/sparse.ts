import { ProtocolError, Reason } from '../errors.js';
import { NEED_INPUT, STREAM_END } from './inflate.js';

/**
 * Sparse diff stream (transform bit 3, docs/delta.md "Sparse diff"). A diff stream is mostly zero
 * bytes: code that did not change, or whose change the predictor got right. Written densely, each
 * zero costs DEFLATE a share of a length/distance pair and the 4 KiB window spans only 4 KiB of
 * image. Written as `zeros:uvarint byte` tokens (the zero diff bytes before each explicit one) and
 * a final `zeros:uvarint`, the same window spans thousands of changes, and the repeated patterns
 * of moved pointers and calls (gap, value, gap, value) become LZ77 matches.
 *
 * Both sides read the tokens the same way, one diff byte at a time (SparseDiffReader): the next
 * run length is read when the first diff byte after an explicit byte is wanted, the explicit byte
 * when its run is used up. The creator counts the stream bytes each step consumes with the same
 * reader to order frames (create.ts, multiplex).
 */

/** The sparse form of a dense diff stream: tokens `zeros:uvarint byte`, then `zeros:uvarint` for the tail. */
export function toSparse(dense: Uint8Array): Buffer {
  const out: number[] = [];
  const uvarint = (v: number): void => {
    while (v >= 0x80) {
      out.push((v & 0x7f) | 0x80);
      v = Math.floor(v / 0x80);
    }
    out.push(v);
  };
  let zeros = 0;
  for (const b of dense) {
    if (b === 0) {
      zeros++;
      continue;
    }
    uvarint(zeros);
    out.push(b);
    zeros = 0;
  }
  uvarint(zeros);
  return Buffer.from(out);
}

/**
 * Turns a sparse diff stream back into diff bytes. `next` supplies the stream's decompressed bytes
 * (or NEED_INPUT / STREAM_END); state is three numbers, so a device applier keeps it in its decoder
 * state.
 */
export class SparseDiffReader {
  /** Zero diff bytes left before the next explicit byte; -1 while the run length is still to be read. */
  private zeros = -1;
  private acc = 0;
  private shift = 0;
  /** What the source said when readRun() last ran dry: NEED_INPUT or STREAM_END. */
  private lastSignal = NEED_INPUT;

  constructor(private readonly next: () => number) {}

  /** The next diff byte, NEED_INPUT, or STREAM_END when the stream ends where a diff byte is needed. */
  pull(): number {
    if (this.zeros < 0 && !this.readRun()) return this.lastSignal;
    if (this.zeros > 0) {
      this.zeros--;
      return 0;
    }
    const b = this.next();
    if (b === NEED_INPUT || b === STREAM_END) return b;
    this.zeros = -1;
    return b;
  }

  /**
   * After the last copy: reads the final run length if it is still unread and checks that no zero
   * diff bytes are left over. Returns false when it needs more input.
   */
  finish(): boolean {
    if (this.zeros < 0 && !this.readRun()) {
      if (this.lastSignal === STREAM_END) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: sparse diff stream ends without its final run length');
      return false;
    }
    if (this.zeros !== 0) throw new ProtocolError(Reason.deltaFailed, `corrupted patch: sparse diff stream holds ${this.zeros} zero bytes no step uses`);
    return true;
  }

  private readRun(): boolean {
    for (;;) {
      const b = this.next();
      if (b === NEED_INPUT || b === STREAM_END) {
        if (b === STREAM_END && this.shift > 0) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: sparse diff stream ends inside a run length');
        this.lastSignal = b;
        return false;
      }
      if (this.shift >= 35) throw new ProtocolError(Reason.deltaFailed, 'corrupted patch: sparse diff run length longer than 5 bytes');
      this.acc += (b & 0x7f) * 2 ** this.shift;
      this.shift += 7;
      if (b & 0x80) continue;
      this.zeros = this.acc;
      this.acc = 0;
      this.shift = 0;
      return true;
    }
  }
}

/**
 * For each step, how many bytes of the sparse stream the applier has read once the step's copy is
 * done (cumulative), reading with SparseDiffReader exactly as the applier does.
 */
export function sparseConsumption(sparse: Uint8Array, copyLens: readonly number[]): number[] {
  let pos = 0;
  const reader = new SparseDiffReader(() => (pos < sparse.length ? sparse[pos++] : STREAM_END));
  const after: number[] = [];
  for (const n of copyLens) {
    for (let i = 0; i < n; i++) {
      const b = reader.pull();
      if (b < 0) throw new Error('internal error: sparse diff stream shorter than its copies');
    }
    after.push(pos);
  }
  reader.finish();
  if (pos !== sparse.length) throw new Error('internal error: sparse diff stream longer than its copies');
  return after;
}
