import t from 'tap';
import { Flash, PowerCut, SECTOR_SIZE } from '../device/flash.js';
import { makeLayout } from '../device/layout.js';
import { decodeOtaRecord, encodeOtaRecord, readOtadata, selectEntry, selectSlot, writeOtaRecord } from '../device/otadata.js';
import { DeviceSystem } from '../device/system.js';
import { describeImage, factoryImage } from '../device/firmware.js';
import { Download } from '../device/transfer.js';
import { ImageState, Stage } from '../shared/messages.js';
import { Reason } from '../shared/errors.js';
import { generateOperatorKey, sha256, signManifest } from '../shared/manifest.js';
import { sweepUpdate } from '../harness/sweep.js';

const SLOT = 256 * 1024;
const KEY = generateOperatorKey();

/** A signed manifest for an image, as the node stores it with its transfer and its slot descriptor. */
function manifestOf(version: string, image: Buffer, securityVersion = 0): Buffer {
  return signManifest({ hw: 'hw1', version, securityVersion, size: image.length, digest: sha256(image), created: 1_700_000_000, flags: 0 }, KEY.privateKey);
}

function fresh(rollback = true) {
  const layout = makeLayout(SLOT);
  const flash = new Flash(layout.flashSize);
  const sys = new DeviceSystem(flash, layout, { hw: 'hw1', version: '1.0.0', rollback });
  sys.powerOn('powerOn');
  return { layout, flash, sys };
}

/** What the node does for an update, minus the network: download, verify, describe, activate. */
function install(sys: DeviceSystem, version: string, securityVersion = 0, size = 20000): Buffer {
  const image = factoryImage('hw1', version, size);
  const chunkSize = 1024;
  const manifest = manifestOf(version, image, securityVersion);
  const d = sys.beginDownload({ session: 7, encoding: 0, payloadSize: image.length, chunkSize, payloadDigest: sha256(image), manifest });
  // Out of order, as chunks may arrive.
  const order = Array.from({ length: d.total }, (_, i) => i).reverse();
  for (const i of order) d.store(i, image.subarray(i * chunkSize, (i + 1) * chunkSize));
  if (!d.digestOfStored().equals(sha256(image))) throw new Error('stored image does not verify');
  sys.installDescriptor(describeImage(image, version, securityVersion, manifest));
  sys.activate(7, version);
  return image;
}

t.test('otadata records: CRC-checked, highest valid seq wins, torn records ignored', async (t) => {
  const layout = makeLayout(SLOT);
  const flash = new Flash(layout.flashSize);
  t.same(readOtadata(flash, layout), [undefined, undefined], 'blank otadata has no records');
  const rec = { seq: 5, slot: 1, state: ImageState.valid };
  t.same(decodeOtaRecord(encodeOtaRecord(rec)), rec);
  const bad = encodeOtaRecord(rec);
  bad[4] ^= 1;
  t.equal(decodeOtaRecord(bad), undefined, 'bad CRC: no record');
  writeOtaRecord(flash, layout, 0, { seq: 1, slot: 0, state: ImageState.valid });
  writeOtaRecord(flash, layout, 1, { seq: 2, slot: 1, state: ImageState.new });
  t.equal(selectEntry(readOtadata(flash, layout), true)?.slot, 1, 'higher seq wins');
  writeOtaRecord(flash, layout, 1, { seq: 2, slot: 1, state: ImageState.aborted });
  t.equal(selectEntry(readOtadata(flash, layout), true)?.slot, 0, 'aborted records are skipped with rollback');
  t.equal(selectEntry(readOtadata(flash, layout), false)?.slot, 1, 'without rollback state does not matter');
  // A torn selection write: the new record is invalid, the previous one still stands.
  flash.armPowerCut({ at: 2, mode: 'torn', fraction: 0.5 });
  t.throws(() => selectSlot(flash, layout, 1, ImageState.new, true), PowerCut);
  const entries = readOtadata(flash, layout);
  t.equal(entries[1], undefined, 'torn record reads as no record');
  t.equal(selectEntry(entries, true)?.slot, 0, 'previous selection stands');
  t.equal(selectEntry(entries, true)?.sector, 0, 'and its sector was not touched');
});

