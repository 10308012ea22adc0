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
  /** Which of the codec's `forms` this is (bit `form` of the header's form mask enables it). */
  form: number;
}

export interface InstructionCodec {
  /** Instruction alignment in bytes: references are looked for only at new-image offsets that are multiples of it. */
  readonly align: number;
  /** Names of the reference forms, in form-mask bit order. */
  readonly forms: readonly string[];
  /**
   * Settings worth trying, best guess first (the creator makes each and keeps the smallest patch):
   * form mask (header byte 96) and fallback bits (header byte 97).
   */
  readonly presets: readonly { forms: number; fallback: number }[];
  /**
   * Forms that load a literal word at their target (Xtensa L32R): recognised only where the base
   * word at the target is a pointer under the patch's pointer rules.
   */
  readonly literalForms: number;
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
  /**
   * For variable-length instruction sets: the length of the instruction whose first bytes are
   * `bytes`, so the predictor can walk the base instruction by instruction (a linear sweep from
   * the start of each copy) instead of trying every aligned position.
   */
  size?(bytes: number): number;
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
