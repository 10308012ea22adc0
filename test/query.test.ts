import { untilStatus as until } from './helpers/world.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/agent.js';
import { IdentityStore, startBroker } from '../broker/index.js';
import { SimNode } from '../device/node.js';
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { publishRelease } from '../operator/publish.js';
import { demoImage } from '../harness/images.js';

/**
 * Query (docs/protocol.md §4, §5): a node whose Hello went out while no agent listened is asked to
 * say Hello again, instead of waiting for its next reconnect.
 */
const HW = 'esp32-query';


function tmp(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ferry-${name}-`));
}

t.test('a node that said hello before the agent started is queried (presence) and updated', async (t) => {
  const dir = tmp('query-presence');
  const ids = IdentityStore.open(dir);
  const broker = await startBroker({ ferry: { store: ids } });
  const key = generateOperatorKey();
  const nodeCreds = await ids.add('node', 'early');
  const agentCreds = await ids.add('agent', 'agent-1');
  const opCreds = await ids.add('operator', 'op-1');
  const node = new SimNode({ brokerUrl: broker.url, deviceId: 'early', hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 2048, ...nodeCreds });
  let hellos = 0;
  node.on('hello', () => hellos++);
  let agent: Agent | undefined;
  t.teardown(async () => {
    await node.stop();
    await agent?.stop();
    await broker.close();
    ids.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  await node.start(); // its Hello reaches nobody: no agent is subscribed yet
  t.equal(hellos, 1, 'the node said hello once, into the void');
  agent = new Agent({ brokerUrl: broker.url, dataDir: path.join(dir, 'agent'), trust: [key.publicKey], clientId: 'agent-1', ...agentCreds, queryGraceMs: 200 });
  await agent.start();
  t.equal(agent.status('early'), undefined, 'a fresh agent knows nothing of the node');
  // The retained presence says the node is online; no Hello follows on its own, so the agent asks.
  const seen = await until(agent, 'early', () => true, 'hello after query');
  t.equal(seen.runningVersion, '1.0.0');
  t.equal(hellos, 2, 'the node answered the Query with a second Hello');
  t.ok(agent.store.events('early').some((e) => e.kind === 'hello'), 'the agent recorded the hello');

  const image = demoImage(HW, '1.1.0', 48 * 1024);
  await publishRelease({ brokerUrl: broker.url, image, hw: HW, version: '1.1.0', key: key.privateKey, ...opCreds });
  const done = await until(agent, 'early', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(done.runningVersion, '1.1.0');
  t.ok(node.runningDigest.equals(sha256(image)), 'the node runs the verified image');
});

t.test('a known node that said hello while the agent was down is queried when the agent comes back', async (t) => {
  // A plain broker: no presence at all. The agent's store is what tells it whom to ask.
  const broker = await startBroker();
  const dir = tmp('query-restart');
  const key = generateOperatorKey();
  const opts = { brokerUrl: broker.url, dataDir: dir, trust: [key.publicKey] };
  let agent = new Agent(opts);
  await agent.start();
  const node = new SimNode({ brokerUrl: broker.url, deviceId: 'known', hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 2048 });
  t.teardown(async () => {
    await node.stop();
    await agent.stop();
    await broker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await node.start();
  await until(agent, 'known', () => true, 'first hello');
  await agent.stop();

  // The node reboots while the agent is away: its boot Hello is lost.
  const booted = new Promise<void>((resolve) => node.once('hello', () => resolve()));
  await node.powerCut();
  await booted;
  const bootCount = node.bootCount;

  agent = new Agent(opts);
  const hello = new Promise<void>((resolve) => node.once('hello', () => resolve()));
  await agent.start();
  await hello;
  await until(agent, 'known', (s) => s.online, 'hello after restart');
  const ev = agent.store.events('known', 10).find((e) => e.kind === 'hello');
  t.ok(ev, 'the restarted agent heard a hello without the node reconnecting');
  t.equal(node.bootCount, bootCount, 'no reboot or reconnect was needed');

  const image = demoImage(HW, '1.1.0', 48 * 1024);
  await publishRelease({ brokerUrl: broker.url, image, hw: HW, version: '1.1.0', key: key.privateKey });
  const done = await until(agent, 'known', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(done.runningVersion, '1.1.0');
  t.ok(node.runningDigest.equals(sha256(image)));
});
