import t from 'tap';
import { decoderLosses, heldIndices, initialFragState, stepFrag, type FragEnv, type FragSetup, type FragState } from '../device/lora/frag-session.js';
import { codedFragment, fragmentBlock, specDecoderRamBytes } from '../shared/lora/fec.js';
import { memoryStore } from '../shared/lora/fec-decoder.js';
import { decodeAnswers, encodeRequests, type Ts004Answer, type Ts004Request } from '../shared/lora/ts004.js';

const block = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 0xff);
const { fragments, padding } = fragmentBlock(block, 48); // M = 21

function env(over: Partial<FragEnv> = {}, stores = new Map<number, ReturnType<typeof memoryStore>>()): FragEnv {
  return {
    ramBudget: 4096,
    lossTolerance: 0.3,
    random: () => 0.5,
    open: (s: FragSetup) => {
      if (s.descriptor === 0xdead) return { ok: false, why: 'wrongDescriptor', detail: 'unknown descriptor' };
      const st = stores.get(s.descriptor) ?? memoryStore(s.nbFrag, s.fragSize);
      stores.set(s.descriptor, st);
      return { ok: true, store: st, capacity: 64 * 1024 };
    },
    ...over,
  };
}

const setupReq = (o: Partial<Extract<Ts004Request, { cmd: 'FragSessionSetupReq' }>> = {}): Ts004Request => ({
  cmd: 'FragSessionSetupReq', fragIndex: 1, mcGroupBitMask: 1, nbFrag: fragments.length, fragSize: 48, fragAlgo: 0, blockAckDelay: 0, padding, descriptor: 7, ...o,
});

function send(state: FragState, cmds: Ts004Request[], e: FragEnv, group: number | null = null) {
  const r = stepFrag(state, { kind: 'frame', bytes: encodeRequests(cmds), group }, e);
  const answers: Ts004Answer[] = r.effects.flatMap((x) => (x.kind === 'uplink' ? decodeAnswers(x.bytes) : []));
  return { ...r, answers, delays: r.effects.flatMap((x) => (x.kind === 'uplink' ? [x.delayMs] : [])) };
}

t.test('setup answers carry the right status bits', async (t) => {
  const cases: [string, Ts004Request, Partial<FragEnv>, Partial<Extract<Ts004Answer, { cmd: 'FragSessionSetupAns' }>>][] = [
    ['accepted', setupReq(), {}, {}],
    ['FragAlgo 1 → bit0', setupReq({ fragAlgo: 1 }), {}, { encodingUnsupported: true }],
    ['decoder RAM over budget → bit1', setupReq({ nbFrag: 2000 }), { ramBudget: 1000 }, { notEnoughMemory: true }],
    ['unknown descriptor → bit3', setupReq({ descriptor: 0xdead }), {}, { wrongDescriptor: true }],
    ['block larger than the store → bit1', setupReq({ nbFrag: 2000 }), { ramBudget: 1e9 }, { notEnoughMemory: true }],
  ];
  for (const [name, req, over, bits] of cases) {
    const { answers } = send(initialFragState, [req], env(over));
    t.same(answers, [{ cmd: 'FragSessionSetupAns', fragIndex: 1, encodingUnsupported: false, notEnoughMemory: false, fragIndexUnsupported: false, wrongDescriptor: false, ...bits }], name);
  }
  t.equal(decoderLosses(2000, 1000), 111, '1,000 B hold L = 111');
  t.ok(specDecoderRamBytes(111) <= 1000 && specDecoderRamBytes(112) > 1000);
  t.ok(111 < 0.3 * 2000, 'below the 30 % the node wants: refused');
});

t.test('fragments with losses decode; status reports holdings; the block is delivered once', async (t) => {
  const e = env();
  let s = send(initialFragState, [setupReq()], e).state;
  const lost = new Set([2, 5, 9]);
  for (let n = 1; n <= fragments.length; n++) {
    if (lost.has(n)) continue;
    s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: n, payload: fragments[n - 1] }], e, 0).state;
  }
  const st = send(s, [{ cmd: 'FragSessionStatusReq', fragIndex: 1, participants: true }], e);
  t.same(st.answers, [{ cmd: 'FragSessionStatusAns', fragIndex: 1, nbFragReceived: 18, missingFrag: 3, notEnoughMatrixMemory: false }]);
  t.same(heldIndices(s.slots[1]).length, 18);
  let complete = 0;
  for (let n = fragments.length + 1; n < fragments.length + 40 && complete === 0; n++) {
    const r = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: n, payload: codedFragment(fragments, n) }], e, 0);
    s = r.state;
    complete += r.effects.filter((x) => x.kind === 'complete').length;
  }
  t.equal(complete, 1, 'complete exactly once');
  t.equal(s.slots[1].kind, 'complete');
  const after = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 99, payload: fragments[0] }], e, 0);
  t.same(after.effects, [], 'fragments after completion are dropped');
  const quiet = send(s, [{ cmd: 'FragSessionStatusReq', fragIndex: 1, participants: false }], e, 0);
  t.same(quiet.answers, [], 'Participants = 0: a complete node stays silent');
  const del = send(s, [{ cmd: 'FragSessionDeleteReq', fragIndex: 1 }], e);
  t.same(del.answers, [{ cmd: 'FragSessionDeleteAns', fragIndex: 1, sessionDoesNotExist: false }]);
  t.same(send(del.state, [{ cmd: 'FragSessionDeleteReq', fragIndex: 1 }], e).answers, [{ cmd: 'FragSessionDeleteAns', fragIndex: 1, sessionDoesNotExist: true }]);
});

