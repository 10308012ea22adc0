import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/agent.js';
import { IdentityStore, startBroker } from '../broker/index.js';
import { SimNode } from '../device/node.js';
import { demoImage } from '../harness/images.js';
import { PublishError, publishRelease } from '../operator/publish.js';
import { loadPrivateKey, loadPublicKey, sha256 } from '../shared/manifest.js';
import { ferrySync, runFerry } from './helpers/ferry-process.js';
import { untilStatus } from './helpers/world.js';

/**
 * Release truth (issue 11): `ferry release publish` waits for the agents' retained verdicts and exits
 * non-zero with the reason; versions are immutable; list/show/withdraw. Real broker, real agent, real
 * `ferry` processes.
 */
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-release-truth-'));
const good = path.join(dir, 'good');
const other = path.join(dir, 'other');
for (const out of [good, other]) {
  const r = ferrySync(['keygen', '--out', out]);
  if (r.code !== 0) throw new Error(r.err);
}
const goodKey = path.join(good, 'operator.key');
const otherKey = path.join(other, 'operator.key');
const trust = loadPublicKey(fs.readFileSync(path.join(good, 'operator.pub')));
const ids = IdentityStore.open(path.join(dir, 'ids'));
const nodes: SimNode[] = [];
let broker: Awaited<ReturnType<typeof startBroker>>;
let agent: Agent;
let op: { username: string; password: string };
let agent2: { username: string; password: string };
let url: string;

function imageFile(hw: string, version: string, seed = 0): string {
  const file = path.join(dir, `${hw}-${version}-${seed}.bin`);
  const img = demoImage(hw, version, 24 * 1024);
  if (seed) img[img.length - 1] ^= seed;
  fs.writeFileSync(file, img);
  return file;
}

function publishArgs(hw: string, version: string, image: string, key = goodKey, extra: string[] = []): string[] {
  return ['release', 'publish', '--broker', url, '--username', op.username, '--image', image, '--hw', hw, '--version', version, '--key', key, ...extra];
}

const asOp = () => ({ FERRY_PASSWORD: op.password });

async function node(id: string, hw: string, version = '1.0.0', extra: Partial<ConstructorParameters<typeof SimNode>[0]> = {}): Promise<SimNode> {
  const creds = await ids.add('node', id);
  const n = new SimNode({
    brokerUrl: url, deviceId: id, hw, version, trust: [trust], ...creds,
    maxMessage: 2048, selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100, slotSize: 128 * 1024, ...extra,
  });
  nodes.push(n);
  await n.start();
  await untilStatus(agent, id, () => true, 'hello');
  return n;
}

t.before(async () => {
  broker = await startBroker({ ferry: { store: ids } });
  url = broker.url;
  op = await ids.add('operator', 'op-1');
  agent2 = await ids.add('agent', 'agent-2');
  const a = await ids.add('agent', 'agent-1');
  agent = new Agent({ brokerUrl: url, dataDir: path.join(dir, 'agent'), trust: [trust], ...a, rtt: { initialRto: 300, minRto: 100 } });
  await agent.start();
});

