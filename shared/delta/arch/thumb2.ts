import { sdiff, signExtend, u32, type InstructionCodec, type Reference } from './codec.js';

/**
 * ARM Thumb-2 (Cortex-M): BL and B.W (T4) branches, 16-bit LDR (literal) and 32-bit LDR.W (literal).
 * Halfwords are little-endian; a 32-bit instruction is its first halfword, then its second.
 */
const isBranch = (h1: number, h2: number): boolean => (h1 & 0xf800) === 0xf000 && ((h2 & 0xd000) === 0xd000 || (h2 & 0xd000) === 0x9000);
const isLdrW = (h1: number): boolean => h1 === 0xf8df || h1 === 0xf85f;
/** Align(PC, 4) for an instruction at `at`: PC reads as at + 4. */
const literalBase = (at: number): number => u32((at + 4) & ~3);

export const thumb2: InstructionCodec = {
  align: 2,
  forms: ['BL/B.W', 'LDR (literal)', 'LDR.W (literal)'],
  presets: [{ forms: 0b111, fallback: 3 }],
  literalForms: 0,
  // 32-bit instructions start with 0b11101, 0b11110 or 0b11111.
  size: (w: number): number => ((w & 0xffff) >>> 11 >= 0x1d ? 4 : 2),
  decode(bytes: number, avail: number, at: number): Reference | undefined {
    const h1 = bytes & 0xffff;
    const h2 = bytes >>> 16;
    if (avail >= 4 && isBranch(h1, h2)) {
      const s = (h1 >> 10) & 1;
      const i1 = ~((h2 >> 13) ^ s) & 1;
      const i2 = ~((h2 >> 11) ^ s) & 1;
      const off = signExtend((s << 24) | (i1 << 23) | (i2 << 22) | ((h1 & 0x3ff) << 12) | ((h2 & 0x7ff) << 1), 25);
      return { length: 4, target: u32(at + 4 + off), exact: true, form: 0 };
    }
    if (avail >= 2 && (h1 & 0xf800) === 0x4800) return { length: 2, target: u32(literalBase(at) + (h1 & 0xff) * 4), exact: true, form: 1 };
    if (avail >= 4 && isLdrW(h1)) {
      const imm = h2 & 0xfff;
      return { length: 4, target: u32(literalBase(at) + (h1 === 0xf8df ? imm : -imm)), exact: true, form: 2 };
    }
    return undefined;
  },
  encode(bytes: number, at: number, target: number): number | undefined {
    const h1 = bytes & 0xffff;
    const h2 = bytes >>> 16;
    if (isBranch(h1, h2)) {
      const off = sdiff(target, at + 4);
      if (off & 1 || off < -(1 << 24) || off >= 1 << 24) return undefined;
      const s = off < 0 ? 1 : 0;
      const j1 = (~(off >> 23) & 1) ^ s;
      const j2 = (~(off >> 22) & 1) ^ s;
      const n1 = (h1 & 0xf800) | (s << 10) | ((off >> 12) & 0x3ff);
      const n2 = (h2 & 0xd000) | (j1 << 13) | (j2 << 11) | ((off >> 1) & 0x7ff);
      return u32(n1 | (n2 << 16));
    }
    if ((h1 & 0xf800) === 0x4800) {
      const d = sdiff(target, literalBase(at));
      if (d & 3 || d < 0 || d > 1020) return undefined;
      return (h1 & 0xff00) | (d >> 2);
    }
    if (isLdrW(h1)) {
      const d = sdiff(target, literalBase(at));
      if (d < -4095 || d > 4095) return undefined;
      return u32((d >= 0 ? 0xf8df : 0xf85f) | (((h2 & 0xf000) | Math.abs(d)) << 16));
    }
    return undefined;
  },
};
