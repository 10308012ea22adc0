import { PatchApplier } from '../shared/delta/index.js';
import { sha256 } from '../shared/manifest.js';
import { PowerCut, SECTOR_SIZE, type Flash } from './flash.js';
import type { Partition } from './layout.js';

/**
 * Applies a stored delta patch: reads the running image from its slot, the patch from the top of the
 * inactive slot, and writes the new image from the start of the inactive slot, erasing each sector
 * just before the first write into it. Memory stays bounded (the applier's buffers plus one patch
 * piece), as on a node. The caller checks the result against the manifest by reading it back.
 *
 * Restartable: after a power cut the whole apply simply runs again (the patch region is never
 * touched by the output, and output sectors are erased again before use).
 */
export interface DeltaInput {
  flash: Flash;
  running: Partition;
  runningSize: number;
  target: Partition;
  patchOffset: number;
  patchSize: number;
  baseDigest: Buffer;
  /** Size of the image the manifest promises: output past it is refused. */
  expectedSize: number;
}

const PIECE = 512;

export function applyStoredDelta(d: DeltaInput): { size: number; digest: Buffer } {
  const { flash, running, target } = d;
  if (d.expectedSize > d.patchOffset) throw new RangeError('new image would overwrite the patch');
  let written = 0;
  let cut: PowerCut | undefined;
  const guarded = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      if (err instanceof PowerCut) cut = err;
      throw err;
    }
  };
  let erasedUpTo = 0; // output sectors below this are erased (output is sequential)
  const applier = new PatchApplier({
    expectBaseDigest: d.baseDigest,
    readOld: (offset, length) => {
      if (offset + length > d.runningSize) throw new RangeError(`patch reads past the running image (${offset + length} > ${d.runningSize})`);
      return guarded(() => flash.read(running.offset + offset, length));
    },
    write: (bytes) => {
      if (written + bytes.length > d.expectedSize) throw new RangeError(`patch produces more than the manifest's ${d.expectedSize} bytes`);
      guarded(() => {
        while (erasedUpTo < written + bytes.length) {
          flash.erase(target.offset + erasedUpTo, SECTOR_SIZE);
          erasedUpTo += SECTOR_SIZE;
        }
        flash.write(target.offset + written, bytes);
      });
      written += bytes.length;
    },
  });
  try {
    for (let pos = 0; pos < d.patchSize; pos += PIECE) {
      applier.push(flash.read(target.offset + d.patchOffset + pos, Math.min(PIECE, d.patchSize - pos)));
    }
    applier.finish();
  } catch (err) {
    // The applier turns any callback error into deltaFailed; a power cut must stay a power cut.
    if (cut) throw cut;
    throw err;
  }
  // Trust flash, not the applier's running hash: read the result back.
  return { size: written, digest: sha256(flash.read(target.offset, written)) };
}
