import t from 'tap';
import { assignWaves } from '../agent/rollout-fsm.js';
import type { RolloutSpec } from '../shared/rollout.js';
import { findBinary, startRedis } from './helpers/broker-support.js';
import { HW, makeRolloutWorld, until, untilRollout } from './helpers/rollout-world.js';

/**
 * Scale-out: two brokers sharing one Redis, an agent on each serving half the fleet. They share one
 * rollout: one canary of 2 for the whole fleet (not 2 each), and a failure seen by one agent halts
 * the other, which offers its wave-1 nodes nothing.
 */
const redisBin = findBinary('redis-server');
if (!redisBin) {
  t.test('two agents share a rollout', { skip: 'redis-server not found: install Debian package redis-server' }, () => {});
} else {
  t.test('two agents on Redis-backed brokers share one rollout without double-offering', async (t) => {
    const redis = await startRedis(redisBin);
    const w = await makeRolloutWorld([{ redis: redis.url }, { redis: redis.url }]);
    t.teardown(async () => {
      await w.close();
      await redis.stop();
    });
    const aIds = ['a-1', 'a-2', 'a-3', 'a-4'];
    const bIds = ['b-1', 'b-2', 'b-3', 'b-4'];
    const all = [...aIds, ...bIds];
    const waves = assignWaves({ id: 'shared', canary: { n: 2 }, waves: [100] } as unknown as RolloutSpec, all);
    const canary = all.filter((id) => waves.get(id) === 0);
    const failing = canary[0];
    w.serves('agent-a', ['a-*']);
    w.serves('agent-b', ['b-*']);
    const agentA = await w.addAgent('agent-a', 0);
    const agentB = await w.addAgent('agent-b', 1);
    await w.addNodes(aIds, (id) => ({ broker: 0, failSelfTest: id === failing }));
    await w.addNodes(bIds, (id) => ({ broker: 1, failSelfTest: id === failing }));
    await until(() => agentA.statuses().length === 4 && agentB.statuses().length === 4, 'each agent hears its own four nodes');
    await w.publish('1.1.0');
    await until(() => agentA.catalog.all().length === 1 && agentB.catalog.all().length === 1, 'the release at both agents');
    t.equal((await w.cli(['start', '--release', `${HW}/1.1.0`, '--key', w.keyFile, '--id', 'shared', '--canary', '2'])).code, 0);

    const va = await untilRollout(agentA, (v) => v.state === 'halted', 'agent A halts');
    const vb = await untilRollout(agentB, (v) => v.state === 'halted', 'agent B halts');
    t.same(va.failures.map((f) => f.device), [failing], 'A names the failure');
    t.same(vb.failures.map((f) => f.device), [failing], 'B names the same failure, whichever agent saw it');
    await until(() => canary.every((id) => ['confirmed', 'rolledBack'].includes((agentA.status(id) ?? agentB.status(id))!.state)), 'the canary to finish');
    const statuses = [...agentA.statuses(), ...agentB.statuses()];
    const offered = statuses.filter((s) => s.rollout === 'shared').map((s) => s.id).sort();
    t.same(offered, [...canary].sort(), 'exactly the fleet-wide canary of 2 was offered, across both agents');
    t.equal(va.waves[0].nodes, 2, 'both agents count one canary of 2');
    t.equal(vb.waves[0].nodes, 2);
    t.equal(va.waves[1].nodes + va.waves[0].nodes, 8, 'over all 8 nodes');
    const status = await w.cli(['status', 'shared'], 1);
    t.match(status.out, /HALTED/);
    t.match(status.out, /agent agent-a: halted/);
    t.match(status.out, /agent agent-b: halted/);
    t.match(status.out, new RegExp(`${failing} rolledBack \\(selfTestFailed\\)`));
  });
}
