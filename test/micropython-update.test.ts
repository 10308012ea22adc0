import t from 'tap';
import { makeWorld } from './helpers/world.js';
import { micropythonNode, removeFlash } from './helpers/micropython.js';
import { sha256 } from '../shared/manifest.js';

/**
 * The MicroPython client (node/micropython/ferry_node), its own source in real MicroPython, against
 * the real agent and aedes: a full update to confirmed, then the heap it needed.
 */
t.test('a MicroPython node takes a full update to confirmed', async (t) => {
  const world = await makeWorld();
  const node = await micropythonNode(world, 'esp32-mpy', 'mpy-1');
  t.teardown(async () => {
    await node.stop();
    await world.close();
    removeFlash(node);
  });
  const { manifest } = await world.publish({ hw: 'esp32-mpy', version: '1.1.0', size: 96 * 1024 });
  const s = await world.until('mpy-1', (s) => s.state === 'confirmed' && s.runningVersion === '1.1.0', 'confirmed 1.1.0', 120_000);
  t.equal(s.runningVersion, '1.1.0');
  t.equal(s.slot, 1, 'runs from the other OTA slot');
  t.ok(sha256(node.slotImage(1, manifest.size)).equals(manifest.digest), 'slot 1 holds the release image byte for byte');
  // A Hello after the confirmation says valid (image state 2).
  await world.until('mpy-1', (s) => s.imageState === 'valid', 'image valid', 30_000);
  t.ok(node.peakHeap > 0 && node.peakHeap <= 64 * 1024, `peak gc.mem_alloc() ${node.peakHeap} bytes, within 64 KiB`);
  t.ok(node.lines.every((l) => !/Traceback/.test(l)), 'no Python exception');
});