t.test('factory boot: slot 0, no otadata, state undefined', async (t) => {
  const { sys, flash, layout } = fresh();
  t.equal(sys.slot, 0);
  t.equal(sys.imageState, ImageState.undefined);
  t.equal(sys.running.version, '1.0.0');
  t.ok(sys.running.digest.equals(sha256(factoryImage('hw1', '1.0.0'))));
  t.same(readOtadata(flash, layout), [undefined, undefined]);
  t.equal(sys.bootCount, 1);
});

t.test('new → pending-verify (trial boot) → valid; the counter is raised after confirm', async (t) => {
  const { sys, flash, layout } = fresh();
  install(sys, '1.1.0', 2);
  sys.powerOn('software');
  t.equal(sys.slot, 1);
  t.equal(sys.imageState, ImageState.pendingVerify, 'NEW became PENDING_VERIFY at boot');
  t.ok(sys.trial);
  t.equal(sys.counter.value, 0, 'counter untouched during the trial');
  const report = sys.selfTestPassed();
  t.match(report, { stage: Stage.confirmed, session: 7, version: '1.1.0' });
  t.equal(sys.imageState, ImageState.valid);
  t.equal(sys.counter.value, 2, 'anti-rollback counter raised');
  sys.powerOn('software');
  t.equal(sys.slot, 1);
  t.equal(sys.imageState, ImageState.valid, 'stays valid across reboots');
  t.same(sys.lastOutcome, { version: '1.1.0', stage: Stage.confirmed, reason: Reason.none });
  t.equal(sys.pending.length, 0, 'nothing more to report');
  t.equal(selectEntry(readOtadata(flash, layout), true)?.slot, 1);
});

t.test('pending-verify at boot (trial never confirmed) → aborted, rollback to the previous slot', async (t) => {
  const { sys, flash, layout } = fresh();
  install(sys, '1.1.0');
  sys.powerOn('software');
  t.equal(sys.imageState, ImageState.pendingVerify);
  sys.powerOn('watchdog'); // the self-test hung
  t.equal(sys.slot, 0, 'back on the previous slot');
  t.equal(sys.running.version, '1.0.0');
  const entries = readOtadata(flash, layout);
  t.ok(entries.some((e) => e?.slot === 1 && e.state === ImageState.aborted), 'the trial record is ABORTED');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.watchdog, version: '1.1.0', session: 7 }]);
  t.same(sys.lastOutcome, { version: '1.1.0', stage: Stage.rolledBack, reason: Reason.watchdog });
  sys.powerOn('powerOn');
  t.equal(sys.slot, 0, 'stays rolled back');
  t.equal(sys.pending.length, 0, 'reported once');
  t.equal(sys.lastOutcome?.reason, Reason.watchdog, 'last outcome persists for every Hello');
});

t.test('a power cut during the trial boot counts as a failed boot', async (t) => {
  const { sys } = fresh();
  install(sys, '1.1.0');
  sys.powerOn('software');
  sys.powerOn('powerOn');
  t.equal(sys.slot, 0);
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.bootFailed }]);
});

t.test('self-test failure → invalid → rollback with reason selfTestFailed', async (t) => {
  const { sys, flash, layout } = fresh();
  install(sys, '1.1.0', 1);
  sys.powerOn('software');
  sys.selfTestFailed(Reason.selfTestFailed);
  t.ok(readOtadata(flash, layout).some((e) => e?.slot === 1 && e.state === ImageState.invalid), 'marked INVALID');
  sys.powerOn('software');
  t.equal(sys.slot, 0);
  t.equal(sys.running.version, '1.0.0');
  t.equal(sys.counter.value, 0, 'counter not raised by a failed image');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.selfTestFailed, version: '1.1.0' }]);
});

