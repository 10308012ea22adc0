import t from 'tap';
import { once } from 'node:events';
import { makeWorld } from './helpers/world.js';
import { micropythonNode, removeFlash } from './helpers/micropython.js';

/**
 * Power cuts around the activation of a MicroPython node, at each flash operation in turn after the
 * image verified: saving the slot table, the trial record, the boot selection (each a write then a
 * rename, the write torn by the cut), dropping the transfer. Every cut must end confirmed.
 */
const HW = 'esp32-mpy';
const CUT_POINTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];

t.test('a power cut at any flash operation of the activation still ends confirmed', async (t) => {
  const world = await makeWorld();
  t.teardown(() => world.close());
  await world.publish({ hw: HW, version: '1.1.0', size: 32 * 1024 });
  const one = async (at: number) => {
    const id = `mpy-act-${at}`;
    const node = await micropythonNode(world, HW, id, { slotSize: 64 * 1024 });
    try {
      const verified = new Promise<void>((resolve) => {
        const on = (s: string) => {
          if (!s.startsWith('verified')) return;
          node.off('stage', on);
          node.cutAfterFlashOps(at);
          resolve();
        };
        node.on('stage', on);
      });
      await verified;
      await once(node, 'powerCut');
      const s = await world.until(id, (s) => s.state === 'confirmed', `confirmed after a cut at +${at}`, 60_000);
      t.equal(s.runningVersion, '1.1.0', `cut at flash operation +${at} after verified: confirmed 1.1.0`);
      t.ok(node.lines.every((l) => !/Traceback/.test(l)), 'no Python exception');
    } finally {
      await node.stop();
      removeFlash(node);
    }
  };
  // A few nodes at a time (one worker thread each).
  for (let i = 0; i < CUT_POINTS.length; i += 4) await Promise.all(CUT_POINTS.slice(i, i + 4).map(one));
});
