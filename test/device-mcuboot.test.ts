import t from 'tap';
import { Flash, PowerCut, SECTOR_SIZE, type CutMode } from '../device/flash.js';
import { makeLayout } from '../device/layout.js';
import { DeviceSystem } from '../device/system.js';
import { describeImage, factoryImage } from '../device/firmware.js';
import { McubootPort } from '../device/mcuboot.js';
import { readSwapStatus, readTrailer, TRAILER_MAGIC, writeImageOk, writeMagic } from '../device/mcuboot-trailer.js';
import { resolveBootProfile, resolveTrialBoots, bootProfile } from '../device/profiles.js';
import { ImageState, Stage } from '../shared/messages.js';
import { Reason } from '../shared/errors.js';
import { generateOperatorKey, sha256, signManifest } from '../shared/manifest.js';
import { sweepUpdate } from '../harness/sweep.js';

const SLOT = 128 * 1024;
const KEY = generateOperatorKey();
const OLD_SIZE = 20_000;

function fresh(profile: 'mcuboot-swap' | 'mcuboot-overwrite' = 'mcuboot-swap') {
  const layout = makeLayout(SLOT);
  const flash = new Flash(layout.flashSize);
  const sys = new DeviceSystem(flash, layout, { hw: 'hw1', version: '1.0.0', profile, initialImage: factoryImage('hw1', '1.0.0', OLD_SIZE) });
  sys.powerOn('powerOn');
  return { layout, flash, sys, port: sys.port as McubootPort };
}

/** Download, verify, describe: the new image waits in the secondary slot. Returns its bytes. */
function download(sys: DeviceSystem, version: string, size: number, securityVersion = 0): Buffer {
  const image = factoryImage('hw1', version, size);
  const manifest = signManifest({ hw: 'hw1', version, securityVersion, size, digest: sha256(image), created: 1, flags: 0 }, KEY.privateKey);
  const chunk = 1000;
  const d = sys.beginDownload({ session: 3, encoding: 0, payloadSize: size, chunkSize: chunk, payloadDigest: sha256(image), manifest });
  for (let i = 0; i < d.total; i++) d.store(i, image.subarray(i * chunk, (i + 1) * chunk));
  if (!d.digestOfStored().equals(sha256(image))) throw new Error('stored image does not verify');
  sys.installDescriptor(describeImage(image, version, securityVersion, manifest));
  return image;
}

function slotBytes(flash: Flash, layout: ReturnType<typeof makeLayout>, slot: number, n: number): Buffer {
  return flash.read(layout.slots[slot].offset, n);
}

t.test('trailer: the magic is design.md boot_img_magic, flags are 0x01 / 0xFF, erased reads unset', async (t) => {
  const words = [0xf395c277, 0x7fefd260, 0x0f505235, 0x8079b62c];
  const le = Buffer.alloc(16);
  words.forEach((w, i) => le.writeUInt32LE(w, i * 4));
  t.ok(TRAILER_MAGIC.equals(le), 'the four magic words in little-endian host order');
  const flash = new Flash(4 * SECTOR_SIZE);
  t.same(readTrailer(flash, 0), { magic: 'unset', imageOk: 'unset', copyDone: 'unset', swapType: undefined, swapSize: undefined });
  writeMagic(flash, 0);
  writeImageOk(flash, 0);
  t.match(readTrailer(flash, 0), { magic: 'good', imageOk: 'set', copyDone: 'unset' });
  // A torn magic is neither good nor unset: it never requests anything.
  const torn = new Flash(4 * SECTOR_SIZE);
  torn.armPowerCut({ at: 1, mode: 'torn', fraction: 0.5 });
  t.throws(() => writeMagic(torn, 0), PowerCut);
  t.equal(readTrailer(torn, 0).magic, 'bad');
});

