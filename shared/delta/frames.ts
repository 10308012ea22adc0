import { ByteWriter } from './format.js';
import { RawInflater, STREAM_END } from './inflate.js';
import type { Step } from './match.js';

/** What the multiplexer needs of the uncompressed streams. */
export interface RawStreams {
  control: Uint8Array;
  diff: Uint8Array;
  extra: Uint8Array;
  /** Sparse diff stream: bytes of it the applier has read after each step's copy (sparse.ts). */
  diffAfterStep?: readonly number[];
}

/**
 * For each output byte k of a compressed stream, how many compressed bytes a decoder that reads
 * input only when it needs a bit of it (ours, uzlib, zlib fed byte by byte) has taken once it has
 * produced byte k; the last entry is the count once it has seen the end of the stream.
 */
function inputNeeded(compressed: Buffer, windowBits: number, outLength: number): Int32Array {
  const need = new Int32Array(outLength + 1);
  const dec = new RawInflater(windowBits, compressed.length || 1);
  dec.feed(compressed);
  for (let k = 0; k <= outLength; k++) {
    const b = dec.pull();
    if (k < outLength ? b < 0 : b !== STREAM_END) throw new Error(`internal error: stream decodes to ${k} bytes, expected ${outLength}`);
    need[k] = dec.consumed;
  }
  return need;
}

/**
 * Multiplexes the three compressed streams into frames, in the order the applier consumes them: the
 * applier is simulated step by step, and whenever it would need a compressed byte of a stream that
 * has not arrived, a frame tops that stream's input buffer up to 2^bufferBits unread bytes.
 * `raw.diffAfterStep`, when set, is how many diff stream bytes the applier has read after each
 * step's copy (a sparse diff stream); otherwise each copy byte reads one.
 */
export function multiplex(steps: readonly Step[], raw: RawStreams, packed: Buffer[], windowBits: number[], bufferBits: number): { body: Buffer; frames: number; headerBytes: number } {
  const cap = 1 << bufferBits;
  const lengths = [raw.control.length, raw.diff.length, raw.extra.length];
  const need = packed.map((p, i) => inputNeeded(p, windowBits[i], lengths[i]));
  const delivered = [0, 0, 0];
  const pulled = [0, 0, 0];
  const out = new ByteWriter();
  let frames = 0;
  let headerBytes = 0;
  const pull = (s: number, count: number): void => {
    const n = need[s];
    for (let j = 0; j < count; j++) {
      const k = pulled[s]++;
      if (n[k] <= delivered[s]) continue;
      const consumed = k > 0 ? n[k - 1] : 0;
      const upTo = Math.min(packed[s].length, consumed + cap);
      if (upTo < n[k]) throw new Error(`internal error: one symbol of stream ${s} needs more than ${cap} input bytes`);
      const len = upTo - delivered[s];
      const before = out.length;
      out.uvarint((len - 1) * 4 + s);
      headerBytes += out.length - before;
      out.bytes(packed[s].subarray(delivered[s], upTo));
      delivered[s] = upTo;
      frames++;
    }
  };
  const varLen = (v: number): number => {
    let n = 1;
    while (v >= 0x80) {
      v = Math.floor(v / 0x80);
      n++;
    }
    return n;
  };
  let c = 0; // control bytes used
  let d = 0; // diff stream bytes used
  for (let s = 0; s < steps.length; s++) {
    const step = steps[s];
    const a = varLen(step.copyLen);
    pull(0, a);
    const dNext = raw.diffAfterStep ? raw.diffAfterStep[s] : d + step.copyLen;
    pull(1, dNext - d);
    d = dNext;
    const b = varLen(step.extraLen);
    pull(0, b);
    pull(2, step.extraLen);
    c += a + b;
    // the adjust varint: whatever is left of this step's control bytes; read its length from the stream
    let k = c;
    while (raw.control[k] & 0x80) k++;
    pull(0, k + 1 - c);
    c = k + 1;
  }
  pull(0, 1); // end of each stream (for a sparse diff stream, after its final run length)
  pull(1, lengths[1] - d + 1);
  pull(2, 1);
  return { body: out.result(), frames, headerBytes };
}

