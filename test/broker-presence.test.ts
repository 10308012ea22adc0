import fs from 'node:fs';
import t from 'tap';
import { IdentityStore, startBroker } from '../broker/index.js';
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
  t.same(await subscribe(agent, 'ferry/d/+/presence'), [1]);
  const presence = (state: string) => nextMessage(agent, (tp, p) => tp === 'ferry/d/node-1/presence' && p.toString() === state);

  const online = presence('online');
  const n1 = await connect(broker.url, { ...node, clientId: 'node-1' });
  t.equal((await online).payload.toString(), 'online', 'online when the node connects');

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
  const firstGone = closed(first);
  const again = presence('online');
  const second = await connect(broker.url, { ...node, clientId: 'node-1' });
  await firstGone;
  await again;
  // A round trip through the broker lets any deferred offline of the old connection happen first.
  const echo = nextMessage(agent, (tp) => tp === 'plain/echo');
  await subscribe(agent, 'plain/echo');
  await publish(second, 'plain/echo', 'x');
  await echo;
  const check = await connect(broker.url, { ...op, clientId: 'op-1' });
  const state = nextMessage(check, (tp) => tp === 'ferry/d/node-1/presence');
  await subscribe(check, 'ferry/d/node-1/presence');
  t.equal((await state).payload.toString(), 'online', 'the old connection closing does not mark the node offline');
  await end(check, second, agent);
});