t.test('profiles: capabilities, trial boots, and contradictions are refused with the option named', async (t) => {
  t.equal(bootProfile('mcuboot-swap').rollback, true, 'swap can revert: claims rollback');
  t.equal(bootProfile('mcuboot-overwrite').rollback, false, 'overwrite-only cannot: does not claim it');
  t.equal(bootProfile('mcuboot-overwrite').canRevert, false);
  t.equal(resolveTrialBoots(bootProfile('mcuboot-swap'), undefined), 1);
  t.throws(() => resolveTrialBoots(bootProfile('mcuboot-swap'), 3), /exactly one unconfirmed boot/);
  t.throws(() => resolveTrialBoots(bootProfile('esp-idf'), 0), /trial boots 0 must be an integer 1\.\.15/);
  t.throws(() => resolveBootProfile({ boot: 'uboot' }), /boot profile "uboot" is not one of esp-idf, esp-idf-norollback, mcuboot-swap, mcuboot-overwrite/);
  t.throws(() => resolveBootProfile({ boot: 'mcuboot-swap', rollback: false }), /rollback: false contradicts boot profile mcuboot-swap/);
  t.equal(resolveBootProfile({ rollback: false }).name, 'esp-idf-norollback');
  t.throws(() => new McubootPort(bootProfile('mcuboot-swap'), makeLayout(8 * 1024 * 1024)), /swap-status records/);
});

t.test('test swap: sectors move through the scratch area; the new image boots pending-verify', async (t) => {
  const { sys, flash, layout, port } = fresh();
  const oldImage = factoryImage('hw1', '1.0.0', OLD_SIZE);
  t.equal(sys.slot, 0);
  t.equal(sys.imageState, ImageState.undefined, 'factory image: no trailer, no state');
  t.equal(sys.imageCapacity, SLOT - 2 * SECTOR_SIZE, 'a header and a trailer sector are not image space');
  const image = download(sys, '1.1.0', 30_000);
  t.equal(sys.inactiveSlot, 1, 'MCUboot downloads into the secondary');
  sys.activate(3, '1.1.0');
  t.match(port.trailers(flash).secondary, { magic: 'good', imageOk: 'unset' }, 'set pending (test): magic, image_ok unset');
  const scratchSector = layout.scratch.offset / SECTOR_SIZE;
  const scratchBefore = flash.sectorErases(scratchSector);
  sys.powerOn('software');
  const swapped = Math.ceil(30_000 / SECTOR_SIZE) + 1; // image sectors of the larger image, plus the header sector
  t.equal(flash.sectorErases(scratchSector) - scratchBefore, swapped, `the scratch sector was erased once per swapped sector (${swapped})`);
  t.equal(sys.slot, 0, 'MCUboot always runs the primary');
  t.equal(sys.running.version, '1.1.0');
  t.equal(sys.imageState, ImageState.pendingVerify, 'a test swap boots on trial');
  t.ok(sys.trial);
  t.ok(slotBytes(flash, layout, 0, image.length).equals(image), 'primary holds the new image');
  t.ok(slotBytes(flash, layout, 1, OLD_SIZE).equals(oldImage), 'secondary holds the old one, for a revert');
  t.match(port.trailers(flash), { primary: { magic: 'good', imageOk: 'unset', copyDone: 'set' }, secondary: { magic: 'unset' } });
});

t.test('a test image not confirmed is reverted at the next reset; the old image is then made permanent', async (t) => {
  const { sys, flash, layout, port } = fresh();
  const image = download(sys, '1.1.0', 30_000, 2);
  sys.activate(3, '1.1.0');
  sys.powerOn('software');
  t.equal(sys.running.version, '1.1.0');
  sys.powerOn('watchdog'); // the trial boot hung
  t.equal(sys.running.version, '1.0.0', 'REVERT swapped the old image back');
  t.equal(sys.imageState, ImageState.valid, 'after a revert image_ok is set: no further revert');
  t.match(port.trailers(flash).primary, { magic: 'good', imageOk: 'set', copyDone: 'set' });
  t.ok(slotBytes(flash, layout, 1, image.length).equals(image), 'the failed image is back in the secondary');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.watchdog, version: '1.1.0', session: 3 }]);
  t.equal(sys.counter.value, 0, 'the counter was never raised for the unconfirmed image');
  sys.powerOn('powerOn');
  t.equal(sys.running.version, '1.0.0', 'stays on the old image');
  t.equal(sys.pending.length, 0, 'reported once');
  t.same(sys.lastOutcome, { version: '1.1.0', stage: Stage.rolledBack, reason: Reason.watchdog }, 'remembered across reboots');
});

