import t from 'tap';
import { Reason } from '../shared/errors.js';
import { Stage, type StageCode } from '../shared/messages.js';
import { Admission } from '../agent/admission.js';
import {
  classifyAck, holdsSlot, IDLE, inProgress, step, timersOf,
  type Effect, type Env, type HelloFacts, type Input, type PhaseKind, type TimerKind, type Update,
} from '../agent/update-fsm.js';
import { seeded } from '../harness/seeded.js';

/** Table-driven tests of the pure update machine (no broker, no clock: `now` is a number). */
const NOW = 1_000_000;
const env: Env = { cfg: { deadlines: { download: 1000, verify: 100, install: 500, confirm: 300 }, maxControlRetries: 3 }, rto: 100, random: () => 0.5 };
const T1 = { id: 'r1', version: '1.1.0' };
const T2 = { id: 'r2', version: '1.2.0' };
const ctl = { tries: 1, at: NOW + 100 };
const base = { target: T1, session: 7, offerId: 3, next: null };

const PHASES: Record<PhaseKind, Update> = {
  idle: IDLE,
  queued: { ...base, session: null, phase: { kind: 'queued' } },
  preparing: { ...base, session: null, phase: { kind: 'preparing', deadline: NOW + 1000 } },
  offered: { ...base, phase: { kind: 'offered', deadline: NOW + 1000, answer: ctl } },
  downloading: { ...base, phase: { kind: 'downloading', deadline: NOW + 1000 } },
  verifying: { ...base, phase: { kind: 'verifying', deadline: NOW + 100 } },
  activating: { ...base, phase: { kind: 'activating', deadline: NOW + 500, control: ctl } },
  deferred: { ...base, phase: { kind: 'deferred', deadline: NOW + 500, askAt: NOW + 200 } },
  confirming: { ...base, phase: { kind: 'confirming', deadline: NOW + 300 } },
  done: { ...base, phase: { kind: 'done', outcome: 'confirmed' } },
};
const KINDS = Object.keys(PHASES) as PhaseKind[];

function outcomeOf(u: Update): string {
  return u.phase.kind === 'done' ? `done:${u.phase.outcome}` : u.phase.kind;
}

function run(u: Update, input: Input, now = NOW): { u: Update; effects: Effect[]; result: string } {
  const r = step(u, input, now, env);
  return { u: r.update, effects: r.effects, result: outcomeOf(r.update) };
}

// ---- every report stage × every state --------------------------------------------------------

const same = (k: PhaseKind) => outcomeOf(PHASES[k]);
const REPORTS: { stage: StageCode; name: string; expect: Partial<Record<PhaseKind, string>> }[] = [
  { stage: Stage.verified, name: 'verified', expect: { offered: 'activating', downloading: 'activating', verifying: 'activating' } },
  { stage: Stage.rebooting, name: 'rebooting', expect: { activating: 'confirming', deferred: 'confirming' } },
  { stage: Stage.busy, name: 'busy', expect: { activating: 'deferred', deferred: 'deferred' } },
  {
    stage: Stage.confirmed, name: 'confirmed',
    expect: { offered: 'done:confirmed', downloading: 'done:confirmed', verifying: 'done:confirmed', activating: 'done:confirmed', deferred: 'done:confirmed', confirming: 'done:confirmed' },
  },
  { stage: Stage.rolledBack, name: 'rolledBack', expect: { activating: 'done:rolledBack', deferred: 'done:rolledBack', confirming: 'done:rolledBack' } },
  { stage: Stage.failed, name: 'failed', expect: { activating: 'done:failed', deferred: 'done:failed', confirming: 'done:failed' } },
  {
    stage: Stage.rejected, name: 'rejected',
    expect: { offered: 'done:rejected', downloading: 'done:rejected', verifying: 'done:rejected', activating: 'done:rejected', deferred: 'done:rejected' },
  },
];

t.test('every report stage × every state', async (t) => {
  for (const r of REPORTS) {
    for (const k of KINDS) {
      const { result, effects } = run(PHASES[k], { kind: 'report', report: { session: 7, stage: r.stage, reason: r.stage === Stage.busy ? Reason.busy : 0, version: '1.1.0', retryAfter: 0, deltaPayload: false } });
      const want = r.expect[k] ?? same(k);
      t.equal(result, want, `${r.name} in ${k} -> ${want}`);
      const logged = effects.find((e) => e.kind === 'event');
      t.equal(logged?.kind === 'event' && logged.event, r.expect[k] ? 'report' : 'stale-report', `${r.name} in ${k} is ${r.expect[k] ? 'news' : 'stale'}`);
    }
  }
});

