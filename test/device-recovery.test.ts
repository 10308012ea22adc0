import t from 'tap';
import { SimNode, type SimNodeOptions } from '../device/node.js';
import { ImageState, Stage } from '../shared/messages.js';
import { ManifestFlag } from '../shared/manifest.js';
import { Reason } from '../shared/errors.js';
import { makeWorld, quickNode, type World } from './helpers/world.js';

/**
 * Recovery (safe) mode and deferred activation, through the real agent.
 */
const HW = 'esp32-test';
const SIZE = 20 * 1024;

const node = (world: World, id: string, extra: Partial<SimNodeOptions> = {}): Promise<SimNode> => quickNode(world, HW, id, extra);

t.test('recovery mode: both images fail to start; the node stays reachable, says so, and a newer full image repairs it', async (t) => {
  const world = await makeWorld();
  const n = await node(world, 'rec-both');
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  const crashes: string[] = [];
  n.on('stage', (name: string, detail: string) => {
    if (name === 'crash') crashes.push(detail);
    // The new image migrates the configuration so that the old one cannot start either.
    if (name === 'rebooting' && detail === 'software') n.setCrashAtBoot(['1.0.0', '1.1.0']);
  });
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE });
  const s = await world.until('rec-both', (s) => s.imageState === 'recovery', 'recovery mode');
  t.equal(crashes.length, 3, `three failed starts in a row: ${crashes.join(' / ')}`);
  t.equal(n.recovery, 'bootFailures');
  t.equal(n.imageState, ImageState.recovery);
  t.ok(n.connected, 'reachable');
  t.equal(s.runningVersion, '1.0.0', 'recovery runs on the image it has');
  t.match(s.warnings, [/recovery mode/], 'the agent warns about it');
  const rb = await world.until('rec-both', (s) => s.state === 'rolledBack', 'the trial recorded');
  t.equal(rb.reason, 'watchdog', 'the trial of 1.1.0 ended in a watchdog reset (from the Hello: the report was lost in the crashes)');
  t.equal(n.capabilities & 1, 0, 'recovery mode takes full images only');
  // A fixed release arrives: recovery mode installs it and is over.
  await world.publish({ hw: HW, version: '1.2.0', size: SIZE });
  const fixed = await world.until('rec-both', (s) => s.state === 'confirmed' && s.targetVersion === '1.2.0', 'repaired');
  t.equal(fixed.runningVersion, '1.2.0');
  t.equal(fixed.imageState, 'valid');
  t.same(fixed.warnings, []);
  t.equal(n.recovery, undefined);
});

t.test('recovery mode: MCUboot overwrite-only with a failing image has no way back: the agent records failed, not confirmed', async (t) => {
  const world = await makeWorld();
  const n = await node(world, 'rec-ovw', { boot: 'mcuboot-overwrite', failSelfTest: true });
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE, flags: ManifestFlag.allowNoRollback });
  const s = await world.until('rec-ovw', (s) => s.state === 'failed', 'failed');
  t.equal(s.reason, 'selfTestFailed');
  t.equal(s.runningVersion, '1.1.0', 'it runs the failed image: there is nothing else');
  t.equal(s.imageState, 'recovery');
  t.match(s.warnings, [/cannot roll back/, /recovery mode/]);
  t.same(n.lastOutcome, { version: '1.1.0', stage: Stage.failed, reason: Reason.selfTestFailed });
  // A Hello later (a reboot) must not turn it into "confirmed: already running 1.1.0".
  const helloSeen = new Promise<void>((resolve) => {
    const on = (e: { node: string | null; kind: string }) => {
      if (e.node !== 'rec-ovw' || e.kind !== 'hello') return;
      world.agent.store.off('event', on);
      resolve();
    };
    world.agent.store.on('event', on);
  });
  await n.powerCut();
  await helloSeen;
  const again = world.agent.status('rec-ovw')!;
  t.equal(again.imageState, 'recovery');
  t.equal(again.state, 'failed', 'still failed after the node came back');
  await world.publish({ hw: HW, version: '1.2.0', size: SIZE, flags: ManifestFlag.allowNoRollback });
  const fixed = await world.until('rec-ovw', (s) => s.targetVersion === '1.2.0' && ['confirmed', 'failed', 'rolledBack'].includes(s.state), 'the next release settled');
  // The node still fails every new image's self-test (failSelfTest): 1.2.0 fails too, truthfully.
  t.equal(fixed.state, 'failed');
  t.equal(fixed.runningVersion, '1.2.0');
});

t.test('deferred activation: the node is busy twice; the agent asks again after retry-after, then it activates', async (t) => {
  const world = await makeWorld();
  const n = await node(world, 'def-ok', { deferActivation: { times: 2, retryAfter: 1 } });
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  const busyAt: number[] = [];
  let activatedAt = 0;
  n.on('stage', (name: string) => {
    if (name === 'busy') busyAt.push(Date.now());
    if (name === 'rebooting' && !activatedAt) activatedAt = Date.now();
  });
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE });
  await world.until('def-ok', (s) => s.state === 'deferred', 'deferred');
  const s = await world.until('def-ok', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(s.runningVersion, '1.1.0');
  t.equal(busyAt.length, 2, 'asked three times: busy, busy, then it activated');
  // Lower bounds only: the agent waits retry-after (1 s) before each new Activate.
  t.ok(busyAt[1] - busyAt[0] >= 950, `second ask ${busyAt[1] - busyAt[0]} ms after the first`);
  t.ok(activatedAt - busyAt[1] >= 950, `third ask ${activatedAt - busyAt[1]} ms after the second`);
});

t.test('deferred activation is bounded: a node busy past the install deadline is recorded timedOut, naming the stage', async (t) => {
  const world = await makeWorld({ agent: { deadlines: { install: 2500 } } });
  const n = await node(world, 'def-late', { deferActivation: { times: 1000, retryAfter: 1 } });
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  let busy = 0;
  n.on('stage', (name: string) => {
    if (name === 'busy') busy++;
  });
  await world.publish({ hw: HW, version: '1.1.0', size: SIZE });
  const s = await world.until('def-late', (s) => s.state === 'timedOut', 'timed out');
  t.equal(s.reason, 'timeout');
  t.match(s.detail, /install deadline passed in state deferred/, 'the record names the stage');
  t.ok(busy >= 2 && busy <= 4, `asked ${busy} times within the 2.5 s deadline, at most once a second`);
  t.equal(n.runningVersion, '1.0.0', 'never activated');
});
