import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/agent.js';
import { IdentityStore, startBroker, type Credentials, type RunningBroker } from '../broker/index.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { connect, end, nextMessage, publish, subscribe, tmpDir } from './helpers/broker-support.js';

/**
 * Issue 10 item 4: `$SYS` is for operators and agents only, client ids are the identity's name (or,
 * for agents and operators, `name/<suffix>`), and nobody takes over another principal's session.
 */
const dir = tmpDir('attack-takeover');
const store = IdentityStore.open(dir);
const logs: string[] = [];
let broker: RunningBroker;
const c: Record<string, Credentials> = {};

t.before(async () => {
  c.node = await store.add('node', 'node-1');
  c.node2 = await store.add('node', 'node-2');
  c.agent = await store.add('agent', 'agent-1');
  c.op = await store.add('operator', 'op-1');
  broker = await startBroker({ ferry: { store, allowAnonymous: true, log: (l, m) => logs.push(`${l} ${m}`) } });
});
t.teardown(async () => {
  await broker.close();
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const refusedWith = (p: Promise<unknown>) => p.then(() => 'connected', (err: Error) => err.message);

t.test('$SYS: refused to nodes and anonymous clients, granted to operators and agents', async (t) => {
  const node = await connect(broker.url, { ...c.node, clientId: 'node-1' });
  const anon = await connect(broker.url, { clientId: 'anon-sys' });
  const op = await connect(broker.url, { ...c.op, clientId: 'op-1' });
  const agent = await connect(broker.url, { ...c.agent, clientId: 'agent-1' });
  t.same(await subscribe(node, '$SYS/#'), [128], 'node: SUBACK 0x80');
  t.same(await subscribe(anon, '$SYS/#'), [128], 'anonymous: SUBACK 0x80');
  t.same(await subscribe(anon, '$SYS/+/new/clients'), [128], 'anonymous, narrower filter: 0x80');
  t.same(await subscribe(op, '$SYS/#'), [1], 'operator: granted');
  t.same(await subscribe(agent, '$SYS/#'), [1], 'agent: granted');
  // `#` must not reach $SYS either: watch it while a client connects, then a marker.
  await subscribe(anon, '#');
  const seen: string[] = [];
  anon.on('message', (tp) => seen.push(tp));
  const opSaw = nextMessage(op, (tp) => tp.endsWith('/new/clients'));
  const marker = nextMessage(anon, (tp) => tp === 'plain/marker');
  const extra = await connect(broker.url, { ...c.node2, clientId: 'node-2' });
  await opSaw;
  await publish(op, 'plain/marker', 'x');
  await marker;
  t.same(seen.filter((tp) => tp.startsWith('$')), [], 'an anonymous `#` subscriber saw no $SYS message');
  await end(node, anon, op, agent, extra);
});

t.test('client ids: a node must use its id; nobody may use or take over another principal\'s id', async (t) => {
  const agent = await connect(broker.url, { ...c.agent, clientId: 'agent-1' });
  t.match(await refusedWith(connect(broker.url, { clientId: 'agent-1' })), /Identifier rejected/, 'anonymous with the agent\'s id: refused');
  t.match(await refusedWith(connect(broker.url, { clientId: 'agent-1/x' })), /Identifier rejected/, 'anonymous with the agent\'s namespace: refused');
  t.match(await refusedWith(connect(broker.url, { ...c.node2, clientId: 'agent-1' })), /Identifier rejected/, 'a node with the agent\'s id: refused');
  t.match(await refusedWith(connect(broker.url, { ...c.node2, clientId: 'node-1' })), /Identifier rejected/, 'a node with another node\'s id: refused');
  // An operator's foreign client id is put in its own namespace: it cannot collide with the agent.
  const op = await connect(broker.url, { ...c.op, clientId: 'agent-1' });
  t.equal(broker.plugin!.principalOf('op-1/agent-1')?.id, 'op-1', 'the operator is registered as op-1/agent-1');
  t.equal(broker.plugin!.principalOf('agent-1')?.role, 'agent', 'the agent is still agent-1');
  t.ok(agent.connected, 'and was never kicked');
  const op2 = await connect(broker.url, { ...c.op, clientId: 'op-1/status' });
  t.equal(broker.plugin!.principalOf('op-1/status')?.id, 'op-1', 'a suffix in its own namespace is kept');
  t.ok(logs.some((l) => /client id "agent-1" belongs to a provisioned identity/.test(l)), 'refusals are logged with the reason');
  await end(agent, op, op2);
});

t.test('anonymous clients cannot take over each other; a principal may take over its own session', async (t) => {
  const a = await connect(broker.url, { clientId: 'anon-dup' });
  t.match(await refusedWith(connect(broker.url, { clientId: 'anon-dup' })), /Identifier rejected/, 'a second anonymous client with the same id is refused');
  t.ok(a.connected, 'the first keeps its connection');
  t.ok(logs.some((l) => /client id "anon-dup" is in use by another client/.test(l)), 'the refusal is logged');
  const first = await connect(broker.url, { ...c.node, clientId: 'node-1' });
  const closed = new Promise<void>((r) => first.stream.once('close', () => r()));
  const second = await connect(broker.url, { ...c.node, clientId: 'node-1' });
  await closed;
  t.ok(second.connected, 'the same node reconnecting takes over its own session');
  await end(a, first, second);
});

t.test('the agent connects with its identity name as client id', async (t) => {
  const key = generateOperatorKey();
  const agent = new Agent({ brokerUrl: broker.url, dataDir: path.join(dir, 'agent'), trust: [key.publicKey], ...c.agent });
  await agent.start();
  t.teardown(() => agent.stop());
  t.equal(broker.plugin!.principalOf('agent-1')?.role, 'agent', 'registered as agent-1');
  t.match(await refusedWith(connect(broker.url, { clientId: 'agent-1' })), /Identifier rejected/, 'which no anonymous client can take over');
});
