import fs from 'node:fs';
import type { Socket } from 'node:net';
import t from 'tap';
import { IdentityStore, startBroker, type Credentials } from '../broker/index.js';
import { sha256 } from '../shared/manifest.js';
import { demoImage } from '../harness/images.js';
import { connect, end, nextMessage, publish, subscribe, tmpDir } from './helpers/broker-support.js';
import { startStuckNode } from './helpers/stuck-node.js';
import { makeWorld, quickNode } from './helpers/world.js';

/**
 * Issue 10 item 2: a subscriber that stops reading must cost only itself. Every broker here has
 * aedes' drainTimeout at 0 (wait forever) and the plugin's at one hour (except where the timeout is
 * the subject), so nothing below can pass by the stuck client being timed out: the publisher keeps
 * going because the broker no longer waits for the stuck socket.
 */
const HOUR = 3_600_000;

async function brokerWith(name: string, limits: object) {
  const dir = tmpDir(name);
  const store = IdentityStore.open(dir);
  const logs: string[] = [];
  // aedes' own drainTimeout 0: it would wait for a stuck socket forever; only the plugin's guard acts.
  const broker = await startBroker({ aedes: { drainTimeout: 0 }, ferry: { store, log: (l, m) => logs.push(`${l} ${m}`), limits } });
  return {
    store, broker, logs,
    async close() {
      if (process.env.SHOW_LOGS) console.error(logs.join('\n'));
      await broker.close();
      store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A node connected with MQTT.js that subscribes to `filter`, then stops reading its socket for good. */
async function pausedSubscriber(url: string, cred: Credentials, id: string, filter: string, qos: 0 | 1) {
  const c = await connect(url, { ...cred, clientId: id, keepalive: 0 });
  await subscribe(c, filter, qos);
  const socket = c.stream as Socket;
  socket.unpipe();
  socket.pause();
  return c;
}

t.test('QoS 0 to a paused subscriber is dropped; the publisher and a reading subscriber go on', async (t) => {
  const w = await brokerWith('stuck-q0', { delivery: { drainTimeoutMs: HOUR } });
  t.teardown(() => w.close());
  const pub = await connect(w.broker.url, { ...(await w.store.add('agent', 'agent-1')), clientId: 'agent-1' });
  const stuck = await pausedSubscriber(w.broker.url, await w.store.add('node', 'stuck'), 'stuck', 'plain/#', 0);
  const reader = await connect(w.broker.url, { ...(await w.store.add('node', 'reader')), clientId: 'reader' });
  await subscribe(reader, 'plain/#', 1);
  const marker = nextMessage(reader, (tp) => tp === 'plain/marker');
  // 40 MiB: far more than the kernel buffers of the paused socket can take.
  const data = Buffer.alloc(64 * 1024, 0x5a);
  for (let i = 0; i < 640; i++) pub.publish('plain/bulk', data, { qos: 0 });
  await publish(pub, 'plain/marker', 'end');
  await marker;
  t.pass('the reading subscriber got the marker published after 40 MiB');
  t.ok(w.logs.some((l) => /dropped 1 QoS 0 deliveries to node stuck: \d+ bytes unread, above 1048576/.test(l)), 'drops to the stuck node are logged');
  t.equal(w.logs.filter((l) => /QoS 0 deliveries to node stuck/.test(l)).length, 1, 'logged once (then at most every 10 s), not per message');
  t.notOk(stuck.stream.destroyed, 'the stuck node itself is still connected: QoS 0 loss is all it costs');
  await end(pub, stuck, reader);
});

t.test('QoS 1 to a paused subscriber fills only its own backlog, then it is disconnected', async (t) => {
  const w = await brokerWith('stuck-q1', { delivery: { drainTimeoutMs: HOUR, maxBacklog: { node: 2 * 1024 * 1024 } } });
  t.teardown(() => w.close());
  const pub = await connect(w.broker.url, { ...(await w.store.add('agent', 'agent-1')), clientId: 'agent-1' });
  const stuck = await pausedSubscriber(w.broker.url, await w.store.add('node', 'stuck'), 'stuck', 'plain/#', 1);
  const reader = await connect(w.broker.url, { ...(await w.store.add('node', 'reader')), clientId: 'reader' });
  await subscribe(reader, 'plain/#', 1);
  let got = 0;
  const all = new Promise<void>((resolve) => reader.on('message', () => ++got === 320 && resolve()));
  const data = Buffer.alloc(64 * 1024, 0x5a);
  // One at a time: a paced publisher, as the agent is; the reader keeps up, the stuck node cannot.
  for (let i = 0; i < 320; i++) await publish(pub, 'plain/bulk', data);
  await all;
  t.equal(got, 320, 'the reading subscriber got all 20 MiB at QoS 1');
  t.ok(w.logs.some((l) => /disconnecting node stuck: outgoing backlog of \d+ bytes exceeds 2097152/.test(l)), 'the stuck node was disconnected for its backlog');
  t.notOk(w.broker.plugin!.principalOf('stuck'), 'and is gone');
  await end(pub, stuck, reader);
});

t.test('a stuck socket is disconnected after the drain timeout', async (t) => {
  const w = await brokerWith('stuck-drain', { delivery: { drainTimeoutMs: 200 } });
  t.teardown(() => w.close());
  const pub = await connect(w.broker.url, { ...(await w.store.add('agent', 'agent-1')), clientId: 'agent-1' });
  const stuck = await pausedSubscriber(w.broker.url, await w.store.add('node', 'stuck'), 'stuck', 'plain/#', 1);
  const gone = new Promise<void>((resolve) => w.broker.aedes.on('clientDisconnect', (c) => c.id === 'stuck' && resolve()));
  const data = Buffer.alloc(16 * 1024, 0x5a);
  // Until the kernel buffers are full and the broker's socket holds a backlog, well under the 4 MiB cap.
  const conn = () => (w.broker.aedes as unknown as { clients: Record<string, { conn: Socket } | undefined> }).clients.stuck?.conn;
  for (let i = 0; i < 2000 && (conn()?.writableLength ?? 1) === 0; i++) await publish(pub, 'plain/bulk', data);
  t.ok((conn()?.writableLength ?? 0) > 0, 'the stuck socket holds a backlog');
  await gone;
  t.ok(w.logs.some((l) => /disconnecting node stuck: socket did not drain within 200 ms/.test(l)), 'the drain timeout is logged');
  await end(pub, stuck);
});

t.test('a node that pauses its socket while acking base 0 does not hold up another node\'s update', { timeout: 200_000 }, async (t) => {
  const dir = tmpDir('stuck-world');
  const store = IdentityStore.open(dir);
  const logs: string[] = [];
  const agentCred = await store.add('agent', 'agent-1');
  const op = await store.add('operator', 'op-1');
  const world = await makeWorld({
    broker: { aedes: { drainTimeout: 0 }, ferry: { store, log: (l, m) => logs.push(`${l} ${m}`), limits: { delivery: { drainTimeoutMs: HOUR } } } },
    agent: { ...agentCred },
  });
  const stuckCred = await store.add('node', 'stuck');
  const goodCred = await store.add('node', 'good');
  t.teardown(async () => {
    if (process.env.SHOW_LOGS) console.error(logs.join('\n'));
    await world.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const HW = 'hw-stuck';
  const image = demoImage(HW, '2.0.0', 512 * 1024);
  await world.publish({ hw: HW, version: '2.0.0', image, ...op });
  const stuck = await startStuckNode({ url: world.broker.url, id: 'stuck', hw: HW, ...stuckCred, alsoSubscribe: 'bulk/#' });
  await stuck.paused;
  // Fill what the kernel holds for the paused socket (MiBs on loopback) until the broker's own socket
  // to it has a backlog: from here on, every write to it would wait for a drain that never comes.
  const filler = await connect(world.broker.url, { ...op, clientId: 'op-1/filler' });
  const conn = () => (world.broker.aedes as unknown as { clients: Record<string, { conn: Socket } | undefined> }).clients.stuck?.conn;
  for (let i = 0; i < 5000 && (conn()?.writableLength ?? 1) === 0; i++) await publish(filler, 'bulk/x', Buffer.alloc(16 * 1024));
  t.ok((conn()?.writableLength ?? 0) > 0, 'the broker holds a backlog for the stuck node');
  await end(filler);
  // A new Hello: the agent answers the stuck node at once (an Offer), into the stuck socket.
  stuck.helloAgain();
  if (process.env.SHOW_LOGS) world.agent.on('status', (st) => console.error('status', st.id, st.state, JSON.stringify(st).slice(0, 200)));
  const good = await quickNode(world, HW, 'good', { ...goodCred, maxMessage: 64 * 1024, slotSize: 1024 * 1024 });
  const done = await world.until('good', (s) => s.state === 'confirmed', 'good confirmed', 120_000);
  t.equal(done.runningVersion, '2.0.0', 'the reading node was updated');
  t.ok(good.runningDigest.equals(sha256(image)), 'with the signed image');
  t.ok(stuck.acks() > 0, `the stuck node kept acking base 0 (${stuck.acks()} acks)`);
  t.comment(`the broker holds ${conn()?.writableLength ?? 0} bytes for the stuck node, which is still ${conn() ? 'connected' : 'gone'}`);
  await stuck.stop();
  await good.stop();
});
