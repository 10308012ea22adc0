import { Reason } from '../shared/errors.js';
import { ImageState, Stage, type ImageStateCode, type LastOutcome, type StageCode } from '../shared/messages.js';
import { EspIdfPort } from './bootloader.js';
import { verifyImage, type BootEnv, type BootPort, type BootResult } from './boot-port.js';
import { startupCleanup } from './cleanup.js';
import { SecurityCounter } from './efuse.js';
import { describeImage, factoryImage, type SlotDescriptor } from './firmware.js';
import { SECTOR_SIZE, type Flash } from './flash.js';
import type { Layout, Partition } from './layout.js';
import { McubootPort } from './mcuboot.js';
import { Nvs, NvsKey } from './nvs.js';
import { readOtadata } from './otadata.js';
import { resolveBootProfile, resolveTrialBoots, type BootProfile, type BootProfileName } from './profiles.js';
import {
  decodeActivation, decodeFailedImage, decodeOutcome, decodeU32, encodeActivation, encodeFailedImage, encodeOutcome, encodeU32, type Activation,
} from './records.js';
import { checkSafeModeAfter, CrashCounter, DEFAULT_SAFE_MODE_AFTER, type RecoveryCause, type ResetReason } from './recovery.js';
import { DEFAULT_SAVE_EVERY, Download, type TransferMeta } from './transfer.js';

export type { ResetReason } from './recovery.js';

/**
 * The node's firmware minus the network: power-on (provisioning a blank flash with the factory image,
 * running the bootloader of the node's boot profile), the app's start-up reconciliation of an
 * activation in flight, start-up cleanup, the recovery-mode decision, self-test verdicts, downloads
 * into the inactive slot and activation. Every state change is a flash write, so a power cut anywhere
 * leaves something the next power-on can make sense of.
 *
 * Why the reset happened survives a reboot (like the ESP32's RTC reset-reason register) but not a
 * power cut; so does the crash count of device/recovery.ts.
 */
export interface SystemOptions {
  hw: string;
  /** Version of the factory image written to a blank flash. */
  version: string;
  initialImage?: Buffer;
  /** Security version of the factory image (the anti-rollback counter starts there). */
  securityVersion?: number;
  /** Boot profile (device/profiles.ts). Default esp-idf, or esp-idf-norollback when rollback is false. */
  profile?: BootProfileName;
  /** Older spelling of the profile choice: false = esp-idf-norollback. */
  rollback?: boolean;
  /** Trial boots of a new image before it counts as failed (default: the profile's). */
  trialBoots?: number;
  /** Failed starts in a row before recovery mode. Default 3. */
  safeModeAfter?: number;
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

export class DeviceSystem {
  readonly profile: BootProfile;
  readonly port: BootPort;
  readonly trialBoots: number;
  readonly safeModeAfter: number;
  nvs!: Nvs;
  counter: SecurityCounter;
  bootResult!: BootResult;
  bootCount = 0;
  lastOutcome: LastOutcome | undefined;
  activation: Activation | undefined;
  download: Download | undefined;
  /** True while the running image awaits its self-test verdict. */
  trial = false;
  /** Set when this boot runs the recovery (safe) mode app instead of the normal one. */
  recovery: RecoveryCause | undefined;
  /** What start-up cleanup removed at this boot (for logs). */
  cleaned: string[] = [];
  readonly pending: PendingReport[] = [];
  private readonly crashes = new CrashCounter();

  constructor(readonly flash: Flash, readonly layout: Layout, readonly opts: SystemOptions) {
    if (flash.size < layout.flashSize) throw new RangeError(`flash of ${flash.size} bytes is smaller than the layout (${layout.flashSize})`);
    this.profile = resolveBootProfile({ boot: opts.profile, rollback: opts.rollback });
    this.trialBoots = resolveTrialBoots(this.profile, opts.trialBoots);
    this.safeModeAfter = checkSafeModeAfter(opts.safeModeAfter ?? DEFAULT_SAFE_MODE_AFTER);
    this.port = this.profile.family === 'mcuboot' ? new McubootPort(this.profile, layout) : new EspIdfPort(this.profile, layout);
    this.counter = new SecurityCounter(flash, layout.efuse);
  }

  get env(): BootEnv {
    return { flash: this.flash, layout: this.layout, nvs: this.nvs, counter: this.counter };
  }

  get running(): SlotDescriptor {
    return this.bootResult.descriptor;
  }

  get slot(): number {
    return this.bootResult.slot;
  }

  /** The slot downloads go to (ESP-IDF: the other one; MCUboot: always the secondary). */
  get inactiveSlot(): number {
    return this.port.downloadSlot(this.bootResult);
  }

  /** Image state as the node reports it: the bootloader's, or `recovery` in recovery mode. */
  get imageState(): ImageStateCode {
    return this.recovery ? ImageState.recovery : this.bootResult.state;
  }

