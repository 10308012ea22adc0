import { sdiff, signExtend, u32, type InstructionCodec, type Reference } from './codec.js';

/**
 * RISC-V (RV32/RV64 with the C extension, so 2-byte alignment): JAL (J-type, exact) and AUIPC
 * (U-type, upper 20 bits: page-granular, predicted but never learned from).
 */
const isJal = (w: number): boolean => (w & 0x7f) === 0x6f;
const isAuipc = (w: number): boolean => (w & 0x7f) === 0x17;

function jalOffset(w: number): number {
  const imm = (((w >>> 31) & 1) << 20) | (((w >>> 21) & 0x3ff) << 1) | (((w >>> 20) & 1) << 11) | (((w >>> 12) & 0xff) << 12);
  return signExtend(imm, 21);
}

export const riscv: InstructionCodec = {
  align: 2,
  forms: ['JAL', 'AUIPC'],
  presets: [{ forms: 0b11, fallback: 3 }, { forms: 0b01, fallback: 3 }],
  literalForms: 0,
  // Compressed (C extension) instructions are those whose two low bits are not 0b11.
  size: (w: number): number => ((w & 3) === 3 ? 4 : 2),
  decode(w: number, avail: number, at: number): Reference | undefined {
    if (avail < 4) return undefined;
    if (isJal(w)) return { length: 4, target: u32(at + jalOffset(w)), exact: true, form: 0 };
    if (isAuipc(w)) return { length: 4, target: u32(at + (w & 0xfffff000)), exact: false, form: 1 };
    return undefined;
  },
  encode(w: number, at: number, target: number): number | undefined {
    if (isJal(w)) {
      const off = sdiff(target, at);
      if (off & 1 || off < -(1 << 20) || off >= 1 << 20) return undefined;
      const imm = (((off >> 20) & 1) << 31) | (((off >> 1) & 0x3ff) << 21) | (((off >> 11) & 1) << 20) | (((off >> 12) & 0xff) << 12);
      return u32((w & 0xfff) | imm);
    }
    if (isAuipc(w)) {
      // AUIPC's partner adds a signed 12-bit low part, so the upper part is the rounded difference.
      const hi = (sdiff(target, at) + 0x800) >>> 12;
      return u32((w & 0xfff) | (hi << 12));
    }
    return undefined;
  },
};
