import t from 'tap';
import { assignWaves } from '../agent/rollout-fsm.js';
import type { Clock } from '../agent/updates.js';
import type { RolloutSpec } from '../shared/rollout.js';
import { HW, makeRolloutWorld, until, untilRollout } from './helpers/rollout-world.js';

/**
 * What a rollout lets through, end to end with a real broker, agent and simulated nodes: the
 * gateway-local window (the agent's clock is injected, never wall time), --min-battery from the
 * Hello's battery field, --group from the broker's identities, and --auto-revert (a downgrade the
 * rollout authorises with a signed permit the node checks).
 */
function shiftedClock(): Clock & { set(hh: number, mm: number): void } {
  let offset = 0;
  return {
    now: () => Date.now() + offset,
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (h) => clearTimeout(h),
    set(hh, mm) {
      const d = new Date();
      d.setHours(hh, mm, 0, 0);
      offset = d.getTime() - Date.now();
    },
  };
}

t.test('window: nothing is offered outside it; offers start when the agent clock enters it', async (t) => {
  const w = await makeRolloutWorld();
  t.teardown(() => w.close());
  const clock = shiftedClock();
  clock.set(12, 0);
  const agent = await w.addAgent('agent-1', 0, {}, clock);
  await w.addNodes(['win-1', 'win-2']);
  await until(() => agent.statuses().length === 2, 'Hellos');
  await w.publish('1.1.0');
  await until(() => agent.catalog.all().length === 1, 'the release');
  t.equal((await w.cli(['start', '--release', `${HW}/1.1.0`, '--key', w.keyFile, '--id', 'win', '--canary', '0', '--window', '02:00-04:00'])).code, 0);
  await until(() => agent.rollouts().length === 1, 'the rollout at the agent');
  // The rollout machine has seen every node and the closed window: nothing went out.
  await until(() => agent.store.events(undefined, 200).some((e) => e.kind === 'rollout' && e.detail.includes('win') && e.detail.includes('wave 1')), 'wave 1 to start');
  t.ok(agent.statuses().every((s) => s.state === 'idle'), 'at 12:00 gateway time nothing is offered for a 02:00-04:00 window');
  clock.set(2, 30);
  await untilRollout(agent, (v) => v.state === 'done', 'done once the window opened');
  t.ok(agent.statuses().every((s) => s.runningVersion === '1.1.0'), 'both nodes updated inside the window');
});

t.test('min-battery skips low nodes (no field = mains); a charged node joins later', async (t) => {
  const w = await makeRolloutWorld();
  t.teardown(() => w.close());
  const agent = await w.addAgent('agent-1');
  const [low] = await w.addNodes(['bat-low', 'bat-ok', 'bat-mains'], (id) => (id === 'bat-low' ? { battery: 12 } : id === 'bat-ok' ? { battery: 80 } : {}));
  await until(() => agent.statuses().length === 3, 'Hellos');
  await w.publish('1.1.0');
  await until(() => agent.catalog.all().length === 1, 'the release');
  t.equal((await w.cli(['start', '--release', `${HW}/1.1.0`, '--key', w.keyFile, '--id', 'bat', '--canary', '0', '--min-battery', '30'])).code, 0);
  await untilRollout(agent, (v) => v.state === 'done', 'done: a skipped node does not hold the rollout');
  t.equal(agent.status('bat-ok')!.runningVersion, '1.1.0');
  t.equal(agent.status('bat-mains')!.runningVersion, '1.1.0', 'a node without the battery field counts as mains powered');
  t.equal(agent.status('bat-low')!.state, 'idle', 'the node at 12% was not offered');
  const status = await w.cli(['status', 'bat', '--json']);
  t.equal(JSON.parse(status.out).state, 'done');
  await w.restartNode(low, { battery: 90 });
  await until(() => agent.status('bat-low')?.runningVersion === '1.1.0', 'the charged node updated');
  t.equal(agent.status('bat-low')!.rollout, 'bat');
});

t.test('groups come from the broker identities: --group lab updates only lab nodes', async (t) => {
  const w = await makeRolloutWorld();
  t.teardown(() => w.close());
  const agent = await w.addAgent('agent-1');
  await w.addNodes(['g-lab-1', 'g-lab-2', 'g-field-1'], (id) => ({ groups: [id.includes('lab') ? 'lab' : 'field'] }));
  await until(() => agent.statuses().length === 3, 'Hellos');
  await w.publish('1.1.0');
  await until(() => agent.catalog.all().length === 1, 'the release');
  t.equal((await w.cli(['start', '--release', `${HW}/1.1.0`, '--key', w.keyFile, '--id', 'grp', '--group', 'lab', '--canary', '1'])).code, 0);
  await untilRollout(agent, (v) => v.state === 'done' && v.waves.reduce((a, x) => a + x.nodes, 0) === 2, 'done with the two lab nodes');
  t.equal(agent.status('g-lab-1')!.runningVersion, '1.1.0');
  t.equal(agent.status('g-lab-2')!.runningVersion, '1.1.0');
  t.equal(agent.status('g-field-1')!.state, 'idle', 'the field node is not in the rollout');
  t.equal(agent.status('g-field-1')!.runningVersion, '1.0.0');
});

t.test('auto-revert: on a halt, the node that confirmed goes back to its previous release', async (t) => {
  const w = await makeRolloutWorld();
  t.teardown(() => w.close());
  const ids = ['rv-1', 'rv-2', 'rv-3', 'rv-4'];
  const waves = assignWaves({ id: 'rev', canary: { n: 2 }, waves: [100] } as unknown as RolloutSpec, ids);
  const canary = ids.filter((id) => waves.get(id) === 0);
  const [good, bad] = canary;
  const agent = await w.addAgent('agent-1');
  await w.addNodes(ids, (id) => ({ failSelfTest: id === bad, selfTestMs: id === bad ? 300 : 5 }));
  await until(() => agent.statuses().length === 4, 'Hellos');
  // The nodes' factory image is release 1.0.0 (same bytes): what a revert returns them to.
  await w.publish('1.0.0');
  await w.publish('1.1.0');
  await until(() => agent.catalog.all().length === 2, 'both releases');
  t.ok(agent.statuses().every((s) => s.state === 'idle' || s.state === 'confirmed'), 'no rollout, no offer');
  t.equal((await w.cli(['start', '--release', `${HW}/1.1.0`, '--key', w.keyFile, '--id', 'rev', '--canary', '2', '--auto-revert'])).code, 0);
  const halted = await untilRollout(agent, (v) => v.state === 'halted', 'the halt');
  t.match(halted.reason, new RegExp(`${bad} rolledBack \\(selfTestFailed\\)`));
  await until(() => agent.status(good)?.runningVersion === '1.0.0' && agent.status(good)?.state === 'confirmed', `${good} reverted to 1.0.0`, 60_000);
  t.ok(agent.store.events(good, 500).some((e) => e.kind === 'hello' && e.detail.startsWith('1.1.0')), `${good} ran 1.1.0 first`);
  t.pass(`${good} confirmed 1.1.0, then was offered and confirmed 1.0.0 (a downgrade the rollout authorised)`);
  t.equal(agent.status(good)!.rollout, 'rev');
  t.ok(ids.filter((id) => !canary.includes(id)).every((id) => agent.status(id)!.runningVersion === '1.0.0' && agent.status(id)!.targetVersion === null), 'wave 1 never started');
});
