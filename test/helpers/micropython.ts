import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import mqtt from 'mqtt';
import { demoImage } from '../../harness/images.js';
import { decodeCbor, encodeCbor } from '../../shared/cbor.js';
import { keyId, sha256, signManifest } from '../../shared/manifest.js';
import { topics } from '../../shared/topics.js';
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

/**
 * Publishes a release whose COSE_Sign1 names `claimed`'s key id but is signed by `signer`: what a
 * node must refuse as badSignature (the agent is expected to run without a trust list here).
 */
export async function publishForged(world: World, o: { hw: string; version: string; signer: KeyObject; claimed: KeyObject; size?: number }): Promise<void> {
  const image = demoImage(o.hw, o.version, o.size ?? 64 * 1024);
  const genuine = signManifest({ hw: o.hw, version: o.version, securityVersion: 0, size: image.length, digest: sha256(image), created: Math.floor(Date.now() / 1000), flags: 0 }, o.signer);
  const [prot, , payload, sig] = decodeCbor(genuine) as Uint8Array[];
  const forged = encodeCbor([prot, new Map([[4, keyId(o.claimed)]]), payload, sig]);
  const t = topics();
  const c = await mqtt.connectAsync(world.broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  await c.publishAsync(t.releasePart(o.hw, o.version, 0), image, { qos: 1, retain: true });
  await c.publishAsync(t.releaseManifest(o.hw, o.version), forged, { qos: 1, retain: true });
  await c.endAsync();
}
