import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { MqttClient } from 'mqtt';
import { Agent } from '../agent/agent.js';
import { IdentityStore, startBroker } from '../broker/index.js';
import { demoImage } from '../harness/images.js';
import { SimNode } from '../device/node.js';
import { publishRelease } from '../operator/publish.js';
import { decodeIntMap, encodeCbor } from '../shared/cbor.js';
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { Capability, decodeDown, ImageState, MsgType, PROTOCOL_VERSION } from '../shared/messages.js';
import { connect, end, publish, subscribe, tmpDir } from './helpers/broker-support.js';
import { makeWorld, quickNode, untilStatus, type World } from './helpers/world.js';
import { onChunkFraction } from './helpers/agent-process.js';

/**
 * Regression tests for the lifecycle bugs of issue 9, each through a real broker and a real agent.
 * Waits are bounded so that a regression fails with the agent's last status instead of hanging.
 */
const HW = 'esp32-life';

function stateTrail(world: World, id: string): string[] {
  return world.agent.store
    .events(id, 10_000)
    .reverse()
    .filter((e) => e.kind === 'state')
    .map((e) => e.detail);
}

t.test('bug 1: a newer release published mid-update is offered while the node stays connected', async (t) => {
  t.test('during the download: the transfer is cancelled and the newer release follows at once', async (t) => {
    const world = await makeWorld();
    const n = await quickNode(world, HW, 'mid-dl', { maxMessage: 1024, slotSize: 1024 * 1024 });
    const stages: string[] = [];
    n.on('stage', (s: string) => stages.push(s));
    t.teardown(async () => {
      await n.stop();
      await world.close();
    });
    await world.publish({ hw: HW, version: '1.1.0', size: 600 * 1024 });
    await onChunkFraction(n, 0.2);
    const newer = demoImage(HW, '1.2.0', 64 * 1024);
    await world.publish({ hw: HW, version: '1.2.0', image: newer });
    const s = await world.until('mid-dl', (s) => s.state === 'confirmed' && s.runningVersion === '1.2.0', 'confirmed on 1.2.0', 30_000);
    t.equal(s.targetVersion, '1.2.0');
    t.ok(n.runningDigest.equals(sha256(newer)), 'the node runs the newer image');
    t.ok(stateTrail(world, 'mid-dl').some((d) => d.endsWith('-> cancelled')), 'the replaced update is recorded as cancelled');
    t.ok(stages.includes('cancelled'), 'the node was told (Cancel) and dropped the old transfer');
  });

  t.test('while activation is deferred: cancelled, and the newer release is offered', async (t) => {
    const world = await makeWorld();
    const n = await quickNode(world, HW, 'mid-defer', { deferActivation: { times: 1, retryAfter: 60 } });
    t.teardown(async () => {
      await n.stop();
      await world.close();
    });
    await world.publish({ hw: HW, version: '1.1.0' });
    await world.until('mid-defer', (s) => s.state === 'deferred', 'deferred', 30_000);
    await world.publish({ hw: HW, version: '1.2.0' });
    const s = await world.until('mid-defer', (s) => s.targetVersion === '1.2.0' && ['deferred', 'activating', 'confirming', 'confirmed'].includes(s.state), '1.2.0 downloaded', 30_000);
    t.ok(s, `1.2.0 got to ${s.state}`);
    t.equal(n.runningVersion, '1.0.0', 'the replaced 1.1.0 was never activated');
    t.ok(stateTrail(world, 'mid-defer').some((d) => d === 'deferred -> cancelled'), 'the deferred 1.1.0 update ends cancelled');
  });

  t.test('while confirming: the trial boot ends with its true outcome, then the newer release is offered', async (t) => {
    const world = await makeWorld();
    const n = await quickNode(world, HW, 'mid-confirm', { selfTestMs: 3000 });
    t.teardown(async () => {
      await n.stop();
      await world.close();
    });
    await world.publish({ hw: HW, version: '1.1.0' });
    await world.until('mid-confirm', (s) => s.state === 'confirming', 'confirming', 30_000);
    await world.publish({ hw: HW, version: '1.2.0' });
    await world.until('mid-confirm', (s) => s.state === 'confirmed' && s.runningVersion === '1.2.0', 'confirmed on 1.2.0', 30_000);
    const trail = stateTrail(world, 'mid-confirm');
    const i = trail.findIndex((d) => d.endsWith('-> confirming'));
    t.equal(trail[i + 1], 'confirming -> confirmed', `the 1.1.0 trial boot ends confirmed before anything else (trail: ${trail.join(', ')})`);
  });
  t.end();
});

t.test('bug 2: preempting a confirming node keeps its outcome; a later power cut records no bogus rollback', async (t) => {
  const world = await makeWorld();
  const n = await quickNode(world, HW, 'preempt', { selfTestMs: 3000, deferActivation: { times: 1, retryAfter: 2 } });
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0' });
  await world.until('preempt', (s) => s.state === 'confirming', 'confirming 1.1.0', 30_000);
  await world.publish({ hw: HW, version: '1.2.0' });
  await world.until('preempt', (s) => s.state === 'deferred' && s.targetVersion === '1.2.0', '1.2.0 deferred', 30_000);
  await n.powerCut();
  const s = await world.until('preempt', (s) => s.state === 'confirmed' && s.runningVersion === '1.2.0', 'confirmed on 1.2.0', 30_000);
  t.equal(s.reason, null);
  const trail = stateTrail(world, 'preempt');
  t.notOk(trail.some((d) => d.endsWith('-> rolledBack')), `no rollback recorded (trail: ${trail.join(', ')})`);
  t.same(world.agent.store.refusals('preempt'), [], 'nothing on the refused list');
});

