import fs from 'node:fs';
import t from 'tap';
import { IdentityStore, startBroker, type RunningBroker } from '../broker/index.js';
import { ACTORS, IDENTITIES, closed, connect, connectActors, end, nextMessage, publish, runMatrix, subscribe, tmpDir, upPayload, type Actor } from './helpers/broker-support.js';

/** Every role × topic pair against the aedes plugin, plus authentication refusals and revocation. */
const dir = tmpDir('acl');
const store = IdentityStore.open(dir);
const creds: Partial<Record<Actor, { username: string; password: string }>> = {};
const logs: string[] = [];
let broker: RunningBroker;

t.before(async () => {
  for (const [actor, id] of Object.entries(IDENTITIES)) {
    creds[actor as Actor] = await store.add(id.role, id.username, {
      groups: 'groups' in id ? [...id.groups] : undefined,
      serves: 'serves' in id ? [...id.serves] : undefined,
    });
  }
  broker = await startBroker({ ferry: { store, allowAnonymous: true, log: (l, m) => logs.push(`${l} ${m}`) } });
});

t.teardown(async () => {
  await broker.close();
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

t.test('credentials are stored hashed, never in clear', async (t) => {
  const raw = fs.readFileSync(store.file);
  t.notOk(raw.includes(Buffer.from(creds.node1!.password)), 'the secret does not appear in the store file');
  t.ok((await store.verify('node-1', creds.node1!.password)).ok, 'the secret verifies');
  const wrong = await store.verify('node-1', 'x'.repeat(32));
  t.notOk(wrong.ok, 'a wrong secret does not');
  t.match(!wrong.ok && wrong.reason, /wrong secret for "node-1"/);
  await t.rejects(store.add('node', 'node-1'), /already exists/, 'duplicate names are refused');
  await t.rejects(store.add('node', 'bad/id'), /must match/, 'ids that are not one topic level are refused');
  await t.rejects(store.add('agent', 'a-x', { serves: ['no spaces'] }), /serves entry/, 'bad serves globs are refused');
});

t.test('role × topic matrix on aedes', async (t) => {
  const clients = await connectActors(broker.url, creds);
  try {
    await runMatrix(t, clients, 'ferry', 'aedes');
  } finally {
    await end(...ACTORS.map((a) => clients[a]));
  }
  t.ok(logs.some((l) => /dropped publish from node node-1 on ferry\/d\/node-2\/up: a node may not publish here/.test(l)), 'refusals are logged with who and where');
});

t.test('wildcards: granted, but each message is filtered to what the client may read', async (t) => {
  const agent = await connect(broker.url, { ...creds.agentN2, clientId: 'agent-n2-w' });
  const node1 = await connect(broker.url, { ...creds.node1, clientId: 'node-1' });
  const node2 = await connect(broker.url, { ...creds.node2, clientId: 'node-2' });
  const anon = await connect(broker.url, { clientId: 'anon-w' });
  t.same(await subscribe(agent, 'ferry/d/+/up'), [1], 'agent serving node-2 may subscribe to the up wildcard');
  t.same(await subscribe(anon, '#'), [1], 'anonymous may subscribe to # (it only sees plain topics)');
  t.same(await subscribe(anon, 'ferry/#'), [128], 'anonymous may not subscribe to ferry/#');
  t.same(await subscribe(node1, 'ferry/d/+/dn'), [1], 'a node may use a wildcard that covers its own dn');
  const agentGot: string[] = [];
  agent.on('message', (tp) => agentGot.push(tp));
  const anonGot: string[] = [];
  anon.on('message', (tp) => anonGot.push(tp));
  await publish(node1, 'ferry/d/node-1/up', upPayload());
  const last = nextMessage(agent, (tp) => tp === 'ferry/d/node-2/up');
  const anonLast = nextMessage(anon, (tp) => tp === 'plain/end');
  await publish(node2, 'ferry/d/node-2/up', upPayload());
  await last;
  await publish(node2, 'plain/end', 'x');
  await anonLast;
  t.same(agentGot, ['ferry/d/node-2/up'], 'the agent received node-2 only');
  t.same(anonGot.filter((x) => x.startsWith('ferry')), [], 'anonymous # saw no ferry topic');
  await end(agent, node1, node2, anon);
});

t.test('authentication refusals name what was wrong', async (t) => {
  await t.rejects(connect(broker.url, { username: 'node-1', password: 'wrong-secret-wrong', clientId: 'node-1' }), /Bad username or password/);
  await t.rejects(connect(broker.url, { username: 'ghost', password: 'whatever-secret-1', clientId: 'ghost' }), /Bad username or password/);
  await t.rejects(connect(broker.url, { ...creds.node1, clientId: 'not-node-1' }), /Identifier rejected/, 'a node must use its id as client id');
  await t.rejects(connect(broker.url, { clientId: 'node-2' }), /Identifier rejected/, 'nobody may take a provisioned id as client id');
  t.ok(logs.some((l) => /wrong secret for "node-1"/.test(l)), 'wrong secret logged');
  t.ok(logs.some((l) => /unknown identity "ghost"/.test(l)), 'unknown identity logged');
  t.ok(logs.some((l) => /must connect with client id "node-1", not "not-node-1"/.test(l)), 'client id mismatch logged');

  const closedBroker = await startBroker({ ferry: { store } });
  try {
    await t.rejects(connect(closedBroker.url, { clientId: 'anon-x' }), /Not authorized/, 'anonymous refused unless allowed');
    const op = await connect(closedBroker.url, { ...creds.operator, clientId: 'op-1-c' });
    t.ok(op.connected, 'identities still get in');
    // Outside the prefix the broker stays a plain broker for everyone who got in.
    const got = nextMessage(op, (tp) => tp === 'plain/closed');
    t.same(await subscribe(op, 'plain/#'), [1], 'an identity may subscribe outside the prefix without --allow-anonymous');
    await publish(op, 'plain/closed', 'x');
    await got;
    t.pass('and publish there');
    await end(op);
  } finally {
    await closedBroker.close();
  }
});

t.test('revocation disconnects a live client and refuses it afterwards', async (t) => {
  const extra = await store.add('node', 'node-r');
  const c = await connect(broker.url, { ...extra, clientId: 'node-r' });
  const gone = closed(c);
  t.ok(store.revoke('node-r'));
  broker.plugin!.refresh();
  await gone;
  await t.rejects(connect(broker.url, { ...extra, clientId: 'node-r' }), /Bad username or password/);
  t.ok(logs.some((l) => /node-r" was revoked/.test(l)), 'revocation named in the log');
});
