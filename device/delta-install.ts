import { createHash, type Hash } from 'node:crypto';
import { ProtocolError, Reason } from '../shared/errors.js';
import { MAX_HEADER_SIZE, PatchApplier, readPatchHeader } from '../shared/delta/index.js';
import { PowerCut, SECTOR_SIZE, type Flash } from './flash.js';
import type { Partition } from './layout.js';

/**
 * Applies a stored delta patch: reads the running image from its slot, the patch from the top of the
 * inactive slot, and writes the new image from the start of the inactive slot, erasing each sector
 * just before the first write into it. Memory stays bounded (the applier's buffers plus one patch
 * piece), as on a node. The result is read back from flash and hashed: the caller compares it with
 * the manifest.
 *
 * The work is cut into slices (`DeltaInstall.step`) so a node's main loop can run between them: a
 * node that applied a 600 KB image in one go would miss its MQTT keepalive and its watchdog.
 * `applyStoredDelta` runs the slices with a setImmediate between each.
 *
 * Before writing anything it hashes the running slot and compares it with the patch's base digest:
 * a slot that no longer holds what its descriptor (and so the node's Hello) claims is refused as
 * deltaBaseMismatch, not turned into a wrong image. Only the inactive slot is ever written.
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
  /** The base digest the Offer named: the patch header must name the same. */
  baseDigest: Buffer;
  /** Size of the image the manifest promises: output past it is refused. */
  expectedSize: number;
}

export interface DeltaResult {
  size: number;
  digest: Buffer;
  /** How many slices the work took (each ends with a chance for the event loop to run). */
  slices: number;
  peakWorkingMemory: number;
}

/** Patch bytes handed to the applier at a time (a node's receive buffer would be about this). */
const PIECE = 128;
/** Flash bytes (read or written) per slice by default: a few ms of work on a real part. */
export const DEFAULT_SLICE_BYTES = 16 * 1024;

type Phase = 'checkBase' | 'apply' | 'readBack' | 'done';

export class DeltaInstall {
  private phase: Phase = 'checkBase';
  /** Hash of the running slot (checkBase). */
  private readonly hash: Hash = createHash('sha256');
  /** Hash of the new image as read back from flash. */
  private readonly readBack: Hash = createHash('sha256');
  private hashed = 0;
  private patchPos = 0;
  private written = 0;
  private erasedUpTo = 0; // output sectors below this are erased (output is sequential)
  private cut: PowerCut | undefined;
  private readonly applier: PatchApplier;
  private readonly baseDigest: Buffer;
  private final: DeltaResult | undefined;
  slices = 0;

  constructor(private readonly d: DeltaInput) {
    if (d.expectedSize > d.patchOffset) throw new ProtocolError(Reason.noSpace, `new image (${d.expectedSize} B) would overwrite the patch parked at ${d.patchOffset}`);
    let header;
    try {
      header = readPatchHeader(d.flash.read(d.target.offset + d.patchOffset, Math.min(MAX_HEADER_SIZE, d.patchSize)));
    } catch (err) {
      if (err instanceof PowerCut) throw err;
      throw new ProtocolError(Reason.deltaFailed, (err as Error).message);
    }
    if (!header.baseDigest.equals(d.baseDigest)) {
      throw new ProtocolError(Reason.deltaBaseMismatch, `patch header names base ${hex(header.baseDigest)}…, the offer named ${hex(d.baseDigest)}…`);
    }
    if (header.baseSize !== d.runningSize) {
      throw new ProtocolError(Reason.deltaBaseMismatch, `patch is for a ${header.baseSize}-byte base, the running image has ${d.runningSize} bytes`);
    }
    if (header.newSize !== d.expectedSize) {
      throw new ProtocolError(Reason.deltaFailed, `patch makes a ${header.newSize}-byte image, the manifest says ${d.expectedSize}`);
    }
    this.baseDigest = header.baseDigest;
    const { flash, running, target } = d;
    this.applier = new PatchApplier({
      expectBaseDigest: d.baseDigest,
      readOld: (offset, length) => {
        if (offset + length > d.runningSize) throw new RangeError(`patch reads past the running image (${offset + length} > ${d.runningSize})`);
        return this.guarded(() => flash.read(running.offset + offset, length));
      },
      write: (bytes) => {
        if (this.written + bytes.length > d.expectedSize) throw new RangeError(`patch produces more than the manifest's ${d.expectedSize} bytes`);
        this.guarded(() => {
          while (this.erasedUpTo < this.written + bytes.length) {
            flash.erase(target.offset + this.erasedUpTo, SECTOR_SIZE);
            this.erasedUpTo += SECTOR_SIZE;
          }
          flash.write(target.offset + this.written, bytes);
        });
        this.written += bytes.length;
      },
    });
  }

