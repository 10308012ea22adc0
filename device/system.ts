import { Reason } from '../shared/errors.js';
import { ImageState, Stage, type ImageStateCode, type LastOutcome, type StageCode } from '../shared/messages.js';
import { boot, readSlotDescriptor, slotDescriptorKey, type BootResult } from './bootloader.js';
import { SecurityCounter } from './efuse.js';
import { describeImage, encodeDescriptor, factoryImage, type SlotDescriptor } from './firmware.js';
import { SECTOR_SIZE, type Flash } from './flash.js';
import type { Layout } from './layout.js';
import { Nvs, NvsKey } from './nvs.js';
import { readOtadata, selectSlot, setEntryState, type OtaEntry } from './otadata.js';
import { decodeActivation, decodeOutcome, decodeU32, encodeActivation, encodeOutcome, encodeU32, type Activation } from './records.js';
import { DEFAULT_SAVE_EVERY, Download, type TransferMeta } from './transfer.js';

/**
 * The node's firmware minus the network: power-on (provisioning a blank flash with the factory image,
 * running the bootloader), the app's start-up reconciliation of an activation in flight, the
 * self-test verdict, downloads into the inactive slot and activation. Every state change is a flash
 * write, so a power cut anywhere leaves something the next power-on can make sense of.
 *
 * Why the reset happened survives a reboot (like the ESP32's RTC reset-reason register) but not a
 * power cut.
 */
export type ResetReason = 'powerOn' | 'software' | 'watchdog';

export interface SystemOptions {
  hw: string;
  /** Version of the factory image written to a blank flash. */
  version: string;
  initialImage?: Buffer;
  /** Security version of the factory image (the anti-rollback counter starts there). */
  securityVersion?: number;
  rollback: boolean;
  /** Save the received bitmap to NVS after this many new chunks. */
  saveEvery?: number;
}

/** A report the app owes the agent from start-up (outcome of the activation it rebooted into). */
export interface PendingReport {
  session: number;
  stage: StageCode;
  reason: number;
  version: string;
}

/** How many boots of a new image without a self-test verdict a no-rollback node tolerates before reverting. */
export const MAX_TRIAL_BOOTS = 3;

export class DeviceSystem {
  nvs!: Nvs;
  counter: SecurityCounter;
  bootResult!: BootResult;
  bootCount = 0;
  lastOutcome: LastOutcome | undefined;
  activation: Activation | undefined;
  download: Download | undefined;
  /** True while the running image awaits its self-test verdict. */
  trial = false;
  readonly pending: PendingReport[] = [];

  constructor(readonly flash: Flash, readonly layout: Layout, readonly opts: SystemOptions) {
    if (flash.size < layout.flashSize) throw new RangeError(`flash of ${flash.size} bytes is smaller than the layout (${layout.flashSize})`);
    this.counter = new SecurityCounter(flash, layout.efuse);
  }

  get running(): SlotDescriptor {
    return this.bootResult.descriptor;
  }

  get slot(): number {
    return this.bootResult.slot;
  }

  get inactiveSlot(): number {
    return 1 - this.bootResult.slot;
  }

  get imageState(): ImageStateCode {
    return this.bootResult.state;
  }

  /** Power-on or reset: everything in RAM is rebuilt from flash. Throws PowerCut / BootFailure. */
  powerOn(reset: ResetReason): void {
    this.pending.length = 0;
    this.download = undefined;
    this.trial = false;
    this.nvs = new Nvs(this.flash, this.layout.nvs);
    if (this.isBlank()) this.provision();
    this.bootResult = boot(this.flash, this.layout, this.nvs, this.counter, { rollback: this.opts.rollback });
    this.bootCount = decodeU32(this.nvs.get(NvsKey.bootCount)) + 1;
    this.nvs.put(NvsKey.bootCount, encodeU32(this.bootCount));
    this.lastOutcome = decodeOutcome(this.nvs.get(NvsKey.lastOutcome));
    this.activation = decodeActivation(this.nvs.get(NvsKey.activation));
    this.reconcile(reset);
    // A confirmed image whose counter raise was cut short: finish it (the raise is idempotent).
    if (!this.trial && this.running.securityVersion > this.counter.value && this.imageState !== ImageState.pendingVerify) {
      this.counter.raise(this.running.securityVersion);
    }
    if (!this.activation) {
      this.download = Download.load(this.flash, this.nvs, this.inactiveSlot, this.layout.slots[this.inactiveSlot], this.opts.saveEvery ?? DEFAULT_SAVE_EVERY);
    }
  }

  private isBlank(): boolean {
    const [a, b] = readOtadata(this.flash, this.layout);
    return !a && !b && !readSlotDescriptor(this.nvs, 0) && !readSlotDescriptor(this.nvs, 1);
  }

  /** Factory programming: the initial image in ota_0, its descriptor, the security counter. No otadata. */
  private provision(): void {
    const image = this.opts.initialImage ?? factoryImage(this.opts.hw, this.opts.version);
    const part = this.layout.slots[0];
    if (image.length > part.size) throw new RangeError(`initial image of ${image.length} bytes does not fit a ${part.size}-byte slot`);
    this.flash.erase(part.offset, Math.ceil(image.length / SECTOR_SIZE) * SECTOR_SIZE);
    this.flash.write(part.offset, image);
    const sv = this.opts.securityVersion ?? 0;
    this.nvs.put(NvsKey.slot0, encodeDescriptor(describeImage(image, this.opts.version, sv)));
    if (sv > 0) this.counter.raise(sv);
  }

