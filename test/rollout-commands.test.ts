import mqtt from 'mqtt';
import t from 'tap';
import { assignWaves } from '../agent/rollout-fsm.js';
import { fleetIds } from '../device/fleet.js';
import { publishRollout } from '../operator/rollouts.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { signRollout, type RolloutSpec } from '../shared/rollout.js';
import { HW, makeRolloutWorld, until, untilRollout } from './helpers/rollout-world.js';

/**
 * `ferry rollout pause|resume|abort|status` as real processes against a real broker and agent; the
 * rollout's state survives an agent restart; bad flags, unknown releases and forged or unsigned
 * rollout documents get one-line errors.
 */
t.test('pause, restart, resume, done; abort; state survives an agent restart', async (t) => {
  const w = await makeRolloutWorld();
  t.teardown(() => w.close());
  const ids = fleetIds(4, 'pr');
  const waves = assignWaves({ id: 'cmd-1', canary: { n: 1 }, waves: [100] } as unknown as RolloutSpec, ids);
  const canaryId = ids.find((id) => waves.get(id) === 0)!;
  let agent = await w.addAgent('agent-1');
  const nodes = await w.addNodes(ids);
  await until(() => agent.statuses().length === 4, 'every Hello');
  await w.publish('1.1.0');
  await until(() => agent.catalog.all().length === 1, 'the release');
  // The canary is offline: its offer waits, so the pause surely comes before its outcome.
  const canary = nodes.find((n) => n.id === canaryId)!;
  await canary.stop();

  t.equal((await w.cli(['start', '--release', `${HW}/1.1.0`, '--key', w.keyFile, '--id', 'cmd-1', '--canary', '1'])).code, 0, 'started');
  await until(() => agent.status(canaryId)?.state === 'offered', 'the canary offered');
  const paused = await w.cli(['pause', '--key', w.keyFile]);
  t.equal(paused.code, 0, `pause without an id takes the one under way (${paused.err.trim()})`);
  t.match(paused.out, /paused rollout cmd-1/);
  await untilRollout(agent, (v) => v.state === 'paused', 'paused');

  // Restart: the rollout comes back from SQLite before any retained message is read again.
  await agent.stop();
  w.agents.splice(w.agents.indexOf(agent), 1);
  agent = await w.addAgent('agent-1');
  const back = agent.rollouts()[0];
  t.equal(back?.id, 'cmd-1', 'the restarted agent knows the rollout at once');
  t.equal(back?.state, 'paused', 'still paused');
  t.equal(back?.currentWave, 0);

  await w.restartNode(canary);
  await until(() => agent.status(canaryId)?.state === 'confirmed', 'the canary, offered before the pause, finishes');
  t.equal(agent.rollouts()[0].currentWave, 0, 'paused: no next wave');
  t.ok(ids.filter((id) => id !== canaryId).every((id) => agent.status(id)!.state === 'idle'), 'nobody else offered while paused');

  t.equal((await w.cli(['resume', 'cmd-1', '--key', w.keyFile])).code, 0, 'resumed');
  await untilRollout(agent, (v) => v.state === 'done', 'done');
  t.ok(ids.every((id) => agent.status(id)!.runningVersion === '1.1.0'), 'every node runs 1.1.0');
  const status = await w.cli(['status', 'cmd-1']);
  t.match(status.out, /rollout cmd-1: esp32-roll 1\.1\.0 {2}DONE/);
  t.match(status.out, /agent agent-1: done, wave 1, 4 node\(s\)/);

  // Abort: a rollout held by a closed window is aborted before it offers anything.
  await w.publish('1.2.0');
  await until(() => agent.catalog.all().length === 2, 'release 1.2.0');
  const h = new Date().getHours();
  const closed = `${String((h + 2) % 24).padStart(2, '0')}:00-${String((h + 3) % 24).padStart(2, '0')}:00`;
  t.equal((await w.cli(['start', '--release', `${HW}/1.2.0`, '--key', w.keyFile, '--id', 'cmd-2', '--window', closed])).code, 0);
  await until(() => agent.rollouts().some((v) => v.id === 'cmd-2'), 'cmd-2 at the agent');
  t.ok(ids.every((id) => agent.status(id)!.runningVersion === '1.1.0' && agent.status(id)!.state === 'confirmed'), 'outside the window nothing is offered');
  t.equal((await w.cli(['abort', 'cmd-2', '--key', w.keyFile])).code, 0, 'aborted');
  await until(() => agent.rollouts().find((v) => v.id === 'cmd-2')?.state === 'aborted', 'aborted at the agent');
  const again = await w.cli(['resume', 'cmd-2', '--key', w.keyFile]);
  t.equal(again.code, 1, 'an aborted rollout cannot be resumed');
  t.match(again.err, /rollout cmd-2 was aborted: start a new rollout instead/);
  const list = await w.cli(['list']);
  t.match(list.out, /cmd-2 {2}esp32-roll 1\.2\.0 {2}aborted/);
  t.match(list.out, /cmd-1 {2}esp32-roll 1\.1\.0 {2}done/);
});

