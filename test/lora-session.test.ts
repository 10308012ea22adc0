import t from 'tap';
import { decodeUp, encodeUp, pageIndices, statusPages } from '../shared/lora/control.js';
import { fragmentBlock } from '../shared/lora/fec.js';
import { FragDecoder } from '../shared/lora/fec-decoder.js';
import { initialSession, isFinished, step, type SessionConfig, type SessionEffect, type SessionInput, type SessionReport, type SessionState } from '../shared/lora/session.js';
import { decodeRequests } from '../shared/lora/ts004.js';
import { runSeed, seeded } from '../harness/seeded.js';

/** A node for the pure session: a FragDecoder answering setup and status like docs/lora.md §7.3, with seeded loss. */
class Node {
  dec: FragDecoder | null = null;
  /** LoRaMac-node drops counters below the last one seen; a re-setup of the same block starts again from 1. */
  lastCounter = 0;
  constructor(
    readonly id: string,
    readonly loss: number,
    readonly rnd: () => number,
    readonly opts: { silent?: boolean; refuse?: boolean; pages?: boolean; preload?: Uint8Array[]; memory?: number } = {},
  ) {}
  /** Answers as session inputs. */
  receive(bytes: Uint8Array, fragment: boolean): SessionInput[] {
    if (this.opts.silent) return [];
    if (fragment && this.rnd() < this.loss) return [];
    const out: SessionInput[] = [];
    for (const c of decodeRequests(bytes)) {
      if (c.cmd === 'FragSessionSetupReq') {
        if (!this.dec) {
          this.dec = new FragDecoder({ nbFrag: c.nbFrag, fragSize: c.fragSize, maxMissing: this.opts.memory });
          this.opts.preload?.forEach((f, i) => f.length && this.dec!.push(i + 1, f));
        } else if (!this.dec.complete) {
          // ferry's node on a re-setup of its block: keeps the data fragments, drops the parity rows (docs/lora.md §7.3).
          const old = this.dec;
          this.dec = new FragDecoder({ nbFrag: c.nbFrag, fragSize: c.fragSize, maxMissing: this.opts.memory, store: old.store });
          this.dec.restoreKnown(Array.from({ length: c.nbFrag }, (_, i) => i).filter((i) => old.isKnown(i)));
        }
        this.lastCounter = 0;
        out.push({ kind: 'setupAns', devEui: this.id, ok: !this.opts.refuse, detail: this.opts.refuse ? 'not enough memory' : '' });
      } else if (c.cmd === 'DataFragment' && c.counter >= this.lastCounter) {
        this.lastCounter = c.counter;
        this.dec?.push(c.counter, c.payload);
      }
      else if (c.cmd === 'FragSessionStatusReq' && this.dec) {
        const missing = this.dec.missingCount;
        out.push({ kind: 'statusAns', devEui: this.id, received: this.dec.received, missing: Math.min(255, missing), memoryError: this.dec.memoryError });
        if (missing > 0 && this.opts.pages !== false) {
          const unknown = this.dec.unknownFragments();
          // The pages round-trip through the fPort 10 codec, as on air.
          for (const page of statusPages(1, 0, missing, unknown)) {
            const m = decodeUp(encodeUp(page));
            if (m.type !== 'status') throw new Error('not a status');
            out.push({ kind: 'statusPage', devEui: this.id, deficiency: m.unknown!, indices: pageIndices(m.page!, m.bitmap!), last: (m.flags & 2) !== 0 });
          }
        }
      }
    }
    return out;
  }
}

interface Run {
  state: SessionState;
  reports: SessionReport[];
  sent: number;
  groupFrames: number;
  unicastFrames: number;
}

/** Drives one session to its end: every send is transmitted at once, answers arrive 1 s later, timers fire on time. */
function run(cfg: SessionConfig, nodes: Node[], budget = 100_000): Run {
  let state = initialSession(cfg);
  let now = 0;
  const reports: SessionReport[] = [];
  let wake: number | null = null;
  let sent = 0;
  let groupFrames = 0;
  let unicastFrames = 0;
  const queue: SessionInput[] = [{ kind: 'start' }];
  const pendingAnswers: SessionInput[] = [];
  const apply = (effects: SessionEffect[]) => {
    for (const e of effects) {
      if (e.kind === 'report') reports.push(e.report);
      else if (e.kind === 'wakeAt') wake = e.at;
      else {
        sent++;
        if (e.to.kind === 'group') groupFrames++;
        else unicastFrames++;
        const targets = e.to.kind === 'group' ? nodes : nodes.filter((n) => n.id === (e.to as { devEui: string }).devEui);
        for (const n of targets) pendingAnswers.push(...n.receive(e.bytes, e.fragment));
        queue.push({ kind: 'sent' });
      }
    }
  };
  for (let i = 0; i < budget && !isFinished(state); i++) {
    let input = queue.shift();
    if (!input) {
      if (pendingAnswers.length) {
        now += 1000;
        input = pendingAnswers.shift()!;
      } else if (wake !== null) {
        now = Math.max(now, wake);
        wake = null;
        input = { kind: 'tick' };
      } else throw new Error(`stuck in ${state.phase.kind}`);
    }
    const r = step(state, input, now);
    state = r.state;
    apply(r.effects);
  }
  return { state, reports, sent, groupFrames, unicastFrames };
}

