import { sdiff, signExtend, u32, type InstructionCodec, type Reference } from './codec.js';

/**
 * AArch64 (A64, little-endian): B and BL (imm26), ADR and LDR (literal) (imm19/imm21, exact), and
 * ADRP (imm21 pages of 4 KiB, page-granular: predicted, never learned from).
 */
const isBranch = (w: number): boolean => (w & 0x7c000000) === 0x14000000;
const isAdr = (w: number): boolean => (w & 0x9f000000) === 0x10000000;
const isAdrp = (w: number): boolean => (w & 0x9f000000) === 0x90000000 >> 0;
const isLdrLiteral = (w: number): boolean => (w & 0x3b000000) === 0x18000000;
const adrImm = (w: number): number => signExtend((((w >>> 5) & 0x7ffff) << 2) | ((w >>> 29) & 3), 21);
const withAdrImm = (w: number, imm: number): number => u32((w & 0x9f00001f) | ((imm & 3) << 29) | (((imm >> 2) & 0x7ffff) << 5));
const PAGE = 0xfff;

export const aarch64: InstructionCodec = {
  align: 4,
  forms: ['B/BL', 'ADR', 'ADRP', 'LDR (literal)'],
  presets: [{ forms: 0b1111, fallback: 3 }, { forms: 0b1011, fallback: 3 }],
  literalForms: 0,
  decode(w: number, avail: number, at: number): Reference | undefined {
    if (avail < 4) return undefined;
    if (isBranch(w)) return { length: 4, target: u32(at + signExtend(w & 0x3ffffff, 26) * 4), exact: true, form: 0 };
    if (isAdr(w)) return { length: 4, target: u32(at + adrImm(w)), exact: true, form: 1 };
    if (isAdrp(w)) return { length: 4, target: u32((at & ~PAGE) + adrImm(w) * 4096), exact: false, form: 2 };
    if (isLdrLiteral(w)) return { length: 4, target: u32(at + signExtend((w >>> 5) & 0x7ffff, 19) * 4), exact: true, form: 3 };
    return undefined;
  },
  encode(w: number, at: number, target: number): number | undefined {
    if (isBranch(w)) {
      const off = sdiff(target, at);
      if (off & 3 || off < -(1 << 27) || off >= 1 << 27) return undefined;
      return u32((w & 0xfc000000) | ((off >> 2) & 0x3ffffff));
    }
    if (isAdr(w)) {
      const off = sdiff(target, at);
      if (off < -(1 << 20) || off >= 1 << 20) return undefined;
      return withAdrImm(w, off);
    }
    if (isAdrp(w)) {
      // Nearest page: a predicted target that slid a little past a page boundary still names its page.
      const pages = sdiff(u32((target + 0x800) & ~PAGE), u32(at & ~PAGE)) >> 12;
      if (pages < -(1 << 20) || pages >= 1 << 20) return undefined;
      return withAdrImm(w, pages);
    }
    if (isLdrLiteral(w)) {
      const off = sdiff(target, at);
      if (off & 3 || off < -(1 << 20) || off >= 1 << 20) return undefined;
      return u32((w & 0xff00001f) | (((off >> 2) & 0x7ffff) << 5));
    }
    return undefined;
  },
};
