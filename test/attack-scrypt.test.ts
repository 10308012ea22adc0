import fs from 'node:fs';
import t from 'tap';
import { IdentityStore, startBroker } from '../broker/index.js';
import { connect, end, tmpDir } from './helpers/broker-support.js';
import { rawConnect } from './helpers/raw-mqtt.js';

/**
 * Issue 10 item 3: scrypt as a CPU weapon. Wrong-password floods run through a small semaphore and
 * a per-address back-off, so a legitimate client from elsewhere still gets in; unknown names cost no
 * KDF and get the same answer as wrong secrets. Flood and victim use different loopback addresses
 * (127.0.0.2 vs 127.0.0.1), as two hosts would.
 */
const dir = tmpDir('attack-scrypt');
const store = IdentityStore.open(dir);
const logs: string[] = [];
let kdfRuns = 0;

t.teardown(() => {
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

// Count real verifications of known names (the ones that run scrypt), on the real store.
const verify = store.verify.bind(store);
store.verify = async (username, password) => {
  if (store.get(username)) kdfRuns++;
  return verify(username, password);
};

t.test('a flood of wrong-password connects is backed off and a legitimate connect succeeds', async (t) => {
  const cred = await store.add('node', 'node-1');
  const broker = await startBroker({ ferry: { store, log: (l, m) => logs.push(`${l} ${m}`) } });
  t.teardown(() => broker.close());
  const FLOOD = 300;
  const codes = new Map<number | 'closed', number>();
  // 30 at a time, 300 in all, each a full CONNECT with a wrong secret for a real name.
  let next = 0;
  const worker = async () => {
    while (next < FLOOD) {
      next++;
      const rc = await rawConnect(broker.port, { clientId: 'node-1', username: 'node-1', password: 'wrong-wrong-wrong-1', localAddress: '127.0.0.2' });
      codes.set(rc, (codes.get(rc) ?? 0) + 1);
    }
  };
  const flood = Promise.all(Array.from({ length: 30 }, worker));
  const legit = await connect(broker.url, { ...cred, clientId: 'node-1' });
  t.ok(legit.connected, 'the legitimate node connected during the flood');
  await flood;
  t.equal((codes.get(4) ?? 0) + (codes.get(3) ?? 0), FLOOD, `every flood connect was refused (${JSON.stringify([...codes])})`);
  t.ok((codes.get(3) ?? 0) > FLOOD / 2, 'most of them by the back-off, without a KDF');
  t.ok(kdfRuns <= 6, `scrypt ran ${kdfRuns} times for ${FLOOD} attempts`);
  t.ok(logs.some((l) => /from 127\.0\.0\.2: too many failed logins from 127\.0\.0\.2: back-off/.test(l)), 'back-off refusals are logged with the address');
  t.ok(logs.length < 60, `and the log is throttled (${logs.length} lines for ${FLOOD} refusals)`);
  await end(legit);
  const again = await connect(broker.url, { ...cred, clientId: 'node-1' });
  t.ok(again.connected, 'the victim address is not affected by the flood address');
  await end(again);
});

t.test('unknown and known usernames get the same CONNACK code', async (t) => {
  await store.add('agent', 'agent-x');
  const broker = await startBroker({ ferry: { store } });
  t.teardown(() => broker.close());
  const before = kdfRuns;
  const unknown = await rawConnect(broker.port, { clientId: 'ghost', username: 'ghost', password: 'whatever-whatever', localAddress: '127.0.0.3' });
  const known = await rawConnect(broker.port, { clientId: 'agent-x', username: 'agent-x', password: 'whatever-whatever', localAddress: '127.0.0.4' });
  t.equal(unknown, 4, 'unknown name: bad username or password');
  t.equal(known, 4, 'wrong secret: bad username or password');
  t.equal(kdfRuns - before, 1, 'only the known name ran the KDF');
});

t.test('the verification queue is bounded: beyond it, connects are refused at once as server unavailable', async (t) => {
  await store.add('operator', 'op-q');
  const broker = await startBroker({ ferry: { store, limits: { auth: { maxConcurrent: 1, maxWaiting: 2, freeFailures: 1000 } } } });
  t.teardown(() => broker.close());
  const codes = await Promise.all(Array.from({ length: 12 }, () => rawConnect(broker.port, { clientId: 'op-q', username: 'op-q', password: 'not-the-secret!!', localAddress: '127.0.0.5' })));
  t.ok(codes.filter((c) => c === 3).length >= 1, `some were refused as server unavailable (${codes.join(',')})`);
  t.ok(codes.filter((c) => c === 4).length >= 1, 'some were verified (and were wrong)');
});

t.test('a flood from many addresses spends only the new-address budget; a node that logged in before gets in first', async (t) => {
  const cred = await store.add('node', 'node-s');
  const broker = await startBroker({ ferry: { store, log: (l, m) => logs.push(`${l} ${m}`), limits: { auth: { newAddressRate: 5, newAddressBurst: 10 } } } });
  t.teardown(() => broker.close());
  const first = await connect(broker.url, { ...cred, clientId: 'node-s' });
  await end(first);
  const before = kdfRuns;
  let next = 0;
  const codes = new Map<number | 'closed', number>();
  const worker = async () => {
    while (next < 200) {
      const i = next++;
      const rc = await rawConnect(broker.port, { clientId: 'node-s', username: 'node-s', password: 'wrong-wrong-wrong-2', localAddress: `127.0.2.${(i % 100) + 1}` });
      codes.set(rc, (codes.get(rc) ?? 0) + 1);
    }
  };
  const flood = Promise.all(Array.from({ length: 20 }, worker));
  const again = await connect(broker.url, { ...cred, clientId: 'node-s' });
  t.ok(again.connected, 'the node that was already there reconnects during the flood');
  await flood;
  t.ok((codes.get(3) ?? 0) > 100, `most of the 200 were refused unverified (${JSON.stringify([...codes])})`);
  t.ok(kdfRuns - before < 60, `scrypt ran ${kdfRuns - before} times for 200 attempts from 100 addresses`);
  t.ok(logs.some((l) => /verification budget for new addresses spent \(5\/s\)/.test(l)), 'the budget refusal is logged');
  await end(again);
});