const block = (size: number, seed: number) => {
  const rnd = seeded(seed);
  return Uint8Array.from({ length: size }, () => Math.floor(rnd() * 256));
};

function config(over: Partial<SessionConfig> & { data: Uint8Array; fragSize: number }): SessionConfig {
  const { fragments, padding } = fragmentBlock(over.data, over.fragSize);
  return {
    members: ['a'], multicast: false, fragIndex: 1, descriptor: 0x12340001, fragments, padding, loss: 0.1, firstRoundMargin: 1, repairTarget: 0.75,
    answerTimeoutMs: 20_000, maxRounds: 6, maxTries: 3, pages: true, resendUncoded: false, ...over,
  };
}

const seed = runSeed(1313);

t.test('a session delivers the block to every member or says why not (table)', async (t) => {
  const data = block(4800, seed);
  const cases: {
    name: string;
    cfg: Partial<SessionConfig>;
    nodes: (rnd: () => number) => Node[];
    outcome: 'done' | 'failed';
    decoded: string[];
    check?: (r: Run) => void;
  }[] = [
    {
      name: 'unicast, no loss: M fragments, one round',
      cfg: { loss: 0 },
      nodes: (rnd) => [new Node('a', 0, rnd)],
      outcome: 'done',
      decoded: ['a'],
      check: (r) => t.equal(r.reports.filter((x) => x.kind === 'round').length, 1),
    },
    {
      name: 'unicast, 10 % loss: median first round, then repair from the bitmap',
      cfg: {},
      nodes: (rnd) => [new Node('a', 0.1, rnd)],
      outcome: 'done',
      decoded: ['a'],
    },
    {
      name: 'unicast, 30 % loss, exact resend: every round after the first is uncoded fragments the node lacks, after a re-setup',
      cfg: { loss: 0.3, resendUncoded: true, maxRounds: 12 },
      nodes: (rnd) => [new Node('a', 0.3, rnd)],
      outcome: 'done',
      decoded: ['a'],
      check: (r) => {
        const rounds = r.reports.filter((x): x is Extract<SessionReport, { kind: 'round' }> => x.kind === 'round');
        t.ok(rounds.length > 2, `${rounds.length} rounds`);
        t.ok(rounds.every((x, i) => i === 0 || x.fragments < rounds[i - 1].fragments), `each round resends fewer: ${rounds.map((x) => x.fragments)}`);
        t.equal(r.state.nextCounter, 101, 'no coded fragment was ever sent (M = 100)');
      },
    },
    {
      name: 'unicast, 30 % loss on a stock TS004 node (counts only, no pages)',
      cfg: { loss: 0.3, pages: false },
      nodes: (rnd) => [new Node('a', 0.3, rnd, { pages: false })],
      outcome: 'done',
      decoded: ['a'],
    },
    {
      name: 'multicast of three with different loss: group stream, per-node status',
      cfg: { members: ['a', 'b', 'c'], multicast: true },
      nodes: (rnd) => [new Node('a', 0, rnd), new Node('b', 0.1, rnd), new Node('c', 0.3, rnd)],
      outcome: 'done',
      decoded: ['a', 'b', 'c'],
      check: (r) => t.ok(r.groupFrames >= 100, `group frames ${r.groupFrames}, unicast ${r.unicastFrames}`),
    },
    {
      name: 'multicast: a silent member is dropped after the tries, the others finish',
      cfg: { members: ['a', 'b'], multicast: true },
      nodes: (rnd) => [new Node('a', 0.1, rnd), new Node('b', 0, rnd, { silent: true })],
      outcome: 'done',
      decoded: ['a'],
      check: (r) => t.ok(r.reports.some((x) => x.kind === 'memberFailed' && x.devEui === 'b' && /FragSessionSetupAns/.test(x.reason))),
    },
    {
      name: 'unicast: setup refused',
      cfg: {},
      nodes: (rnd) => [new Node('a', 0, rnd, { refuse: true })],
      outcome: 'failed',
      decoded: [],
    },
    {
      name: 'unicast: matrix memory exhausted',
      cfg: { loss: 0.5 },
      nodes: (rnd) => [new Node('a', 0.5, rnd, { memory: 2 })],
      outcome: 'failed',
      decoded: [],
    },
    {
      name: 'resume: the node holds half the uncoded fragments; only coded repair is sent',
      cfg: { loss: 0, resumeUnknown: { a: Array.from({ length: 50 }, (_, i) => 2 * i) } },
      nodes: (rnd) => {
        const { fragments } = fragmentBlock(data, 48);
        return [new Node('a', 0, rnd, { preload: fragments.map((f, i) => (i % 2 ? f : new Uint8Array(0))) })];
      },
      outcome: 'done',
      decoded: ['a'],
      check: (r) => t.ok(r.sent <= 50 + 4, `resume sent ${r.sent} frames for 50 unknown`),
    },
  ];
  for (const c of cases) {
    const rnd = seeded(seed + cases.indexOf(c));
    const nodes = c.nodes(rnd);
    const r = run(config({ data, fragSize: 48, ...c.cfg }), nodes);
    t.equal(r.state.phase.kind, c.outcome, `${c.name}: ${c.outcome} (${r.state.phase.kind === 'failed' ? r.state.phase.reason : ''})`);
    for (const n of nodes) {
      const ok = n.dec?.complete === true && Buffer.from(n.dec.block(r.state.cfg.padding)).equals(Buffer.from(data));
      t.equal(ok, c.decoded.includes(n.id), `${c.name}: node ${n.id} ${c.decoded.includes(n.id) ? 'decoded the block' : 'did not'}`);
    }
    c.check?.(r);
  }
});