  /** Largest image the node can install. */
  get imageCapacity(): number {
    return this.port.imageCapacity;
  }

  imageArea(slot: number): Partition {
    return this.port.imageArea(slot);
  }

  /** Power-on or reset: everything in RAM is rebuilt from flash. Throws PowerCut / BootFailure / RebootRequest. */
  powerOn(reset: ResetReason): void {
    this.pending.length = 0;
    this.download = undefined;
    this.trial = false;
    this.recovery = undefined;
    this.cleaned = [];
    this.crashes.onReset(reset);
    this.nvs = new Nvs(this.flash, this.layout.nvs);
    if (this.isBlank()) this.provision();
    this.bootResult = this.port.boot(this.env, this.trialBoots);
    this.bootCount = decodeU32(this.nvs.get(NvsKey.bootCount)) + 1;
    this.nvs.put(NvsKey.bootCount, encodeU32(this.bootCount));
    this.lastOutcome = decodeOutcome(this.nvs.get(NvsKey.lastOutcome));
    this.activation = decodeActivation(this.nvs.get(NvsKey.activation));
    this.reconcile(reset);
    const failed = decodeFailedImage(this.nvs.get(NvsKey.failedImage));
    const runningFailed = failed !== undefined && failed.digest.equals(this.running.digest);
    // A record of a failed image that no longer runs is history: a newer image replaced it.
    if (failed && !runningFailed && !this.trial) this.nvs.delete(NvsKey.failedImage);
    // A confirmed image whose counter raise was cut short: finish it (the raise is idempotent). Never
    // for an image on trial or one that failed: the counter must not get ahead of an unproven image.
    if (!this.trial && !runningFailed && this.running.securityVersion > this.counter.value && this.bootResult.state !== ImageState.pendingVerify) {
      this.counter.raise(this.running.securityVersion);
    }
    if (!this.activation) {
      const slot = this.inactiveSlot;
      this.cleaned = startupCleanup({
        nvs: this.nvs,
        running: this.running,
        counter: this.counter.value,
        capacity: this.imageCapacity,
        verifyDownloadSlot: () => (this.port.readDescriptor(this.env, slot) ? verifyImage(this.env, this.port, slot).ok : undefined),
        dropDownloadSlotDescriptor: () => this.port.dropDescriptor(this.env, slot),
      });
      this.download = Download.load(this.flash, this.nvs, slot, this.imageArea(slot), this.opts.saveEvery ?? DEFAULT_SAVE_EVERY);
    }
    if (!this.trial) {
      if (runningFailed) this.recovery = 'imageFailed';
      else if (this.crashes.enterRecovery(this.safeModeAfter)) this.recovery = 'bootFailures';
    }
  }

  /** The application is up (and a trial image passed its self-test): no crash loop in progress. */
  markHealthy(): void {
    this.crashes.markHealthy();
  }

  /** Consecutive failed starts so far (RTC memory). */
  get crashStreak(): number {
    return this.crashes.crashes;
  }

  private isBlank(): boolean {
    const [a, b] = readOtadata(this.flash, this.layout);
    return !a && !b && !this.port.readDescriptor(this.env, 0) && !this.port.readDescriptor(this.env, 1);
  }

  /** Factory programming: the initial image in slot 0, its descriptor, the security counter. No boot records. */
  private provision(): void {
    const image = this.opts.initialImage ?? factoryImage(this.opts.hw, this.opts.version);
    const part = this.imageArea(0);
    if (image.length > part.size) throw new RangeError(`initial image of ${image.length} bytes does not fit a ${part.size}-byte image area`);
    this.flash.erase(part.offset, Math.ceil(image.length / SECTOR_SIZE) * SECTOR_SIZE);
    this.flash.write(part.offset, image);
    const sv = this.opts.securityVersion ?? 0;
    this.port.writeDescriptor(this.env, 0, describeImage(image, this.opts.version, sv));
    if (sv > 0) this.counter.raise(sv);
  }