t.test('bootloader without rollback: the new image simply runs; the app reverts on a failed self-test', async (t) => {
  const { sys, flash, layout } = fresh(false);
  install(sys, '1.1.0');
  t.ok(readOtadata(flash, layout).every((e) => !e || e.state === ImageState.undefined), 'no NEW state written');
  sys.powerOn('software');
  t.equal(sys.slot, 1);
  t.equal(sys.imageState, ImageState.undefined, 'no pending-verify state');
  t.match(sys.selfTestPassed(), { stage: Stage.confirmed });
  sys.powerOn('software');
  t.equal(sys.slot, 1);
  install(sys, '1.2.0');
  sys.powerOn('software');
  t.equal(sys.slot, 0);
  sys.selfTestFailed(Reason.selfTestFailed);
  sys.powerOn('software');
  t.equal(sys.slot, 1, 'the app selected the previous slot itself');
  t.equal(sys.running.version, '1.1.0');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.selfTestFailed, version: '1.2.0' }]);
});

t.test('without rollback, an image that keeps hanging is reverted after a few trial boots', async (t) => {
  const { sys } = fresh(false);
  install(sys, '1.1.0');
  for (let i = 0; i < 3; i++) {
    sys.powerOn('watchdog');
    t.equal(sys.slot, 1, `trial boot ${i + 1} runs the new image`);
  }
  t.throws(() => sys.powerOn('watchdog'), /reboot requested/);
  sys.powerOn('software');
  t.equal(sys.slot, 0);
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.watchdog }]);
});

t.test('secure boot: a slot whose bytes do not match its digest is never booted', async (t) => {
  const { sys, flash, layout } = fresh();
  install(sys, '1.1.0');
  // Flip bits in the new slot after activation (a flash fault or tampering).
  flash.write(layout.slots[1].offset + 100, Buffer.from([0x00]));
  sys.powerOn('software');
  t.equal(sys.slot, 0, 'refused slot 1');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.invalidImage }]);
});

t.test('anti-rollback: an image below the counter is refused at boot', async (t) => {
  const { sys } = fresh();
  install(sys, '1.1.0', 3);
  sys.powerOn('software');
  sys.selfTestPassed();
  t.equal(sys.counter.value, 3);
  install(sys, '1.2.0', 1); // signed with a lower security version (the node's offer check refuses this too)
  sys.powerOn('software');
  t.equal(sys.slot, 1, 'still on 1.1.0');
  t.equal(sys.running.version, '1.1.0');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.invalidImage, version: '1.2.0' }]);
});

t.test('download state: saved every few chunks, reloaded after power loss, erased sectors re-derived', async (t) => {
  const { sys, flash, layout } = fresh();
  const image = factoryImage('hw1', '2.0.0', 100_000);
  const chunkSize = 1000; // not a divisor of the sector size: chunks straddle sectors
  const meta = { session: 9, encoding: 0, payloadSize: image.length, chunkSize, payloadDigest: sha256(image), manifest: manifestOf('2.0.0', image) };
  const d = sys.beginDownload(meta);
  const writesBefore = sys.nvs.writes;
  for (let i = 0; i < 40; i++) d.store(i, image.subarray(i * chunkSize, (i + 1) * chunkSize));
  t.ok(sys.nvs.writes - writesBefore <= 3, `NVS written ${sys.nvs.writes - writesBefore} times for 40 chunks, not per chunk`);
  sys.powerOn('powerOn');
  const resumed = sys.download!;
  t.ok(resumed, 'download reloaded');
  t.equal(resumed.meta.session, 9);
  t.ok(resumed.bitmap.count >= 32 && resumed.bitmap.count <= 40, `bitmap as of the last save (${resumed.bitmap.count})`);
  for (let i = 0; i < resumed.total; i++) if (!resumed.bitmap.has(i)) resumed.store(i, image.subarray(i * chunkSize, (i + 1) * chunkSize));
  t.ok(resumed.complete);
  t.ok(resumed.digestOfStored().equals(sha256(image)), 'stored image verifies after resume (no sector erased twice over live data)');
  t.ok(flash.read(layout.slots[1].offset, image.length).equals(image));
});

t.test('power cut at every flash operation of an update, in every mode: never bricked, always truthful', async (t) => {
  for (const scenario of [{}, { failSelfTest: true }, { rollback: false }, { rollback: false, failSelfTest: true }]) {
    const r = sweepUpdate(scenario);
    const name = JSON.stringify(scenario);
    t.ok(r.cutPoints > 60, `${name}: ${r.cutPoints} cut points tried`);
    t.equal(r.bricked, 0, `${name}: none bricked`);
    t.equal(r.bootable, r.cutPoints, `${name}: bootable after every cut`);
    t.equal(r.truthful, r.cutPoints, `${name}: last outcome always matches what runs`);
    t.same(r.failures, [], `${name}: no invariant broken`);
  }
});

