import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { makeWorld } from './helpers/world.js';
import { micropythonNode, removeFlash } from './helpers/micropython.js';

/**
 * Seed 000 and 001 on the MicroPython client: an application that cannot start (boot counting,
 * recovery mode, the error kept on flash), and a new image whose application dies before its
 * self-test (the bootloader's rollback, reported as bootFailed).
 */
const HW = 'esp32-mpy';

t.test('an application that never starts puts the node in recovery mode; a new image ends it', async (t) => {
  const world = await makeWorld();
  const node = await micropythonNode(world, HW, 'mpy-rec', { crashAtStart: ['1.0.0'] });
  t.teardown(async () => {
    await node.stop();
    await world.close();
    removeFlash(node);
  });
  let s = await world.until('mpy-rec', (s) => s.imageState === 'recovery', 'recovery mode', 60_000);
  t.equal(s.runningVersion, '1.0.0');
  t.ok(node.boots >= 4, `three failed starts, then recovery (${node.boots} boots)`);
  const record = fs.readFileSync(path.join(node.flashDir, 'vfs', 'ferry', 'node'));
  t.ok(record.includes('application 1.0.0 crashed at start'), 'the last error is kept on flash');
  await world.publish({ hw: HW, version: '1.1.0' });
  s = await world.until('mpy-rec', (s) => s.state === 'confirmed' && s.imageState === 'valid', 'confirmed out of recovery', 120_000);
  t.equal(s.runningVersion, '1.1.0');
});

t.test('a new image whose application dies at start is rolled back by the bootloader', async (t) => {
  const world = await makeWorld();
  const node = await micropythonNode(world, HW, 'mpy-bf', { crashAtStart: ['1.3.0'] });
  t.teardown(async () => {
    await node.stop();
    await world.close();
    removeFlash(node);
  });
  await world.publish({ hw: HW, version: '1.3.0' });
  const s = await world.until('mpy-bf', (s) => s.state === 'rolledBack', 'rolled back', 120_000);
  t.equal(s.reason, 'bootFailed');
  t.equal(s.runningVersion, '1.0.0');
  t.equal(s.slot, 0);
});
