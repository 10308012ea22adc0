import { SECTOR_SIZE } from './flash.js';

/**
 * Partition table of the simulated node, modelled on an ESP-IDF two-OTA-slot table:
 *
 *   0x00000  otadata   2 sectors   boot selection records (device/otadata.ts)
 *   0x02000  nvs       N sectors   key/value log: transfer state, slot descriptors, outcomes (device/nvs.ts)
 *   ...      efuse     1 sector    stands in for eFuse: the anti-rollback counter, never erased
 *   ...      scratch   2 sectors   MCUboot swap-using-scratch: one sector of data in transit, one for
 *                                  the swap intent while the primary trailer is rewritten (device/mcuboot.ts)
 *   0x10000  ota_0     slotSize    application slot 0 (the factory image goes here; MCUboot: primary)
 *   ...      ota_1     slotSize    application slot 1 (MCUboot: secondary)
 *
 * Slots start on a 64 KiB boundary like ESP-IDF app partitions (the MMU maps flash in 64 KiB pages).
 * The scratch area exists in every layout (unused by the ESP-IDF profiles) so a flash file keeps
 * the same layout whichever profile reads it.
 */
export interface Partition {
  offset: number;
  size: number;
}

export interface Layout {
  otadata: Partition;
  nvs: Partition;
  efuse: Partition;
  scratch: Partition;
  slots: [Partition, Partition];
  flashSize: number;
}

export const DEFAULT_SLOT_SIZE = 2 * 1024 * 1024;
export const DEFAULT_NVS_SECTORS = 8;
const APP_ALIGN = 64 * 1024;

export function makeLayout(slotSize = DEFAULT_SLOT_SIZE, nvsSectors = DEFAULT_NVS_SECTORS): Layout {
  if (!Number.isInteger(slotSize) || slotSize <= 0 || slotSize % APP_ALIGN !== 0) throw new RangeError(`slot size ${slotSize} must be a positive multiple of 64 KiB`);
  if (!Number.isInteger(nvsSectors) || nvsSectors < 2 || nvsSectors % 2 !== 0) throw new RangeError(`nvs sectors ${nvsSectors} must be an even number >= 2`);
  const otadata = { offset: 0, size: 2 * SECTOR_SIZE };
  const nvs = { offset: otadata.offset + otadata.size, size: nvsSectors * SECTOR_SIZE };
  const efuse = { offset: nvs.offset + nvs.size, size: SECTOR_SIZE };
  const scratch = { offset: efuse.offset + efuse.size, size: 2 * SECTOR_SIZE };
  const firstApp = Math.ceil((scratch.offset + scratch.size) / APP_ALIGN) * APP_ALIGN;
  const slots: [Partition, Partition] = [
    { offset: firstApp, size: slotSize },
    { offset: firstApp + slotSize, size: slotSize },
  ];
  return { otadata, nvs, efuse, scratch, slots, flashSize: firstApp + 2 * slotSize };
}
