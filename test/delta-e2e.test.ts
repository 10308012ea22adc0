import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import type { Aedes } from 'aedes';
import { Agent } from '../agent/agent.js';
import { SimNode, type SimNodeOptions } from '../device/node.js';
import { sha256 } from '../shared/manifest.js';
import { decodeDown, encodeMessage, Encoding, MsgType, type Offer } from '../shared/messages.js';
import { makeWorld, type World } from './helpers/world.js';
import { demoImage } from '../harness/images.js';
import { firmware } from './helpers/fixtures.js';

/**
 * Delta patches through the real agent: a real broker, the agent with its SQLite store and patch
 * worker, simulated nodes that start on a firmware image (test/helpers/fixtures.ts: the real pairs
 * beside the checkout, or synthetic stand-ins) and apply the patch from flash. Every wait is on an
 * agent status or node event.
 */
const fixture = firmware;

/** Small Cortex-M4 pair (23,504 B each; the patch is ~1.2 KB and made in a fraction of a second). */
const PROG = { hw: 'cm4-programmer', old: fixture('programmer/0.8.0.bin'), new: fixture('programmer/0.9.0.bin'), from: '0.8.0', to: '0.9.0' };

/** What crossed the broker towards one node: its Offers and the data bytes of its Chunks. */
interface Wire {
  offers: Offer[];
  chunkBytes: number;
}

function watchWire(aedes: Aedes, id: string): Wire {
  const wire: Wire = { offers: [], chunkBytes: 0 };
  aedes.on('publish', (packet) => {
    if (packet.topic !== `ferry/d/${id}/dn`) return;
    const m = decodeDown(packet.payload as Buffer);
    if (m.type === MsgType.offer) wire.offers.push(m);
    else if (m.type === MsgType.chunk) wire.chunkBytes += m.data.length;
  });
  return wire;
}

async function startNode(world: World, t: { teardown(fn: () => unknown): void }, id: string, hw: string, version: string, image: Buffer, extra: Partial<SimNodeOptions> = {}): Promise<SimNode> {
  const n = new SimNode({ brokerUrl: world.broker.url, deviceId: id, hw, version, initialImage: image, trust: [world.key.publicKey], maxMessage: 2048, ...extra });
  t.teardown(() => n.stop());
  await n.start();
  await world.until(id, (s) => s.lastSeen !== null, 'hello');
  return n;
}

/** Publishes a release and resolves once the agent holds it. */
async function release(world: World, hw: string, version: string, image: Buffer): Promise<void> {
  const ready = new Promise<void>((resolve) => {
    const on = (r: { row: { hw: string; version: string } }) => {
      if (r.row.hw !== hw || r.row.version !== version) return;
      world.agent.off('release', on);
      resolve();
    };
    world.agent.on('release', on);
  });
  await world.publish({ hw, version, image });
  await ready;
}

function events(world: World, id: string, kind: string): string[] {
  return world.agent.store.events(id, 500).filter((e) => e.kind === kind).map((e) => e.detail);
}

function bytesSent(world: World, id: string): number {
  return world.agent.store.nodes().find((r) => r.id === id)!.bytesSent;
}

/** A broker that may rewrite agent → node messages in flight (a faulty gateway link). */
function tampering(fn: (payload: Buffer) => Buffer | undefined) {
  return {
    setup(aedes: Aedes) {
      aedes.authorizeForward = (_client, packet) => {
        if (!packet.topic.endsWith('/dn')) return packet;
        const changed = fn(Buffer.from(packet.payload as Buffer));
        if (changed) packet.payload = changed;
        return packet;
      };
    },
  };
}