  /** Start-up: what became of the activation the node rebooted into (if any). */
  private reconcile(reset: ResetReason): void {
    const act = this.activation;
    if (!act) return;
    const entries = readOtadata(this.flash, this.layout);
    const entry = entries.find((e): e is OtaEntry => !!e && e.seq === act.seq && e.slot === act.slot);
    if (this.slot === act.slot && entry) {
      if (this.opts.rollback) {
        if (this.imageState === ImageState.pendingVerify) this.trial = true;
        else this.finishConfirmed(act);
        return;
      }
      // No bootloader help: the app counts its own trial boots and reverts after too many.
      if (act.tries >= MAX_TRIAL_BOOTS) {
        this.saveOutcome(act.version, Stage.rolledBack, Reason.watchdog);
        selectSlot(this.flash, this.layout, this.inactiveSlot, ImageState.undefined, false);
        throw new RebootRequest('software');
      }
      this.activation = { ...act, tries: act.tries + 1 };
      this.nvs.put(NvsKey.activation, encodeActivation(this.activation));
      this.trial = true;
      return;
    }
    if (!entry && this.slot !== act.slot) {
      const left = Download.load(this.flash, this.nvs, act.slot, this.layout.slots[act.slot]);
      if (left?.complete) {
        // Cut before the otadata record was complete: the activation never took effect. Keep the
        // download; the agent sees it in Hello and asks to activate again.
        this.nvs.delete(NvsKey.activation);
        this.activation = undefined;
        return;
      }
    }
    // Running another slot than the activated one: rolled back. Say why as precisely as we know.
    const noted = this.lastOutcome && this.lastOutcome.version === act.version && this.lastOutcome.stage === Stage.rolledBack ? this.lastOutcome.reason : undefined;
    const refused = this.bootResult.refused.find((r) => r.slot === act.slot);
    let reason: number = Reason.bootFailed;
    if (noted !== undefined) reason = noted;
    else if (entry?.state === ImageState.invalid) reason = Reason.selfTestFailed;
    else if (refused && refused.reason !== Reason.bootFailed) reason = Reason.invalidImage;
    else if (reset === 'watchdog') reason = Reason.watchdog;
    this.saveOutcome(act.version, Stage.rolledBack, reason);
    this.endActivation();
    this.pending.push({ session: act.session, stage: Stage.rolledBack, reason, version: act.version });
  }

  /** The activation is settled: forget it and any download record the activation left behind. */
  private endActivation(): void {
    Download.discard(this.nvs);
    this.nvs.delete(NvsKey.activation);
    this.activation = undefined;
  }

  private finishConfirmed(act: Activation): void {
    if (this.running.securityVersion > this.counter.value) this.counter.raise(this.running.securityVersion);
    this.saveOutcome(act.version, Stage.confirmed, Reason.none);
    this.endActivation();
    this.trial = false;
    this.pending.push({ session: act.session, stage: Stage.confirmed, reason: Reason.none, version: act.version });
  }

  private saveOutcome(version: string, stage: StageCode, reason: number): void {
    this.lastOutcome = { version, stage, reason };
    this.nvs.put(NvsKey.lastOutcome, encodeOutcome(this.lastOutcome));
  }

  /** Self-test passed: mark the image valid, then raise the anti-rollback counter (in that order). */
  selfTestPassed(): PendingReport | undefined {
    const act = this.activation;
    if (!this.trial || !act) return undefined;
    if (this.opts.rollback && this.bootResult.entry) {
      this.bootResult = { ...this.bootResult, entry: setEntryState(this.flash, this.layout, this.bootResult.entry, ImageState.valid), state: ImageState.valid };
    }
    this.finishConfirmed(act);
    return this.pending.pop();
  }

  /**
   * Self-test failed: remember why, then make the previous image the boot choice (mark this one
   * invalid, or on a no-rollback bootloader select the other slot ourselves). The caller reboots.
   */
  selfTestFailed(reason: number): void {
    const act = this.activation;
    if (!this.trial || !act) return;
    this.saveOutcome(act.version, Stage.rolledBack, reason);
    if (this.opts.rollback && this.bootResult.entry) setEntryState(this.flash, this.layout, this.bootResult.entry, ImageState.invalid);
    else selectSlot(this.flash, this.layout, this.inactiveSlot, ImageState.undefined, false);
  }

  /** Starts a fresh download into the inactive slot; the slot's old descriptor goes first. */
  beginDownload(meta: TransferMeta): Download {
    this.nvs.delete(slotDescriptorKey(this.inactiveSlot));
    this.download = Download.begin(this.flash, this.nvs, this.inactiveSlot, this.layout.slots[this.inactiveSlot], meta, this.opts.saveEvery ?? DEFAULT_SAVE_EVERY);
    return this.download;
  }

  discardDownload(): void {
    Download.discard(this.nvs);
    this.download = undefined;
  }

  /** The downloaded image verified: record what the slot now holds, so secure boot can check it. */
  installDescriptor(d: SlotDescriptor): void {
    this.nvs.put(slotDescriptorKey(this.inactiveSlot), encodeDescriptor(d));
  }

  /**
   * Activation: note the activation, select the new slot for the next boot (NEW: a trial boot with
   * rollback; otherwise it just becomes the boot slot), then forget the finished download.
   */
  activate(session: number, version: string): void {
    const slot = this.inactiveSlot;
    const entries = readOtadata(this.flash, this.layout);
    const seq = Math.max(0, ...entries.map((e) => e?.seq ?? 0)) + 1;
    this.activation = { session, seq, slot, tries: 0, version };
    this.nvs.put(NvsKey.activation, encodeActivation(this.activation));
    selectSlot(this.flash, this.layout, slot, this.opts.rollback ? ImageState.new : ImageState.undefined, this.opts.rollback);
    this.discardDownload();
  }
}

/** Start-up code decided the device must reset (app-level revert). */
export class RebootRequest extends Error {
  constructor(readonly reset: ResetReason) {
    super(`reboot requested (${reset})`);
  }
}
