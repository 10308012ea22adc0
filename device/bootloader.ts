import { ImageState } from '../shared/messages.js';
import { Reason } from '../shared/errors.js';
import { decodeDescriptor, encodeDescriptor, type SlotDescriptor } from './firmware.js';
import type { Layout, Partition } from './layout.js';
import { NvsKey, type Nvs } from './nvs.js';
import { isDead, nextSeq, readOtadata, selectEntry, selectSlot, setEntryState, type OtaEntry } from './otadata.js';
import { BootFailure, verifyImage, type ActivationRef, type BootEnv, type BootPort, type BootResult, type RefusedSlot } from './boot-port.js';
import type { BootProfile } from './profiles.js';

export { BootFailure, type BootResult, type RefusedSlot } from './boot-port.js';

/**
 * The second-stage bootloader, ESP-IDF style (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE on or off).
 *
 * With rollback:
 *   - the selected record is NEW          → rewrite it PENDING_VERIFY and boot it (the trial boot);
 *   - the selected record is PENDING_VERIFY → the trial boot never confirmed (crash, watchdog, power
 *     loss during self-test): if trial boots are left, count one down and boot it again; otherwise
 *     rewrite it ABORTED and select again, which falls back to the previous record;
 *   - INVALID / ABORTED records are never selected.
 * ESP-IDF itself gives exactly one trial boot (trialBoots = 1, the default); more is the boot
 * counting of device/otadata.ts.
 * Without rollback the highest valid record is booted whatever its state, and the image state the
 * app sees is `undefined` (the bootloader keeps none).
 *
 * Either way every candidate passes a simulated secure boot first: the slot's bytes must hash to the
 * digest in its descriptor, and its security version must not be below the anti-rollback counter.
 * A slot that fails is never booted. With no usable record at all, the bootloader falls back to the
 * first slot that verifies (ota_0 first), as ESP-IDF does with blank otadata.
 */
export function slotDescriptorKey(slot: number): number {
  return slot === 0 ? NvsKey.slot0 : NvsKey.slot1;
}

export function readSlotDescriptor(nvs: Nvs, slot: number): SlotDescriptor | undefined {
  return decodeDescriptor(nvs.get(slotDescriptorKey(slot)));
}

export class EspIdfPort implements BootPort {
  readonly imageCapacity: number;
  private readonly rollback: boolean;

  constructor(readonly profile: BootProfile, private readonly layout: Layout) {
    this.rollback = profile.rollback;
    this.imageCapacity = layout.slots[0].size;
  }

  imageArea(slot: number): Partition {
    return this.layout.slots[slot];
  }

  /** ESP-IDF keeps the app descriptor inside the image; the simulation keeps it in NVS (key slot0/slot1). */
  readDescriptor(env: BootEnv, slot: number): SlotDescriptor | undefined {
    return readSlotDescriptor(env.nvs, slot);
  }

  writeDescriptor(env: BootEnv, slot: number, d: SlotDescriptor): void {
    env.nvs.put(slotDescriptorKey(slot), encodeDescriptor(d));
  }

  dropDescriptor(env: BootEnv, slot: number): void {
    env.nvs.delete(slotDescriptorKey(slot));
  }

  downloadSlot(b: BootResult): number {
    return 1 - b.slot;
  }

  boot(env: BootEnv, trialBoots: number): BootResult {
    const { flash, layout } = env;
    const refused: RefusedSlot[] = [];
    const skipSectors = new Set<number>();
    for (let round = 0; round < 4; round++) {
      const entries = readOtadata(flash, layout);
      const e = selectEntry(entries, this.rollback, skipSectors);
      if (!e) break;
      if (this.rollback && e.state === ImageState.pendingVerify && !(e.left && e.left > 0)) {
        setEntryState(flash, layout, e, ImageState.aborted);
        refused.push({ slot: e.slot, reason: Reason.bootFailed });
        continue;
      }
      const check = verifyImage(env, this, e.slot);
      if (!check.ok) {
        refused.push({ slot: e.slot, reason: check.reason });
        skipSectors.add(e.sector);
        continue;
      }
      let entry = e;
      if (this.rollback && (e.state === ImageState.new || e.state === ImageState.pendingVerify)) {
        // One trial boot spent: NEW records carry all of them, PENDING_VERIFY ones what is left.
        const left = Math.max(0, (e.left ?? (e.state === ImageState.new ? trialBoots : 0)) - 1);
        entry = setEntryState(flash, layout, e, ImageState.pendingVerify, left);
      }
      return { slot: entry.slot, state: this.rollback ? entry.state : ImageState.undefined, entry, descriptor: check.descriptor, refused };
    }
    // No record to follow: boot the first slot that verifies, preferring one no failed record names.
    const entries = readOtadata(flash, layout);
    const failedSlots = new Set(entries.filter((x): x is OtaEntry => !!x && this.rollback && isDead(x.state)).map((x) => x.slot));
    const order = [0, 1].sort((a, b) => Number(failedSlots.has(a)) - Number(failedSlots.has(b)));
    for (const slot of order) {
      const check = verifyImage(env, this, slot);
      if (check.ok) return { slot, state: ImageState.undefined, entry: undefined, descriptor: check.descriptor, refused };
      if (!refused.some((r) => r.slot === slot)) refused.push({ slot, reason: check.reason });
    }
    throw new BootFailure(`no bootable image: ${refused.map((r) => `slot ${r.slot} reason ${r.reason}`).join(', ') || 'flash is blank'}`);
  }

  activate(env: BootEnv, slot: number, trialBoots: number, note: (seq: number) => void): void {
    note(nextSeq(env.flash, env.layout));
    if (this.rollback) selectSlot(env.flash, env.layout, slot, ImageState.new, true, trialBoots);
    else selectSlot(env.flash, env.layout, slot, ImageState.undefined, false);
  }

  selectionExists(env: BootEnv, act: ActivationRef): boolean {
    return readOtadata(env.flash, env.layout).some((e) => !!e && e.seq === act.seq && e.slot === act.slot);
  }

  confirm(env: BootEnv, b: BootResult): BootResult {
    if (!this.rollback || !b.entry) return b;
    return { ...b, entry: setEntryState(env.flash, env.layout, b.entry, ImageState.valid), state: ImageState.valid };
  }

  revert(env: BootEnv, b: BootResult): boolean {
    if (this.rollback) {
      if (b.entry) setEntryState(env.flash, env.layout, b.entry, ImageState.invalid);
      return true;
    }
    // No bootloader help: the app selects the previous slot itself.
    selectSlot(env.flash, env.layout, 1 - b.slot, ImageState.undefined, false);
    return true;
  }
}