t.test('confirmed (image_ok) stays across resets; the counter follows the confirmed image', async (t) => {
  const { sys, port, flash } = fresh();
  download(sys, '1.1.0', 10_000, 4);
  sys.activate(3, '1.1.0');
  sys.powerOn('software');
  t.match(sys.selfTestPassed(), { stage: Stage.confirmed, version: '1.1.0' });
  t.equal(sys.imageState, ImageState.valid);
  t.equal(port.trailers(flash).primary.imageOk, 'set');
  t.equal(sys.counter.value, 4);
  for (const reset of ['watchdog', 'powerOn', 'software'] as const) {
    sys.powerOn(reset);
    t.equal(sys.running.version, '1.1.0', `still 1.1.0 after a ${reset} reset`);
  }
});

t.test('permanent swap: image_ok set before the swap, no trial, never reverted', async (t) => {
  const { sys, port } = fresh();
  download(sys, '1.1.0', 10_000);
  port.setPending(sys.env, true);
  sys.powerOn('software');
  t.equal(sys.running.version, '1.1.0');
  t.equal(sys.imageState, ImageState.valid, 'PERM: image_ok written at the end of the swap');
  sys.powerOn('watchdog');
  t.equal(sys.running.version, '1.1.0', 'not reverted');
});

t.test('swap progress survives a power cut at every operation of the swap, in every mode', async (t) => {
  const oldImage = factoryImage('hw1', '1.0.0', OLD_SIZE);
  const setup = () => {
    const f = fresh();
    const image = download(f.sys, '1.1.0', 30_000);
    f.sys.activate(3, '1.1.0');
    return { ...f, image };
  };
  const probe = setup();
  const before = probe.flash.operations;
  // The swap ends with copy_done in the primary trailer; after that the app runs its trial boot.
  const copyDoneAt = probe.layout.slots[0].offset + SLOT - 32;
  let swapOps = 0;
  probe.flash.onOperation = (op) => {
    if (op.kind === 'write' && op.offset === copyDoneAt) swapOps = op.seq - before;
  };
  probe.sys.powerOn('software');
  t.ok(swapOps > 50, `${swapOps} flash operations in the swap`);
  let resumedMidway = 0;
  for (const mode of ['before', 'torn', 'after'] as CutMode[]) {
    // A cut right after copy_done is a power loss during the test boot: that one rightly reverts.
    for (let at = 1; at <= (mode === 'after' ? swapOps - 1 : swapOps); at++) {
      const { sys, flash, layout, port, image } = setup();
      flash.armPowerCut({ at, mode, fraction: 0.5 });
      t.throws(() => sys.powerOn('software'), PowerCut);
      // Status as the next boot will find it: partly done means the swap resumes, not restarts.
      const status = Array.from({ length: 9 }, (_, i) => readSwapStatus(flash, layout.slots[0].offset + SLOT - SECTOR_SIZE, i, SLOT / SECTOR_SIZE - 1));
      if (status.some((s) => s === 3) && status.some((s) => s < 3)) resumedMidway++;
      sys.powerOn('powerOn');
      const ok = sys.running.version === '1.1.0' && slotBytes(flash, layout, 0, image.length).equals(image) && slotBytes(flash, layout, 1, OLD_SIZE).equals(oldImage);
      if (!ok) t.fail(`${mode}@${at}: after the cut the swap did not complete (${sys.running.version})`);
      const tr = port.trailers(flash);
      if (tr.primary.copyDone !== 'set' || tr.secondary.magic === 'good') t.fail(`${mode}@${at}: trailers left mid-swap: ${JSON.stringify(tr)}`);
    }
  }
  t.ok(resumedMidway > 10, `${resumedMidway} cuts left some sectors swapped and others not, and the next boot finished the job`);
  const { sys, flash } = setup();
  flash.armPowerCut({ at: swapOps, mode: 'after' });
  t.throws(() => sys.powerOn('software'), PowerCut);
  sys.powerOn('powerOn');
  t.equal(sys.running.version, '1.0.0', 'power lost once the test swap was complete but before the app confirmed: reverted');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.bootFailed }]);
});

