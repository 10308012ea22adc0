import t from 'tap';
import { makeWorld, quickNode, type World } from './helpers/world.js';

/**
 * The agent's state and report event traces for today's end-to-end scenarios, recorded before the
 * state-machine refactor of issue 9 and kept identical by it: the refactor moves code, not behaviour.
 * Only deterministic scenarios are pinned (no link faults, whose timing varies the trace).
 */
const HW = 'esp32-trace';

function trace(world: World, id: string): string[] {
  return world.agent.store
    .events(id, 10_000)
    .reverse()
    .filter((e) => e.kind === 'state' || e.kind === 'report')
    .map((e) => `${e.kind}: ${e.detail}`);
}

const scenarios: { name: string; node?: Parameters<typeof quickNode>[3]; until: string; expect: string[] }[] = [
  {
    name: 'a full-image update ends confirmed',
    node: { delta: false },
    until: 'confirmed',
    expect: [
      'state: idle -> offered', 'state: offered -> downloading', 'state: downloading -> verifying', 'report: stage 1 reason none',
      'state: verifying -> activating', 'report: stage 2 reason none', 'state: activating -> confirming', 'state: confirming -> confirmed',
    ],
  },
  {
    name: 'a failing self-test rolls back',
    node: { delta: false, failSelfTest: true },
    until: 'rolledBack',
    expect: [
      'state: idle -> offered', 'state: offered -> downloading', 'state: downloading -> verifying', 'report: stage 1 reason none',
      'state: verifying -> activating', 'report: stage 2 reason none', 'state: activating -> confirming', 'state: confirming -> rolledBack',
    ],
  },
  {
    name: 'a deferred activation is asked again and confirmed',
    node: { delta: false, deferActivation: { times: 1, retryAfter: 1 } },
    until: 'confirmed',
    expect: [
      'state: idle -> offered', 'state: offered -> downloading', 'state: downloading -> verifying', 'report: stage 1 reason none',
      'state: verifying -> activating', 'report: stage 6 reason busy', 'state: activating -> deferred', 'state: deferred -> activating',
      'report: stage 2 reason none', 'state: activating -> confirming', 'state: confirming -> confirmed',
    ],
  },
  {
    name: 'a node without rollback is refused a release that does not allow it',
    node: { rollback: false },
    until: 'rejected',
    expect: ['state: idle -> rejected'],
  },
];

for (const sc of scenarios) {
  t.test(sc.name, async (t) => {
    const world = await makeWorld();
    const n = await quickNode(world, HW, 'n1', sc.node);
    t.teardown(async () => {
      await n.stop();
      await world.close();
    });
    await world.publish({ hw: HW, version: '1.1.0' });
    await world.until('n1', (s) => s.state === sc.until, sc.until, 30_000);
    t.same(trace(world, 'n1'), sc.expect);
  });
}

t.test('a delta update ends confirmed with a delta payload', async (t) => {
  const world = await makeWorld();
  const n = await quickNode(world, HW, 'd1');
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0' });
  await world.until('d1', (s) => s.state === 'confirmed', 'confirmed 1.1.0', 30_000);
  await world.publish({ hw: HW, version: '1.2.0' });
  await world.until('d1', (s) => s.state === 'confirmed' && s.runningVersion === '1.2.0', 'confirmed 1.2.0', 30_000);
  const full = [
    'state: idle -> offered', 'state: offered -> downloading', 'state: downloading -> verifying', 'report: stage 1 reason none',
    'state: verifying -> activating', 'report: stage 2 reason none', 'state: activating -> confirming', 'state: confirming -> confirmed',
  ];
  t.same(trace(world, 'd1'), [...full, ...full.slice(0).map((s) => s.replace('idle -> offered', 'confirmed -> offered'))]);
});
