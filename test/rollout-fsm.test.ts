import t from 'tap';
import { assignWaves, initial, offerFor, step, waveBounds, type NodeFacts, type RolloutInput, type RolloutState } from '../agent/rollout-fsm.js';
import { rolloutView } from '../agent/rollout-view.js';
import { inWindow, parseAmount, parseWaves, parseWindow, RolloutError, type RolloutSpec } from '../shared/rollout.js';

/** The rollout machine, pure: tables of inputs and the state and effects they must give. */
const DIGEST = 'ab'.repeat(32);
const OLD = 'cd'.repeat(32);
const NOON = new Date(2026, 0, 1, 12, 0).getTime();

function spec(o: Partial<RolloutSpec> = {}): RolloutSpec {
  return {
    v: 1, id: 'r1', hw: 'hw', version: '1.1.0', digest: DIGEST, groups: [], devices: [], canary: { n: 1 }, waves: [100], maxFailures: { n: 0 },
    window: null, minBattery: null, autoRevert: false, auto: false, plan: null, revertPermit: null, command: 'run', seq: 1, created: 1, ...o,
  };
}

function node(id: string, o: Partial<NodeFacts> = {}): NodeFacts {
  return { id, hw: 'hw', groups: [], battery: null, progress: 'none', reason: null, detail: '', running: OLD, settled: true, ...o };
}

function run(s: RolloutState, inputs: RolloutInput[], now = NOON) {
  const effects = [];
  for (const i of inputs) {
    const r = step(s, i, now);
    s = r.state;
    effects.push(...r.effects);
  }
  return { s, effects };
}

const ids = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];
const order = [...assignWaves(spec({ canary: { n: 0 }, waves: [100] }), ids).keys()];

t.test('parsing flags', async (t) => {
  const cases: [string, () => unknown, unknown][] = [
    ['count', () => parseAmount('3', '--canary'), { n: 3 }],
    ['percent', () => parseAmount('10%', '--canary'), { pct: 10 }],
    ['waves get a final 100%', () => parseWaves('10%,50%'), [10, 50, 100]],
    ['waves as given', () => parseWaves('25%,100%'), [25, 100]],
    ['window', () => parseWindow('22:00-04:00'), '22:00-04:00'],
  ];
  for (const [name, f, want] of cases) t.same(f(), want, name);
  const bad: [string, () => unknown, RegExp][] = [
    ['decreasing waves', () => parseWaves('50%,10%'), /each wave must reach more nodes/],
    ['a count in waves', () => parseWaves('10,50%'), /"10" is not a percentage/],
    ['above 100', () => parseWaves('150%'), /at most 100%/],
    ['a fraction count', () => parseAmount('1.5', '--canary'), /whole number/],
    ['a word', () => parseAmount('many', '--max-failures'), /--max-failures "many" must be a count/],
    ['a bad window', () => parseWindow('25:00-01:00'), /HH:MM-HH:MM/],
  ];
  for (const [name, f, re] of bad) t.throws(f, new RolloutError(''), name) && t.throws(f, re, name);
});

t.test('windows, also across midnight', async (t) => {
  const cases: [string | null, number, boolean][] = [
    [null, 0, true], ['01:00-05:00', 60, true], ['01:00-05:00', 300, false], ['01:00-05:00', 59, false],
    ['22:00-04:00', 23 * 60, true], ['22:00-04:00', 3 * 60, true], ['22:00-04:00', 12 * 60, false],
  ];
  for (const [w, m, want] of cases) t.equal(inWindow(w, m), want, `${w} at minute ${m}`);
});

t.test('wave bounds and membership', async (t) => {
  t.same(waveBounds(spec({ canary: { n: 2 }, waves: [50, 100] }), 10), [2, 5, 10]);
  t.same(waveBounds(spec({ canary: { pct: 10 }, waves: [100] }), 5), [1, 5], '10% of 5 rounds up to 1');
  t.same(waveBounds(spec({ canary: { n: 0 }, waves: [100] }), 3), [0, 3]);
  const a = assignWaves(spec({ canary: { n: 2 }, waves: [50, 100] }), ids);
  const b = assignWaves(spec({ canary: { n: 2 }, waves: [50, 100] }), [...ids].reverse());
  t.same([...a].sort(), [...b].sort(), 'the same waves whatever order the nodes are seen in');
  t.same([...a.values()].sort(), [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]);
});

