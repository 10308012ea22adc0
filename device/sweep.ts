import { Reason } from '../shared/errors.js';
import { sha256 } from '../shared/manifest.js';
import { ImageState, Stage } from '../shared/messages.js';
import { BootFailure } from './bootloader.js';
import { describeImage, factoryImage } from './firmware.js';
import { Flash, PowerCut, type CutMode } from './flash.js';
import { makeLayout } from './layout.js';
import { DeviceSystem, RebootRequest } from './system.js';

/**
 * Power-cut sweep over the firmware layer (no network): runs one complete update — download,
 * verify, activate, trial boot, self-test verdict, confirm or roll back — and cuts power at every
 * flash operation in turn, in each mode. After each cut the node powers on again (as often as it
 * takes, finishing any trial boot with the same verdict) and the sweep checks the invariants of
 * issue 4: it boots an image whose bytes match its signed digest; the anti-rollback counter never
 * went down and never got ahead of an image that then rolled back; and what it would report (running
 * version, last outcome) is the truth. This is the groundwork for `ferry sim sweep`, which adds the
 * agent and checks that its record converges too.
 */
export interface SweepOptions {
  imageSize?: number;
  chunkSize?: number;
  /** The new image fails its self-test (the revert case). */
  failSelfTest?: boolean;
  rollback?: boolean;
  modes?: CutMode[];
  /** Cut only these operation numbers (seeded random subsets for big images); default all. */
  points?: number[];
}

export interface SweepResult {
  cutPoints: number;
  bootable: number;
  bricked: number;
  /** Cuts after which the node's report (running version, outcome) told the truth. */
  truthful: number;
  /** Cuts during a passing trial boot, which the bootloader rightly treats as a failed boot. */
  rolledBackByCut: number;
  failures: string[];
}

const HW = 'sweep-hw';

export function sweepUpdate(opts: SweepOptions = {}): SweepResult {
  const result: SweepResult = { cutPoints: 0, bootable: 0, bricked: 0, truthful: 0, rolledBackByCut: 0, failures: [] };
  const size = opts.imageSize ?? 12_000;
  const chunkSize = opts.chunkSize ?? 1024;
  const oldImage = factoryImage(HW, '1.0.0');
  const newImage = factoryImage(HW, '1.1.0', size);
  const images = new Map([[sha256(oldImage).toString('hex'), '1.0.0'], [sha256(newImage).toString('hex'), '1.1.0']]);
  const layout = makeLayout(128 * 1024);
  const rollback = opts.rollback ?? true;

  const fresh = () => {
    const flash = new Flash(layout.flashSize);
    const sys = new DeviceSystem(flash, layout, { hw: HW, version: '1.0.0', rollback, saveEvery: 4 });
    sys.powerOn('powerOn');
    return { flash, sys };
  };
  /** Powers on until the node is up, finishing a trial boot with the scenario's verdict. */
  const settle = (sys: DeviceSystem) => {
    for (let i = 0; i < 20; i++) {
      try {
        sys.powerOn(i === 0 ? 'powerOn' : 'software');
        if (!sys.trial) return;
        if (opts.failSelfTest) sys.selfTestFailed(Reason.selfTestFailed);
        else {
          sys.selfTestPassed();
          return;
        }
      } catch (err) {
        if (!(err instanceof RebootRequest)) throw err;
      }
    }
    throw new Error('did not settle in 20 boots');
  };
  const update = (sys: DeviceSystem) => {
    const meta = { session: 1, encoding: 0, payloadSize: size, chunkSize, payloadDigest: sha256(newImage), manifest: Buffer.from('manifest') };
    const saved = sys.download;
    const d = saved && saved.meta.payloadDigest.equals(meta.payloadDigest) ? saved : sys.beginDownload(meta);
    for (let i = 0; i < d.total; i++) if (!d.bitmap.has(i)) d.store(i, newImage.subarray(i * chunkSize, (i + 1) * chunkSize));
    if (!d.digestOfStored().equals(meta.payloadDigest)) {
      sys.discardDownload();
      return false;
    }
    sys.installDescriptor(describeImage(newImage, '1.1.0', 1, meta.manifest));
    sys.activate(1, '1.1.0');
    settle(sys);
    return true;
  };

  // Count the operations of an uncut run to know the cut points.
  const probe = fresh();
  const start = probe.flash.operations;
  update(probe.sys);
  const total = probe.flash.operations - start;
  const points = opts.points ?? Array.from({ length: total }, (_, i) => i + 1);

  for (const mode of opts.modes ?? (['before', 'torn', 'after'] as CutMode[])) {
    for (const at of points) {
      const { flash, sys } = fresh();
      flash.armPowerCut({ at, mode, fraction: 0.5 });
      try {
        update(sys);
        flash.disarm();
        continue; // the cut point was past the end of this run
      } catch (err) {
        if (!(err instanceof PowerCut)) throw err;
      }
      result.cutPoints++;
      const where = `${mode}@${at}`;
      try {
        settle(sys);
        // The agent would now resume the update (re-offer / activate): finish it and check the end state.
        const hadActivation = sys.lastOutcome?.version === '1.1.0';
        if (!hadActivation && sys.running.version === '1.0.0') update(sys);
      } catch (err) {
        if (err instanceof BootFailure) {
          result.bricked++;
          result.failures.push(`${where}: bricked: ${err.message}`);
          continue;
        }
        throw err;
      }
      result.bootable++;
      const running = images.get(sys.running.digest.toString('hex'));
      const problems: string[] = [];
      if (!running) problems.push('runs an image matching no signed digest');
      if (running !== sys.running.version) problems.push(`descriptor says ${sys.running.version}, bytes are ${running}`);
      // A cut during the trial boot is a failed boot: rolling back (bootFailed) is then the right end.
      const out = sys.lastOutcome;
      const rolledBack = sys.running.version === '1.0.0';
      if (opts.failSelfTest && !rolledBack) problems.push('a failing image stayed installed');
      if (rolledBack) {
        if (sys.counter.value > 0) problems.push('counter raised for an image that rolled back');
        if (!opts.failSelfTest) result.rolledBackByCut++;
      } else {
        if (sys.counter.value !== 1) problems.push(`counter ${sys.counter.value} after confirming security version 1`);
        if (rollback && sys.imageState !== ImageState.valid) problems.push(`image state ${sys.imageState}, expected valid`);
      }
      const truthful = out?.version === '1.1.0' && out.stage === (rolledBack ? Stage.rolledBack : Stage.confirmed);
      if (truthful) result.truthful++;
      else problems.push(`runs ${sys.running.version} but last outcome says ${JSON.stringify(out)}`);
      if (problems.length) result.failures.push(`${where}: ${problems.join('; ')}`);
    }
  }
  return result;
}
