import t from 'tap';
import { makeWorld } from './helpers/world.js';
import { micropythonNode, removeFlash } from './helpers/micropython.js';

t.test('a MicroPython node takes a full update to confirmed', async (t) => {
  const world = await makeWorld();
  const node = await micropythonNode(world, 'esp32-mpy', 'mpy-1');
  t.teardown(async () => {
    await node.stop();
    await world.close();
    removeFlash(node);
  });
  await world.publish({ hw: 'esp32-mpy', version: '1.1.0', size: 96 * 1024 });
  const s = await world.until('mpy-1', (s) => s.state === 'confirmed' && s.runningVersion === '1.1.0', 'confirmed 1.1.0', 120_000);
  t.equal(s.runningVersion, '1.1.0');
  t.ok(node.peakHeap > 0, `peak heap ${node.peakHeap} bytes`);
});