  /** Start-up: what became of the activation the node rebooted into (if any). */
  private reconcile(reset: ResetReason): void {
    const act = this.activation;
    if (!act) return;
    const runningNew = act.digest ? this.running.digest.equals(act.digest) : this.slot === act.slot && this.running.version === act.version;
    const out = this.lastOutcome;
    const noted = out && out.version === act.version && (out.stage === Stage.rolledBack || out.stage === Stage.failed) ? out : undefined;
    if (runningNew) {
      if (noted?.stage === Stage.failed) {
        this.failInPlace(act, noted.reason);
        return;
      }
      if (this.profile.rollback) {
        if (this.bootResult.state === ImageState.pendingVerify) this.trial = true;
        else this.finishConfirmed(act); // cut after the confirm write, before the rest
        return;
      }
      // No bootloader help: the app counts its own trial boots.
      if (act.tries >= this.trialBoots) {
        const reason = reset === 'watchdog' ? Reason.watchdog : Reason.bootFailed;
        if (this.profile.canRevert) {
          this.saveOutcome(act.version, Stage.rolledBack, reason);
          this.port.revert(this.env, this.bootResult);
          throw new RebootRequest('software');
        }
        this.failInPlace(act, reason);
        return;
      }
      this.activation = { ...act, tries: act.tries + 1 };
      this.nvs.put(NvsKey.activation, encodeActivation(this.activation));
      this.trial = true;
      return;
    }
    const refused = this.bootResult.refused.find((r) => r.slot === act.slot && r.reason !== Reason.bootFailed);
    if (!refused && !this.port.selectionExists(this.env, act)) {
      const left = Download.load(this.flash, this.nvs, act.slot, this.imageArea(act.slot));
      if (left?.complete) {
        // Cut before the selection was complete: the activation never took effect. Keep the
        // download; the agent sees it in Hello and asks to activate again.
        this.nvs.delete(NvsKey.activation);
        this.activation = undefined;
        return;
      }
    }
    // Running another image than the activated one: rolled back. Say why as precisely as we know.
    let reason: number = Reason.bootFailed;
    if (noted) reason = noted.reason;
    else if (refused) reason = Reason.invalidImage;
    else if (reset === 'watchdog') reason = Reason.watchdog;
    this.saveOutcome(act.version, Stage.rolledBack, reason);
    this.endActivation();
    this.pending.push({ session: act.session, stage: Stage.rolledBack, reason, version: act.version });
  }

  /** The new image failed and nothing older is left to boot: keep running it, in recovery mode. */
  private failInPlace(act: Activation, reason: number): void {
    this.saveOutcome(act.version, Stage.failed, reason);
    this.nvs.put(NvsKey.failedImage, encodeFailedImage({ digest: this.running.digest, reason }));
    this.endActivation();
    this.pending.push({ session: act.session, stage: Stage.failed, reason, version: act.version });
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

  /**
   * An update was refused (seed 001: error persistence): keep it as the last outcome so every
   * Hello reports it, across reboots. Not while an activation is being settled (its outcome wins),
   * and not again when it is already the last outcome (a flood of bad offers must not wear NVS).
   */
  recordRejection(version: string, reason: number): void {
    if (this.activation || this.trial) return;
    const o = this.lastOutcome;
    if (o && o.version === version && o.stage === Stage.rejected && o.reason === reason) return;
    this.saveOutcome(version, Stage.rejected, reason);
  }

  /** Self-test passed: mark the image valid, then raise the anti-rollback counter (in that order). */
  selfTestPassed(): PendingReport | undefined {
    const act = this.activation;
    if (!this.trial || !act) return undefined;
    this.bootResult = this.port.confirm(this.env, this.bootResult);
    this.finishConfirmed(act);
    this.markHealthy();
    return this.pending.pop();
  }

  /**
   * Self-test failed: remember why, then make the previous image the boot choice (the profile's
   * way back). With no way back the outcome is `failed`, settled at the next boot. The caller reboots.
   */
  selfTestFailed(reason: number): void {
    const act = this.activation;
    if (!this.trial || !act) return;
    if (!this.profile.canRevert) {
      this.saveOutcome(act.version, Stage.failed, reason);
      return;
    }
    this.saveOutcome(act.version, Stage.rolledBack, reason);
    this.port.revert(this.env, this.bootResult);
  }

  /** Starts a fresh download into the inactive slot; the slot's old descriptor goes first. */
  beginDownload(meta: TransferMeta): Download {
    const slot = this.inactiveSlot;
    this.port.dropDescriptor(this.env, slot);
    this.download = Download.begin(this.flash, this.nvs, slot, this.imageArea(slot), meta, this.opts.saveEvery ?? DEFAULT_SAVE_EVERY);
    return this.download;
  }

  discardDownload(): void {
    Download.discard(this.nvs);
    this.download = undefined;
  }

  /** The downloaded image verified: record what the slot now holds, so secure boot can check it. */
  installDescriptor(d: SlotDescriptor): void {
    this.port.writeDescriptor(this.env, this.inactiveSlot, d);
  }

  /**
   * Activation: note the activation, select the new image for the next boot (on trial with a
   * bootloader that can revert), then forget the finished download.
   */
  activate(session: number, version: string): void {
    const slot = this.inactiveSlot;
    const digest = this.port.readDescriptor(this.env, slot)?.digest;
    this.port.activate(this.env, slot, this.trialBoots, (seq) => {
      this.activation = { session, seq, slot, tries: 0, version, digest };
      this.nvs.put(NvsKey.activation, encodeActivation(this.activation));
    });
    this.discardDownload();
  }
}

/** Start-up code decided the device must reset (app-level revert). */
export class RebootRequest extends Error {
  constructor(readonly reset: ResetReason) {
    super(`reboot requested (${reset})`);
  }
}
