import t from 'tap';
import { Aedes } from 'aedes';
import { SimNode } from '../device/node.js';
import { decodeDown, encodeMessage, MsgType } from '../shared/messages.js';
import { generateOperatorKey, sha256, signManifest } from '../shared/manifest.js';
import { makeWorld, type World } from './helpers/world.js';
import { demoImage } from '../harness/images.js';

const HW = 'esp32-test';

async function node(world: World, id: string, extra: Partial<ConstructorParameters<typeof SimNode>[0]> = {}): Promise<SimNode> {
  const n = new SimNode({ brokerUrl: world.broker.url, deviceId: id, hw: HW, version: '1.0.0', trust: [world.key.publicKey], ...extra });
  await n.start();
  await world.until(id, () => true, 'hello');
  return n;
}

t.test('three nodes are updated to a confirmed boot; one with a failing self-test rolls back', async (t) => {
  const world = await makeWorld();
  const nodes = [await node(world, 'n1'), await node(world, 'n2'), await node(world, 'n3'), await node(world, 'bad', { failSelfTest: true })];
  t.teardown(async () => {
    for (const n of nodes) await n.stop();
    await world.close();
  });
  const image = demoImage(HW, '1.1.0', 200 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  for (const id of ['n1', 'n2', 'n3']) {
    const s = await world.until(id, (s) => s.state === 'confirmed', 'confirmed');
    t.equal(s.runningVersion, '1.1.0', `${id} runs 1.1.0`);
    t.equal(s.imageState, 'valid', `${id} image marked valid`);
    t.equal(s.received, s.total, `${id} received every chunk`);
  }
  for (const n of nodes.slice(0, 3)) {
    t.equal(n.runningVersion, '1.1.0');
    t.ok(n.runningDigest.equals(sha256(image)), 'node runs exactly the published image');
  }
  const bad = await world.until('bad', (s) => s.state === 'rolledBack', 'rolled back');
  t.equal(bad.reason, 'selfTestFailed', 'rollback reason recorded');
  t.equal(bad.runningVersion, '1.0.0', 'back on the previous image');
  t.equal(nodes[3].runningVersion, '1.0.0');
  // The record is durable: the agent's SQLite row says the same.
  const row = world.agent.store.nodes().find((r) => r.id === 'bad')!;
  t.equal(row.state, 'rolledBack');
  t.equal(row.reason, 10);
  // Truthful, not a loop: the rolled-back node is not offered the same release again on its next hello.
  await nodes[3].stop();
  const again = new SimNode({ brokerUrl: world.broker.url, deviceId: 'bad', hw: HW, version: '1.0.0', trust: [world.key.publicKey], flash: nodes[3].flash });
  nodes[3] = again;
  await again.start();
  await world.until('bad', (s) => s.lastSeen !== bad.lastSeen, 'second hello');
  t.equal(world.agent.status('bad')!.state, 'rolledBack', 'still rolled back, not re-offered');
});

/** A broker that rewrites agent → node traffic in flight: the gateway-or-broker-is-hostile case. */
function tamperingBroker(tamper: (payload: Buffer) => Buffer | undefined) {
  return {
    setup(aedes: Aedes) {
      aedes.authorizeForward = (client, packet) => {
        if (!packet.topic.endsWith('/dn')) return packet;
        const changed = tamper(Buffer.from(packet.payload as Buffer));
        if (changed) packet.payload = changed;
        return packet;
      };
    },
  };
}

t.test('an image altered between operator and node is rejected by the node', async (t) => {
  const world = await makeWorld({
    broker: tamperingBroker((payload) => {
      const m = decodeDown(payload);
      if (m.type !== MsgType.chunk || m.index !== 1) return undefined;
      const data = Buffer.from(m.data);
      data[7] ^= 0xff;
      return encodeMessage({ ...m, data });
    }),
  });
  const n = await node(world, 'victim');
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0' });
  const s = await world.until('victim', (s) => s.state === 'rejected', 'rejected');
  t.equal(s.reason, 'digestMismatch');
  t.equal(n.runningVersion, '1.0.0', 'running image untouched');
});

t.test('a manifest forged in transit (re-signed by another key) is rejected', async (t) => {
  const rogue = generateOperatorKey();
  const world = await makeWorld({
    broker: tamperingBroker((payload) => {
      const m = decodeDown(payload);
      if (m.type !== MsgType.offer) return undefined;
      const forged = signManifest({ hw: HW, version: '6.6.6', securityVersion: 0, size: m.payloadSize, digest: m.payloadDigest, created: 0, flags: 0 }, rogue.privateKey);
      return encodeMessage({ ...m, manifest: forged });
    }),
  });
  const n = await node(world, 'victim2');
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0' });
  const s = await world.until('victim2', (s) => s.state === 'rejected', 'rejected');
  t.match(s.reason, /unknownKey|badSignature/);
  t.equal(n.runningVersion, '1.0.0');
});

t.test('a downgrade is refused: not offered by the agent, and refused by the node if forced', async (t) => {
  const world = await makeWorld({
    broker: tamperingBroker(() => undefined),
  });
  const n = await node(world, 'newer', { version: '2.0.0' });
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  const released = new Promise<void>((resolve) => world.agent.once('release', () => resolve()));
  await world.publish({ hw: HW, version: '1.1.0' });
  await released;
  const s = world.agent.status('newer')!;
  t.not(s.state, 'offered', 'agent does not offer an older release');
  // Since the agent refuses before offering (docs/protocol.md 6.1), the status says why instead of idling.
  t.match(s, { state: 'rejected', reason: 'downgrade', detail: /^not offered by the agent: 1\.1\.0 is not newer than the running 2\.0\.0/ });
  // A hostile gateway offers it anyway: the node refuses.
  const image = demoImage(HW, '1.1.0', 4096);
  const manifest = signManifest({ hw: HW, version: '1.1.0', securityVersion: 0, size: image.length, digest: sha256(image), created: 1, flags: 0 }, world.key.privateKey);
  const refused = new Promise<unknown>((resolve) => n.once('outcome', resolve));
  world.broker.aedes.publish(
    { cmd: 'publish', topic: 'ferry/d/newer/dn', payload: encodeMessage({ type: MsgType.offer, offerId: 1, session: 77, manifest, encoding: 0, payloadSize: image.length, payloadDigest: sha256(image), chunkSize: 1024 }), qos: 0, retain: false, dup: false },
    () => {},
  );
  const outcome = (await refused) as { stage: number; reason: number };
  t.equal(outcome.reason, 7, 'node reports downgrade');
  t.equal(n.runningVersion, '2.0.0');
});

t.test('after an operator key rotation, releases signed by the old key are no longer offered', async (t) => {
  const world = await makeWorld();
  const n1 = await node(world, 'n1');
  t.teardown(async () => {
    await n1.stop();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0' });
  await world.until('n1', (s) => s.state === 'confirmed', 'confirmed');
  const released = await world.publish({ hw: HW, version: '1.2.0' });
  await new Promise<void>((resolve) => {
    const done = () => world.agent.catalog.all().some((r) => r.row.version === '1.2.0') && resolve();
    world.agent.on('release', done);
    done();
  });
  t.equal(released.manifest.version, '1.2.0');

  const rotated = generateOperatorKey();
  const warnings: string[] = [];
  await world.restartAgent({ trust: [rotated.publicKey], log: (level, msg) => level === 'warn' && warnings.push(msg) });
  t.same(world.agent.catalog.all(), [], 'nothing stored is offered under the new trust list');
  t.equal(warnings.filter((w) => w.startsWith('stored release not offered')).length, 2, 'each skipped release is logged');
  t.ok(world.agent.store.releases().length >= 2, 'the stored releases themselves are kept');
});