t.test('a rollout runs wave by wave and ends done', async (t) => {
  const sp = spec({ canary: { n: 1 }, waves: [50, 100] });
  let { s, effects } = run(initial(sp), [{ kind: 'facts', nodes: ids.map((id) => node(id)) }]);
  t.equal(s.wave, 0);
  t.same(effects.find((e) => e.kind === 'consider'), { kind: 'consider', devices: [...ids].sort() }, 'new nodes are considered');
  const canary = order.filter((id) => s.nodes[id].wave === 0);
  t.same(canary, [order[0]], 'the first by rank is the canary');
  t.equal(offerFor(s, order[0], NOON).kind, 'offer');
  t.same(offerFor(s, order[1], NOON), { kind: 'hold', why: 'waiting for wave 1' });
  ({ s, effects } = run(s, [{ kind: 'facts', nodes: [node(order[0], { progress: 'inProgress' })] }]));
  t.equal(s.wave, 0, 'a wave in progress does not advance');
  ({ s, effects } = run(s, [{ kind: 'facts', nodes: [node(order[0], { progress: 'confirmed', running: DIGEST })] }]));
  t.equal(s.wave, 1, 'the canary confirmed: wave 1 starts');
  t.same(effects.find((e) => e.kind === 'consider'), { kind: 'consider', devices: order.slice(1, 5).sort() }, 'its nodes are woken');
  ({ s } = run(s, [{ kind: 'facts', nodes: order.slice(1, 5).map((id) => node(id, { progress: 'confirmed', running: DIGEST })) }]));
  t.equal(s.wave, 2);
  ({ s, effects } = run(s, [{ kind: 'facts', nodes: order.slice(5).map((id) => node(id, { progress: 'confirmed', running: DIGEST })) }]));
  t.equal(s.status.kind, 'done');
  t.ok(effects.some((e) => e.kind === 'publish'), 'published');
  t.equal(offerFor(s, 'k', NOON).kind, 'hold', 'a node not in the rollout is held');
});

t.test('failures halt with a reason naming the nodes; resume accepts them', async (t) => {
  const sp = spec({ canary: { n: 3 }, waves: [100], maxFailures: { n: 1 }, autoRevert: true });
  let { s } = run(initial(sp), [{ kind: 'facts', nodes: ids.map((id) => node(id)) }]);
  const [x, y, z] = order;
  let effects;
  ({ s } = run(s, [{ kind: 'facts', nodes: [node(x, { progress: 'confirmed', running: DIGEST }), node(y, { progress: 'rolledBack', reason: 'selfTestFailed' })] }]));
  t.equal(s.status.kind, 'running', 'one failure is within --max-failures 1');
  ({ s, effects } = run(s, [{ kind: 'facts', nodes: [node(z, { progress: 'timedOut', reason: 'timeout' })] }]));
  t.equal(s.status.kind, 'halted');
  t.match((s.status as { reason: string }).reason, `halted in wave 0 (canary): 2 failure(s) passed --max-failures 1: ${[y, z].sort()[0]}`);
  t.equal(s.wave, 0, 'no further wave');
  t.equal(s.nodes[x].phase, 'reverting', 'auto-revert: the confirmed node goes back');
  t.same(offerFor(s, x, NOON), { kind: 'revert', to: OLD, wave: 0 });
  t.ok(effects.some((e) => e.kind === 'consider' && e.devices.includes(x)));
  t.same(offerFor(s, order[5], NOON), { kind: 'hold', why: 'rollout halted' });
  ({ s } = run(s, [{ kind: 'facts', nodes: [node(x, { running: OLD, progress: 'none' })] }]));
  t.equal(s.nodes[x].phase, 'reverted');
  ({ s } = run(s, [{ kind: 'command', spec: { ...sp, command: 'run', seq: 2 } }]));
  t.equal(s.status.kind, 'running', 'resumed: the two failures are accepted');
  t.equal(s.wave, 1, 'and the next wave starts');
});

t.test('commands: pause, resume, abort, replays ignored', async (t) => {
  const sp = spec();
  const cases: [string, RolloutInput[], string][] = [
    ['pause', [{ kind: 'command', spec: { ...sp, command: 'pause', seq: 2 } }], 'paused'],
    ['pause then resume', [{ kind: 'command', spec: { ...sp, command: 'pause', seq: 2 } }, { kind: 'command', spec: { ...sp, command: 'run', seq: 3 } }], 'running'],
    ['abort is final', [{ kind: 'command', spec: { ...sp, command: 'abort', seq: 2 } }, { kind: 'command', spec: { ...sp, command: 'run', seq: 3 } }], 'aborted'],
    ['a replayed older pause is ignored', [{ kind: 'command', spec: { ...sp, command: 'run', seq: 5 } }, { kind: 'command', spec: { ...sp, command: 'pause', seq: 4 } }], 'running'],
  ];
  for (const [name, inputs, want] of cases) {
    const { s } = run(initial(sp), [{ kind: 'facts', nodes: ids.map((id) => node(id)) }, ...inputs]);
    t.equal(s.status.kind, want, name);
    if (want !== 'running') t.equal(offerFor(s, order[0], NOON).kind, 'hold', `${name}: nothing offered`);
  }
});

