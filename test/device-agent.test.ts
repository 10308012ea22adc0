import t from 'tap';
import { Agent } from '../agent/agent.js';
import { SimNode, type SimNodeOptions } from '../device/node.js';
import { Flash } from '../device/flash.js';
import { ImageState, Stage } from '../shared/messages.js';
import { ManifestFlag, sha256 } from '../shared/manifest.js';
import { makeWorld, quickNode, type World } from './helpers/world.js';
import { demoImage } from '../harness/images.js';

/**
 * Reconciliation through the real agent: whatever happened on the node (a bootloader rollback, a
 * watchdog, a failed self-test, an image the bootloader refused, a different version than expected,
 * an agent that was away), the agent's record ends in a terminal state that says what the node runs
 * and why. Plus capability gating: a node that cannot roll back is warned about and updated only
 * when the release allows it.
 */
const HW = 'esp32-test';
const SIZE = 24 * 1024;

const node = (world: World, id: string, extra: Partial<SimNodeOptions> = {}): Promise<SimNode> => quickNode(world, HW, id, extra);

function untilStage(n: SimNode, name: string): Promise<string> {
  return new Promise((resolve) => {
    const on = (stage: string, detail: string) => {
      if (stage !== name) return;
      n.off('stage', on);
      resolve(detail);
    };
    n.on('stage', on);
  });
}

t.test('reconciliation: every way a trial can end is recorded as what the node runs, with the reason', async (t) => {
  const world = await makeWorld();
  const nodes: SimNode[] = [];
  t.teardown(async () => {
    for (const n of nodes) await n.stop();
    await world.close();
  });
  // Rollback by the bootloader: power lost during the trial boot, before the self-test verdict.
  const cut = await node(world, 'r-bootfail', { selfTestMs: 60_000 });
  // Watchdog: the self-test hangs; the bootloader aborts the trial.
  const wdt = await node(world, 'r-watchdog', { failSelfTest: 'watchdog' });
  // Self-test failure, on an MCUboot swap node (the revert is a swap back through scratch).
  const stf = await node(world, 'r-selftest', { failSelfTest: true, boot: 'mcuboot-swap' });
  // Invalid image: a flash fault in the new slot after verification; secure boot refuses it.
  const inv = await node(world, 'r-invalid');
  nodes.push(cut, wdt, stf, inv);
  inv.on('stage', (name: string) => {
    if (name === 'verified') inv.flash.write(inv.layout.slots[1].offset + 4096 + 17, Buffer.from([0x00]));
  });
  const trial = new Promise<void>((resolve) => cut.on('stage', (name: string, detail: string) => name === 'booted' && detail.includes('(trial)') && resolve()));
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE });
  await trial;
  await world.until('r-bootfail', (s) => s.state === 'confirming', 'confirming');
  await cut.powerCut();

  const expect: [SimNode, string][] = [[cut, 'bootFailed'], [wdt, 'watchdog'], [stf, 'selfTestFailed'], [inv, 'invalidImage']];
  for (const [n, reason] of expect) {
    const s = await world.until(n.id, (s) => s.state === 'rolledBack', 'rolled back');
    t.equal(s.reason, reason, `${n.id}: rolled back, ${reason}`);
    t.equal(s.runningVersion, '1.0.0', `${n.id}: the agent says 1.0.0`);
    t.equal(n.runningVersion, '1.0.0', `${n.id}: the node runs 1.0.0`);
    t.same(n.lastOutcome, { version: '1.1.0', stage: Stage.rolledBack, reason: reasonCode(reason) }, `${n.id}: the node says the same`);
  }
  t.equal(stf.bootProfile, 'mcuboot-swap');
  t.equal(world.agent.status('r-selftest')!.imageState, 'valid', 'MCUboot: the reverted image was made permanent');
});

function reasonCode(name: string): number {
  return { bootFailed: 11, watchdog: 12, selfTestFailed: 10, invalidImage: 13 }[name] ?? -1;
}

t.test('reconciliation: a node that comes back with another version than expected gets a terminal record naming both', async (t) => {
  const world = await makeWorld();
  const first = await node(world, 'r-other', { selfTestMs: 60_000 });
  let current = first;
  t.teardown(async () => {
    await current.stop();
    await world.close();
  });
  const rebooting = untilStage(first, 'rebooting');
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE });
  await rebooting;
  await world.until('r-other', (s) => s.state === 'confirming', 'confirming');
  // Someone reflashed the board by cable with 1.0.5 while it rebooted.
  await first.stop();
  current = new SimNode({ brokerUrl: world.broker.url, deviceId: 'r-other', hw: HW, version: '1.0.5', trust: [world.key.publicKey], selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100 });
  await current.start();
  const s = await world.until('r-other', (s) => s.state !== 'confirming', 'a verdict');
  t.equal(s.state, 'rolledBack', 'not left in progress');
  t.equal(s.runningVersion, '1.0.5', 'the record says what the node runs');
  t.match(s.detail, /expected 1\.1\.0, node booted 1\.0\.5/);
});

