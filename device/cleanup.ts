import { peekManifest } from '../shared/manifest.js';
import { compareVersions } from '../shared/version.js';
import type { SlotDescriptor } from './firmware.js';
import { NvsKey, type Nvs } from './nvs.js';
import { decodeMeta, Download, payloadOffset } from './transfer.js';

/**
 * Start-up cleanup of what an abandoned or half-finished update left behind (seed 001: startup
 * cleanup of half-applied state, temp-file leftovers). Runs at every boot once no activation is in
 * flight. What can still be finished is kept and resumed (a transfer for a newer image, a patch for
 * the running image); what cannot is dropped, with a line saying why:
 *
 *   - a received-chunk bitmap without its transfer record, or tied to another payload;
 *   - a transfer record that does not parse, or whose manifest does not parse;
 *   - a transfer of an image that is no longer newer than the running one (the update happened by
 *     another way, or a newer image runs), below the anti-rollback counter, or too big for the slot;
 *   - a parked delta patch whose base is not the running image (the node rolled back or moved on);
 *   - the descriptor of the download slot when no transfer owns the slot and its bytes no longer
 *     hash to it (a half-written slot), so nothing trusts it.
 *
 * Flash areas are reclaimed by dropping what references them: a download erases each slot sector
 * right before its first write, so stale bytes in the slot or a stale parked patch cost nothing and
 * are never read. Erasing them now would only add wear. NVS space is reclaimed by its next compaction.
 */
export interface CleanupContext {
  nvs: Nvs;
  running: SlotDescriptor;
  counter: number;
  /** Bytes of image area in the download slot. */
  capacity: number;
  /** Checks the download slot against its descriptor: undefined when it has none. */
  verifyDownloadSlot(): boolean | undefined;
  dropDownloadSlotDescriptor(): void;
}

export function startupCleanup(c: CleanupContext): string[] {
  const done: string[] = [];
  const { nvs } = c;
  const rawMeta = nvs.get(NvsKey.transfer);
  const meta = decodeMeta(rawMeta);
  const bitmap = nvs.get(NvsKey.transferBitmap);
  if (rawMeta && !meta) {
    Download.discard(nvs);
    done.push('unreadable transfer record dropped');
  } else if (meta) {
    const stale = staleTransfer(meta, c);
    if (stale) {
      Download.discard(nvs);
      done.push(`transfer of session ${meta.session} dropped: ${stale}`);
    }
  } else if (bitmap) {
    nvs.delete(NvsKey.transferBitmap);
    done.push('chunk bitmap without a transfer dropped');
  }
  if (meta && bitmap && nvs.get(NvsKey.transfer) && !bitmap.subarray(0, 8).equals(meta.payloadDigest.subarray(0, 8))) {
    nvs.delete(NvsKey.transferBitmap);
    done.push('chunk bitmap of another payload dropped');
  }
  if (!nvs.get(NvsKey.transfer) && c.verifyDownloadSlot() === false) {
    c.dropDownloadSlotDescriptor();
    done.push('descriptor of a half-written download slot dropped');
  }
  return done;
}

function staleTransfer(meta: NonNullable<ReturnType<typeof decodeMeta>>, c: CleanupContext): string | undefined {
  let m;
  try {
    m = peekManifest(meta.manifest);
  } catch (err) {
    return `its manifest does not parse (${(err as Error).message})`;
  }
  if (compareVersions(m.version, c.running.version) <= 0) return `${m.version} is not newer than the running ${c.running.version}`;
  if (m.securityVersion < c.counter) return `security version ${m.securityVersion} is below the counter ${c.counter}`;
  if (m.size > c.capacity) return `${m.size} bytes do not fit the ${c.capacity}-byte image area`;
  if (meta.baseDigest) {
    if (!meta.baseDigest.equals(c.running.digest)) return 'its delta patch is for another base image than the running one';
    if (meta.payloadSize >= c.capacity || m.size > payloadOffset(meta.encoding, c.capacity, meta.payloadSize)) return 'the patch and its image do not fit the slot together';
  }
  return undefined;
}
