import fs from 'node:fs';
import t from 'tap';
import { IdentityStore, startBroker } from '../broker/index.js';
import { connect, end, findBinary, nextMessage, publish, startRedis, subscribe, tmpDir, upPayload } from './helpers/broker-support.js';

/**
 * Scale-out: two broker processes' worth of aedes (two instances, each with its own listener) share
 * one Redis through mqemitter-redis and aedes-persistence-redis. A client on A receives what is
 * published on B, retained messages and presence are shared, and the ACL holds on both.
 */
const redisBin = findBinary('redis-server');
if (!redisBin) {
  t.test('two brokers sharing one Redis', { skip: 'redis-server not found: install Debian package redis-server (listed in .ci/packages.txt)' }, () => {});
} else {
  t.test('two brokers sharing one Redis', async (t) => {
    const redis = await startRedis(redisBin);
    const dir = tmpDir('redis');
    const store = IdentityStore.open(dir);
    const a = await startBroker({ redis: redis.url, ferry: { store, allowAnonymous: true } });
    const b = await startBroker({ redis: redis.url, ferry: { store, allowAnonymous: true } });
    t.teardown(async () => {
      await a.close();
      await b.close();
      store.close();
      await redis.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const node = await store.add('node', 'node-1');
    const agentCred = await store.add('agent', 'agent-1');

    // Plain pub/sub across the brokers.
    const onA = await connect(a.url, { clientId: 'plain-a' });
    const onB = await connect(b.url, { clientId: 'plain-b' });
    await subscribe(onA, 'room/+/temp');
    // The SUBACK comes after mqemitter-redis has subscribed in Redis, so the route exists now.
    const first = nextMessage(onA, (tp) => tp === 'room/1/temp');
    await publish(onB, 'room/1/temp', '20');
    t.equal((await first).payload.toString(), '20', 'a client on A receives a publication made on B');

    // The ferry path: agent on B serves the node on A, both directions.
    const agent = await connect(b.url, { ...agentCred, clientId: 'agent-1' });
    t.same(await subscribe(agent, ['ferry/d/+/up', 'ferry/d/+/presence']), [1, 1]);
    const online = nextMessage(agent, (tp, p) => tp === 'ferry/d/node-1/presence' && p.toString() === 'online');
    const n = await connect(a.url, { ...node, clientId: 'node-1' });
    await subscribe(n, 'ferry/d/node-1/dn');
    await online;
    t.pass('presence published on A reaches the agent on B');
    const up = upPayload(200);
    const gotUp = nextMessage(agent, (tp, p) => tp === 'ferry/d/node-1/up' && p.equals(up));
    await publish(n, 'ferry/d/node-1/up', up);
    await gotUp;
    t.pass('up from the node on A reaches the agent on B');
    const dn = Buffer.from([0xa2, 0x00, 0x12, 0x01, 0x05]);
    const gotDn = nextMessage(n, (tp, p) => tp === 'ferry/d/node-1/dn' && p.equals(dn));
    await publish(agent, 'ferry/d/node-1/dn', dn);
    await gotDn;
    t.pass('dn from the agent on B reaches the node on A');

    // Retained state lives in Redis: a subscriber on B sees what was retained through A.
    await publish(onA, 'room/1/setpoint', '22', { retain: true });
    const late = await connect(b.url, { clientId: 'late-b' });
    const retained = nextMessage(late, (tp) => tp === 'room/1/setpoint');
    await subscribe(late, 'room/1/setpoint');
    t.equal((await retained).payload.toString(), '22', 'retained on A, delivered on B');

    // The ACL holds on the shared path: anonymous on B cannot read node traffic published on A.
    t.same(await subscribe(late, 'ferry/d/node-1/up'), [128], 'anonymous refused on B as well');
    await end(onA, onB, agent, n, late);
  });
}
