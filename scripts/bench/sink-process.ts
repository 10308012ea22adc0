/**
 * The receiving end of the throughput bench, in its own long-lived process (forked once per kind
 * by throughput.ts, driven over IPC, so the warm-up runs warm it too): either ferry SimNodes, or a
 * raw MQTT subscriber that does the same sink work as the node: each message written into emulated
 * flash through the node's own Download (lazy sector erases, the write, the bitmap, an NVS save
 * every 16 chunks), then the slot read back and hashed with SHA-256 and compared, as the node
 * verifies an image.
 *
 *   node sink-process.js node|raw <brokerUrl>
 *
 * From the parent: {type: 'begin', ...} starts one receiver (node: id, maxMessage, window, trust PEM;
 * raw: topic, size, chunk, sha256 hex), {type: 'end'} stops it. To the parent: {type: 'ready'} when
 * it is connected and subscribed, {type: 'done'} (the image is stored and verified),
 * {type: 'ended'}, {type: 'error', message}.
 */
import { createPublicKey } from 'node:crypto';
import mqtt from 'mqtt';
import { SimNode } from '../../device/node.js';
import { Flash } from '../../device/flash.js';
import { DEFAULT_SLOT_SIZE, makeLayout } from '../../device/layout.js';
import { Nvs } from '../../device/nvs.js';
import { Download } from '../../device/transfer.js';
import { Encoding } from '../../shared/messages.js';

export type SinkCommand =
  | { type: 'begin'; id: string; maxMessage: number; window: number; trustPem: string }
  | { type: 'begin'; clientId: string; topic: string; size: number; chunk: number; digestHex: string }
  | { type: 'end' };
export type SinkReport = { type: 'ready' } | { type: 'done' } | { type: 'ended' } | { type: 'error'; message: string };

function tell(m: SinkReport): void {
  process.send?.(m);
}

async function beginNode(brokerUrl: string, c: { id: string; maxMessage: number; window: number; trustPem: string }): Promise<() => Promise<void>> {
  const node = new SimNode({ brokerUrl, deviceId: c.id, hw: 'bench', version: '1.0.0', trust: [createPublicKey(c.trustPem)], maxMessage: c.maxMessage, window: c.window });
  // Stored and verified (read back, hashed, matched): the raw sink's 'done' at the same point.
  node.on('stage', (name: string) => {
    if (name === 'verified') tell({ type: 'done' });
  });
  await node.start();
  return () => node.stop();
}

async function beginRaw(brokerUrl: string, c: { clientId: string; topic: string; size: number; chunk: number; digestHex: string }): Promise<() => Promise<void>> {
  const digest = Buffer.from(c.digestHex, 'hex');
  const layout = makeLayout(DEFAULT_SLOT_SIZE);
  const flash = new Flash(layout.flashSize);
  const nvs = new Nvs(flash, layout.nvs);
  const d = Download.begin(flash, nvs, 1, layout.slots[1], { session: 1, encoding: Encoding.full, payloadSize: c.size, chunkSize: c.chunk, payloadDigest: digest, manifest: Buffer.alloc(0) });
  const sub = await mqtt.connectAsync(brokerUrl, { protocolVersion: 4, clientId: c.clientId });
  let next = 0;
  sub.on('message', (_t, payload) => {
    d.store(next++, payload);
    if (d.complete) {
      if (d.digestOfStored().equals(digest)) tell({ type: 'done' });
      else tell({ type: 'error', message: 'raw sink: stored image does not hash to the published digest' });
    }
  });
  await sub.subscribeAsync(c.topic, { qos: 1 });
  return () => sub.endAsync();
}

function main(): void {
  const [mode, brokerUrl] = process.argv.slice(2);
  if ((mode !== 'node' && mode !== 'raw') || !brokerUrl) {
    process.stderr.write('usage: sink-process node|raw <brokerUrl>\n');
    process.exit(2);
  }
  let stop: (() => Promise<void>) | undefined;
  process.on('message', (m: SinkCommand) => {
    const run = async () => {
      if (m.type === 'begin') {
        stop = 'id' in m ? await beginNode(brokerUrl, m) : await beginRaw(brokerUrl, m);
        tell({ type: 'ready' });
      } else if (m.type === 'end') {
        await stop?.();
        stop = undefined;
        tell({ type: 'ended' });
      }
    };
    run().catch((err: Error) => tell({ type: 'error', message: err.message }));
  });
  process.on('disconnect', () => void (stop?.() ?? Promise.resolve()).finally(() => process.exit(0)));
}

main();
