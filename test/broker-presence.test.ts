import { untilStatus } from './helpers/world.js';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { MqttClient } from 'mqtt';
import { Agent } from '../agent/agent.js';
import { IdentityStore, startBroker, type Credentials, type RunningBroker } from '../broker/index.js';
import { demoImage } from '../harness/images.js';
import { SimNode } from '../device/node.js';
import { publishRelease } from '../operator/publish.js';
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { Capability, decodeDown, encodeMessage, ImageState, MsgType, PROTOCOL_VERSION, type DownMessage } from '../shared/messages.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { closed, connect, end, nextMessage, publish, subscribe, tmpDir } from './helpers/broker-support.js';

/** The broker turns node connect/disconnect into retained online/offline presence. */
t.test('presence follows node connections, retained, and survives a takeover', async (t) => {
  const dir = tmpDir('presence');
  const store = IdentityStore.open(dir);
  const broker = await startBroker({ ferry: { store } });
  t.teardown(async () => {
    await broker.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const node = await store.add('node', 'node-1');
  const agentId = await store.add('agent', 'agent-1');
  const agent = await connect(broker.url, { ...agentId, clientId: 'agent-1' });
  t.same(await subscribe(agent, ['ferry/d/+/presence', 'plain/#']), [1, 1]);
  const presence = (state: string) => nextMessage(agent, (tp, p) => tp === 'ferry/d/node-1/presence' && p.toString() === state);
  const seen: string[] = [];
  agent.on('message', (tp, p) => tp === 'ferry/d/node-1/presence' && seen.push(p.toString()));

  // Connected but not yet listening on dn: an agent woken now would talk into the void.
  const n1 = await connect(broker.url, { ...node, clientId: 'node-1' });
  const marker = nextMessage(agent, (tp) => tp === 'plain/after-connack');
  await publish(n1, 'plain/after-connack', 'x');
  await marker;
  t.same(seen, [], 'no online before the node subscribes to its dn topic');
  const online = presence('online');
  await subscribe(n1, 'ferry/d/node-1/dn');
  t.equal((await online).payload.toString(), 'online', 'online once the node listens on its dn topic');
  // A second subscription on the same connection does not announce it again.
  const again1 = nextMessage(agent, (tp) => tp === 'plain/after-resub');
  await subscribe(n1, 'ferry/d/+/dn'); // covers its dn again
  await publish(n1, 'plain/after-resub', 'x');
  await again1;
  t.same(seen, ['online'], 'one announcement per connection');

  const offline = presence('offline');
  await end(n1);
  await offline;
  t.pass('offline when it disconnects');

  // A late subscriber learns the state from the retained message.
  const op = await store.add('operator', 'op-1');
  const late = await connect(broker.url, { ...op, clientId: 'op-1' });
  const retained = nextMessage(late, (tp) => tp === 'ferry/d/node-1/presence');
  await subscribe(late, 'ferry/d/node-1/presence');
  const r = await retained;
  t.ok(r.retain && r.payload.toString() === 'offline', 'retained offline for late subscribers');
  await end(late);

  // Takeover: the node reconnects while its old connection is still open.
  const first = await connect(broker.url, { ...node, clientId: 'node-1' });
  await subscribe(first, 'ferry/d/node-1/dn');
  const firstGone = closed(first);
  const again = presence('online');
  const second = await connect(broker.url, { ...node, clientId: 'node-1' });
  await firstGone;
  await subscribe(second, 'ferry/d/+/dn');
  await again;
  // A round trip through the broker lets any deferred offline of the old connection happen first.
  const echo = nextMessage(agent, (tp) => tp === 'plain/echo');
  await publish(second, 'plain/echo', 'x');
  await echo;
  const check = await connect(broker.url, { ...op, clientId: 'op-1' });
  const state = nextMessage(check, (tp) => tp === 'ferry/d/node-1/presence');
  await subscribe(check, 'ferry/d/node-1/presence');
  t.equal((await state).payload.toString(), 'online', 'the old connection closing does not mark the node offline');
  await end(check, second, agent);
});

// ---------------------------------------------------------------------------------------------
// Presence-triggered resume. The agent's retransmission timeout is pinned at an hour (initial, min
// and max), so every timer-driven resend (window expiry, Offer/Activate retries) is at least half an
// hour away: anything that resumes the transfer inside this test was triggered by a message.

const HOUR = 60 * 60_000;
const PINNED_RTO = { initialRto: HOUR, minRto: HOUR, maxRto: HOUR };
const HW = 'esp32-presence';

interface Rig {
  broker: RunningBroker;
  store: IdentityStore;
  agent: Agent;
  key: ReturnType<typeof generateOperatorKey>;
  op: Credentials;
  dir: string;
  close(): Promise<void>;
}

async function rig(): Promise<Rig> {
  const dir = tmpDir('presence-resume');
  const store = IdentityStore.open(path.join(dir, 'broker'));
  const broker = await startBroker({ ferry: { store } });
  const agentCred = await store.add('agent', 'agent-1');
  const op = await store.add('operator', 'op-1');
  const key = generateOperatorKey();
  const agent = new Agent({ brokerUrl: broker.url, ...agentCred, clientId: 'agent-1', dataDir: path.join(dir, 'agent'), trust: [key.publicKey], rtt: PINNED_RTO });
  await agent.start();
  return {
    broker, store, agent, key, op, dir,
    async close() {
      await agent.stop();
      await broker.close();
      store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}


/** Fails the test with `what` instead of hanging until tap's timeout when nothing comes. */
function guard<T>(p: Promise<T>, what: string, ms = 30_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const fail = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not happen (a resume by timer would take >= 30 min)`)), ms)));
  return Promise.race([p, fail]).finally(() => clearTimeout(timer));
}

/** The next down message on `c` of the given type. */
function nextDown<T extends DownMessage['type']>(c: MqttClient, type: T, pred: (m: Extract<DownMessage, { type: T }>) => boolean = () => true): Promise<Extract<DownMessage, { type: T }>> {
  return new Promise((resolve) => {
    const on = (_tp: string, payload: Buffer) => {
      const m = decodeDown(payload);
      if (m.type !== type || !pred(m as Extract<DownMessage, { type: T }>)) return;
      c.off('message', on);
      resolve(m as Extract<DownMessage, { type: T }>);
    };
    c.on('message', on);
  });
}

t.test('a node back online without a Hello is asked for one (Query after the grace period), then resumed: no timer', async (t) => {
  const r = await rig();
  t.teardown(() => r.close());
  const id = 'quiet-1';
  const cred = await r.store.add('node', id);
  const image = demoImage(HW, '1.1.0', 48 * 1024);
  await publishRelease({ brokerUrl: r.broker.url, ...r.op, image, hw: HW, version: '1.1.0', key: r.key.privateKey });

  // A hand-played node: it speaks only when this test says so, unlike SimNode, which says Hello on
  // every connect.
  const dn = `ferry/d/${id}/dn`;
  const up = `ferry/d/${id}/up`;
  const hello = (transfer?: { session: number; digest: Buffer; chunkSize: number; bitmap: Buffer }) => encodeMessage({
    type: MsgType.hello, proto: PROTOCOL_VERSION, deviceId: id, hw: HW, version: '1.0.0', digest: sha256(Buffer.from('factory')),
    securityVersion: 0, slot: 0, imageState: ImageState.valid, maxMessage: 1024, caps: Capability.rollback, window: 4, transfer,
  });
  const first = await connect(r.broker.url, { ...cred, clientId: id });
  await subscribe(first, dn);
  const offered = nextDown(first, MsgType.offer);
  await publish(first, up, hello());
  const offer = await guard(offered, 'the first Offer');
  t.ok(offer.chunkSize > 0 && offer.payloadSize === image.length, `offered ${offer.payloadSize} B in chunks of ${offer.chunkSize} B`);

  // Take chunks in order, acking each, until HOLD are stored; then the link goes away with chunks
  // still in flight (the agent keeps its window of 4 full). The first Ack answers the Offer (key 4).
  const HOLD = 10;
  let held = 0;
  const holding = new Promise<void>((resolve) => {
    first.on('message', (_tp, payload) => {
      const m = decodeDown(payload);
      if (m.type !== MsgType.chunk || m.index !== held || held >= HOLD) return;
      held++;
      if (held < HOLD) first.publish(up, encodeMessage({ type: MsgType.ack, session: offer.session, base: held }), { qos: 1 });
      else resolve();
    });
  });
  first.publish(up, encodeMessage({ type: MsgType.ack, session: offer.session, base: 0, answers: offer.offerId }), { qos: 1 });
  await guard(holding, `${HOLD} chunks`);
  const wentOffline = untilStatus(r.agent, id, (s) => !s.online, 'offline', 120_000);
  first.stream.destroy(); // a dropped link, not a goodbye
  await guard(wentOffline, 'the agent seeing the node offline');
  const helloCount = () => r.agent.store.events(id, 1000).filter((e) => e.kind === 'hello').length;
  t.equal(helloCount(), 1, 'one Hello so far');

  // Back: connect and subscribe, nothing else. The broker publishes `online` once dn is subscribed;
  // presence alone never re-offers (one resume trigger: the Hello), but after the grace period the
  // agent asks for the Hello it has not heard.
  const second = await connect(r.broker.url, { ...cred, clientId: id });
  const queried = nextDown(second, MsgType.query);
  const downs: number[] = [];
  second.on('message', (_tp, payload) => downs.push(decodeDown(payload).type));
  await subscribe(second, dn);
  const q = await guard(queried, 'a Query after presence online');
  t.equal(q.reason, 2, 'the Query names presence as its reason');
  t.same(downs, [MsgType.query], 'nothing but the Query: presence alone sent no Offer');

  // The node answers with its Hello, holding HOLD chunks of the same session: the transfer continues
  // right after it, from the first chunk it lacks.
  const nextChunk = nextDown(second, MsgType.chunk);
  const bitmap = Buffer.alloc(Math.ceil(Math.ceil(image.length / offer.chunkSize) / 8));
  for (let i = 0; i < HOLD; i++) bitmap[i >> 3] |= 1 << (i & 7);
  await publish(second, up, hello({ session: offer.session, digest: offer.payloadDigest, chunkSize: offer.chunkSize, bitmap }));
  const c = await guard(nextChunk, 'the next chunk after the resume');
  t.equal(c.index, HOLD, `the next chunk is ${HOLD}, the first one the node lacks`);
  t.equal(r.agent.status(id)?.state, 'downloading', 'still downloading, the same session');
  await end(second);
});

t.test('a simulated node whose link drops mid-transfer ends confirmed without any agent timer', async (t) => {
  const r = await rig();
  const proxy = await startFaultProxy({ port: r.broker.port });
  const cred = await r.store.add('node', 'drop-1');
  const node = new SimNode({ brokerUrl: proxy.url, deviceId: 'drop-1', ...cred, hw: HW, version: '1.0.0', trust: [r.key.publicKey], maxMessage: 1024 });
  t.teardown(async () => {
    await node.stop();
    await proxy.close();
    await r.close();
  });
  await node.start();
  await guard(untilStatus(r.agent, 'drop-1', () => true, 'the Hello', 120_000), 'the Hello');
  const image = demoImage(HW, '1.1.0', 160 * 1024);
  await publishRelease({ brokerUrl: r.broker.url, ...r.op, image, hw: HW, version: '1.1.0', key: r.key.privateKey });
  await guard(new Promise<void>((resolve) => {
    const on = (received: number, total: number) => {
      if (received < total * 0.4) return;
      node.off('chunk', on);
      resolve();
    };
    node.on('chunk', on);
  }), '40% of the chunks');
  proxy.dropAll();
  const s = await guard(untilStatus(r.agent, 'drop-1', (s) => s.state === 'confirmed', 'a confirmed boot', 120_000), 'a confirmed boot', 60_000);
  t.equal(s.runningVersion, '1.1.0');
  t.ok(node.runningDigest.equals(sha256(image)), 'the node runs the published image');
  // A real node wakes the agent with its Hello (or an Ack that MQTT.js queued while offline and
  // resends at CONNACK): not a timer, which the pinned RTO rules out. Presence only starts the grace
  // period before a Query.
  const events = r.agent.store.events('drop-1', 1000);
  const byHello = events.some((e) => e.kind === 'hello' && /transfer/.test(e.detail));
  t.ok(byHello, 'resumed on the Hello of the node');
});
