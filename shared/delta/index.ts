/** ferry delta patches: creation (host side) and a bounded-memory streaming applier (node side). */
export { createPatch, createPatchWithStats, DEFAULT_WINDOW_BITS, type CreatePatchOptions, type PatchStats } from './create.js';
export { PatchApplier, applyPatch, checkBase, type ApplyResult, type PatchApplierOptions } from './apply.js';
export { readPatchHeader, HEADER_SIZE, MAX_HEADER_SIZE, FORMAT_VERSION, Coder, type PatchHeader } from './format.js';
export { Arch, ARCH_NAMES, archName, type ArchName } from './arch/index.js';
export { detectImage, type ImageLayout } from './detect.js';
export { archForNode, deltaArchFor, deltaSparseFor, ARCH_CAPABILITY, ALL_ARCH_CAPABILITIES } from './choose.js';