  get done(): boolean {
    return this.phase === 'done';
  }

  get result(): DeltaResult {
    if (!this.final) throw new Error('delta install not finished');
    return this.final;
  }

  /** Does about `budget` bytes of flash work. Returns true once the image is written and hashed. */
  step(budget = DEFAULT_SLICE_BYTES): boolean {
    this.slices++;
    const { flash, running, target } = this.d;
    switch (this.phase) {
      case 'checkBase': {
        // The running slot must be the base byte for byte: its descriptor is only a claim.
        const end = Math.min(this.d.runningSize, this.hashed + budget);
        for (; this.hashed < end; this.hashed += Math.min(SECTOR_SIZE, end - this.hashed)) {
          this.hash.update(flash.read(running.offset + this.hashed, Math.min(SECTOR_SIZE, end - this.hashed)));
        }
        if (this.hashed < this.d.runningSize) return false;
        const digest = this.hash.digest();
        if (!digest.equals(this.baseDigest)) {
          throw new ProtocolError(Reason.deltaBaseMismatch, `running slot hashes to ${hex(digest)}…, the patch is for ${hex(this.baseDigest)}…: the running image is not the patch's base`);
        }
        this.phase = 'apply';
        return false;
      }
      case 'apply': {
        const stopAt = this.written + budget;
        try {
          while (this.patchPos < this.d.patchSize && this.written < stopAt) {
            const n = Math.min(PIECE, this.d.patchSize - this.patchPos);
            this.applier.push(flash.read(target.offset + this.d.patchOffset + this.patchPos, n));
            this.patchPos += n;
          }
          if (this.patchPos < this.d.patchSize) return false;
          this.applier.finish();
        } catch (err) {
          // The applier turns any callback error into deltaFailed; a power cut must stay a power cut.
          if (this.cut) throw this.cut;
          throw err;
        }
        this.phase = 'readBack';
        this.hashed = 0;
        return false;
      }
      case 'readBack': {
        // Trust flash, not the applier's running hash: read the result back.
        const end = Math.min(this.written, this.hashed + budget);
        for (; this.hashed < end; this.hashed += Math.min(SECTOR_SIZE, end - this.hashed)) {
          this.readBack.update(flash.read(target.offset + this.hashed, Math.min(SECTOR_SIZE, end - this.hashed)));
        }
        if (this.hashed < this.written) return false;
        this.final = { size: this.written, digest: this.readBack.digest(), slices: this.slices, peakWorkingMemory: this.applier.peakWorkingMemory };
        this.phase = 'done';
        return true;
      }
      case 'done':
        return true;
    }
  }

  private guarded<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof PowerCut) this.cut = err;
      throw err;
    }
  }
}

/** Thrown when the node lost power or moved on while an apply was between slices. */
export class InstallAborted extends Error {
  override name = 'InstallAborted';
}

/**
 * Runs a delta install in slices, yielding to the event loop between them. `alive` is asked after
 * every yield: when it says no (power lost, download cancelled or replaced) nothing more is written.
 */
export async function applyStoredDelta(d: DeltaInput, opts: { alive?: () => boolean; sliceBytes?: number } = {}): Promise<DeltaResult> {
  const job = new DeltaInstall(d);
  while (!job.step(opts.sliceBytes)) {
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (opts.alive && !opts.alive()) throw new InstallAborted('delta install abandoned');
  }
  return job.result;
}

/** The same work without yielding: for firmware-layer sweeps that drive the flash synchronously. */
export function applyStoredDeltaSync(d: DeltaInput): DeltaResult {
  const job = new DeltaInstall(d);
  while (!job.step(Number.MAX_SAFE_INTEGER));
  return job.result;
}

function hex(b: Buffer): string {
  return b.toString('hex').slice(0, 16);
}
