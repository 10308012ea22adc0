import { untilStatus as until } from './helpers/world.js';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/agent.js';
import { IdentityStore, startBroker } from '../broker/index.js';
import { demoImage } from '../harness/images.js';
import { SimNode } from '../device/node.js';
import { publishRelease } from '../operator/publish.js';
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { connect, end, findBinary, nextMessage, startRedis, subscribe, tmpDir } from './helpers/broker-support.js';

/**
 * Scale-out, end to end: two brokers share one Redis (mqemitter-redis for routing,
 * aedes-persistence-redis for retained messages and sessions), both with the ferry plugin and
 * anonymous access off, both reading one identity store. The node sits on broker A, the agent on
 * broker B, the operator publishes the release to A; the node ends on a confirmed boot of it.
 */
const redisBin = findBinary('redis-server');
const HW = 'esp32-scale';


if (!redisBin) {
  t.test('update across two brokers sharing Redis', { skip: 'redis-server not found: install Debian package redis-server (listed in .ci/packages.txt)' }, () => {});
} else {
  t.test('update across two brokers sharing Redis: node on A, agent on B', async (t) => {
    const redis = await startRedis(redisBin);
    const dir = tmpDir('scaleout');
    const store = IdentityStore.open(path.join(dir, 'broker'));
    const logs: string[] = [];
    const log = (tag: string) => (level: string, msg: string) => logs.push(`${tag} ${level} ${msg}`);
    const a = await startBroker({ redis: redis.url, ferry: { store, log: log('A') } });
    const b = await startBroker({ redis: redis.url, ferry: { store, log: log('B') } });
    const nodeCred = await store.add('node', 'node-a1');
    const agentCred = await store.add('agent', 'agent-b');
    const opCred = await store.add('operator', 'op-1');
    const key = generateOperatorKey();
    const agent = new Agent({ brokerUrl: b.url, ...agentCred, clientId: 'agent-b', dataDir: path.join(dir, 'agent'), trust: [key.publicKey], rtt: { initialRto: 300, minRto: 100 } });
    const node = new SimNode({ brokerUrl: a.url, deviceId: 'node-a1', ...nodeCred, hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 2048 });
    t.teardown(async () => {
      await node.stop();
      await agent.stop();
      await a.close();
      await b.close();
      store.close();
      await redis.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    // Auth is on for real: the brokers refuse anonymous clients.
    await t.rejects(connect(a.url, { clientId: 'anon-a' }), /Not authorized/, 'anonymous refused on A');
    await t.rejects(connect(b.url, { clientId: 'anon-b' }), /Not authorized/, 'anonymous refused on B');

    await agent.start();
    await node.start();
    await until(agent, 'node-a1', () => true, "the node's Hello, sent on A, at the agent on B");
    t.equal(b.plugin!.principalOf('agent-b')?.role, 'agent', 'the agent is connected to B');
    t.equal(a.plugin!.principalOf('node-a1')?.role, 'node', 'the node is connected to A');
    t.equal(a.plugin!.principalOf('agent-b'), undefined, 'and not the other way round');

    const image = demoImage(HW, '1.1.0', 96 * 1024);
    await publishRelease({ brokerUrl: a.url, ...opCred, image, hw: HW, version: '1.1.0', key: key.privateKey });
    const s = await until(agent, 'node-a1', (s) => s.state === 'confirmed' || s.state === 'rolledBack' || s.state === 'rejected', 'an outcome');
    t.equal(s.state, 'confirmed', `outcome ${s.state}${s.reason ? ` (${s.reason})` : ''}`);
    t.equal(s.runningVersion, '1.1.0', 'the agent on B saw the node on A boot 1.1.0');
    t.equal(node.runningVersion, '1.1.0', 'the node runs 1.1.0');
    t.ok(node.runningDigest.equals(sha256(image)), 'exactly the image the operator published on A');

    // The retained status the agent published on B is in Redis: an operator on A reads it.
    const op = await connect(a.url, { ...opCred, clientId: 'op-1-watch' });
    const retained = nextMessage(op, (tp, p) => tp === 'ferry/d/node-a1/status' && JSON.parse(p.toString()).state === 'confirmed');
    t.same(await subscribe(op, 'ferry/d/node-a1/status'), [1]);
    const st = await retained;
    t.ok(st.retain, 'status retained, read through the other broker');
    await end(op);
    t.same(logs.filter((l) => / (warn|error) /.test(l) && !/connect refused for client "anon-/.test(l)), [], 'neither broker refused or dropped anything of the update');
  });
}