t.test('a node running the base gets a delta through the agent, applies it and confirms', async (t) => {
  const world = await makeWorld();
  t.teardown(() => world.close());
  await release(world, PROG.hw, PROG.from, PROG.old);
  const node = await startNode(world, t, 'prog-1', PROG.hw, PROG.from, PROG.old);
  await world.until('prog-1', (s) => s.state === 'confirmed', 'confirmed on the base');
  const wire = watchWire(world.broker.aedes, 'prog-1');
  const stages: string[] = [];
  node.on('stage', (name: string) => stages.push(name));

  await release(world, PROG.hw, PROG.to, PROG.new);
  const s = await world.until('prog-1', (s) => s.state === 'confirmed' && s.runningVersion === PROG.to, 'confirmed on the target');

  t.equal(wire.offers.length > 0 && wire.offers.every((o) => o.encoding === Encoding.delta), true, 'every Offer carries encoding delta');
  const offer = wire.offers[0];
  t.ok(offer.baseDigest?.equals(sha256(PROG.old)), 'the Offer names the running image as the base');
  t.ok(offer.payloadSize < PROG.new.length / 10, `patch ${offer.payloadSize} B for a ${PROG.new.length} B image`);
  t.ok(wire.chunkBytes >= offer.payloadSize && wire.chunkBytes < PROG.new.length / 4, `${wire.chunkBytes} chunk bytes crossed the broker, the full image is ${PROG.new.length}`);
  t.equal(bytesSent(world, 'prog-1'), wire.chunkBytes, "the agent's own count of chunk bytes agrees");
  t.ok(stages.includes('patching'), 'the node applied a patch');
  t.ok(node.runningDigest.equals(sha256(PROG.new)), 'the node runs exactly the signed image');
  t.equal(s.imageState, 'valid');
  t.equal(s.payload, 'delta', 'the status says the session carried a patch');
  t.ok(s.bytes >= offer.payloadSize && s.bytes < offer.payloadSize + offer.chunkSize, `status bytes ${s.bytes} count the patch (${offer.payloadSize} B, whole chunks once the session is over), not the image`);
  t.equal(s.progress, 1);
  t.match(events(world, 'prog-1', 'payload').join('\n'), /delta cm4-programmer 0\.8\.0 -> 0\.9\.0: \d+ B for a 23504 B image/);
  t.match(events(world, 'prog-1', 'payload').join('\n'), /sparse diff/, 'the node announces capability 256, so its patch may use the sparse diff stream');
  t.equal(s.imageSize, PROG.new.length, 'the status names the image size beside the patch progress');
  t.equal(s.imageEquivalent, PROG.new.length, 'image-equivalent progress is the whole image once every chunk is in');
});

t.test('a patch corrupted between agent and node is reported and the full image follows', async (t) => {
  const deltaSessions = new Set<number>();
  let corrupted = 0;
  const world = await makeWorld({
    broker: tampering((payload) => {
      const m = decodeDown(payload);
      if (m.type === MsgType.offer && m.encoding === Encoding.delta) deltaSessions.add(m.session);
      if (m.type !== MsgType.chunk || !deltaSessions.has(m.session) || m.index !== 0 || corrupted > 0) return undefined;
      corrupted++;
      const data = Buffer.from(m.data);
      data[data.length - 1] ^= 0x5a;
      return encodeMessage({ ...m, data });
    }),
  });
  t.teardown(() => world.close());
  await release(world, PROG.hw, PROG.from, PROG.old);
  const node = await startNode(world, t, 'prog-t', PROG.hw, PROG.from, PROG.old);
  const wire = watchWire(world.broker.aedes, 'prog-t');
  await release(world, PROG.hw, PROG.to, PROG.new);
  await world.until('prog-t', (s) => s.state === 'confirmed' && s.runningVersion === PROG.to, 'confirmed on the target');
  t.equal(corrupted, 1, 'one patch chunk was damaged in transit');
  t.same([...new Set(wire.offers.map((o) => o.encoding))], [Encoding.delta, Encoding.full], 'delta first, then the full image');
  t.match(events(world, 'prog-t', 'delta-fallback'), [/^digestMismatch: stored patch does not match the offered digest/]);
  t.ok(node.runningDigest.equals(sha256(PROG.new)));
});

