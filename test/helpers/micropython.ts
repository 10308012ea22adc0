import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { demoImage } from '../../cli/demo.js';
import { MicroPythonNode, type MicroPythonNodeOptions } from '../../device/micropython-host.js';
import type { World } from './world.js';

/** A MicroPython node on the world's broker with a fresh flash directory, started and heard by the agent. */
export async function micropythonNode(world: World, hw: string, id: string, extra: Partial<MicroPythonNodeOptions> = {}): Promise<MicroPythonNode> {
  const flashDir = fs.mkdtempSync(path.join(os.tmpdir(), `ferry-mpy-${id}-`));
  const n = new MicroPythonNode({
    brokerUrl: world.broker.url, deviceId: id, hw, version: '1.0.0', trust: [world.key.publicKey], flashDir,
    image: demoImage(hw, '1.0.0', 48 * 1024), slotSize: 128 * 1024, ...extra,
  });
  if (process.env.FERRY_MPY_LOG) n.on('stage', (s: string) => process.stderr.write(`[${id}] ${s}\n`));
  if (process.env.FERRY_MPY_LOG) n.on('log', (s: string) => process.stderr.write(`[${id}] py: ${s}\n`));
  await n.start();
  await world.until(id, () => true, 'hello');
  return n;
}

export function removeFlash(n: MicroPythonNode): void {
  fs.rmSync(n.flashDir, { recursive: true, force: true });
}
