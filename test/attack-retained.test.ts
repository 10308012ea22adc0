import fs from 'node:fs';
import t from 'tap';
import { IdentityStore, startBroker, type Credentials, type RunningBroker } from '../broker/index.js';
import { connect, end, publish, tmpDir } from './helpers/broker-support.js';

/**
 * Issue 10 item 5: retained storage outside the prefix. Payload caps apply to every topic, and each
 * identity (all anonymous clients together) has a retained-bytes allowance.
 */
const dir = tmpDir('attack-retained');
const store = IdentityStore.open(dir);
const logs: string[] = [];
let broker: RunningBroker;
const c: Record<string, Credentials> = {};
const MiB = 1024 * 1024;

t.before(async () => {
  c.node = await store.add('node', 'node-1');
  c.node2 = await store.add('node', 'node-2');
  c.op = await store.add('operator', 'op-1');
  broker = await startBroker({ ferry: { store, allowAnonymous: true, log: (l, m) => logs.push(`${l} ${m}`) } });
});
t.teardown(async () => {
  if (process.env.SHOW_LOGS) console.error(logs.join("\n"));
  await broker.close();
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Topics retained under `filter` with their payload sizes, read from the broker's persistence. */
async function retainedUnder(filter: string): Promise<Map<string, number>> {
  const persistence = (broker.aedes as unknown as { persistence: { createRetainedStream(p: string): AsyncIterable<{ topic: string; payload: Buffer }> } }).persistence;
  const seen = new Map<string, number>();
  for await (const p of persistence.createRetainedStream(filter)) seen.set(p.topic, p.payload.length);
  return seen;
}

t.test('a node retaining 4 × 16 MiB is closed at the first packet header; nothing is retained', async (t) => {
  const n = await connect(broker.url, { ...c.node, clientId: 'node-1' });
  const closed = new Promise<void>((r) => n.stream.once('close', () => r()));
  for (let i = 0; i < 4; i++) n.publish(`big/${i}`, Buffer.alloc(16 * MiB, i), { qos: 1, retain: true });
  await closed;
  t.pass('the connection was closed');
  t.ok(logs.some((l) => /packet of 1677\d+ bytes declared, limit 71680/.test(l)), 'at the header of the first 16 MiB packet');
  t.same([...(await retainedUnder('big/#')).keys()], [], 'none of it is retained');
  n.end(true);
});

t.test('payload caps apply outside the prefix too', async (t) => {
  const n = await connect(broker.url, { ...c.node, clientId: 'node-1' });
  await publish(n, 'plain/too-big', Buffer.alloc(65 * 1024), { retain: true });
  await publish(n, 'plain/fits', Buffer.alloc(1024), { retain: true });
  t.ok(logs.some((l) => /dropped publish from node node-1 on plain\/too-big: payload of 66560 bytes exceeds the plain-topic limit of 65536/.test(l)), 'the drop is logged');
  const kept = await retainedUnder('plain/#');
  t.same([...kept.keys()], ['plain/fits'], 'only the message under the cap is retained');
  t.ok(n.connected, 'the sender stays connected');
  await publish(n, 'plain/fits', '', { retain: true });
  await end(n);
});

t.test('each node has a retained allowance (64 KiB): beyond it retained publishes are dropped; clearing frees it', async (t) => {
  const n = await connect(broker.url, { ...c.node, clientId: 'node-1' });
  const n2 = await connect(broker.url, { ...c.node2, clientId: 'node-2' });
  for (let i = 0; i < 8; i++) await publish(n, `r/node-1/${i}`, Buffer.alloc(20 * 1024, i), { retain: true });
  const kept = await retainedUnder('r/node-1/#');
  t.equal(kept.size, 3, 'three 20 KiB messages fit in 64 KiB, the other five are refused');
  t.ok(logs.some((l) => /dropped publish from node node-1 on r\/node-1\/3: retained storage of this node: retained bytes would reach \d+, limit 65536/.test(l)), 'the drop is logged');
  await publish(n2, 'r/node-2/0', Buffer.alloc(20 * 1024), { retain: true });
  t.equal((await retainedUnder('r/node-2/#')).size, 1, 'another node has its own allowance');
  for (let i = 0; i < 3; i++) await publish(n, `r/node-1/${i}`, '', { retain: true });
  await publish(n, 'r/node-1/7', Buffer.alloc(20 * 1024), { retain: true });
  t.same([...(await retainedUnder('r/node-1/#')).keys()], ['r/node-1/7'], 'after clearing, the node may retain again');
  await publish(n, 'r/node-1/7', '', { retain: true });
  await publish(n2, 'r/node-2/0', '', { retain: true });
  await end(n, n2);
});

t.test('anonymous clients share one allowance (1 MiB)', async (t) => {
  const a = await connect(broker.url, { clientId: 'anon-a' });
  const b = await connect(broker.url, { clientId: 'anon-b' });
  for (let i = 0; i < 24; i++) await publish(i % 2 ? a : b, `anon/${i}`, Buffer.alloc(60 * 1024), { retain: true });
  const kept = await retainedUnder('anon/#');
  t.equal(kept.size, 17, `together they keep 17 × 60 KiB (1 MiB), the rest is refused (kept ${kept.size})`);
  for (const tp of kept.keys()) await publish(a, tp, '', { retain: true });
  await end(a, b);
});
