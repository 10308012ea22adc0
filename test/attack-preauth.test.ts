import fs from 'node:fs';
import t from 'tap';
import { IdentityStore, startBroker, type Credentials, type RunningBroker } from '../broker/index.js';
import { connect, end, nextMessage, publish, subscribe, tmpDir } from './helpers/broker-support.js';
import { announceAndStream, closedBy, connectPacket, openSocket, publishPacket, rawConnect, remainingLength } from './helpers/raw-mqtt.js';

/**
 * Issue 10 item 1: memory before authentication. A packet's declared size is checked on its fixed
 * header, before aedes (whose parser would buffer the whole declared length) sees it.
 */
const dir = tmpDir('attack-preauth');
const store = IdentityStore.open(dir);
const logs: string[] = [];
let broker: RunningBroker;
const c: Record<string, Credentials> = {};
const MB = 1024 * 1024;

t.before(async () => {
  c.node = await store.add('node', 'node-1');
  c.agent = await store.add('agent', 'agent-1');
  broker = await startBroker({ ferry: { store, log: (l, m) => logs.push(`${l} ${m}`), limits: { pending: { total: 8, perAddress: 8 } } } });
});
t.teardown(async () => {
  if (process.env.SHOW_LOGS) console.error(logs.join("\n"));
  await broker.close();
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

t.test('CONNECTs announcing 200 MB are closed at the header, in parallel, and a real node still gets in', async (t) => {
  const header = Buffer.concat([Buffer.from([0x10]), remainingLength(200_000_000)]);
  const results = await Promise.all([0, 1, 2, 3].map(() => announceAndStream(broker.port, header, 64 * MB)));
  for (const r of results) {
    t.ok(r.closedByBroker, 'the broker closed the connection');
    t.ok(r.written < 64 * MB, `it did so long before the announced size (${r.written} bytes written into the socket)`);
  }
  t.ok(logs.some((l) => /packet of 200000000 bytes declared, limit 1024 before authentication/.test(l)), 'the reason is logged');
  const n = await connect(broker.url, { ...c.node, clientId: 'node-1' });
  t.ok(n.connected, 'a legitimate node connects');
  await end(n);
});

t.test('a CONNECT above the pre-authentication cap (1 KiB) is closed; one just under it is answered', async (t) => {
  const big = await rawConnect(broker.port, { clientId: 'x', username: 'nobody', password: 'p'.repeat(1100) });
  t.equal(big, 'closed', 'no CONNACK for a 1.1 KiB CONNECT');
  const fits = await rawConnect(broker.port, { clientId: 'x', username: 'nobody', password: 'p'.repeat(900) });
  t.equal(fits, 4, 'a 0.9 KiB CONNECT gets its (negative) CONNACK');
});

t.test('bytes streamed before authentication are capped in total', async (t) => {
  const s = await openSocket(broker.port);
  const gone = closedBy(s);
  // Many small PINGREQs, never a CONNECT: each packet is tiny, the total is not.
  const pings = Buffer.alloc(2 * 4096, 0);
  for (let i = 0; i < pings.length; i += 2) pings[i] = 0xc0;
  s.write(pings);
  await gone;
  t.pass('the connection was closed');
  t.ok(logs.some((l) => /bytes before authentication, limit 4096/.test(l)));
});

t.test('after authentication the cap is the largest legitimate packet: 64 KiB passes, 16 MiB closes', async (t) => {
  const agent = await connect(broker.url, { ...c.agent, clientId: 'agent-1' });
  await subscribe(agent, 'plain/#');
  const got = nextMessage(agent, (tp) => tp === 'plain/ok');
  const n = await connect(broker.url, { ...c.node, clientId: 'node-1' });
  await publish(n, 'plain/ok', Buffer.alloc(60 * 1024));
  t.equal((await got).payload.length, 60 * 1024, 'a 60 KiB publish is delivered');
  const closed = new Promise<void>((r) => n.stream.once('close', () => r()));
  n.publish('plain/huge', Buffer.alloc(16 * MB), { qos: 0 });
  await closed;
  t.ok(logs.some((l) => /packet of 1677\d+ bytes declared, limit 71680/.test(l)), 'the 16 MiB publish closed the connection at its header');
  await end(n, agent);
});

t.test('connections not yet authenticated are capped; the cap frees as they go', async (t) => {
  const idle = await Promise.all(Array.from({ length: 8 }, () => openSocket(broker.port)));
  const refused = await openSocket(broker.port);
  await closedBy(refused);
  t.ok(logs.some((l) => /refused: 8 connections .*not yet authenticated/.test(l)), 'the ninth is refused and logged');
  await Promise.all(idle.map((s) => new Promise<void>((r) => (s.once('close', () => r()), s.destroy()))));
  // The broker sees the closes asynchronously: a fresh client may need a retry or two.
  let n;
  for (let i = 0; i < 50 && !n; i++) n = await connect(broker.url, { ...c.node, clientId: 'node-1' }).catch(() => undefined);
  t.ok(n?.connected, 'a node connects once the idle ones are gone');
  await end(n);
  t.equal(connectPacket({ clientId: 'a' }).length < 1024, true);
  t.equal(publishPacket('a', 1).total, 4);
});

t.test('an address opening connections faster than its rate is refused at accept; others are not', async (t) => {
  const b = await startBroker({ ferry: { store, log: (l, m) => logs.push(`${l} ${m}`), limits: { connections: { perAddressRate: 1, perAddressBurst: 5 } } } });
  t.teardown(() => b.close());
  const results = await Promise.all(Array.from({ length: 20 }, () => rawConnect(b.port, { clientId: 'x', localAddress: '127.0.0.6' })));
  t.ok(results.filter((r) => r === 'closed').length >= 10, `most were closed at accept (${results.join(',')})`);
  t.ok(logs.some((l) => /connection from 127\.0\.0\.6 refused: more than 1 new connections\/s/.test(l)), 'logged with the address');
  const n = await connect(b.url, { ...c.node, clientId: 'node-1' });
  t.ok(n.connected, 'a node from another address connects');
  await end(n);
});