t.test('a patch the node cannot apply (damaged in the cache) falls back; the cache survives a restart and drops the bad patch', async (t) => {
  const logs: string[] = [];
  const world = await makeWorld({ agent: { log: (_l, msg) => logs.push(msg) } });
  t.teardown(() => world.close());
  await release(world, PROG.hw, PROG.from, PROG.old);
  await startNode(world, t, 'prog-a', PROG.hw, PROG.from, PROG.old);
  await release(world, PROG.hw, PROG.to, PROG.new);
  await world.until('prog-a', (s) => s.state === 'confirmed' && s.runningVersion === PROG.to, 'first node on the target');
  const dir = path.join(world.dataDir, 'patches');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.fryd'));
  t.equal(files.length, 1, 'the patch is kept under the data dir');

  // Restart: the patch comes from disk, nothing is made again.
  await world.restartAgent();
  logs.length = 0;
  const wireB = watchWire(world.broker.aedes, 'prog-b');
  await startNode(world, t, 'prog-b', PROG.hw, PROG.from, PROG.old);
  await world.until('prog-b', (s) => s.state === 'confirmed' && s.runningVersion === PROG.to, 'second node on the target');
  t.equal(wireB.offers[0]?.encoding, Encoding.delta, 'the second node gets the delta');
  t.notOk(logs.some((l) => /making delta patch/.test(l)), 'after the restart the cached patch is used, not made again');

  // Damage the cached patch's body (its header still checks out), restart, and offer it to a third node.
  const file = path.join(dir, files[0]);
  const bytes = fs.readFileSync(file);
  for (let i = 128; i < bytes.length; i += 7) bytes[i] ^= 0xa5; // past the longest (v3) header
  fs.writeFileSync(file, bytes);
  await world.restartAgent();
  const wireC = watchWire(world.broker.aedes, 'prog-c');
  const node = await startNode(world, t, 'prog-c', PROG.hw, PROG.from, PROG.old);
  await world.until('prog-c', (s) => s.state === 'confirmed' && s.runningVersion === PROG.to, 'third node on the target');
  t.same([...new Set(wireC.offers.map((o) => o.encoding))], [Encoding.delta, Encoding.full], 'delta first, then the full image');
  const fallback = events(world, 'prog-c', 'delta-fallback');
  t.equal(fallback.length, 1);
  t.match(fallback[0], /^(deltaFailed|oversize): /, `the node said why: ${fallback[0]}`);
  t.notOk(fs.existsSync(file), 'the bad patch is dropped from the cache');
  t.ok(node.runningDigest.equals(sha256(PROG.new)));
});

t.test('a node whose running slot is not what its Hello claims refuses the patch (running image untouched) and gets the full image', async (t) => {
  const world = await makeWorld();
  t.teardown(() => world.close());
  await release(world, PROG.hw, PROG.from, PROG.old);
  const node = await startNode(world, t, 'prog-rot', PROG.hw, PROG.from, PROG.old);
  // Bits flipped in the running slot after boot (flash wear): the Hello still claims the base digest.
  const slot = node.layout.slots[node.slot];
  node.flash.write(slot.offset + 5000, Buffer.alloc(16, 0));
  const before = node.flash.read(slot.offset, PROG.old.length);
  t.notOk(sha256(before).equals(sha256(PROG.old)), 'the running slot no longer hashes to the base');
  const refused = new Promise<string>((resolve) => node.on('stage', (name: string, detail: string) => name === 'rejected' && resolve(detail)));
  const wire = watchWire(world.broker.aedes, 'prog-rot');
  await release(world, PROG.hw, PROG.to, PROG.new);
  t.match(await refused, /deltaBaseMismatch: running slot hashes to [0-9a-f]+…, the patch is for [0-9a-f]+…/, 'the node names the mismatch');
  await world.until('prog-rot', (s) => s.state === 'confirmed' && s.runningVersion === PROG.to, 'confirmed on the target');
  t.same([...new Set(wire.offers.map((o) => o.encoding))], [Encoding.delta, Encoding.full]);
  t.match(events(world, 'prog-rot', 'delta-fallback'), [/^deltaBaseMismatch: /]);
  t.ok(node.flash.read(slot.offset, PROG.old.length).equals(before), 'the old slot was never written');
  t.ok(node.runningDigest.equals(sha256(PROG.new)));
});

