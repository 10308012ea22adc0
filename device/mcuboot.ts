import { ImageState } from '../shared/messages.js';
import type { SlotDescriptor } from './firmware.js';
import { SECTOR_SIZE, type Flash } from './flash.js';
import type { Layout, Partition } from './layout.js';
import { eraseImageHeader, readImageHeader, writeImageHeader } from './image-header.js';
import {
  eraseTrailer, MAX_STATUS_SECTORS, readSwapStatus, readTrailer, SwapType, writeCopyDone, writeImageOk, writeMagic, writeSwapInfo, writeSwapStatus,
  type SwapTypeCode, type Trailer,
} from './mcuboot-trailer.js';
import { BootFailure, verifyImage, type ActivationRef, type BootEnv, type BootPort, type BootResult, type RefusedSlot } from './boot-port.js';
import type { BootProfile } from './profiles.js';

/**
 * MCUboot, as mcu-tools/mcuboot docs/design.md describes it, in two upgrade strategies:
 *
 * swap using scratch (mcuboot-swap)
 *   The app downloads into the secondary slot and sets it pending (magic in the secondary trailer;
 *   image_ok too for a permanent swap). At the next boot the bootloader decides the swap type from
 *   the two trailers (design.md "Image Trailers", states I–IV, in order):
 *     secondary magic good, image_ok unset            → TEST
 *     secondary magic good, image_ok 0x01             → PERM
 *     primary magic good, image_ok unset, copy_done 1 → REVERT (a test image was never confirmed)
 *   and swaps the two images sector by sector through the scratch area, highest index first, each
 *   index in three steps with a swap-status record after each (design.md "Image Swapping"):
 *     erase scratch,   copy secondary[i] → scratch,   status 1
 *     erase secondary[i], copy primary[i] → secondary[i], status 2
 *     erase primary[i],   copy scratch → primary[i],   status 3
 *   then persists completion in the primary trailer (image_ok for PERM/REVERT, then copy_done) and
 *   boots the primary. A test image that marks itself OK (image_ok) stays; otherwise the next reset
 *   reverts it. A reset anywhere resumes from the swap status ("Reset Recovery").
 *
 * overwrite only (mcuboot-overwrite)
 *   A pending secondary is copied over the primary, then the secondary's header and trailer are
 *   erased so the copy is not applied twice (loader.c boot_copy_image). An interrupted copy is simply
 *   done again. There is no way back: the node cannot claim rollback.
 *
 * Deliberate simplifications, each keeping the power-loss behaviour design.md describes:
 *   - every slot ends with a header sector (device/image-header.ts) and a trailer sector that hold
 *     no image bytes, so trailers are never swapped as data; design.md's special case for the last
 *     sector ("copy the full sector except the image trailer") is not needed;
 *   - for the same reason the scratch trailer is only needed at swap start: the swap type and size
 *     are written there first, then the primary trailer is erased and rewritten with them (status
 *     source "scratch" in design.md's reset-recovery table while that happens);
 *   - an invalid secondary has its header and trailer erased rather than the whole slot;
 *   - the secondary trailer is erased when a swap completes (in MCUboot it ends up erased because
 *     its sector is swapped without the trailer part).
 */
export type McubootMode = 'swap' | 'overwrite';

const S = SECTOR_SIZE;

interface SwapRecord {
  type: SwapTypeCode;
  size: number;
  source: 'primary' | 'scratch';
}

export class McubootPort implements BootPort {
  readonly imageCapacity: number;
  readonly mode: McubootMode;
  /** Sector index (within a slot) of the image header sector. */
  private readonly headerIndex: number;
  /** Sector indices the swap status covers: image sectors and the header sector. */
  private readonly statusSectors: number;

  constructor(readonly profile: BootProfile, private readonly layout: Layout) {
    this.mode = profile.name === 'mcuboot-overwrite' ? 'overwrite' : 'swap';
    const slotSectors = layout.slots[0].size / S;
    if (slotSectors < 3) throw new RangeError(`an MCUboot slot needs at least 3 sectors (image, header, trailer), got ${slotSectors}`);
    this.headerIndex = slotSectors - 2;
    this.statusSectors = slotSectors - 1;
    if (this.statusSectors > MAX_STATUS_SECTORS) {
      throw new RangeError(`an MCUboot slot of ${slotSectors} sectors needs more swap-status records than one trailer sector holds (at most ${MAX_STATUS_SECTORS + 1} sectors)`);
    }
    this.imageCapacity = this.headerIndex * S;
  }

  imageArea(slot: number): Partition {
    return { offset: this.layout.slots[slot].offset, size: this.imageCapacity };
  }

  private sectorAt(slot: number, index: number): number {
    return this.layout.slots[slot].offset + index * S;
  }

  private headerAt(slot: number): number {
    return this.sectorAt(slot, this.headerIndex);
  }

  private trailerAt(slot: number): number {
    const p = this.layout.slots[slot];
    return p.offset + p.size - S;
  }

  private get scratchData(): number {
    return this.layout.scratch.offset;
  }

  private get scratchTrailer(): number {
    return this.layout.scratch.offset + S;
  }