t.test('sector size is what the layout assumes', async (t) => {
  t.equal(SECTOR_SIZE, 4096);
  const l = makeLayout();
  t.equal(l.slots[0].offset % 65536, 0);
  t.equal(l.slots[1].offset - l.slots[0].offset, 2 * 1024 * 1024);
});

t.test('boot counting: with 3 trial boots a hanging image gets three boots, then the bootloader aborts it', async (t) => {
  const layout = makeLayout(SLOT);
  const flash = new Flash(layout.flashSize);
  const sys = new DeviceSystem(flash, layout, { hw: 'hw1', version: '1.0.0', trialBoots: 3 });
  sys.powerOn('powerOn');
  install(sys, '1.1.0');
  t.equal(readOtadata(flash, layout).find((e) => e?.state === ImageState.new)?.left, 3, 'the NEW record carries the trial boots');
  sys.powerOn('software');
  for (let boot = 1; boot <= 3; boot++) {
    t.equal(sys.running.version, '1.1.0', `trial boot ${boot} runs the new image`);
    t.equal(sys.imageState, ImageState.pendingVerify);
    t.ok(sys.trial);
    t.equal(readOtadata(flash, layout).find((e) => e?.slot === 1)?.left, 3 - boot, `${3 - boot} trial boots left`);
    sys.powerOn('watchdog'); // the self-test hung: a watchdog reset counts as a failed boot
  }
  t.equal(sys.running.version, '1.0.0', 'after the third failed boot: rolled back');
  t.ok(readOtadata(flash, layout).some((e) => e?.slot === 1 && e.state === ImageState.aborted), 'ABORTED');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.watchdog, version: '1.1.0' }]);
});

t.test('boot counting: a reported self-test failure does not wait for the remaining trial boots', async (t) => {
  const layout = makeLayout(SLOT);
  const flash = new Flash(layout.flashSize);
  const sys = new DeviceSystem(flash, layout, { hw: 'hw1', version: '1.0.0', trialBoots: 5 });
  sys.powerOn('powerOn');
  install(sys, '1.1.0');
  sys.powerOn('software');
  sys.powerOn('powerOn'); // one trial boot lost to a power cut
  t.equal(sys.running.version, '1.1.0', 'a power cut during a trial boot spends one of them');
  sys.selfTestFailed(Reason.selfTestFailed);
  sys.powerOn('software');
  t.equal(sys.running.version, '1.0.0');
  t.match(sys.pending, [{ stage: Stage.rolledBack, reason: Reason.selfTestFailed }]);
});

t.test('recovery mode: three failed starts in a row (watchdog before the app is up) start the recovery app', async (t) => {
  const { sys } = fresh(); // its first start never came up either
  for (let i = 0; i < 2; i++) {
    sys.powerOn('watchdog');
    t.equal(sys.recovery, undefined, `failed start ${i + 1}: still the normal app`);
  }
  sys.powerOn('watchdog');
  t.equal(sys.recovery, 'bootFailures', 'the third failed start in a row: recovery mode');
  t.equal(sys.imageState, ImageState.recovery, 'Hello says recovery');
  t.equal(sys.running.version, '1.0.0', 'on the image it has');
  sys.powerOn('watchdog');
  t.equal(sys.recovery, undefined, 'entering recovery reset the count: the next boot tries the normal app again (seed 000)');
  sys.powerOn('watchdog');
  sys.markHealthy();
  sys.powerOn('watchdog'); // the app was up: a later hang is not a failed start
  sys.powerOn('watchdog');
  t.equal(sys.recovery, undefined, 'a start that came up breaks the streak');
  t.equal(sys.crashStreak, 1);
  sys.powerOn('powerOn');
  sys.powerOn('watchdog');
  sys.powerOn('watchdog');
  t.equal(sys.recovery, undefined, 'a power cycle clears the count (RTC memory, not flash)');
  t.equal(sys.crashStreak, 2);
});
