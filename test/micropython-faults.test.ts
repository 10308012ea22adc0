import t from 'tap';
import { once } from 'node:events';
import { makeWorld } from './helpers/world.js';
import { micropythonNode, removeFlash } from './helpers/micropython.js';
import { runSeed, seeded } from '../harness/seeded.js';
import { sha256 } from '../shared/manifest.js';

/**
 * The MicroPython client under faults, its own source in real MicroPython against the real agent:
 * power cuts at seeded flash operations during the transfer (each tears the write it lands on),
 * a failing and a hanging self-test, and releases the node must refuse.
 */
const HW = 'esp32-mpy';

t.test('power cuts at seeded points during the transfer: the node resumes and confirms', async (t) => {
  const seed = runSeed(12);
  const rand = seeded(seed);
  t.comment(`seed ${seed} (FERRY_SEED to replay)`);
  const world = await makeWorld();
  const node = await micropythonNode(world, HW, 'mpy-cut', { slotSize: 256 * 1024, saveEvery: 4 });
  t.teardown(async () => {
    await node.stop();
    await world.close();
    removeFlash(node);
  });
  const resumed: string[] = [];
  node.on('stage', (s: string) => {
    if (/^resumed session|resuming \d+\/\d+/.test(s)) resumed.push(s);
  });
  // Resolves with the node's next line saying it holds a transfer (or has verified one).
  const transferring = () =>
    new Promise<string>((resolve) => {
      const on = (s: string) => {
        if (!/^(downloading|resumed) session|resuming \d+\/\d+ chunks|^verified/.test(s)) return;
        node.off('stage', on);
        resolve(s);
      };
      node.on('stage', on);
    });
  let next = transferring();
  const { manifest } = await world.publish({ hw: HW, version: '2.0.0', size: 200 * 1024 });
  for (let i = 0; i < 3; i++) {
    // Once this boot holds the transfer, cut at a seeded flash operation from there: a chunk
    // write or erase, or a step of saving the bitmap (write, rename).
    if ((await next).startsWith('verified')) break;
    const at = 1 + Math.floor(rand() * 40);
    t.comment(`cut ${i + 1} at flash operation +${at}`);
    node.cutAfterFlashOps(at);
    await once(node, 'powerCut');
    next = transferring();
  }
  const s = await world.until('mpy-cut', (s) => s.state === 'confirmed', 'confirmed after the power cuts', 120_000);
  t.equal(s.runningVersion, '2.0.0');
  t.ok(sha256(node.slotImage(1, manifest.size)).equals(manifest.digest), 'the stored image is exact despite torn writes');
  t.ok(resumed.length > 0, `the node resumed from its saved bitmap (${resumed[0] ?? 'never'})`);
  t.ok(node.peakHeap <= 64 * 1024, `peak gc.mem_alloc() ${node.peakHeap} bytes`);
});

t.test('a new image that fails its self-test is rolled back', async (t) => {
  const world = await makeWorld();
  const node = await micropythonNode(world, HW, 'mpy-st', { selfTestFail: ['1.1.0'], selfTestHang: ['1.2.0'] });
  t.teardown(async () => {
    await node.stop();
    await world.close();
    removeFlash(node);
  });
  await world.publish({ hw: HW, version: '1.1.0' });
  let s = await world.until('mpy-st', (s) => s.state === 'rolledBack', 'rolled back from 1.1.0', 120_000);
  t.equal(s.runningVersion, '1.0.0', 'back on the old image');
  t.equal(s.reason, 'selfTestFailed');
  t.equal(s.slot, 0);
  // A hang in the self-test: the watchdog resets the chip, the bootloader returns to the old slot.
  await world.publish({ hw: HW, version: '1.2.0' });
  s = await world.until('mpy-st', (s) => s.targetVersion === '1.2.0' && s.state === 'rolledBack', 'rolled back from 1.2.0', 120_000);
  t.equal(s.runningVersion, '1.0.0');
  t.equal(s.reason, 'watchdog');
});

t.test('releases the node must refuse: an untrusted signer, a bad signature', async (t) => {
  const world = await makeWorld({ agent: { trust: [] } });
  const { generateOperatorKey } = await import('../shared/manifest.js');
  const stranger = generateOperatorKey();
  const node = await micropythonNode(world, HW, 'mpy-sig');
  t.teardown(async () => {
    await node.stop();
    await world.close();
    removeFlash(node);
  });
  // Signed by a key the node was not provisioned with (the agent here checks nothing).
  await world.publish({ hw: HW, version: '1.1.0', key: stranger.privateKey });
  let s = await world.until('mpy-sig', (s) => s.state === 'rejected', 'unknown key refused', 60_000);
  t.equal(s.reason, 'unknownKey');
  // The trusted key id on a signature made by another key: the signature itself fails.
  const { publishForged } = await import('./helpers/micropython.js');
  await publishForged(world, { hw: HW, version: '1.2.0', signer: stranger.privateKey, claimed: world.key.publicKey });
  s = await world.until('mpy-sig', (s) => s.targetVersion === '1.2.0' && s.state === 'rejected', 'bad signature refused', 60_000);
  t.equal(s.reason, 'badSignature');
  t.equal(s.runningVersion, '1.0.0', 'nothing was installed');
});
