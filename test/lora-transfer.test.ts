import t from 'tap';
import { decodeDown, encodeDown, encodeUp, decodeUp, statusPages } from '../shared/lora/control.js';
import { stateOf, stepTransfer, type Transfer, type TransferAction, type TransferInput } from '../agent/lora/transfer-fsm.js';

const plan = { transferId: 77, version: '1.1.0', digestPrefix: new Uint8Array([1, 2, 3, 4]), blocks: 3, size: 4000, blockKiB: 2, classCSeconds: 120, timeoutMs: 1000, maxTries: 2 };

function run(inputs: [TransferInput, number][]): { t: Transfer; actions: TransferAction[][] } {
  let tr: Transfer = { plan, phase: { kind: 'offered', tries: 0, deadline: 0 } };
  const actions: TransferAction[][] = [];
  for (const [input, now] of inputs) {
    const r = stepTransfer(tr, input, now);
    tr = r.t;
    actions.push(r.actions);
  }
  return { t: tr, actions };
}

const status = (done: number, extra: Partial<Extract<TransferInput, { kind: 'status' }>> = {}): TransferInput => ({ kind: 'status', done, indices: [], last: true, resume: false, ...extra });

t.test('transfer machine (table): offer → blocks → verified → activate → confirmed, and the ways it ends', async (t) => {
  const cases: { name: string; inputs: [TransferInput, number][]; state: string; last?: (a: TransferAction[]) => void }[] = [
    {
      name: 'happy path',
      inputs: [[{ kind: 'start' }, 0], [status(0), 10], [{ kind: 'blockDone', index: 0 }, 20], [{ kind: 'blockDone', index: 1 }, 30], [{ kind: 'blockDone', index: 2 }, 40], [{ kind: 'report', stage: 1, reason: 0 }, 50], [{ kind: 'report', stage: 2, reason: 0 }, 60], [{ kind: 'report', stage: 3, reason: 0 }, 70]],
      state: 'confirmed',
    },
    {
      name: 'the answer to the offer says two blocks are held: start at block 2',
      inputs: [[{ kind: 'start' }, 0], [status(2), 10]],
      state: 'downloading',
      last: (a) => t.same(a, [{ kind: 'startBlock', index: 2, resumeUnknown: undefined }]),
    },
    {
      name: 'resume pages: exact list when the deficiency equals it',
      inputs: [[{ kind: 'start' }, 0], [status(0), 1], [status(1, { deficiency: 3, indices: [1], last: false, resume: true }), 10], [status(1, { deficiency: 3, indices: [130, 131], last: true, resume: true }), 11]],
      state: 'downloading',
      last: (a) => t.same(a, [{ kind: 'startBlock', index: 1, resumeUnknown: [1, 130, 131] }]),
    },
    {
      name: 'silent node: the offer is tried maxTries times, each timed from its txack, then timedOut',
      inputs: [[{ kind: 'start' }, 0], [{ kind: 'onAir' }, 100], [{ kind: 'tick' }, 500], [{ kind: 'tick' }, 1100], [{ kind: 'onAir' }, 1200], [{ kind: 'tick' }, 2200]],
      state: 'timedOut',
    },
    {
      name: 'an offer waiting in the LNS for a Class A window is not counted lost: the timeout starts on the air',
      inputs: [[{ kind: 'start' }, 0], [{ kind: 'tick' }, 1500], [{ kind: 'onAir' }, 3000], [{ kind: 'tick' }, 3500]],
      state: 'offered',
      last: (a) => t.same(a, [], 'no resend 500 ms after the txack'),
    },
    {
      name: 'an LNS that never reports the offer on the air: retried after 15 minutes (a fleet\'s Class A queue)',
      inputs: [[{ kind: 'start' }, 0], [{ kind: 'tick' }, 899_999], [{ kind: 'tick' }, 900_000]],
      state: 'offered',
      last: (a) => t.equal((a[0] as { msg: { type: string } }).msg.type, 'offer'),
    },
    {
      name: 'verifying: an lstatus with every block done stands for a lost lreport{verified}: activate',
      inputs: [[{ kind: 'start' }, 0], [status(3), 1], [status(3), 2]],
      state: 'activating',
      last: (a) => t.equal((a[0] as { msg: { type: string } }).msg.type, 'activate'),
    },
    { name: 'a block that fails ends the transfer with a cancel', inputs: [[{ kind: 'start' }, 0], [status(0), 1], [{ kind: 'blockFailed', index: 0, detail: 'x' }, 2]], state: 'failed', last: (a) => t.equal((a[0] as { msg: { type: string } }).msg.type, 'cancel') },
    { name: 'rejected by the node', inputs: [[{ kind: 'start' }, 0], [status(0), 1], [{ kind: 'report', stage: 5, reason: 4 }, 2]], state: 'rejected' },
    { name: 'rolled back after activation', inputs: [[{ kind: 'start' }, 0], [status(3), 1], [{ kind: 'report', stage: 1, reason: 0 }, 2], [{ kind: 'report', stage: 4, reason: 10 }, 3]], state: 'rolledBack' },
    { name: 'no confirmation within 5 min', inputs: [[{ kind: 'start' }, 0], [status(3), 1], [{ kind: 'report', stage: 1, reason: 0 }, 2], [{ kind: 'hello', version: '1.1.0' }, 3], [{ kind: 'tick' }, 3 + 300_001]], state: 'timedOut' },
    { name: 'inputs out of place change nothing', inputs: [[{ kind: 'start' }, 0], [{ kind: 'blockDone', index: 5 }, 1], [{ kind: 'report', stage: 9, reason: 0 }, 2], [{ kind: 'tick' }, 3]], state: 'offered' },
  ];
  for (const c of cases) {
    const r = run(c.inputs);
    t.equal(stateOf(r.t), c.state, c.name);
    c.last?.(r.actions[r.actions.length - 1]);
  }
});

t.test('fPort 10 codec: round trips, the 51 B uplink limit, hostile frames', async (t) => {
  const hello = { type: 'hello' as const, hw: 'abcdefghij', version: '1.22.333-x', digestPrefix: new Uint8Array([9, 9, 9, 9]), imageState: 2, bootCount: 65535, battery: 100, caps: 255, transferId: 0xffff_ffff };
  const bytes = encodeUp(hello);
  t.ok(bytes.length <= 51, `largest lhello is ${bytes.length} B`);
  t.same(decodeUp(bytes), hello);
  const pages = statusPages(5, 1, 300, Array.from({ length: 300 }, (_, i) => i * 4));
  for (const p of pages) t.ok(encodeUp(p).length <= 51, `lstatus page ${p.type === 'status' ? p.page : ''} fits`);
  const offer = { type: 'offer' as const, transferId: 0xffff_ffff, digestPrefix: new Uint8Array(4), version: '1.22.333-x', blocks: 1024, size: 67_108_864, blockKiB: 255, encoding: 1, mcAddr: 0xffff_ffff };
  t.ok(encodeDown(offer).length <= 51, `largest loffer is ${encodeDown(offer).length} B`);
  t.same(decodeDown(encodeDown(offer)), offer);
  t.throws(() => encodeUp({ ...hello, hw: 'x'.repeat(40) }), /over the 51 B limit/);
  for (const junk of [[], [0xff], [0xa1, 0x00, 0x63], [0xa1, 0x00, 0x01], [0x82, 1, 2], Array(60).fill(0)]) {
    t.throws(() => decodeUp(Uint8Array.from(junk)), { name: 'ProtocolError' }, `uplink ${Buffer.from(junk).toString('hex').slice(0, 16)} refused`);
  }
});
