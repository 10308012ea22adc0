/** ferry delta patches: creation (host side) and a bounded-memory streaming applier (node side). */
export { createPatch, createPatchWithStats, DEFAULT_WINDOW_BITS, type CreatePatchOptions, type PatchStats } from './create.js';
export { PatchApplier, applyPatch, checkBase, type ApplyResult, type PatchApplierOptions } from './apply.js';
export { readPatchHeader, HEADER_SIZE, FORMAT_VERSION, Coder, type PatchHeader } from './format.js';