t.test('multicast: only sessions bound to the group take its fragments; status answers are spread', async (t) => {
  const e = env({ random: () => 0.25 });
  let s = send(initialFragState, [setupReq({ mcGroupBitMask: 0 })], e).state;
  s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 1, payload: fragments[0] }], e, 0).state;
  t.equal(heldIndices(s.slots[1]).length, 0, 'group 0 fragment ignored by a unicast-only session');
  s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 1, payload: fragments[0] }], e, null).state;
  t.equal(heldIndices(s.slots[1]).length, 1, 'unicast fragment taken');
  s = send(initialFragState, [setupReq({ blockAckDelay: 1 })], e).state;
  const st = send(s, [{ cmd: 'FragSessionStatusReq', fragIndex: 1, participants: true }], e, 0);
  t.same(st.delays, [8000], 'rand 0.25 · 2^(1+4) s');
});

t.test('out-of-order counters are dropped, duplicates counted once, hostile frames only logged', async (t) => {
  const e = env();
  let s = send(initialFragState, [setupReq()], e).state;
  s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 5, payload: fragments[4] }], e).state;
  s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 3, payload: fragments[2] }], e).state;
  s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 5, payload: fragments[4] }], e).state;
  t.same(heldIndices(s.slots[1]), [4]);
  const bad = stepFrag(s, { kind: 'frame', bytes: Uint8Array.of(0x08, 0x00), group: null }, e);
  t.match(bad.effects, [{ kind: 'log', level: 'warn', msg: /DataFragment truncated/ }]);
  const n0 = stepFrag(s, { kind: 'frame', bytes: Uint8Array.of(0x08, 0x00, 0x40, 1), group: null }, e);
  t.match(n0.effects, [{ kind: 'log', msg: /N is 0/ }]);
  const size = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 9, payload: Uint8Array.of(1, 2) }], e);
  t.match(size.effects, [{ kind: 'log', msg: /FragSize is 48/ }]);
});

t.test('resume: a restored session keeps what it held; a re-setup of the same block keeps it too', async (t) => {
  const stores = new Map<number, ReturnType<typeof memoryStore>>();
  const e = env({}, stores);
  let s = send(initialFragState, [setupReq()], e).state;
  for (const n of [1, 2, 3, 4, 6]) s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: n, payload: fragments[n - 1] }], e).state;
  const held = heldIndices(s.slots[1]);
  const setup = (s.slots[1] as { setup: FragSetup }).setup;
  // Reboot: RAM is gone, the runtime restores from flash + bitmap.
  let r = stepFrag(initialFragState, { kind: 'restore', setup, known: held, complete: false }, e).state;
  const st = send(r, [{ cmd: 'FragSessionStatusReq', fragIndex: 1, participants: true }], e);
  t.same(st.answers, [{ cmd: 'FragSessionStatusAns', fragIndex: 1, nbFragReceived: 0, missingFrag: fragments.length - 5, notEnoughMatrixMemory: false }]);
  r = send(r, [setupReq()], e).state;
  t.same(heldIndices(r.slots[1]), held, 'same descriptor: holdings kept across a re-setup');
  for (let n = 1; n <= fragments.length; n++) if (!held.includes(n - 1)) r = send(r, [{ cmd: 'DataFragment', fragIndex: 1, counter: n, payload: fragments[n - 1] }], e).state;
  t.equal(r.slots[1].kind, 'complete');
  t.same(Buffer.from(stores.get(7)!.bytes.subarray(0, block.length)), Buffer.from(block), 'the block is intact');
  const other = send(r, [setupReq({ descriptor: 8 })], e);
  t.match(other.effects, [{ kind: 'closed', fragIndex: 1 }], 'another block on the same index clears the old session');
  t.same(heldIndices(other.state.slots[1]), []);
});

t.test('a re-setup of the running block keeps its data fragments and takes counters from 1 again; status on a FragIndex with no session', async (t) => {
  const e = env();
  let s = send(initialFragState, [setupReq({ mcGroupBitMask: 0 })], e).state;
  // Fragments 1..21 minus 3 and 8: the node's last counter is 21.
  for (let n = 1; n <= fragments.length; n++) if (n !== 3 && n !== 8) s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: n, payload: fragments[n - 1] }], e).state;
  // Status and re-setup in one frame (docs/lora.md §7.3 step 3): both answered in one uplink.
  const both = send(s, [{ cmd: 'FragSessionStatusReq', fragIndex: 1, participants: true }, setupReq({ mcGroupBitMask: 0 })], e);
  t.same(both.answers.map((a) => a.cmd), ['FragSessionStatusAns', 'FragSessionSetupAns']);
  t.same(heldIndices(both.state.slots[1]).length, fragments.length - 2, 'the re-setup kept the 19 fragments');
  s = both.state;
  // Counter 3 < 21 would be "out of order" without the re-setup.
  s = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 3, payload: fragments[2] }], e).state;
  const done = send(s, [{ cmd: 'DataFragment', fragIndex: 1, counter: 8, payload: fragments[7] }], e);
  t.ok(done.effects.some((x) => x.kind === 'complete'), 'the two resent uncoded fragments complete the block');
  const none = send(initialFragState, [{ cmd: 'FragSessionStatusReq', fragIndex: 2, participants: true }], e);
  t.same(none.answers, [], 'TS004 v1 stays silent about a session it does not have');
  t.same(none.effects.filter((x) => x.kind === 'noSession'), [{ kind: 'noSession', fragIndex: 2 }], 'ferry\'s node is told to say where it is');
  t.same(send(initialFragState, [{ cmd: 'FragSessionStatusReq', fragIndex: 2, participants: true }], e, 0).effects.filter((x) => x.kind === 'noSession'), [], 'not on a group');
});