t.test('a report for another session is stale in every state', async (t) => {
  for (const k of KINDS) {
    const { result } = run(PHASES[k], { kind: 'report', report: { session: 99, stage: Stage.confirmed, reason: 0, deltaPayload: false } });
    t.equal(result, same(k), k);
  }
});

t.test('a refused delta falls back to the full image; a refusal of the release ends the update', async (t) => {
  const refusal = (reason: number) => run(PHASES.downloading, { kind: 'report', report: { session: 7, stage: Stage.rejected, reason, deltaPayload: true } });
  const fb = refusal(Reason.deltaBaseMismatch);
  t.equal(fb.result, 'preparing');
  t.ok(fb.effects.some((e) => e.kind === 'fallBackToFull') && fb.effects.some((e) => e.kind === 'prepare'));
  t.equal(refusal(Reason.badSignature).result, 'done:rejected');
});

// ---- every input kind × every state ----------------------------------------------------------

const helloFacts = (o: Partial<HelloFacts>): HelloFacts => ({
  version: '1.0.0', runsTarget: false, recovery: false, pendingVerify: false, holdsTarget: false, transfer: 'none', complete: false, ...o,
});

const INPUTS: { name: string; input: Input; now?: number; expect: Partial<Record<PhaseKind, string>> }[] = [
  {
    name: 'newer release', input: { kind: 'newer', release: T2 },
    // Before activation: cancelled at once. Activating / confirming: the newer one waits (next).
    expect: { offered: 'done:cancelled', downloading: 'done:cancelled', verifying: 'done:cancelled', deferred: 'done:cancelled' },
  },
  {
    name: 'withdrawn target', input: { kind: 'withdrawn', release: T1.id },
    // Not yet in the node's boot selection: ended (Cancel for a session the node holds). Later: the node decides.
    expect: { queued: 'done:cancelled', preparing: 'done:cancelled', offered: 'done:cancelled', downloading: 'done:cancelled', verifying: 'done:cancelled', deferred: 'done:cancelled' },
  },
  { name: 'another release withdrawn', input: { kind: 'withdrawn', release: T2.id }, expect: {} },
  { name: 'begin', input: { kind: 'begin', release: T1 }, expect: { idle: 'preparing', queued: 'preparing', activating: 'preparing', deferred: 'preparing', confirming: 'preparing', done: 'preparing' } },
  { name: 'queue', input: { kind: 'queue', release: T1 }, expect: { idle: 'queued', activating: 'queued', deferred: 'queued', confirming: 'queued', done: 'queued' } },
  { name: 'prepared', input: { kind: 'prepared', release: 'r1', session: 9 }, expect: { preparing: 'offered' } },
  { name: 'finish (already running)', input: { kind: 'finish', outcome: 'confirmed', reason: 0, detail: 'already running' }, expect: Object.fromEntries(KINDS.map((k) => [k, 'done:confirmed'])) },
  { name: 'answer, all held', input: { kind: 'ack', verdict: 'answer', session: 7, complete: true }, expect: { offered: 'verifying', downloading: 'verifying' } },
  { name: 'answer, some held', input: { kind: 'ack', verdict: 'answer', session: 7, complete: false }, expect: { offered: 'downloading', verifying: 'downloading' } },
  { name: 'more chunks, all held', input: { kind: 'ack', verdict: 'more', session: 7, complete: true }, expect: { downloading: 'verifying' } },
  { name: 'stale ack', input: { kind: 'ack', verdict: 'stale', session: 7, complete: true }, expect: {} },
  {
    name: 'hello running the target (valid)', input: { kind: 'hello', hello: helloFacts({ runsTarget: true, version: '1.1.0' }) },
    // Mid-transfer a Hello holding nothing of the payload sends verifying back to downloading (and a new Offer).
    expect: { activating: 'done:confirmed', deferred: 'done:confirmed', confirming: 'done:confirmed', verifying: 'downloading' },
  },
  {
    name: 'hello on the old image, no outcome', input: { kind: 'hello', hello: helloFacts({}) },
    expect: { confirming: 'done:rolledBack', verifying: 'downloading' },
  },
  {
    name: 'hello holding the target download', input: { kind: 'hello', hello: helloFacts({ holdsTarget: true }) },
    expect: { deferred: 'activating', confirming: 'done:rolledBack', verifying: 'downloading' },
  },
  {
    name: 'hello reporting a rollback of the target', input: { kind: 'hello', hello: helloFacts({ targetOutcome: { stage: Stage.rolledBack, reason: Reason.selfTestFailed } }) },
    expect: { preparing: 'done:rolledBack', offered: 'done:rolledBack', downloading: 'done:rolledBack', verifying: 'done:rolledBack', activating: 'done:rolledBack', deferred: 'done:rolledBack', confirming: 'done:rolledBack' },
  },
  {
    name: 'deadline timer, after every deadline', input: { kind: 'timer', timer: 'deadline' }, now: NOW + 10_000,
    expect: { preparing: 'done:timedOut', offered: 'done:timedOut', downloading: 'done:timedOut', verifying: 'done:timedOut', activating: 'done:timedOut', deferred: 'done:timedOut', confirming: 'done:timedOut' },
  },
  { name: 'deadline timer, early', input: { kind: 'timer', timer: 'deadline' }, now: NOW, expect: {} },
  { name: 'control timer', input: { kind: 'timer', timer: 'control' }, now: NOW + 150, expect: {} },
  { name: 'ask timer', input: { kind: 'timer', timer: 'ask' }, now: NOW + 250, expect: { deferred: 'activating' } },
  { name: 'resume', input: { kind: 'resume' }, expect: { deferred: 'activating' } },
  { name: 'restart', input: { kind: 'restart' }, expect: { offered: 'preparing', downloading: 'preparing', verifying: 'preparing' } },
];