t.test('a cut between image_ok and copy_done at the end of a revert does not revert twice (mcuboot#480)', async (t) => {
  const { sys, flash, layout } = fresh();
  download(sys, '1.1.0', 10_000);
  sys.activate(3, '1.1.0');
  sys.powerOn('software');
  const snapshot = flash.read(0, flash.size);
  // Probe the revert boot for the two writes that persist its completion.
  const trailer = layout.slots[0].offset + SLOT - SECTOR_SIZE;
  const start = flash.operations;
  const writes: number[] = [];
  flash.onOperation = (op) => {
    if (op.kind === 'write' && op.length === 1 && (op.offset === trailer + SECTOR_SIZE - 24 || op.offset === trailer + SECTOR_SIZE - 32)) writes.push(op.seq - start);
  };
  sys.powerOn('watchdog');
  flash.onOperation = undefined;
  t.equal(sys.running.version, '1.0.0');
  t.equal(writes.length, 2, 'the revert ends with image_ok, then copy_done');
  const [imageOk, copyDone] = writes;
  t.equal(copyDone, imageOk + 1);
  for (const [at, mode] of [[imageOk, 'after'], [copyDone, 'before'], [copyDone, 'torn'], [imageOk, 'before']] as [number, CutMode][]) {
    const f = new Flash(layout.flashSize);
    f.write(0, snapshot);
    const s = new DeviceSystem(f, layout, { hw: 'hw1', version: '1.0.0', profile: 'mcuboot-swap' });
    f.armPowerCut({ at: at + 1, mode }); // +1: the restore write above counts as one operation
    t.throws(() => s.powerOn('watchdog'), PowerCut);
    s.powerOn('powerOn');
    t.equal(s.running.version, '1.0.0', `cut ${mode} op ${at} of the revert: the old image runs`);
    s.powerOn('powerOn');
    t.equal(s.running.version, '1.0.0', 'and stays: no second swap');
    t.match(s.pending.length, 0);
  }
});

t.test('an invalid secondary is refused: erased, the primary marked OK, reported invalidImage', async (t) => {
  const { sys, flash, layout, port } = fresh();
  download(sys, '1.1.0', 10_000);
  flash.write(layout.slots[1].offset + 1234, Buffer.from([0x00])); // a flash fault after verification
  sys.activate(3, '1.1.0');
  sys.powerOn('software');
  t.equal(sys.running.version, '1.0.0');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.invalidImage, version: '1.1.0' }]);
  t.match(port.trailers(flash), { primary: { imageOk: 'set' }, secondary: { magic: 'unset' } });
  t.equal(port.readDescriptor(sys.env, 1), undefined, 'the invalid image is gone');
});