t.test('bad input: flags, unknown release, forged and unsigned documents', async (t) => {
  const w = await makeRolloutWorld();
  t.teardown(() => w.close());
  const agent = await w.addAgent('agent-1');
  await w.addNodes(['bad-1']);
  await until(() => agent.statuses().length === 1, 'Hello');
  await w.publish('1.1.0');
  await until(() => agent.catalog.all().length === 1, 'the release');

  const usage: [string[], RegExp][] = [
    [['--waves', '50%,10%'], /--waves "50%,10%": each wave must reach more nodes than the one before/],
    [['--waves', 'half'], /--waves "half": "half" is not a percentage like 25%/],
    [['--canary', 'abc'], /--canary "abc" must be a count \(3\) or a percentage \(10%\)/],
    [['--window', '9-17'], /--window "9-17" must be HH:MM-HH:MM/],
    [['--min-battery', '140'], /--min-battery 140 must be a percentage 0\.\.100/],
    [['--auto', '--canary', '2'], /--auto offers every node at once/],
  ];
  for (const [flags, re] of usage) {
    const r = await w.cli(['start', '--release', `${HW}/1.1.0`, '--key', w.keyFile, ...flags]);
    t.equal(r.code, 2, `${flags.join(' ')}: exit 2`);
    t.match(r.err, re, `${flags.join(' ')}: names the problem`);
  }
  const bad = await w.cli(['start', '--release', 'esp32-roll', '--key', w.keyFile]);
  t.match(bad.err, /--release "esp32-roll" must be HW\/VERSION/);
  const unknown = await w.cli(['start', '--release', `${HW}/9.9.9`, '--key', w.keyFile]);
  t.equal(unknown.code, 1, 'unknown release: exit 1');
  t.match(unknown.err, /^ferry rollout: unknown release esp32-roll\/9\.9\.9: the broker holds no manifest for it/);
  t.equal(unknown.err.trim().split('\n').length, 1, 'one line');
  const none = await w.cli(['status', 'nope']);
  t.equal(none.code, 1);
  t.match(none.err, /no rollout nope on the broker/);

  // A rollout signed by a key the agent does not trust, a tampered one, an unsigned one.
  const spec: RolloutSpec = {
    v: 1, id: 'forged-1', hw: HW, version: '1.1.0', digest: agent.catalog.all()[0].row.digest.toString('hex'), groups: [], devices: [], canary: { n: 0 },
    waves: [100], maxFailures: { n: 0 }, window: null, minBattery: null, autoRevert: false, auto: true, plan: null, revertPermit: null, command: 'run', seq: 1, created: 1,
  };
  const a = { brokerUrl: w.brokers[0].url, ...w.operator };
  await publishRollout(a, spec, generateOperatorKey().privateKey);
  const c = await mqtt.connectAsync(w.brokers[0].url, { ...w.operator, reconnectPeriod: 0 });
  const signed = JSON.parse(signRollout({ ...spec, id: 'forged-2' }, w.key.privateKey).toString());
  signed.doc = signed.doc.replace('"devices":[]', '"devices":["bad-1"]');
  await c.publishAsync('ferry/rollout/forged-2', JSON.stringify(signed), { qos: 1, retain: true });
  await c.publishAsync('ferry/rollout/forged-3', JSON.stringify({ ...spec, id: 'forged-3' }), { qos: 1, retain: true });
  await c.endAsync();
  for (const [id, re] of [['forged-1', /refused: rollout forged-1 is signed by unknown key/], ['forged-2', /refused: rollout forged-2: signature does not verify \(forged or altered\)/], ['forged-3', /refused: rollout document is not a signed envelope/]] as const) {
    await until(() => agent.store.events(undefined, 100).some((e) => e.kind === 'rollout-refused' && e.detail.startsWith(`${id}:`)), `the refusal of ${id}`);
    t.match((await w.cli(['status', id])).out, re, `${id}: the agent's refusal is visible in rollout status`);
  }
  t.equal(agent.rollouts().length, 0, 'the agent took none of them');
  t.equal(agent.status('bad-1')!.state, 'idle', 'and offered nothing');
});