  readDescriptor(env: BootEnv, slot: number): SlotDescriptor | undefined {
    return readImageHeader(env.flash, this.headerAt(slot));
  }

  writeDescriptor(env: BootEnv, slot: number, d: SlotDescriptor): void {
    writeImageHeader(env.flash, this.headerAt(slot), d);
  }

  /** The slot's image is about to be overwritten: no header, and no pending request naming it. */
  dropDescriptor(env: BootEnv, slot: number): void {
    eraseImageHeader(env.flash, this.headerAt(slot));
    if (slot === 1) this.eraseTrailerIfUsed(env.flash, 1);
  }

  downloadSlot(): number {
    return 1;
  }

  /** The primary trailer and the secondary trailer, as the bootloader reads them. */
  trailers(flash: Flash): { primary: Trailer; secondary: Trailer; scratch: Trailer } {
    return { primary: readTrailer(flash, this.trailerAt(0)), secondary: readTrailer(flash, this.trailerAt(1)), scratch: readTrailer(flash, this.scratchTrailer) };
  }

  boot(env: BootEnv): BootResult {
    const refused: RefusedSlot[] = [];
    if (this.mode === 'swap') this.swapIfAsked(env, refused);
    else this.overwriteIfAsked(env, refused);
    const check = verifyImage(env, this, 0);
    if (!check.ok) throw new BootFailure(`no bootable image: the primary slot does not verify (reason ${check.reason})${refused.length ? `; refused ${refused.map((r) => `slot ${r.slot} reason ${r.reason}`).join(', ')}` : ''}`);
    const t = readTrailer(env.flash, this.trailerAt(0));
    let state: BootResult['state'] = ImageState.undefined;
    if (this.mode === 'swap' && t.magic === 'good') state = t.imageOk === 'set' ? ImageState.valid : ImageState.pendingVerify;
    return { slot: 0, state, descriptor: check.descriptor, refused };
  }

  /** boot_set_pending: the secondary image runs at the next boot, once (test) or for good (permanent). */
  setPending(env: BootEnv, permanent: boolean): void {
    const at = this.trailerAt(1);
    this.eraseTrailerIfUsed(env.flash, 1);
    // image_ok before the magic: the magic is what makes the request count, so it goes last.
    if (permanent) writeImageOk(env.flash, at);
    writeMagic(env.flash, at);
  }

  activate(env: BootEnv, slot: number, _trialBoots: number, note: (seq: number) => void): void {
    if (slot !== 1) throw new RangeError(`MCUboot activates the secondary slot, not slot ${slot}`);
    note(0);
    // Overwrite-only has no test swap: the request is permanent by nature.
    this.setPending(env, this.mode === 'overwrite');
  }

  selectionExists(env: BootEnv, _act: ActivationRef): boolean {
    return readTrailer(env.flash, this.trailerAt(1)).magic === 'good';
  }

  /** boot_set_confirmed: image_ok in the primary trailer (one byte, written once). */
  confirm(env: BootEnv, b: BootResult): BootResult {
    if (this.mode !== 'swap') return b;
    const t = readTrailer(env.flash, this.trailerAt(0));
    if (t.magic === 'good' && t.imageOk === 'unset') writeImageOk(env.flash, this.trailerAt(0));
    return { ...b, state: ImageState.valid };
  }

  /** An unconfirmed test swap is reverted by the bootloader at the next reset: nothing to write. */
  revert(): boolean {
    return this.mode === 'swap';
  }

  // ---- swap using scratch ---------------------------------------------------------------------

  private swapIfAsked(env: BootEnv, refused: RefusedSlot[]): void {
    const { flash } = env;
    // design.md, high-level operation step 1: an interrupted swap is completed first.
    const interrupted = this.interruptedSwap(flash);
    if (interrupted) {
      if (interrupted.source === 'scratch') this.initPrimaryTrailer(flash, interrupted.type, interrupted.size);
      this.moveSectors(flash, interrupted.size / S);
      this.finishSwap(flash, interrupted.type);
      return;
    }
    const { primary: p, secondary: s } = this.trailers(flash);
    let type: SwapTypeCode | undefined;
    if (s.magic === 'good' && s.imageOk === 'unset') type = SwapType.test;
    else if (s.magic === 'good' && s.imageOk === 'set') type = SwapType.perm;
    else if (p.magic === 'good' && p.imageOk === 'unset' && p.copyDone === 'set' && s.magic === 'unset') type = SwapType.revert;
    if (type === undefined) return;
    const check = verifyImage(env, this, 1);
    if (!check.ok) {
      refused.push({ slot: 1, reason: check.reason });
      // design.md: an image that fails to validate is erased, and the primary marked OK so no further swap is tried.
      eraseImageHeader(flash, this.headerAt(1));
      this.eraseTrailerIfUsed(flash, 1);
      if (p.imageOk !== 'set') writeImageOk(flash, this.trailerAt(0));
      return;
    }
    const primary = this.readDescriptor(env, 0);
    const sectors = Math.ceil(Math.max(primary?.size ?? 0, check.descriptor.size) / S);
    // The intent goes to the scratch trailer first: the primary trailer must be erased to take it.
    eraseTrailer(flash, this.scratchTrailer);
    writeSwapInfo(flash, this.scratchTrailer, type, sectors * S);
    writeMagic(flash, this.scratchTrailer);
    this.initPrimaryTrailer(flash, type, sectors * S);
    this.moveSectors(flash, sectors);
    this.finishSwap(flash, type);
  }

