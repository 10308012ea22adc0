/**
 * Boot profiles: which bootloader a simulated node has, and what that bootloader can do. The profile
 * decides how an update is activated, how a trial boot ends, and whether the node may claim the
 * rollback capability (Capability.rollback) in its Hello.
 *
 * - esp-idf             ESP-IDF second-stage bootloader with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE:
 *                       two otadata sectors, NEW → PENDING_VERIFY → VALID / INVALID / ABORTED.
 * - esp-idf-norollback  the same bootloader without rollback: the app counts its own trial boots
 *                       and selects the previous slot itself, so it can revert, but nothing in the
 *                       bootloader helps if the app never runs: no rollback capability.
 * - mcuboot-swap        MCUboot swap using scratch: the secondary slot is swapped into the primary
 *                       sector by sector through a scratch area; a "test" swap is reverted at the
 *                       next reset unless the image marks itself OK (mcu-tools/mcuboot docs/design.md).
 * - mcuboot-overwrite   MCUboot overwrite-only: the secondary slot is copied over the primary and then
 *                       erased. There is no way back, so the node does not claim rollback.
 */
export const BOOT_PROFILES = ['esp-idf', 'esp-idf-norollback', 'mcuboot-swap', 'mcuboot-overwrite'] as const;
export type BootProfileName = (typeof BOOT_PROFILES)[number];

export interface BootProfile {
  name: BootProfileName;
  family: 'esp-idf' | 'mcuboot';
  /** The bootloader reverts an image that was not confirmed: the node claims Capability.rollback. */
  rollback: boolean;
  /** Some way back to the previous image exists (bootloader revert, or the app selecting the old slot). */
  canRevert: boolean;
  /** Trial boots of a new image before it counts as failed, unless configured. */
  defaultTrialBoots: number;
  /** Whether the number of trial boots can be configured (MCUboot's test swap is always one boot). */
  trialBootsConfigurable: boolean;
}

const PROFILES: Record<BootProfileName, BootProfile> = {
  'esp-idf': { name: 'esp-idf', family: 'esp-idf', rollback: true, canRevert: true, defaultTrialBoots: 1, trialBootsConfigurable: true },
  'esp-idf-norollback': { name: 'esp-idf-norollback', family: 'esp-idf', rollback: false, canRevert: true, defaultTrialBoots: 3, trialBootsConfigurable: true },
  'mcuboot-swap': { name: 'mcuboot-swap', family: 'mcuboot', rollback: true, canRevert: true, defaultTrialBoots: 1, trialBootsConfigurable: false },
  'mcuboot-overwrite': { name: 'mcuboot-overwrite', family: 'mcuboot', rollback: false, canRevert: false, defaultTrialBoots: 3, trialBootsConfigurable: true },
};

export const MAX_TRIAL_BOOTS = 15;

export function isBootProfileName(v: unknown): v is BootProfileName {
  return typeof v === 'string' && (BOOT_PROFILES as readonly string[]).includes(v);
}

export function bootProfile(name: BootProfileName): BootProfile {
  return PROFILES[name];
}

/**
 * The profile a node runs, from its options: `boot` names it; the older `rollback: false` means
 * esp-idf-norollback. Contradictory or unknown values are refused with the option named.
 */
export function resolveBootProfile(opts: { boot?: string; rollback?: boolean }): BootProfile {
  if (opts.boot !== undefined && !isBootProfileName(opts.boot)) {
    throw new RangeError(`boot profile "${opts.boot}" is not one of ${BOOT_PROFILES.join(', ')}`);
  }
  const name: BootProfileName = opts.boot ?? (opts.rollback === false ? 'esp-idf-norollback' : 'esp-idf');
  const p = PROFILES[name];
  if (opts.rollback !== undefined && opts.rollback !== p.rollback) {
    throw new RangeError(`rollback: ${opts.rollback} contradicts boot profile ${name} (which ${p.rollback ? 'has' : 'has no'} bootloader rollback)`);
  }
  return p;
}

/** Trial boots for a profile: the configured number (checked) or the profile's default. */
export function resolveTrialBoots(p: BootProfile, trialBoots: number | undefined): number {
  if (trialBoots === undefined) return p.defaultTrialBoots;
  if (!Number.isInteger(trialBoots) || trialBoots < 1 || trialBoots > MAX_TRIAL_BOOTS) {
    throw new RangeError(`trial boots ${trialBoots} must be an integer 1..${MAX_TRIAL_BOOTS}`);
  }
  if (!p.trialBootsConfigurable && trialBoots !== p.defaultTrialBoots) {
    throw new RangeError(`trial boots cannot be set for ${p.name}: MCUboot's test swap reverts after exactly one unconfirmed boot`);
  }
  return trialBoots;
}
