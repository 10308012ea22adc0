import { sdiff, signExtend, u32, type InstructionCodec, type Reference } from './codec.js';

/**
 * Xtensa (ESP8266 LX106, ESP32 LX6/LX7), 24-bit little-endian instructions at any byte offset:
 * CALL0/4/8/12 (op0 = 5), J (op0 = 6, n = 0) and L32R (op0 = 1, literal below the instruction).
 */
const op0 = (w: number): number => w & 0xf;
const isCall = (w: number): boolean => op0(w) === 5;
const isJump = (w: number): boolean => op0(w) === 6 && ((w >> 4) & 3) === 0;
const isL32r = (w: number): boolean => op0(w) === 1;

export const XtensaForm = { call0: 0, callWindowed: 1, j: 2, l32r: 3 } as const;

export const xtensa: InstructionCodec = {
  align: 1,
  forms: ['CALL0', 'CALL4/8/12', 'J', 'L32R'],
  // ESP8266 code uses the CALL0 ABI: CALL4/8/12 patterns there are false references. ESP32 code
  // (windowed ABI) calls with CALL8. J targets are local and rarely move on their own.
  presets: [{ forms: 0b1001, fallback: 1 }, { forms: 0b1011, fallback: 1 }, { forms: 0b0001, fallback: 1 }],
  literalForms: 0b1000,
  // op0 8..13 are the 16-bit "narrow" instructions (code density option); the rest are 24-bit.
  size: (w: number): number => (op0(w) >= 8 && op0(w) <= 13 ? 2 : 3),
  decode(w: number, avail: number, at: number): Reference | undefined {
    if (avail < 3) return undefined;
    w &= 0xffffff;
    if (isCall(w)) return { length: 3, target: u32((at & ~3) + signExtend(w >>> 6, 18) * 4 + 4), exact: true, form: (w >> 4) & 3 ? XtensaForm.callWindowed : XtensaForm.call0 };
    if (isJump(w)) return { length: 3, target: u32(at + 4 + signExtend(w >>> 6, 18)), exact: true, form: XtensaForm.j };
    if (isL32r(w)) return { length: 3, target: u32(((at + 3) & ~3) + ((w >>> 8) | 0xffff0000) * 4), exact: true, form: XtensaForm.l32r };
    return undefined;
  },
  encode(w: number, at: number, target: number): number | undefined {
    w &= 0xffffff;
    if (isCall(w)) {
      const off = sdiff(target, u32((at & ~3) + 4));
      if (off & 3 || off < -(1 << 19) || off >= 1 << 19) return undefined;
      return (w & 0x3f) | (((off >> 2) & 0x3ffff) << 6);
    }
    if (isJump(w)) {
      const off = sdiff(target, at + 4);
      if (off < -(1 << 17) || off >= 1 << 17) return undefined;
      return (w & 0x3f) | ((off & 0x3ffff) << 6);
    }
    if (isL32r(w)) {
      const off = sdiff(target, u32((at + 3) & ~3));
      if (off & 3 || off >= 0 || off < -(1 << 18)) return undefined;
      return (w & 0xff) | (((off >> 2) & 0xffff) << 8);
    }
    return undefined;
  },
};
