import fs from 'node:fs';
import t from 'tap';
import { IdentityStore, startBroker, type Credentials, type RunningBroker } from '../broker/index.js';
import { encodeCbor } from '../shared/cbor.js';
import { encodeMessage, MsgType } from '../shared/messages.js';
import { closed, connect, end, nextMessage, publish, subscribe, tmpDir, upPayload } from './helpers/broker-support.js';

/** Payload limits, CBOR validation on up topics, and the per-client rate limit. */
const dir = tmpDir('limits');
const store = IdentityStore.open(dir);
const logs: string[] = [];
let broker: RunningBroker;
const c: Record<string, Credentials> = {};

t.before(async () => {
  c.node1 = await store.add('node', 'node-1');
  c.node2 = await store.add('node', 'node-2');
  c.agent = await store.add('agent', 'agent-1');
  c.op = await store.add('operator', 'op-1');
  broker = await startBroker({
    ferry: { store, log: (l, m) => logs.push(`${l} ${m}`), limits: { rate: { node: { rate: 5, burst: 20 } } } },
  });
});
t.teardown(async () => {
  await broker.close();
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Publishes `bad` then a valid marker message from the same node; returns what the agent saw before the marker. */
async function sendThenMarker(node: string, bad: Buffer): Promise<Buffer[]> {
  const agent = await connect(broker.url, { ...c.agent, clientId: 'agent-1-l' });
  const n = await connect(broker.url, { ...c[node.replace('-', '')], clientId: node });
  await subscribe(agent, `ferry/d/${node}/up`);
  const seen: Buffer[] = [];
  agent.on('message', (_tp, p) => seen.push(p));
  const marker = upPayload(100);
  const got = nextMessage(agent, (_tp, p) => p.equals(marker));
  await publish(n, `ferry/d/${node}/up`, bad);
  await publish(n, `ferry/d/${node}/up`, marker);
  await got;
  t.ok(n.connected, 'the sender stays connected');
  await end(agent, n);
  return seen.slice(0, -1);
}

t.test('malformed CBOR on an up topic is dropped with a logged reason', async (t) => {
  t.same(await sendThenMarker('node-1', Buffer.from([0xff, 0x00, 0x13])), [], 'not delivered');
  t.ok(logs.some((l) => /dropped publish from node node-1 on ferry\/d\/node-1\/up: malformed up message/.test(l)), 'reason logged');
  t.same(await sendThenMarker('node-1', encodeCbor(new Map([[0, 99]]))), [], 'unknown message type not delivered');
  t.ok(logs.some((l) => /message type 99/.test(l)), 'unknown type named');
  t.same(await sendThenMarker('node-1', encodeCbor([1, 2, 3])), [], 'a CBOR array is not a message');
});

t.test('a Hello naming another device is dropped', async (t) => {
  const hello = encodeMessage({
    type: MsgType.hello, proto: 1, deviceId: 'node-2', hw: 'hw1', version: '1.0.0', digest: Buffer.alloc(32),
    securityVersion: 0, slot: 0, imageState: 2, maxMessage: 4096, caps: 0, window: 8,
  });
  t.same(await sendThenMarker('node-1', hello), [], 'not delivered');
  t.ok(logs.some((l) => /hello names device "node-2", topic names "node-1"/.test(l)));
});

t.test('oversize payloads are dropped per topic class', async (t) => {
  t.same(await sendThenMarker('node-1', Buffer.alloc(17 * 1024, 0xa0)), [], 'oversize up not delivered');
  t.ok(logs.some((l) => /payload of 17408 bytes exceeds the up limit of 16384/.test(l)));
  const agent = await connect(broker.url, { ...c.agent, clientId: 'agent-1-m' });
  const op = await connect(broker.url, { ...c.op, clientId: 'op-1-m' });
  await subscribe(agent, 'ferry/r/hw1/+/manifest');
  const seen: string[] = [];
  agent.on('message', (tp) => seen.push(tp));
  const ok = nextMessage(agent, (tp) => tp === 'ferry/r/hw1/2.0.0/manifest');
  await publish(op, 'ferry/r/hw1/1.0.0/manifest', Buffer.alloc(2048));
  await publish(op, 'ferry/r/hw1/2.0.0/manifest', Buffer.alloc(512));
  await ok;
  t.same(seen, ['ferry/r/hw1/2.0.0/manifest'], 'a 2 KiB manifest is refused, a 512-byte one passes');
  t.ok(logs.some((l) => /exceeds the manifest limit of 1024/.test(l)));
  await end(agent, op);
});

t.test('a flooding client is disconnected, the others are unaffected', async (t) => {
  const agent = await connect(broker.url, { ...c.agent, clientId: 'agent-1-f' });
  const flooder = await connect(broker.url, { ...c.node1, clientId: 'node-1' });
  const calm = await connect(broker.url, { ...c.node2, clientId: 'node-2' });
  await subscribe(agent, 'ferry/d/+/up');
  const gone = closed(flooder);
  const payload = upPayload();
  // Burst is 20 at 5/s: 200 back-to-back publishes cannot be covered by refill.
  for (let i = 0; i < 200 && flooder.connected; i++) flooder.publish('ferry/d/node-1/up', payload, { qos: 0 });
  await gone;
  t.ok(logs.some((l) => /disconnecting node node-1: publish rate above 5\/s \(burst 20\)/.test(l)), 'flooder named in the log');
  const marker = upPayload(80);
  const got = nextMessage(agent, (tp, p) => tp === 'ferry/d/node-2/up' && p.equals(marker));
  await publish(calm, 'ferry/d/node-2/up', marker);
  await got;
  t.ok(calm.connected && agent.connected, 'the other node and the agent carry on');
  await end(agent, flooder, calm);
});