t.teardown(async () => {
  for (const n of nodes) await n.stop();
  await agent.stop();
  await broker.close();
  ids.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

t.test('publish: accepted by the agent, exit 0, progress then "waiting for agents"', async (t) => {
  const r = await runFerry(publishArgs('hw-a', '1.1.0', imageFile('hw-a', '1.1.0')), asOp());
  t.equal(r.code, 0, r.err);
  t.match(r.err, /waiting for agents/, 'progress says it waits for agents');
  t.match(r.out, /agent-1: accepted/);
  t.match(r.out, /^accepted hw-a 1\.1\.0 sha256 [0-9a-f]{64}$/m);
  const j = await runFerry(publishArgs('hw-a', '1.1.0', imageFile('hw-a', '1.1.0'), goodKey, ['--json']), asOp());
  t.equal(j.code, 0, `re-publishing the same image is fine: ${j.err}`);
  const doc = JSON.parse(j.out);
  t.equal(doc.result, 'accepted');
  t.same(doc.agents.map((v: { agent: string; state: string }) => [v.agent, v.state]), [['agent-1', 'accepted']]);
});

t.test('publish with a key the agent does not trust: refused by agent-1: unknownKey', async (t) => {
  const r = await runFerry(publishArgs('hw-a', '1.2.0', imageFile('hw-a', '1.2.0'), otherKey), asOp());
  t.equal(r.code, 1);
  t.match(r.err, /^ferry release publish: refused by agent-1: unknownKey/m);
  const j = await runFerry(publishArgs('hw-a', '1.2.0', imageFile('hw-a', '1.2.0'), otherKey, ['--json']), asOp());
  t.equal(j.code, 1);
  t.match(JSON.parse(j.out.split('\n')[0]), { result: 'failed', reason: 'refused', agents: [{ agent: 'agent-1', state: 'refused', reason: 'unknownKey' }] });
});

t.test('an identity that may not publish releases: not authorized to publish', async (t) => {
  // An agent may read release topics but not write them: the broker acknowledges and drops, so the
  // manifest never reads back.
  const r = await runFerry(['release', 'publish', '--broker', url, '--username', agent2.username, '--image', imageFile('hw-a', '1.3.0'), '--hw', 'hw-a', '--version', '1.3.0', '--key', goodKey], { FERRY_PASSWORD: agent2.password });
  t.equal(r.code, 1);
  t.match(r.err, /^ferry release publish: not authorized to publish/m);
});

t.test('no agent answers: "no agent serves hw X" after --wait-timeout; --no-wait does not wait', async (t) => {
  const bare = await startBroker();
  t.teardown(() => bare.close());
  const image = imageFile('hw-none', '1.0.0');
  const r = await runFerry(['release', 'publish', '--broker', bare.url, '--image', image, '--hw', 'hw-none', '--version', '1.0.0', '--key', goodKey, '--wait-timeout', '1']);
  t.equal(r.code, 1);
  t.match(r.err, /^ferry release publish: no agent serves hw hw-none/m);
  const f = await runFerry(['release', 'publish', '--broker', bare.url, '--image', image, '--hw', 'hw-none', '--version', '1.0.0', '--key', goodKey, '--no-wait', '--json']);
  t.equal(f.code, 0, f.err);
  t.equal(JSON.parse(f.out).result, 'published');
  const bad = await runFerry(['release', 'publish', '--broker', bare.url, '--image', image, '--hw', 'hw-none', '--version', '1.0.0', '--key', goodKey, '--wait-timeout', '0']);
  t.equal(bad.code, 2, 'a usage mistake');
  t.match(bad.err, /^ferry release publish: --wait-timeout must be a positive number of seconds, not 0$/m);
  const wild = await runFerry(['release', 'withdraw', '--broker', bare.url, '--hw', '#', '--version', '1.0.0']);
  t.equal(wild.code, 2, 'a wildcard is no hardware class');
  t.match(wild.err, /^ferry release withdraw: --hw "#" must be/m);
});

t.test('a version is immutable: another image is refused (versionConflict), the original still offered', async (t) => {
  const original = fs.readFileSync(imageFile('hw-a', '1.1.0'));
  const r = await runFerry(publishArgs('hw-a', '1.1.0', imageFile('hw-a', '1.1.0', 7)), asOp());
  t.equal(r.code, 1);
  t.match(r.err, /^ferry release publish: versionConflict: hw-a 1\.1\.0 is already published with digest [0-9a-f]{12}/m, 'the CLI refuses before touching the broker');
  // A broker that lost the retained release (or a tool that skips the check): the agent refuses it.
  const img = demoImage('hw-c', '1.0.0', 16 * 1024);
  await publishRelease({ brokerUrl: url, ...op, image: img, hw: 'hw-c', version: '2.0.0', key: loadPrivateKey(fs.readFileSync(goodKey)), waitForAgents: true });
  const conflicting = Buffer.from(img);
  conflicting[0] ^= 1;
  const err = await publishRelease({ brokerUrl: url, ...op, image: conflicting, hw: 'hw-c', version: '2.0.0', key: loadPrivateKey(fs.readFileSync(goodKey)), waitForAgents: true, waitTimeoutMs: 20_000 }).then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof PublishError, 'the publish fails');
  t.match((err as Error).message, new RegExp(`refused by agent-1: versionConflict \\(hw-c 2\\.0\\.0 is already held with digest ${sha256(img).toString('hex').slice(0, 12)}; this manifest has ${sha256(conflicting).toString('hex').slice(0, 12)}`));
  const held = agent.catalog.all().filter((x) => x.row.hw === 'hw-c');
  t.equal(held.length, 1, 'one release held');
  t.ok(held[0].row.digest.equals(sha256(img)), 'the stored release is untouched');
  const n = await node('a-new', 'hw-a');
  const done = await untilStatus(agent, 'a-new', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(done.runningVersion, '1.1.0');
  t.ok(n.runningDigest.equals(sha256(original)), 'a new node gets the original image');
});

t.test('withdraw: not offered to a new node, running nodes untouched; list/show; --restore', async (t) => {
  const r = await runFerry(publishArgs('hw-w', '2.0.0', imageFile('hw-w', '2.0.0')), asOp());
  t.equal(r.code, 0, r.err);
  await node('w-old', 'hw-w');
  await untilStatus(agent, 'w-old', (s) => s.state === 'confirmed' && s.runningVersion === '2.0.0', 'confirmed');
  const w = await runFerry(['release', 'withdraw', '--broker', url, '--username', op.username, '--hw', 'hw-w', '--version', '2.0.0'], asOp());
  t.equal(w.code, 0, w.err);
  t.match(w.out, /^withdrawn hw-w 2\.0\.0$/m);
  const s = await runFerry(['release', 'show', '--broker', url, '--username', op.username, '--hw', 'hw-w', '--version', '2.0.0', '--json'], asOp());
  t.equal(s.code, 0, s.err);
  const shown = JSON.parse(s.out);
  t.match(shown, { hw: 'hw-w', version: '2.0.0', withdrawn: true, size: 24 * 1024, statuses: [{ agent: 'agent-1', state: 'accepted' }] });
  // The agent honours the marker (its verdict says so) before a new node says hello.
  await new Promise<void>((resolve) => {
    const poll = () => (agent.catalog.isWithdrawn('hw-w', '2.0.0') ? resolve() : setTimeout(poll, 20));
    poll();
  });
  await node('w-new', 'hw-w');
  t.equal(agent.status('w-new')?.state, 'idle', 'a new node is not offered the withdrawn release');
  t.equal(agent.status('w-old')?.state, 'confirmed', 'the node running it is untouched');

  const l = await runFerry(['release', 'list', '--broker', url, '--username', op.username], asOp());
  t.equal(l.code, 0, l.err);
  t.match(l.out, /^hw-a 1\.1\.0 {2}[0-9a-f]{12} {2}24\.0 KiB {2}1\/1 agent\(s\) accepted$/m);
  t.match(l.out, /^hw-w 2\.0\.0 .* WITHDRAWN$/m);
  t.match(l.out, /^ {4}agent-1: refused: unknownKey/m, 'the refused 1.2.0 is listed with its reason');
  const lj = await runFerry(['release', 'list', '--broker', url, '--username', op.username, '--hw', 'hw-w', '--json'], asOp());
  t.same(JSON.parse(lj.out).map((x: { version: string }) => x.version), ['2.0.0']);
  const sh = await runFerry(['release', 'show', '--broker', url, '--username', op.username, '--hw', 'hw-w', '--version', '2.0.0'], asOp());
  t.match(sh.out, /^release hw-w 2\.0\.0 \(WITHDRAWN: not offered\)$/m);
  t.match(sh.out, /^ {4}agent-1: accepted, withdrawn$/m);

  const back = await runFerry(['release', 'withdraw', '--broker', url, '--username', op.username, '--hw', 'hw-w', '--version', '2.0.0', '--restore'], asOp());
  t.equal(back.code, 0, back.err);
  const done = await untilStatus(agent, 'w-new', (st) => st.state === 'confirmed', 'confirmed after restore');
  t.equal(done.runningVersion, '2.0.0');
});

t.test('withdraw cancels an update the node has not activated yet (Cancel, protocol 5.6); the node keeps its image', async (t) => {
  // The node downloads and verifies, then defers activation (busy) for a long time: the update waits in `deferred`.
  const n = await node('d-busy', 'hw-d', '1.0.0', { deferActivation: { times: 1000, retryAfter: 3600 } });
  const r = await runFerry(publishArgs('hw-d', '1.1.0', imageFile('hw-d', '1.1.0')), asOp());
  t.equal(r.code, 0, r.err);
  await untilStatus(agent, 'd-busy', (s) => s.state === 'deferred', 'deferred');
  const w = await runFerry(['release', 'withdraw', '--broker', url, '--username', op.username, '--hw', 'hw-d', '--version', '1.1.0'], asOp());
  t.equal(w.code, 0, w.err);
  const s = await untilStatus(agent, 'd-busy', (st) => st.state === 'cancelled', 'cancelled');
  t.equal(s.detail, 'withdrawn by the operator');
  t.equal(n.runningVersion, '1.0.0', 'the node still runs its image');
  t.ok(agent.store.events('d-busy', 50).some((e) => /cancel/i.test(e.kind) || /cancel/i.test(e.detail ?? '')), 'the cancel is in the event log');
});

t.test('a withdrawal is remembered across an agent restart: not offered before any marker arrives; --restore offers it', async (t) => {
  const creds = await ids.add('agent', 'agent-3');
  const dataDir = path.join(dir, 'agent-3');
  const first = new Agent({ brokerUrl: url, dataDir, trust: [trust], ...creds });
  await first.start();
  const r = await runFerry(publishArgs('hw-p', '1.0.0', imageFile('hw-p', '1.0.0')), asOp());
  t.equal(r.code, 0, r.err);
  await new Promise<void>((resolve) => {
    const poll = () => (first.catalog.latestFor('hw-p') ? resolve() : setTimeout(poll, 20));
    poll();
  });
  const w = await runFerry(['release', 'withdraw', '--broker', url, '--username', op.username, '--hw', 'hw-p', '--version', '1.0.0'], asOp());
  t.equal(w.code, 0, w.err);
  await new Promise<void>((resolve) => {
    const poll = () => (first.catalog.isWithdrawn('hw-p', '1.0.0') ? resolve() : setTimeout(poll, 20));
    poll();
  });
  await first.stop();

  // A broker that never held the marker: whatever the agent honours comes from its own store.
  const fresh = await startBroker({ ferry: { store: ids } });
  const again = new Agent({ brokerUrl: fresh.url, dataDir, trust: [trust], ...creds });
  t.teardown(async () => {
    await again.stop();
    await fresh.close();
  });
  t.ok(again.catalog.isWithdrawn('hw-p', '1.0.0'), 'the withdrawal is loaded before the agent connects');
  await again.start();
  const n = new SimNode({
    brokerUrl: fresh.url, deviceId: 'p-new', hw: 'hw-p', version: '0.9.0', trust: [trust], ...(await ids.add('node', 'p-new')),
    maxMessage: 2048, selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100, slotSize: 128 * 1024,
  });
  nodes.push(n);
  await n.start();
  await untilStatus(again, 'p-new', () => true, 'hello');
  t.equal(again.status('p-new')?.state, 'idle', 'a new node is not offered the withdrawn release');

  const back = await runFerry(['release', 'withdraw', '--broker', fresh.url, '--username', op.username, '--hw', 'hw-p', '--version', '1.0.0', '--restore'], asOp());
  t.equal(back.code, 0, back.err);
  const done = await untilStatus(again, 'p-new', (st) => st.state === 'confirmed', 'confirmed after restore');
  t.equal(done.runningVersion, '1.0.0');
  t.notOk(again.store.withdrawals().some((x) => x.hw === 'hw-p'), 'the restore is stored too');
});

t.test('a release restored while an agent was offline is offered once it is back (the restore is a retained marker too)', async (t) => {
  const creds = await ids.add('agent', 'agent-4');
  const dataDir = path.join(dir, 'agent-4');
  const first = new Agent({ brokerUrl: url, dataDir, trust: [trust], ...creds });
  await first.start();
  const r = await runFerry(publishArgs('hw-q', '1.0.0', imageFile('hw-q', '1.0.0')), asOp());
  t.equal(r.code, 0, r.err);
  const w = await runFerry(['release', 'withdraw', '--broker', url, '--username', op.username, '--hw', 'hw-q', '--version', '1.0.0'], asOp());
  t.equal(w.code, 0, w.err);
  await new Promise<void>((resolve) => {
    const poll = () => (first.catalog.isWithdrawn('hw-q', '1.0.0') ? resolve() : setTimeout(poll, 20));
    poll();
  });
  await first.stop();

  const back = await runFerry(['release', 'withdraw', '--broker', url, '--username', op.username, '--hw', 'hw-q', '--version', '1.0.0', '--restore'], asOp());
  t.equal(back.code, 0, back.err);
  const again = new Agent({ brokerUrl: url, dataDir, trust: [trust], ...creds });
  t.teardown(() => again.stop());
  t.ok(again.catalog.isWithdrawn('hw-q', '1.0.0'), 'its store still says withdrawn');
  await again.start();
  const n = new SimNode({
    brokerUrl: url, deviceId: 'q-new', hw: 'hw-q', version: '0.9.0', trust: [trust], ...(await ids.add('node', 'q-new')),
    maxMessage: 2048, selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100, slotSize: 128 * 1024,
  });
  nodes.push(n);
  await n.start();
  const done = await untilStatus(again, 'q-new', (st) => st.state === 'confirmed', 'confirmed: the retained restore marker reached the agent');
  t.equal(done.runningVersion, '1.0.0');
  t.notOk(again.catalog.isWithdrawn('hw-q', '1.0.0'));
});