t.test('full image when the node cannot apply deltas, when the agent is told not to, or when the patch does not save the margin', async (t) => {
  const world = await makeWorld({ agent: { deltaMargin: 0.97 } });
  t.teardown(() => world.close());
  await release(world, PROG.hw, PROG.from, PROG.old);
  const wires = { plain: watchWire(world.broker.aedes, 'prog-plain'), margin: watchWire(world.broker.aedes, 'prog-margin') };
  await startNode(world, t, 'prog-plain', PROG.hw, PROG.from, PROG.old, { delta: false });
  await startNode(world, t, 'prog-margin', PROG.hw, PROG.from, PROG.old);
  await release(world, PROG.hw, PROG.to, PROG.new);
  for (const id of ['prog-plain', 'prog-margin'] as const) {
    await world.until(id, (s) => s.state === 'confirmed' && s.runningVersion === PROG.to, `${id} confirmed`);
  }
  t.same(wires.plain.offers.map((o) => o.encoding), [Encoding.full], 'a node without capability 1 gets the full image');
  t.match(events(world, 'prog-plain', 'payload'), [/full image: the node does not apply delta patches/]);
  t.same([...new Set(wires.margin.offers.map((o) => o.encoding))], [Encoding.full], 'a ~95 % saving is below the 97 % margin');
  t.match(events(world, 'prog-margin', 'payload'), [/full image: delta cm4-programmer 0\.8\.0 -> 0\.9\.0 is \d+ B, not 97 % smaller than the 23504 B image/]);
  t.equal(bytesSent(world, 'prog-margin'), PROG.new.length, 'the whole image travelled');

  // The switch: delta off for every node.
  await world.restartAgent({ delta: false, deltaMargin: undefined });
  await release(world, PROG.hw, '0.9.1', demoImage(PROG.hw, '0.9.1', PROG.new.length));
  const wireOff = watchWire(world.broker.aedes, 'prog-off');
  await startNode(world, t, 'prog-off', PROG.hw, PROG.from, PROG.old);
  await world.until('prog-off', (s) => s.state === 'confirmed' && s.runningVersion === '0.9.1', 'confirmed');
  t.same(wireOff.offers.map((o) => o.encoding), [Encoding.full]);
  t.match(events(world, 'prog-off', 'payload'), [/full image: delta patches are turned off/]);

  t.throws(() => new Agent({ brokerUrl: world.broker.url, dataDir: world.dataDir, deltaMargin: 1 }), /deltaMargin 1 must be at least 0 and below 1/);
});

t.test('patch creation runs off the event loop: another node completes a full update while a large patch is being made', async (t) => {
  const ESP = {
    hw: 'esp8266-mpy',
    old: fixture('micropython-esp8266/esp8266-20180511-v1.9.4.bin'),
    new: fixture('micropython-esp8266/esp8266-20190125-v1.10.bin'),
  };
  const logs: string[] = [];
  const world = await makeWorld({ agent: { log: (_l, msg) => logs.push(msg) } });
  t.teardown(() => world.close());
  await release(world, ESP.hw, '1.9.4', ESP.old);
  const esp = await startNode(world, t, 'esp-1', ESP.hw, '1.9.4', ESP.old, { maxMessage: 4096 });
  await startNode(world, t, 'other-1', 'cm4-other', '1.0.0', demoImage('cm4-other', '1.0.0', 8192));
  await world.until('esp-1', (s) => s.state === 'confirmed', 'esp-1 on its base');

  // The ESP8266 patch takes seconds of CPU; the other node's 8 KiB update needs only the event loop.
  await release(world, ESP.hw, '1.10.0', ESP.new);
  await world.until('esp-1', (s) => s.detail.startsWith('making delta patch'), 'patch job started');
  await release(world, 'cm4-other', '1.1.0', demoImage('cm4-other', '1.1.0', 8192));
  await world.until('other-1', (s) => s.state === 'confirmed' && s.runningVersion === '1.1.0', 'other-1 confirmed');
  const mid = world.agent.status('esp-1')!;
  t.equal(mid.state, 'offered', 'esp-1 still waits for its patch');
  t.match(mid.detail, /^making delta patch esp8266-mpy 1\.9\.4 -> 1\.10\.0/, 'its status says why');

  const wire = watchWire(world.broker.aedes, 'esp-1');
  await world.until('esp-1', (s) => s.state === 'confirmed' && s.runningVersion === '1.10.0', 'esp-1 confirmed', 180_000);
  t.ok(esp.runningDigest.equals(sha256(ESP.new)), 'esp-1 runs the v1.10 image');
  t.ok(bytesSent(world, 'esp-1') < ESP.new.length / 8, `${bytesSent(world, 'esp-1')} B sent for a ${ESP.new.length} B image`);
  t.ok(wire.offers.length > 0 && wire.offers.every((o) => o.encoding === Encoding.delta), 'esp-1 got the delta');
  t.ok(logs.some((l) => /delta patch esp8266-mpy 1\.9\.4 -> 1\.10\.0: match \d+ %/.test(l)), 'creation progress is logged');
  t.ok(logs.some((l) => /patch cache: made \d+ B patch \([\d.]+ % of the 615388 B image\) in [\d.]+ s/.test(l)), 'the finished patch is logged');
});
