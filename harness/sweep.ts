import { Reason } from '../shared/errors.js';
import { generateOperatorKey, sha256, signManifest } from '../shared/manifest.js';
import { ImageState, Stage } from '../shared/messages.js';
import { BootFailure } from '../device/boot-port.js';
import { describeImage, factoryImage } from '../device/firmware.js';
import { Flash, PowerCut, type CutMode } from '../device/flash.js';
import { makeLayout } from '../device/layout.js';
import { McubootPort } from '../device/mcuboot.js';
import { bootProfile, resolveBootProfile, type BootProfileName } from '../device/profiles.js';
import { DeviceSystem, RebootRequest } from '../device/system.js';

/**
 * Power-cut sweep over the firmware layer (no network): runs one complete update — download,
 * verify, activate, reboot (and, for MCUboot, the swap or copy), trial boot, self-test verdict,
 * confirm or roll back — and cuts power at every flash operation in turn, in each mode. After each
 * cut the node powers on again (as often as it takes, finishing any trial boot with the same
 * verdict), the update is carried on the way the agent would carry it on (re-offer, re-activate),
 * and the sweep checks the invariants of issue 4:
 *   - the node boots an image whose bytes match a signed digest (never bricked);
 *   - the anti-rollback counter never went down, and never got ahead of an image that then rolled back;
 *   - what the node would report (running version, last outcome) is the truth;
 *   - the end state is one the profile allows: confirmed, or rolled back (a cut during a trial boot
 *     is a failed boot, so a bootloader with rollback rightly reverts), or — with no way back
 *     (MCUboot overwrite-only) and a failing self-test — failed, in recovery mode.
 * `ferry sim sweep` (cli/sim-sweep.ts) runs this and adds the agent in the loop (harness/sweep-loop.ts).
 */
export interface SweepOptions {
  /** Boot profile; default esp-idf (esp-idf-norollback when rollback is false). */
  profile?: BootProfileName;
  rollback?: boolean;
  imageSize?: number;
  chunkSize?: number;
  /** The new image fails its self-test (the revert case). */
  failSelfTest?: boolean;
  modes?: CutMode[];
  /** Cut only these operation numbers (seeded random subsets for big images); default all. */
  points?: number[];
  /** Slot size (multiple of 64 KiB). Default: the smallest that holds the image (at least 128 KiB). */
  slotSize?: number;
  /** Size of the factory image the update starts from. Default: imageSize. */
  oldImageSize?: number;
}

/** The smallest slot (a multiple of 64 KiB, at least 128 KiB) whose image area holds `imageSize` bytes under any profile. */
export function slotSizeFor(imageSize: number): number {
  return Math.max(128 * 1024, Math.ceil((imageSize + 2 * 4096) / 65536) * 65536);
}

/** Largest image the sweeps take: an MCUboot trailer sector holds the swap status of at most ~5 MiB of slot. */
export const MAX_SWEEP_IMAGE = 4 * 1024 * 1024;

export interface SweepResult {
  profile: BootProfileName;
  /** Flash operations of an uncut update: the cut points per mode. */
  operations: number;
  cutPoints: number;
  bootable: number;
  bricked: number;
  /** Cuts after which the node's report (running version, outcome) told the truth. */
  truthful: number;
  /** Cuts during a passing trial boot, which the bootloader rightly treats as a failed boot. */
  rolledBackByCut: number;
  /** End states after the cuts: confirmed, rolledBack, failed. */
  outcomes: Record<string, number>;
  failures: string[];
}

const HW = 'sweep-hw';
const KEY = generateOperatorKey();

/** The operations of an uncut update for these options (the number of cut points per mode). */
export function countOperations(opts: SweepOptions = {}): number {
  return sweepUpdate({ ...opts, points: [] }).operations;
}