t.test('one node at 10 % loss: total airtime stays near the ideal 1/(1−p) (seeded trials)', async (t) => {
  const data = block(239 * 200, seed);
  let frames = 0;
  const trials = 20;
  const first = Number(process.env.FIRST ?? 1), repair = Number(process.env.REPAIR ?? 0.75);
  for (let k = 0; k < trials; k++) {
    const rnd = seeded(seed * 7 + k);
    const r = run(config({ data, fragSize: 239, firstRoundMargin: first, repairTarget: repair, resendUncoded: true, maxRounds: 12 }), [new Node('a', 0.1, rnd)]);
    t.equal(r.state.phase.kind, 'done');
    if (process.env.DBG) console.log(JSON.stringify(r.reports.filter((x) => x.kind === "round").map((x) => (x as { fragments: number }).fragments)));
    frames += r.reports.filter((x) => x.kind === 'round').reduce((s, x) => s + (x as { fragments: number }).fragments, 0);
  }
  const ratio = frames / trials / 200;
  // Exact resend: every fragment received is new to the node, so the mean is 1/(1−p) = 1.111 plus sampling noise.
  t.ok(ratio < 1.13, `fragments sent / M = ${ratio.toFixed(3)} over ${trials} trials (ideal 1.111)`);
});

t.test('inputs that do not fit the phase change nothing; cancel ends the session', async (t) => {
  const cfg = config({ data: block(480, seed), fragSize: 48 });
  let s = initialSession(cfg);
  for (const input of [{ kind: 'sent' }, { kind: 'tick' }, { kind: 'statusAns', devEui: 'a', received: 1, missing: 0, memoryError: false }, { kind: 'setupAns', devEui: 'zz', ok: true, detail: '' }] as SessionInput[]) {
    const r = step(s, input, 0);
    t.same(r.effects, [], `${input.kind} before start does nothing`);
    s = r.state;
  }
  const started = step(s, { kind: 'start' }, 0);
  t.equal(started.effects.length, 1);
  t.equal(decodeAnswersSafe(started.effects), 'FragSessionSetupReq');
  const cancelled = step(started.state, { kind: 'cancel', reason: 'operator' }, 1);
  t.equal(cancelled.state.phase.kind, 'failed');
  t.same(step(cancelled.state, { kind: 'start' }, 2).effects, []);
  t.throws(() => initialSession({ ...cfg, members: ['a', 'b'] }), /unicast session has exactly one member/);
  t.throws(() => initialSession({ ...cfg, members: [] }), /at least one member/);
});

function decodeAnswersSafe(effects: SessionEffect[]): string {
  const e = effects[0];
  return e.kind === 'send' ? decodeRequests(e.bytes)[0].cmd : e.kind;
}