/** Raw CBOR: the test speaks the wire format so that it can send Acks with or without the "answers" key. */
function rawAck(session: number, base: number, answers?: number): Buffer {
  const m = new Map<number, unknown>([[0, MsgType.ack], [1, session], [2, base]]);
  if (answers !== undefined) m.set(4, answers);
  return encodeCbor(m);
}

t.test('bug 3: an Ack crossing an Offer is not taken as the answer to it', async (t) => {
  const world = await makeWorld();
  const id = 'crossing';
  const dn = `ferry/d/${id}/dn`;
  const up = `ferry/d/${id}/up`;
  const c: MqttClient = await connect(world.broker.url, { clientId: id });
  t.teardown(async () => {
    await end(c);
    await world.close();
  });
  await subscribe(c, dn);
  const chunks = new Set<number>();
  let chunk0!: () => void;
  const gotChunk0 = new Promise<void>((r) => (chunk0 = r));
  let offered!: (m: Map<number, unknown>) => void;
  const offer = new Promise<Map<number, unknown>>((r) => (offered = r));
  c.on('message', (_tp, payload) => {
    const m = decodeDown(payload);
    if (m.type === MsgType.offer) offered(decodeIntMap(payload, 'offer'));
    if (m.type === MsgType.chunk) {
      chunks.add(m.index);
      if (m.index === 0) chunk0();
    }
  });
  await publish(c, up, encodeCbor(new Map<number, unknown>([
    [0, MsgType.hello], [1, PROTOCOL_VERSION], [2, id], [3, HW], [4, '1.0.0'], [5, sha256(Buffer.from('factory'))], [6, 0], [7, 0],
    [8, ImageState.valid], [9, 1024], [10, Capability.rollback], [11, 16],
  ])));
  await world.publish({ hw: HW, version: '1.1.0', size: 48 * 1024 });
  const o = await offer;
  const session = o.get(1) as number;
  const offerId = o.get(8) as number | undefined;
  // An Ack from before the Offer (e.g. for chunks the node has since lost) crosses it on the way...
  await publish(c, up, rawAck(session, 16));
  // ...then the node's real answer: it holds nothing.
  await publish(c, up, rawAck(session, 0, offerId));
  const timeout = setTimeout(() => chunk0(), 15_000);
  await gotChunk0;
  clearTimeout(timeout);
  t.ok(chunks.has(0), `chunk 0 is sent: the answer, not the crossing Ack, says what the node holds (chunks seen: ${[...chunks].sort((a, b) => a - b).slice(0, 8).join(',')}…)`);
});

t.test('bug 4: after a power cut (presence on) a node gets the image once, plus what it lost, not half a window twice', async (t) => {
  const dir = tmpDir('power-cut-budget');
  const store = IdentityStore.open(path.join(dir, 'broker'));
  const broker = await startBroker({ ferry: { store } });
  const agentCred = await store.add('agent', 'agent-1');
  const op = await store.add('operator', 'op-1');
  const key = generateOperatorKey();
  const agent = new Agent({ brokerUrl: broker.url, ...agentCred, clientId: 'agent-1', dataDir: path.join(dir, 'agent'), trust: [key.publicKey], rtt: { initialRto: 300, minRto: 100 } });
  await agent.start();
  const delivered = new Map<string, number>();
  const forward = broker.aedes.authorizeForward;
  broker.aedes.authorizeForward = (client, packet) => {
    const m = /^ferry\/d\/([^/]+)\/dn$/.exec(packet.topic);
    if (m && client?.id === m[1]) {
      try {
        if (decodeDown(packet.payload as Buffer).type === MsgType.chunk) delivered.set(m[1], (delivered.get(m[1]) ?? 0) + 1);
      } catch {
        // not a chunk
      }
    }
    return forward ? forward(client, packet) : packet;
  };
  t.teardown(async () => {
    await agent.stop();
    await broker.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await publishRelease({ brokerUrl: broker.url, ...op, image: demoImage(HW, '1.1.0', 256 * 1024), hw: HW, version: '1.1.0', key: key.privateKey });
  const WINDOW = 16;
  const SAVE_EVERY = 16;
  const ratios: string[] = [];
  // Several cut points: where the cut falls in the save interval and the window changes the cost.
  for (const [k, at] of [0.2, 0.3, 0.45, 0.55, 0.7, 0.8].entries()) {
    const id = `cut-${k}`;
    const nodeCred = await store.add('node', id);
    const node = new SimNode({
      brokerUrl: broker.url, deviceId: id, ...nodeCred, hw: HW, version: '1.0.0', trust: [key.publicKey],
      maxMessage: 4150, window: WINDOW, saveEvery: SAVE_EVERY, selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100,
    });
    await node.start();
    await onChunkFraction(node, at);
    const storedAtCut = node.transfer?.received ?? 0;
    await node.powerCut();
    // Chunks that reached the node's connection but not its flash: in flight at the cut.
    const inFlight = Math.max(0, (delivered.get(id) ?? 0) - storedAtCut);
    const s = await untilStatus(agent, id, (s) => s.state === 'confirmed', 'confirmed', 60_000);
    await node.stop();
    const got = delivered.get(id) ?? 0;
    const bound = s.total + SAVE_EVERY + inFlight;
    t.equal(s.total, 64, '64 chunks of 4 KiB');
    ratios.push((got / s.total).toFixed(2));
    t.ok(got <= bound, `cut at ${at}: chunks delivered ${got} (${(got / s.total).toFixed(2)} × the image) ≤ image + one save interval + ${inFlight} in flight = ${bound}`);
  }
  t.comment(`chunks delivered / image after a power cut: ${ratios.join(' ')}`);
});
