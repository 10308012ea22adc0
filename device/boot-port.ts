import { Reason } from '../shared/errors.js';
import type { ImageStateCode } from '../shared/messages.js';
import { sha256 } from '../shared/manifest.js';
import type { SecurityCounter } from './efuse.js';
import type { SlotDescriptor } from './firmware.js';
import type { Flash } from './flash.js';
import type { Layout, Partition } from './layout.js';
import type { Nvs } from './nvs.js';
import type { OtaEntry } from './otadata.js';
import type { BootProfile } from './profiles.js';

/**
 * What the app needs from a bootloader, whatever its family: boot, describe slots, activate a
 * downloaded image, confirm it, or give it up. device/bootloader.ts implements it for ESP-IDF
 * (otadata), device/mcuboot.ts for MCUboot (image trailers, swap or overwrite). The rest of the
 * firmware (device/system.ts) only speaks this interface.
 */
export interface BootEnv {
  flash: Flash;
  layout: Layout;
  nvs: Nvs;
  counter: SecurityCounter;
}

export interface RefusedSlot {
  slot: number;
  reason: number;
}

export interface BootResult {
  /** The slot the app runs from (MCUboot: always the primary, 0). */
  slot: number;
  /** Image state the running app sees. */
  state: ImageStateCode;
  descriptor: SlotDescriptor;
  /** Slots this boot refused, and why (an aborted trial boot, an image failing secure boot). */
  refused: RefusedSlot[];
  /** ESP-IDF: the otadata record followed; undefined when booted by fallback. */
  entry?: OtaEntry;
}

/** No slot holds a bootable image: the device is bricked. Must never happen; the sweeps count it. */
export class BootFailure extends Error {}

/** The activation as the bootloader port needs it back: what was selected, and how it was noted. */
export interface ActivationRef {
  slot: number;
  /** The port's token for the selection (ESP-IDF: the otadata seq). */
  seq: number;
}

export interface BootPort {
  readonly profile: BootProfile;
  /** Largest image a slot holds (MCUboot keeps a header and a trailer sector in every slot). */
  readonly imageCapacity: number;
  /** The part of a slot that holds image bytes (and parked delta patches). */
  imageArea(slot: number): Partition;
  /** Runs the bootloader: may rewrite its records and move sectors. Throws PowerCut, BootFailure. */
  boot(env: BootEnv, trialBoots: number): BootResult;
  readDescriptor(env: BootEnv, slot: number): SlotDescriptor | undefined;
  writeDescriptor(env: BootEnv, slot: number, d: SlotDescriptor): void;
  /** Forget what a slot holds, before anything overwrites it. */
  dropDescriptor(env: BootEnv, slot: number): void;
  /** The slot downloads go to while `boot` runs. */
  downloadSlot(boot: BootResult): number;
  /**
   * Selects the downloaded image in `slot` for the next boot (on trial when the bootloader can
   * revert). `note` is called with the selection's token before anything is written to the
   * bootloader's records, so the app can save it first and recognise the selection after any cut.
   */
  activate(env: BootEnv, slot: number, trialBoots: number, note: (seq: number) => void): void;
  /** The selection made by `activate` is still on record (the bootloader has not acted on it yet, or it stands). */
  selectionExists(env: BootEnv, act: ActivationRef): boolean;
  /** Self-test passed: make the running image permanent. */
  confirm(env: BootEnv, boot: BootResult): BootResult;
  /**
   * Self-test failed: arrange for the previous image to boot next. ESP-IDF marks the image INVALID
   * (or, without rollback, the app selects the other slot); MCUboot needs nothing (an unconfirmed
   * test swap is reverted at reset). False when there is no way back (MCUboot overwrite-only).
   */
  revert(env: BootEnv, boot: BootResult): boolean;
}

/** Simulated secure boot: the slot's bytes hash to its descriptor's digest, and anti-rollback passes. */
export function verifyImage(env: BootEnv, port: BootPort, slot: number): { ok: true; descriptor: SlotDescriptor } | { ok: false; reason: number } {
  const d = port.readDescriptor(env, slot);
  const area = port.imageArea(slot);
  if (!d || d.size === 0 || d.size > area.size) return { ok: false, reason: Reason.invalidImage };
  if (!sha256(env.flash.read(area.offset, d.size)).equals(d.digest)) return { ok: false, reason: Reason.invalidImage };
  if (d.securityVersion < env.counter.value) return { ok: false, reason: Reason.securityDowngrade };
  return { ok: true, descriptor: d };
}
