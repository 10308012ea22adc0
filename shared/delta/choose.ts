import { Capability } from '../messages.js';
import type { ArchName } from './arch/index.js';
import { detectImage } from './detect.js';

/** The Hello capability bit that says a node's applier predicts this instruction set (format version 3). */
export const ARCH_CAPABILITY: Record<Exclude<ArchName, 'none'>, number> = {
  thumb2: Capability.deltaThumb2,
  aarch64: Capability.deltaAarch64,
  riscv: Capability.deltaRiscv,
  xtensa: Capability.deltaXtensa,
};

/** Every instruction-set capability bit. */
export const ALL_ARCH_CAPABILITIES = Object.values(ARCH_CAPABILITY).reduce((a, b) => a | b, 0);

/**
 * The instruction set to make a patch for, for a node announcing capability flags `caps`, updating
 * to `target`: the one `target` is detected as (detect.ts) if the node says it applies it, else
 * `none` (a version 2 patch, which every delta-capable node reads). Pass the result as
 * `createPatch(base, target, { arch })` and as the patch cache's key.
 */
export function deltaArchFor(caps: number, target: Uint8Array): ArchName {
  return caps & Capability.delta ? archForNode(caps, detectImage(target).arch) : 'none';
}

/** deltaArchFor with the target's instruction set already detected (`detectImage(target).arch`). */
export function archForNode(caps: number, targetArch: ArchName): ArchName {
  if (!(caps & Capability.delta)) return 'none';
  return targetArch !== 'none' && caps & ARCH_CAPABILITY[targetArch] ? targetArch : 'none';
}

/**
 * Whether a node with capability flags `caps` reads sparse diff streams (transform bit 3): pass it
 * as `createPatch(base, target, { sparse })` and to the patch cache. A node without capability 256
 * gets the dense diff stream every delta applier reads.
 */
export function deltaSparseFor(caps: number): boolean {
  return (caps & Capability.delta) !== 0 && (caps & Capability.deltaSparse) !== 0;
}