t.test('every input kind × every state', async (t) => {
  for (const c of INPUTS) {
    for (const k of KINDS) {
      const { result } = run(PHASES[k], c.input, c.now);
      const want = c.expect[k] ?? same(k);
      t.equal(result, want, `${c.name} in ${k} -> ${want}`);
    }
  }
});

t.test('withdrawn: a transfer in flight is cancelled (Cancel, section 5.6); a queued one ends without a message', async (t) => {
  const c = run(PHASES.downloading, { kind: 'withdrawn', release: T1.id });
  t.ok(c.effects.some((e) => e.kind === 'cancel' && e.session === 7), 'Cancel for the session');
  t.ok(c.effects.some((e) => e.kind === 'outcome' && e.detail === 'withdrawn by the operator' && !e.refuse), 'ended, not recorded as a refusal');
  const q = run(PHASES.queued, { kind: 'withdrawn', release: T1.id });
  t.notOk(q.effects.some((e) => e.kind === 'cancel'), 'nothing to cancel on the node');
});

t.test('cancel: before activation the session is cancelled and the newer release considered; later it waits', async (t) => {
  const c = run(PHASES.downloading, { kind: 'newer', release: T2 });
  t.same(c.effects.filter((e) => e.kind === 'cancel'), [{ kind: 'cancel', session: 7 }], 'Cancel names the abandoned session');
  const out = c.effects.find((e) => e.kind === 'outcome');
  t.match(out, { outcome: 'cancelled', reason: Reason.cancelled, detail: 'replaced by 1.2.0', refuse: false });
  t.ok(c.effects.at(-1)?.kind === 'consider', 'the newer release is considered right after');
  const w = run(PHASES.confirming, { kind: 'newer', release: T2 });
  t.same(w.u.next, T2, 'confirming: the newer release waits in the next slot');
  t.notOk(w.effects.some((e) => e.kind === 'cancel'), 'no Cancel once the node boots the image');
  const fin = run(w.u, { kind: 'report', report: { session: 7, stage: Stage.confirmed, reason: 0, version: '1.1.0', deltaPayload: false } });
  t.equal(fin.result, 'done:confirmed', 'the outcome is recorded first');
  t.ok(fin.effects.some((e) => e.kind === 'consider'), 'then the waiting release is considered');
  t.equal(fin.u.next, null);
});

t.test('only the Ack echoing the latest offer-id is the answer', async (t) => {
  const u = PHASES.offered;
  t.equal(classifyAck(u, { session: 7, answers: 3 }), 'answer');
  t.equal(classifyAck(u, { session: 7, answers: 2 }), 'more', 'an answer to an older Offer only adds chunks');
  t.equal(classifyAck(u, { session: 7 }), 'more', 'an Ack without key 4 only adds chunks');
  t.equal(classifyAck(u, { session: 8, answers: 3 }), 'stale');
  t.equal(classifyAck(PHASES.activating, { session: 7, answers: 3 }), 'stale');
  const more = run(u, { kind: 'ack', verdict: 'more', session: 7, complete: true });
  t.equal(more.result, 'offered', 'it never ends the offered state');
  const resent = run(u, { kind: 'timer', timer: 'control' }, NOW + 150);
  t.equal(resent.u.offerId, 4, 'a resent Offer gets a new offer-id');
});

// ---- seeded random sequences under a fake clock ------------------------------------------------

const ALL_TIMERS: TimerKind[] = ['deadline', 'control', 'ask'];