export function sweepUpdate(opts: SweepOptions = {}): SweepResult {
  const profile = resolveBootProfile({ boot: opts.profile, rollback: opts.rollback });
  const result: SweepResult = { profile: profile.name, operations: 0, cutPoints: 0, bootable: 0, bricked: 0, truthful: 0, rolledBackByCut: 0, outcomes: {}, failures: [] };
  const size = opts.imageSize ?? 12_000;
  if (!Number.isInteger(size) || size < 1 || size > MAX_SWEEP_IMAGE) throw new RangeError(`image size ${size} must be 1..${MAX_SWEEP_IMAGE} bytes`);
  const chunkSize = opts.chunkSize ?? 1024;
  const oldImage = factoryImage(HW, '1.0.0', opts.oldImageSize ?? size);
  const newImage = factoryImage(HW, '1.1.0', size);
  const manifest = signManifest({ hw: HW, version: '1.1.0', securityVersion: 1, size, digest: sha256(newImage), created: 1_700_000_000, flags: 1 }, KEY.privateKey);
  const images = new Map([[sha256(oldImage).toString('hex'), '1.0.0'], [sha256(newImage).toString('hex'), '1.1.0']]);
  const layout = makeLayout(opts.slotSize ?? slotSizeFor(Math.max(size, opts.oldImageSize ?? size)));

  const fresh = () => {
    const flash = new Flash(layout.flashSize);
    const sys = new DeviceSystem(flash, layout, { hw: HW, version: '1.0.0', initialImage: oldImage, profile: profile.name, saveEvery: 4 });
    sys.powerOn('powerOn');
    return { flash, sys };
  };
  /** Powers on until the node is up, finishing a trial boot with the scenario's verdict. */
  const settle = (sys: DeviceSystem, counters: number[]) => {
    for (let i = 0; i < 20; i++) {
      try {
        sys.powerOn(i === 0 ? 'powerOn' : 'software');
        counters.push(sys.counter.value);
        if (!sys.trial) return;
        if (opts.failSelfTest) sys.selfTestFailed(Reason.selfTestFailed);
        else {
          sys.selfTestPassed();
          counters.push(sys.counter.value);
          return;
        }
      } catch (err) {
        if (!(err instanceof RebootRequest)) throw err;
      }
    }
    throw new Error('did not settle in 20 boots');
  };
  const update = (sys: DeviceSystem, counters: number[]) => {
    const meta = { session: 1, encoding: 0, payloadSize: size, chunkSize, payloadDigest: sha256(newImage), manifest };
    const saved = sys.download;
    const d = saved && saved.meta.payloadDigest.equals(meta.payloadDigest) ? saved : sys.beginDownload(meta);
    for (let i = 0; i < d.total; i++) if (!d.bitmap.has(i)) d.store(i, newImage.subarray(i * chunkSize, (i + 1) * chunkSize));
    if (!d.digestOfStored().equals(meta.payloadDigest)) {
      sys.discardDownload();
      return false;
    }
    sys.installDescriptor(describeImage(newImage, '1.1.0', 1, manifest));
    sys.activate(1, '1.1.0');
    settle(sys, counters);
    return true;
  };

  // Count the operations of an uncut run to know the cut points.
  const probe = fresh();
  const start = probe.flash.operations;
  update(probe.sys, []);
  result.operations = probe.flash.operations - start;
  const points = opts.points ?? Array.from({ length: result.operations }, (_, i) => i + 1);

  for (const mode of opts.modes ?? (['before', 'torn', 'after'] as CutMode[])) {
    for (const at of points) {
      const { flash, sys } = fresh();
      const counters = [sys.counter.value];
      flash.armPowerCut({ at, mode, fraction: 0.5 });
      try {
        update(sys, counters);
        flash.disarm();
        continue; // the cut point was past the end of this run
      } catch (err) {
        if (!(err instanceof PowerCut)) throw err;
      }
      result.cutPoints++;
      const where = `${mode}@${at}`;
      try {
        settle(sys, counters);
        // The agent would now carry the update on (re-offer / activate): finish it, then check the end state.
        const settled = sys.lastOutcome?.version === '1.1.0' && sys.lastOutcome.stage !== Stage.rejected;
        if (!settled && sys.running.version === '1.0.0') update(sys, counters);
      } catch (err) {
        if (err instanceof BootFailure) {
          result.bricked++;
          result.failures.push(`${where}: bricked: ${err.message}`);
          continue;
        }
        throw err;
      }
      result.bootable++;
      const problems = checkEndState(sys, images, counters, opts.failSelfTest === true);
      const end = sys.lastOutcome?.stage === Stage.confirmed ? 'confirmed' : sys.lastOutcome?.stage === Stage.failed ? 'failed' : 'rolledBack';
      result.outcomes[end] = (result.outcomes[end] ?? 0) + 1;
      if (end === 'rolledBack' && !opts.failSelfTest) result.rolledBackByCut++;
      if (!problems.some((p) => p.startsWith('untruthful'))) result.truthful++;
      if (problems.length) result.failures.push(`${where}: ${problems.join('; ')}`);
    }
  }
  return result;
}

/** The invariants after a cut and the recovery from it. Problems about reporting start with "untruthful". */
function checkEndState(sys: DeviceSystem, images: Map<string, string>, counters: number[], failSelfTest: boolean): string[] {
  const profile = bootProfile(sys.profile.name);
  const problems: string[] = [];
  const running = images.get(sys.running.digest.toString('hex'));
  if (!running) problems.push('runs an image matching no signed digest');
  else if (running !== sys.running.version) problems.push(`descriptor says ${sys.running.version}, bytes are ${running}`);
  for (let i = 1; i < counters.length; i++) if (counters[i] < counters[i - 1]) problems.push(`anti-rollback counter went down (${counters[i - 1]} → ${counters[i]})`);
  const out = sys.lastOutcome;
  const onNew = sys.running.version === '1.1.0';
  if (!onNew) {
    if (sys.counter.value > 0) problems.push('counter raised for an image that rolled back');
    if (!(out?.version === '1.1.0' && out.stage === Stage.rolledBack)) problems.push(`untruthful: runs 1.0.0 but last outcome says ${JSON.stringify(out)}`);
    if (!profile.rollback && !failSelfTest) problems.push('a passing image was given up on a profile whose trial does not end at a power cut');
  } else if (out?.stage === Stage.failed) {
    if (profile.canRevert) problems.push('failed in place although the profile has a way back');
    if (sys.counter.value > 0) problems.push('counter raised for an image that failed');
    if (sys.recovery !== 'imageFailed') problems.push(`failed image runs outside recovery mode (${sys.recovery})`);
    if (out.version !== '1.1.0') problems.push(`untruthful: last outcome names ${out.version}`);
  } else {
    if (failSelfTest) problems.push('a failing image stayed installed as confirmed');
    if (sys.counter.value !== 1) problems.push(`counter ${sys.counter.value} after confirming security version 1`);
    if (profile.rollback && sys.imageState !== ImageState.valid) problems.push(`image state ${sys.imageState}, expected valid`);
    if (!(out?.version === '1.1.0' && out.stage === Stage.confirmed)) problems.push(`untruthful: runs 1.1.0 but last outcome says ${JSON.stringify(out)}`);
  }
  if (sys.port instanceof McubootPort && sys.port.mode === 'swap') {
    const t = sys.port.trailers(sys.flash);
    if (t.primary.magic === 'good' && t.primary.copyDone !== 'set') problems.push('a swap was left unfinished');
    if (t.secondary.magic === 'good') problems.push('an upgrade request is still pending');
  }
  return problems;
}
