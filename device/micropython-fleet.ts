import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import { MicroPythonNode } from './micropython-host.js';
import { fleetIds } from './fleet.js';

/**
 * MicroPython nodes for `ferry demo --node micropython`: the client's own source in real MicroPython
 * (one worker thread each), flashes in a temp dir. The last `failSelfTest` nodes fail the self-test
 * of `failVersion`.
 */
export interface MicroPythonFleetOptions {
  brokerUrl: string;
  count: number;
  hw: string;
  version: string;
  trust: KeyObject[];
  /** Factory image of every node. */
  image: Buffer;
  /** Largest image the nodes must take: sets the slot size. */
  maxImage: number;
  failSelfTest: number;
  failVersion: string;
  perNode?: Record<string, { username?: string; password?: string }>;
}

export interface MicroPythonFleet {
  nodes: MicroPythonNode[];
  stop(): Promise<void>;
}

export async function startMicroPythonFleet(o: MicroPythonFleetOptions): Promise<MicroPythonFleet> {
  const ids = fleetIds(o.count);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-mpy-fleet-'));
  const slotSize = Math.ceil(Math.max(o.maxImage, o.image.length) / 4096) * 4096;
  const nodes = ids.map((id, i) =>
    new MicroPythonNode({
      brokerUrl: o.brokerUrl, deviceId: id, hw: o.hw, version: o.version, trust: o.trust, image: o.image, slotSize,
      flashDir: path.join(root, id), selfTestFail: i >= o.count - o.failSelfTest ? [o.failVersion] : [], ...o.perNode?.[id],
    }),
  );
  await Promise.all(nodes.map((n) => n.start()));
  return {
    nodes,
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}