t.test('random input sequences keep the invariants', async (t) => {
  const MAX = 2;
  for (let seed = 1; seed <= 40; seed++) {
    const random = seeded(seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
    let now = NOW;
    const ids = ['a', 'b', 'c', 'd', 'e'];
    const nodes = new Map<string, Update>(ids.map((id) => [id, IDLE]));
    const finishedWith = new Map<string, string>();
    let releases = [T1];
    const admission = new Admission(MAX, () => [...nodes.values()].filter((u) => holdsSlot(u.phase)).length);
    const violations: string[] = [];
    const feed = (id: string, input: Input): void => {
      const r = step(nodes.get(id)!, input, now, { ...env, random });
      const before = nodes.get(id)!;
      nodes.set(id, r.update);
      const u = r.update;
      if (inProgress(u.phase) && timersOf(u).deadline === undefined) violations.push(`${id}: ${u.phase.kind} without a deadline`);
      const done = finishedWith.get(id);
      if (before.phase.kind === 'done' && inProgress(u.phase) && done === u.target?.id) violations.push(`${id}: finished ${done} back in progress`);
      if (u.phase.kind === 'done' && u.target) finishedWith.set(id, u.target.id);
      const active = [...nodes.values()].filter((x) => holdsSlot(x.phase)).length;
      if (active > MAX) violations.push(`${active} transfers at once`);
      for (const e of r.effects) {
        if (e.kind === 'consider') consider(id);
      }
      if (holdsSlot(before.phase) && !holdsSlot(u.phase)) admit();
    };
    const admit = () =>
      admission.admit((id) => {
        const u = nodes.get(id)!;
        if (u.phase.kind !== 'queued' || !u.target) return false;
        feed(id, { kind: 'begin', release: u.target });
        return true;
      });
    // The offer policy, reduced: the latest release, unless the node finished it already.
    const consider = (id: string) => {
      const latest = releases[releases.length - 1];
      const u = nodes.get(id)!;
      if (finishedWith.get(id) === latest.id) return;
      if (u.target?.id === latest.id && u.phase.kind !== 'idle' && u.phase.kind !== 'done') return;
      if (u.phase.kind !== 'idle' && u.phase.kind !== 'done' && u.phase.kind !== 'queued') return feed(id, { kind: 'newer', release: latest });
      feed(id, admission.request(id) ? { kind: 'begin', release: latest } : { kind: 'queue', release: latest });
    };
    const fireDue = (id: string) => {
      const due = timersOf(nodes.get(id)!);
      for (const k of ALL_TIMERS) if (due[k] !== undefined && due[k]! <= now) feed(id, { kind: 'timer', timer: k });
    };
    for (let i = 0; i < 300; i++) {
      now += Math.floor(random() * 120);
      const id = pick(ids);
      const u = nodes.get(id)!;
      const session = u.session ?? 0;
      const r = random();
      if (r < 0.05 && releases.length < 4) {
        releases = [...releases, { id: `r${releases.length + 1}`, version: `1.${releases.length + 1}.0` }];
        for (const n of ids) consider(n);
      } else if (r < 0.15) consider(id);
      else if (r < 0.25) feed(id, { kind: 'prepared', release: u.target?.id ?? 'x', session: 100 + i });
      else if (r < 0.45) feed(id, { kind: 'ack', verdict: classifyAck(u, { session, answers: random() < 0.5 ? u.offerId : undefined }), session, complete: random() < 0.3 });
      else if (r < 0.7) {
        const stage = pick([Stage.verified, Stage.rebooting, Stage.busy, Stage.confirmed, Stage.rolledBack, Stage.failed, Stage.rejected] as StageCode[]);
        feed(id, { kind: 'report', report: { session: random() < 0.9 ? session : 5, stage, reason: 0, version: u.target?.version, retryAfter: 1, deltaPayload: random() < 0.2 } });
      } else if (r < 0.85) {
        feed(id, { kind: 'hello', hello: helloFacts({ runsTarget: random() < 0.3, pendingVerify: random() < 0.3, holdsTarget: random() < 0.5, transfer: pick(['none', 'other', 'samePayload', 'sameSession'] as const), complete: random() < 0.3 }) });
      } else if (r < 0.9) feed(id, { kind: random() < 0.5 ? 'resume' : 'restart' });
      else fireDue(id);
      for (const n of ids) fireDue(n);
    }
    // Every update ends: with the node silent, deadlines end whatever is in progress, and those
    // waiting for a slot get one and end too.
    for (let round = 0; round < 50; round++) {
      now += 60_000;
      for (const n of ids) fireDue(n);
      admit();
    }
    for (const [id, u] of nodes) if (u.phase.kind !== 'idle' && u.phase.kind !== 'done') violations.push(`${id} never ended: ${u.phase.kind}`);
    t.same(violations, [], `seed ${seed}`);
  }
});
