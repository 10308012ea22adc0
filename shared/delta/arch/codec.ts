/**
 * Instruction codecs for delta prediction (docs/delta.md, "Instruction prediction"). Each codec
 * recognises the PC-relative references of one instruction set in up to 4 little-endian bytes and
 * re-encodes the same instruction (same opcode and registers) at another address pointing at
 * another target. Pure arithmetic on numbers: no buffers, nothing that can write out of bounds.
 */

/** A PC-relative reference found in the base image. */
export interface Reference {
  /** Bytes the instruction occupies (2, 3 or 4). */
  length: number;
  /** The address it refers to (for page-granular forms: the page it names). */
  target: number;
  /** False for page-granular forms (ADRP, AUIPC): their target is not learned from. */
  exact: boolean;
}

export interface InstructionCodec {
  /** Instruction alignment in bytes: references are looked for only at new-image offsets that are multiples of it. */
  readonly align: number;
  /**
   * The reference encoded by the first `avail` (1..4) bytes `bytes` (little-endian, bytes past
   * `avail` are 0) of an instruction at address `at`, or undefined.
   */
  decode(bytes: number, avail: number, at: number): Reference | undefined;
  /**
   * The instruction `bytes` re-encoded at address `at` with target `target` (same length, opcode and
   * registers), or undefined when the target is out of its range or misaligned for it.
   */
  encode(bytes: number, at: number, target: number): number | undefined;
}

/** Two's-complement value of the low `bits` bits of `v`. */
export function signExtend(v: number, bits: number): number {
  const shift = 32 - bits;
  return ((v << shift) >> shift);
}

/** `v` as an unsigned 32-bit address. */
export function u32(v: number): number {
  return v >>> 0;
}

/** Signed 32-bit difference a - b (addresses wrap mod 2^32). */
export function sdiff(a: number, b: number): number {
  return (a - b) | 0;
}
