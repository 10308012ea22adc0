import { ImageState, type ImageStateCode } from '../shared/messages.js';
import { Reason } from '../shared/errors.js';
import { sha256 } from '../shared/manifest.js';
import type { Flash } from './flash.js';
import type { Layout } from './layout.js';
import { decodeDescriptor, type SlotDescriptor } from './firmware.js';
import { NvsKey, type Nvs } from './nvs.js';
import { isDead, readOtadata, selectEntry, setEntryState, type OtaEntry } from './otadata.js';
import type { SecurityCounter } from './efuse.js';

/**
 * The second-stage bootloader, ESP-IDF style (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE on or off).
 *
 * With rollback:
 *   - the selected record is NEW          → rewrite it PENDING_VERIFY and boot it (the trial boot);
 *   - the selected record is PENDING_VERIFY → the trial boot never confirmed (crash, watchdog, power
 *     loss during self-test): rewrite it ABORTED and select again, which falls back to the previous
 *     record;
 *   - INVALID / ABORTED records are never selected.
 * Without rollback the highest valid record is booted whatever its state, and the image state the
 * app sees is `undefined` (the bootloader keeps none).
 *
 * Either way every candidate passes a simulated secure boot first: the slot's bytes must hash to the
 * digest in its descriptor, and its security version must not be below the anti-rollback counter.
 * A slot that fails is never booted. With no usable record at all, the bootloader falls back to the
 * first slot that verifies (ota_0 first), as ESP-IDF does with blank otadata.
 */
export interface BootOptions {
  rollback: boolean;
}

export interface RefusedSlot {
  slot: number;
  reason: number;
}

export interface BootResult {
  slot: number;
  /** Image state the running app sees. */
  state: ImageStateCode;
  /** The otadata record followed; undefined when booted by fallback. */
  entry: OtaEntry | undefined;
  descriptor: SlotDescriptor;
  /** Slots this boot refused, and why (an aborted trial boot, an image failing secure boot). */
  refused: RefusedSlot[];
}

/** No slot holds a bootable image: the device is bricked. Must never happen; the sweep counts it. */
export class BootFailure extends Error {}

export function slotDescriptorKey(slot: number): number {
  return slot === 0 ? NvsKey.slot0 : NvsKey.slot1;
}

export function readSlotDescriptor(nvs: Nvs, slot: number): SlotDescriptor | undefined {
  return decodeDescriptor(nvs.get(slotDescriptorKey(slot)));
}

/** Simulated secure boot: the slot's stored bytes hash to its descriptor's digest and pass anti-rollback. */
export function verifySlot(flash: Flash, layout: Layout, nvs: Nvs, counter: SecurityCounter, slot: number): { ok: true; descriptor: SlotDescriptor } | { ok: false; reason: number } {
  const d = readSlotDescriptor(nvs, slot);
  const part = layout.slots[slot];
  if (!d || d.size === 0 || d.size > part.size) return { ok: false, reason: Reason.invalidImage };
  if (!sha256(flash.read(part.offset, d.size)).equals(d.digest)) return { ok: false, reason: Reason.invalidImage };
  if (d.securityVersion < counter.value) return { ok: false, reason: Reason.securityDowngrade };
  return { ok: true, descriptor: d };
}

export function boot(flash: Flash, layout: Layout, nvs: Nvs, counter: SecurityCounter, opts: BootOptions): BootResult {
  const refused: RefusedSlot[] = [];
  const skipSectors = new Set<number>();
  for (let round = 0; round < 4; round++) {
    const entries = readOtadata(flash, layout);
    const e = selectEntry(entries, opts.rollback, skipSectors);
    if (!e) break;
    if (opts.rollback && e.state === ImageState.pendingVerify) {
      setEntryState(flash, layout, e, ImageState.aborted);
      refused.push({ slot: e.slot, reason: Reason.bootFailed });
      continue;
    }
    const check = verifySlot(flash, layout, nvs, counter, e.slot);
    if (!check.ok) {
      refused.push({ slot: e.slot, reason: check.reason });
      skipSectors.add(e.sector);
      continue;
    }
    let entry = e;
    if (opts.rollback && e.state === ImageState.new) entry = setEntryState(flash, layout, e, ImageState.pendingVerify);
    return { slot: entry.slot, state: opts.rollback ? entry.state : ImageState.undefined, entry, descriptor: check.descriptor, refused };
  }
  // No record to follow: boot the first slot that verifies, preferring one no failed record names.
  const entries = readOtadata(flash, layout);
  const failedSlots = new Set(entries.filter((x): x is OtaEntry => !!x && opts.rollback && isDead(x.state)).map((x) => x.slot));
  const order = [0, 1].sort((a, b) => Number(failedSlots.has(a)) - Number(failedSlots.has(b)));
  for (const slot of order) {
    const check = verifySlot(flash, layout, nvs, counter, slot);
    if (check.ok) return { slot, state: ImageState.undefined, entry: undefined, descriptor: check.descriptor, refused };
    if (!refused.some((r) => r.slot === slot)) refused.push({ slot, reason: check.reason });
  }
  throw new BootFailure(`no bootable image: ${refused.map((r) => `slot ${r.slot} reason ${r.reason}`).join(', ') || 'flash is blank'}`);
}
