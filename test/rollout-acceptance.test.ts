import t from 'tap';
import { assignWaves } from '../agent/rollout-fsm.js';
import type { RolloutSpec } from '../shared/rollout.js';
import { fleetIds } from '../device/fleet.js';
import { HW, makeRolloutWorld, until, untilRollout } from './helpers/rollout-world.js';

/**
 * Issue 11 acceptance: a rollout to 20 simulated nodes, 2 of them failing their self-test in the
 * canary, halts before wave 2, and `ferry rollout status` (a real process) says why. Real aedes
 * broker with identities and the ACL, a real agent with offer policy `rollout`, `ferry rollout
 * start` as a process.
 */
t.test('20 nodes, 2 failing in the canary: the rollout halts before wave 2 and status says why', async (t) => {
  const w = await makeRolloutWorld();
  t.teardown(() => w.close());
  const ID = 'acceptance-1';
  const ids = fleetIds(20);
  // Wave membership is a pure function of (rollout id, device id): the canary is known in advance.
  const shape = { id: ID, canary: { n: 4 }, waves: [50, 100] } as unknown as RolloutSpec;
  const waves = assignWaves(shape, ids);
  const canary = ids.filter((id) => waves.get(id) === 0);
  t.equal(canary.length, 4, 'a canary of 4');
  const failing = canary.slice(0, 2);
  const agent = await w.addAgent('agent-1');
  await w.addNodes(ids, (id) => ({ failSelfTest: failing.includes(id) }));
  await until(() => agent.statuses().length === 20, 'every Hello');
  await w.publish('1.1.0');
  await until(() => agent.catalog.all().length === 1, 'the release at the agent');
  t.ok(agent.statuses().every((s) => s.state === 'idle'), 'a published release alone is offered to nobody (offer policy rollout)');

  const started = await w.cli(['start', '--release', `${HW}/1.1.0`, '--key', w.keyFile, '--id', ID, '--canary', '4', '--waves', '50%,100%', '--max-failures', '1']);
  t.equal(started.code, 0, `rollout start exits 0 (${started.err.trim()})`);
  t.match(started.out, /started rollout acceptance-1/);

  const view = await untilRollout(agent, (v) => v.state === 'halted', 'the halt');
  t.equal(view.currentWave, 0, 'halted in the canary');
  t.same(view.failures.map((f) => f.device).sort(), [...failing].sort(), 'the two failing canary nodes are the failures');
  t.ok(view.failures.every((f) => f.outcome === 'rolledBack' && f.reason === 'selfTestFailed'), 'both rolled back after a failed self-test');
  await until(() => canary.every((id) => ['confirmed', 'rolledBack'].includes(agent.status(id)!.state)), 'the canary to finish');
  const later = ids.filter((id) => waves.get(id)! >= 1);
  t.ok(later.every((id) => agent.status(id)!.state === 'idle' && agent.status(id)!.runningVersion === '1.0.0'), 'no node of wave 1 or 2 was offered anything');
  t.ok(canary.every((id) => agent.status(id)!.rollout === ID && agent.status(id)!.wave === 0), 'the canary nodes\' status names the rollout and wave 0');

  const status = await w.cli(['status', ID]);
  t.equal(status.code, 0, `rollout status exits 0 (${status.err.trim()})`);
  t.match(status.out, /HALTED/, 'status says halted');
  t.match(status.out, /why: halted in wave 0 \(canary\): 2 failure\(s\) passed --max-failures 1/, 'and why');
  for (const id of failing) t.match(status.out, new RegExp(`${id} rolledBack \\(selfTestFailed\\)`), `naming ${id} and its reason`);
  const json = JSON.parse((await w.cli(['status', ID, '--json'])).out);
  t.equal(json.state, 'halted');
  t.equal(json.waves[2].state, 'pending', 'wave 2 never started');
  t.equal(json.waves[0].confirmed, 2);
  t.equal(json.waves[0].failed, 2);
});