t.test('a torn set-pending: the activation never took effect, the download is kept for a second Activate', async (t) => {
  const { sys, flash } = fresh();
  download(sys, '1.1.0', 10_000);
  // activate = activation record (NVS), erase? (trailer is blank), magic write: tear the magic.
  const ops = flash.operations;
  flash.onOperation = (op) => {
    if (op.kind === 'write' && op.length === 16 && op.seq > ops) {
      flash.onOperation = undefined;
      flash.armPowerCut({ at: 1, mode: 'torn', fraction: 0.5 });
    }
  };
  t.throws(() => sys.activate(3, '1.1.0'), PowerCut);
  sys.powerOn('powerOn');
  t.equal(sys.running.version, '1.0.0');
  t.equal(sys.pending.length, 0, 'nothing to report: nothing happened');
  t.equal(sys.activation, undefined);
  t.ok(sys.download?.complete, 'the complete download is still there');
  sys.activate(3, '1.1.0');
  sys.powerOn('software');
  t.equal(sys.running.version, '1.1.0', 'the second activation swaps');
});

t.test('overwrite-only: copied over the primary, secondary erased, and a failing image has no way back', async (t) => {
  const { sys, flash, layout, port } = fresh('mcuboot-overwrite');
  const image = download(sys, '1.1.0', 30_000);
  sys.activate(3, '1.1.0');
  t.match(port.trailers(flash).secondary, { magic: 'good', imageOk: 'set' }, 'overwrite requests are permanent');
  sys.powerOn('software');
  t.equal(sys.running.version, '1.1.0');
  t.ok(slotBytes(flash, layout, 0, image.length).equals(image));
  t.equal(port.readDescriptor(sys.env, 1), undefined, 'the secondary header was erased after the copy');
  t.equal(port.trailers(flash).secondary.magic, 'unset', 'and its trailer: the copy is not applied twice');
  t.equal(sys.imageState, ImageState.undefined, 'the bootloader keeps no image state');
  t.ok(sys.trial, 'the app runs its own self-test (app-level trial)');
  sys.selfTestFailed(Reason.selfTestFailed);
  sys.powerOn('software');
  t.equal(sys.running.version, '1.1.0', 'nothing to return to');
  t.match(sys.pending, [{ stage: Stage.failed, reason: Reason.selfTestFailed, version: '1.1.0' }]);
  t.equal(sys.recovery, 'imageFailed');
  t.equal(sys.imageState, ImageState.recovery, 'reported as recovery mode');
  t.equal(sys.counter.value, 0);
  sys.powerOn('powerOn');
  t.equal(sys.recovery, 'imageFailed', 'recovery mode survives a power cycle while the failed image runs');
  t.equal(sys.pending.length, 0, 'reported once');
  // A fixed image ends it.
  download(sys, '1.2.0', 12_000);
  sys.activate(4, '1.2.0');
  sys.powerOn('software');
  t.equal(sys.running.version, '1.2.0');
  t.match(sys.selfTestPassed(), { stage: Stage.confirmed, version: '1.2.0' });
  sys.powerOn('powerOn');
  t.equal(sys.recovery, undefined, 'out of recovery mode');
  t.equal(sys.imageState, ImageState.undefined);
});

t.test('full firmware sweep, small image, every cut point: both MCUboot profiles, update and revert', async (t) => {
  for (const profile of ['mcuboot-swap', 'mcuboot-overwrite'] as const) {
    for (const failSelfTest of [false, true]) {
      const r = sweepUpdate({ profile, failSelfTest, imageSize: 9_000, chunkSize: 960 });
      const name = `${profile} ${failSelfTest ? 'revert' : 'update'}`;
      t.equal(r.cutPoints, r.operations * 3, `${name}: ${r.cutPoints} cut points (${r.operations} operations × 3 modes)`);
      t.equal(r.bricked, 0, `${name}: none bricked`);
      t.equal(r.bootable, r.cutPoints, `${name}: bootable after every cut`);
      t.equal(r.truthful, r.cutPoints, `${name}: last outcome always matches what runs`);
      t.same(r.failures, [], `${name}: no invariant broken`);
      if (profile === 'mcuboot-overwrite' && failSelfTest) t.same(Object.keys(r.outcomes), ['failed'], 'overwrite + failing image: always failed, in recovery');
    }
  }
});