t.test('battery, window, groups and devices', async (t) => {
  const cases: [string, Partial<RolloutSpec>, Partial<NodeFacts>, number, string][] = [
    ['low battery skipped', { minBattery: 30, canary: { n: 0 } }, { battery: 10 }, NOON, 'hold'],
    ['enough battery', { minBattery: 30, canary: { n: 0 } }, { battery: 80 }, NOON, 'offer'],
    ['mains powered', { minBattery: 30, canary: { n: 0 } }, { battery: null }, NOON, 'offer'],
    ['inside the window', { window: '11:00-13:00', canary: { n: 0 } }, {}, NOON, 'offer'],
    ['outside the window', { window: '01:00-05:00', canary: { n: 0 } }, {}, NOON, 'hold'],
    ['in the group', { groups: ['lab'], canary: { n: 0 } }, { groups: ['lab'] }, NOON, 'offer'],
    ['not in the group', { groups: ['lab'], canary: { n: 0 } }, { groups: ['field'] }, NOON, 'hold'],
    ['listed', { devices: ['a'], canary: { n: 0 } }, {}, NOON, 'offer'],
  ];
  for (const [name, o, f, now, want] of cases) {
    const { s } = run(initial(spec(o)), [{ kind: 'facts', nodes: [node('a', f)] }], now);
    t.equal(offerFor(s, 'a', now).kind, want, name);
  }
  const sp = spec({ window: '01:00-05:00', canary: { n: 0 } });
  let { s, effects } = run(initial(sp), [{ kind: 'facts', nodes: [node('a')] }], NOON);
  ({ s, effects } = run(s, [{ kind: 'tick' }], new Date(2026, 0, 2, 1, 30).getTime()));
  t.same(effects.find((e) => e.kind === 'consider'), { kind: 'consider', devices: ['a'] }, 'the window opening wakes waiting nodes');
  const low = run(initial(spec({ minBattery: 30, canary: { n: 0 } })), [{ kind: 'facts', nodes: [node('a', { battery: 5 }), node('b')] }, { kind: 'facts', nodes: [node('b', { progress: 'confirmed', running: DIGEST })] }]);
  t.equal(low.s.status.kind, 'done', 'a skipped node does not hold its wave back');
  t.equal(low.s.nodes.a.detail, 'battery 5% is below --min-battery 30%');
});

t.test('agents share a rollout: waves and halts from the merged view', async (t) => {
  const sp = spec({ canary: { n: 2 }, waves: [100], maxFailures: { n: 0 } });
  const mine = ids.slice(0, 5);
  const theirs = ids.slice(5);
  let a = run(initial(sp), [{ kind: 'facts', nodes: mine.map((id) => node(id)) }]).s;
  let b = run(initial(sp), [{ kind: 'facts', nodes: theirs.map((id) => node(id)) }]).s;
  a = run(a, [{ kind: 'peer', agent: 'B', state: { status: b.status, wave: b.wave, nodes: b.nodes } }]).s;
  b = run(b, [{ kind: 'peer', agent: 'A', state: { status: a.status, wave: a.wave, nodes: a.nodes } }]).s;
  const canaryA = Object.entries(a.nodes).filter(([, e]) => e.wave === 0).map(([id]) => id);
  const canaryB = Object.entries(b.nodes).filter(([, e]) => e.wave === 0).map(([id]) => id);
  t.equal(canaryA.length + canaryB.length, 2, 'one canary of 2 across both agents, not 2 each');
  t.same([...canaryA, ...canaryB].sort(), order.slice(0, 2).sort(), 'the fleet-wide first two by rank');
  const failed = canaryA[0] ?? canaryB[0];
  const owner = canaryA.includes(failed) ? 'A' : 'B';
  let failing = owner === 'A' ? a : b;
  failing = run(failing, [{ kind: 'facts', nodes: [node(failed, { progress: 'rejected', reason: 'noSpace' })] }]).s;
  const other = run(owner === 'A' ? b : a, [{ kind: 'peer', agent: owner, state: { status: failing.status, wave: failing.wave, nodes: failing.nodes } }]).s;
  t.equal(failing.status.kind, 'halted');
  t.equal(other.status.kind, 'halted', 'the other agent halts on the failure it read');
  const view = rolloutView(sp, other, other.peers);
  t.same(view.failures.map((f) => f.device), [failed]);
  t.equal(view.waves[0].nodes, 2);
});

t.test('auto-revert also takes back a node that confirms after the halt', async (t) => {
  const sp = spec({ canary: { n: 2 }, waves: [100], maxFailures: { n: 0 }, autoRevert: true });
  const [x, y] = order;
  let { s } = run(initial(sp), [{ kind: 'facts', nodes: ids.map((id) => node(id)) }, { kind: 'facts', nodes: [node(x, { progress: 'inProgress' })] }]);
  ({ s } = run(s, [{ kind: 'facts', nodes: [node(y, { progress: 'failed', reason: 'bootFailed' })] }]));
  t.equal(s.status.kind, 'halted');
  t.equal(s.nodes[x].phase, 'inProgress', 'an update under way finishes');
  const r = step(s, { kind: 'facts', nodes: [node(x, { progress: 'confirmed', running: DIGEST })] }, NOON);
  t.equal(r.state.nodes[x].phase, 'reverting', 'then goes back');
  t.same(offerFor(r.state, x, NOON), { kind: 'revert', to: OLD, wave: 0 });
});