t.test('reconciliation: the node confirms while the agent is away; the agent converges when the node returns', async (t) => {
  const world = await makeWorld();
  const n = await node(world, 'r-away', { selfTestMs: 400 });
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE });
  await world.until('r-away', (s) => s.state === 'confirming', 'confirming');
  const confirmed = new Promise<void>((resolve) => n.on('outcome', (o: { stage: number }) => o.stage === Stage.confirmed && resolve()));
  await world.agent.stop();
  await confirmed; // its report went nowhere
  t.equal(n.imageState, ImageState.valid);
  // A new agent process on the same data dir (the old one is gone: restartAgent would stop it again).
  world.agent = new Agent({ brokerUrl: world.broker.url, dataDir: world.dataDir, trust: [world.key.publicKey], rtt: { initialRto: 300, minRto: 100 } });
  await world.agent.start();
  await n.powerCut(); // the node comes back (a reboot, a reconnect): Hello
  const s = await world.until('r-away', (s) => s.state === 'confirmed', 'confirmed after the restart');
  t.equal(s.runningVersion, '1.1.0');
  t.equal(s.imageState, 'valid');
});

t.test('capability gating: a node whose bootloader cannot roll back is warned about and updated only when the release allows it', async (t) => {
  const world = await makeWorld();
  const norb = await node(world, 'g-norollback', { boot: 'esp-idf-norollback' });
  const ovw = await node(world, 'g-overwrite', { boot: 'mcuboot-overwrite' });
  const ok = await node(world, 'g-rollback', { boot: 'mcuboot-swap' });
  t.teardown(async () => {
    for (const n of [norb, ovw, ok]) await n.stop();
    await world.close();
  });
  for (const n of [norb, ovw]) {
    t.equal(n.capabilities & 2, 0, `${n.id} does not claim rollback`);
    t.match(world.agent.status(n.id)!.warnings, [/cannot roll back/], `${n.id}: warning in status`);
  }
  t.equal(ok.capabilities & 2, 2, 'mcuboot-swap claims rollback');
  t.same(world.agent.status('g-rollback')!.warnings, []);
  const erases = [norb.flash.stats.erases, ovw.flash.stats.erases];
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE });
  await world.until('g-rollback', (s) => s.state === 'confirmed', 'the rollback node is updated');
  for (const [i, n] of [norb, ovw].entries()) {
    const s = await world.until(n.id, (s) => s.state === 'rejected', 'refused by the agent');
    t.equal(s.reason, 'noRollbackSupport', `${n.id}: not updated without the release's permission`);
    t.equal(n.flash.stats.erases, erases[i], `${n.id}: never offered (nothing erased)`);
    t.equal(n.runningVersion, '1.0.0');
  }
  await world.publish({ hw: HW, version: '1.2.0', size: SIZE, flags: ManifestFlag.allowNoRollback });
  for (const n of [norb, ovw]) {
    const s = await world.until(n.id, (s) => s.state === 'confirmed' && s.targetVersion === '1.2.0', 'updated with permission');
    t.equal(s.runningVersion, '1.2.0', `${n.id}: updated once the release allows it`);
    t.ok(n.runningDigest.equals(sha256(demoImage(HW, '1.2.0', SIZE))));
  }
});

t.test('the agent refuses what the node would refuse: a downgrade and a security downgrade end rejected with the reason, never a silent idle', async (t) => {
  const world = await makeWorld();
  const ahead = await node(world, 'a-ahead', { version: '2.0.0' });
  const fused = await node(world, 'a-fused', { securityVersion: 5 });
  const plain = await node(world, 'a-plain');
  t.teardown(async () => {
    for (const n of [ahead, fused, plain]) await n.stop();
    await world.close();
  });
  const erases = [ahead.flash.stats.erases, fused.flash.stats.erases];
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE, securityVersion: 2 });
  await world.until('a-plain', (s) => s.state === 'confirmed', 'the ordinary node is updated');
  const a = await world.until('a-ahead', (s) => s.state === 'rejected', 'refused by the agent');
  t.equal(a.reason, 'downgrade');
  t.match(a.detail, /^not offered by the agent: 1\.1\.0 is not newer than the running 2\.0\.0/);
  const f = await world.until('a-fused', (s) => s.state === 'rejected', 'refused by the agent');
  t.equal(f.reason, 'securityDowngrade');
  t.match(f.detail, /^not offered by the agent: security version 2 is below the node's 5/);
  t.same([ahead.flash.stats.erases, fused.flash.stats.erases], erases, 'neither was offered anything (nothing erased)');
  // A later release the node accepts is offered normally.
  await world.publish({ hw: HW, version: '1.2.0', size: SIZE, securityVersion: 5 });
  const s = await world.until('a-fused', (s) => s.state === 'confirmed' && s.targetVersion === '1.2.0', 'updated once the release is acceptable');
  t.equal(s.runningVersion, '1.2.0');
});

t.test('a file-backed node keeps its profile state across a process restart (MCUboot trailers live in flash)', async (t) => {
  const world = await makeWorld();
  const file = `${world.dataDir}/node.flash`;
  const layoutSize = 2 * 128 * 1024 + 64 * 1024;
  let n = await node(world, 'f-file', { boot: 'mcuboot-swap', flash: new Flash(layoutSize, { file }) });
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE });
  await world.until('f-file', (s) => s.state === 'confirmed', 'confirmed');
  await n.stop();
  n = new SimNode({ brokerUrl: world.broker.url, deviceId: 'f-file', hw: HW, version: '1.0.0', trust: [world.key.publicKey], boot: 'mcuboot-swap', slotSize: 128 * 1024, flash: new Flash(layoutSize, { file }), reconnectPeriod: 100 });
  await n.start();
  t.equal(n.runningVersion, '1.1.0', 'the swapped image is what boots from the file');
  t.equal(n.imageState, ImageState.valid);
});
