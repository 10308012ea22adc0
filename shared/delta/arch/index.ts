import { Transform, type PatchHeader } from '../format.js';
import { aarch64 } from './aarch64.js';
import type { InstructionCodec } from './codec.js';
import { riscv } from './riscv.js';
import { thumb2 } from './thumb2.js';
import { xtensa } from './xtensa.js';
import { Predictor } from './predictor.js';

/** Instruction sets a patch can predict (header byte 11 of a version 3 patch). */
export const Arch = { none: 0, xtensa: 1, thumb2: 2, aarch64: 3, riscv: 4 } as const;
export type ArchId = (typeof Arch)[keyof typeof Arch];
export type ArchName = keyof typeof Arch;
export const ARCH_NAMES = Object.keys(Arch) as ArchName[];

export function archName(id: number): ArchName | undefined {
  return ARCH_NAMES.find((n) => Arch[n] === id);
}

export function codecFor(id: number): InstructionCodec | undefined {
  switch (id) {
    case Arch.xtensa:
      return xtensa;
    case Arch.thumb2:
      return thumb2;
    case Arch.aarch64:
      return aarch64;
    case Arch.riscv:
      return riscv;
    default:
      return undefined;
  }
}

export { Fallback, FALLBACK_PAGES, Predictor, isEspPointer, TABLE, type PredictorConfig, type TableKind } from './predictor.js';
export type { InstructionCodec, Reference } from './codec.js';

/** The predictor a header asks for (docs/delta.md, "Prediction"); `readBaseWord` reads a u32 of the base. */
export function predictorFor(h: PatchHeader, readBaseWord: (offset: number) => number): Predictor {
  return new Predictor({
    table: h.version === 2 ? 'v2' : 'v3',
    espPointers: (h.transforms & Transform.pointerPrediction) !== 0,
    pointerRange: h.transforms & Transform.pointerRange ? h.pointerRange : [0, 0],
    codec: h.transforms & Transform.instructions ? codecFor(h.arch) : undefined,
    forms: h.forms,
    fallback: h.fallback,
    loadAddress: h.loadAddress,
    baseSize: h.baseSize,
    readBaseWord,
  });
}