  /** design.md "Reset Recovery": where the status of a swap in progress is, if one is. */
  private interruptedSwap(flash: Flash): SwapRecord | undefined {
    const p = readTrailer(flash, this.trailerAt(0));
    if (p.magic === 'good') {
      if (p.copyDone === 'set' || p.swapType === undefined || p.swapSize === undefined) return undefined;
      return { type: p.swapType, size: p.swapSize, source: 'primary' };
    }
    // The primary trailer is erased or half-written: only a swap being started does that.
    const sc = readTrailer(flash, this.scratchTrailer);
    if (sc.magic === 'good' && sc.swapType !== undefined && sc.swapSize !== undefined) return { type: sc.swapType, size: sc.swapSize, source: 'scratch' };
    return undefined;
  }

  /** The primary trailer of a swap in progress: type and size, then the magic that makes them count. */
  private initPrimaryTrailer(flash: Flash, type: SwapTypeCode, size: number): void {
    eraseTrailer(flash, this.trailerAt(0));
    writeSwapInfo(flash, this.trailerAt(0), type, size);
    writeMagic(flash, this.trailerAt(0));
  }

  /** Swaps image sectors 0..count-1 and the header sector, highest index first, resuming from the status. */
  private moveSectors(flash: Flash, count: number): void {
    if (!Number.isInteger(count) || count < 0 || count > this.headerIndex) throw new BootFailure(`swap size of ${count} sectors is out of range`);
    const status = this.trailerAt(0);
    const order = [this.headerIndex, ...Array.from({ length: count }, (_, i) => count - 1 - i)];
    for (const i of order) {
      const done = readSwapStatus(flash, status, i, this.statusSectors);
      if (done < 1) {
        flash.erase(this.scratchData, S);
        copySector(flash, this.sectorAt(1, i), this.scratchData);
        writeSwapStatus(flash, status, i, 0, this.statusSectors);
      }
      if (done < 2) {
        flash.erase(this.sectorAt(1, i), S);
        copySector(flash, this.sectorAt(0, i), this.sectorAt(1, i));
        writeSwapStatus(flash, status, i, 1, this.statusSectors);
      }
      if (done < 3) {
        flash.erase(this.sectorAt(0, i), S);
        copySector(flash, this.scratchData, this.sectorAt(0, i));
        writeSwapStatus(flash, status, i, 2, this.statusSectors);
      }
    }
  }

  /**
   * Persists completion: the secondary trailer goes (or State I would test the swapped-out image
   * again), then image_ok for PERM and REVERT, then copy_done. image_ok before copy_done: a reset
   * between the two after a REVERT must not leave a trailer that reads as another REVERT
   * (mcu-tools/mcuboot#480, the interrupted revert that swapped twice).
   */
  private finishSwap(flash: Flash, type: SwapTypeCode): void {
    this.eraseTrailerIfUsed(flash, 1);
    const p = readTrailer(flash, this.trailerAt(0));
    if ((type === SwapType.perm || type === SwapType.revert) && p.imageOk !== 'set') writeImageOk(flash, this.trailerAt(0));
    writeCopyDone(flash, this.trailerAt(0));
  }

  // ---- overwrite only -------------------------------------------------------------------------

  private overwriteIfAsked(env: BootEnv, refused: RefusedSlot[]): void {
    const { flash } = env;
    if (readTrailer(flash, this.trailerAt(1)).magic !== 'good') return;
    const check = verifyImage(env, this, 1);
    if (!check.ok) {
      refused.push({ slot: 1, reason: check.reason });
      eraseImageHeader(flash, this.headerAt(1));
      this.eraseTrailerIfUsed(flash, 1);
      return;
    }
    const sectors = Math.ceil(check.descriptor.size / S);
    for (const i of [...Array.from({ length: sectors }, (_, k) => k), this.headerIndex]) {
      flash.erase(this.sectorAt(0, i), S);
      copySector(flash, this.sectorAt(1, i), this.sectorAt(0, i));
    }
    // Header first, then trailer: a reset between them leaves a pending request whose image no
    // longer validates, which the next boot erases like any invalid image.
    eraseImageHeader(flash, this.headerAt(1));
    this.eraseTrailerIfUsed(flash, 1);
  }

  private eraseTrailerIfUsed(flash: Flash, slot: number): void {
    const at = this.trailerAt(slot);
    if (!flash.isErased(at, S)) eraseTrailer(flash, at);
  }
}

/** Copies one sector onto an erased one; an erased source needs no write. */
function copySector(flash: Flash, from: number, to: number): void {
  const data = flash.read(from, S);
  if (data.every((b) => b === 0xff)) return;
  flash.write(to, data);
}
