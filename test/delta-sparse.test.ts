import t from 'tap';
import { nodeStatus } from '../agent/status.js';
import type { NodeRow, Release } from '../agent/types.js';
import { applyPatch, PatchApplier } from '../shared/delta/apply.js';
import { deltaSparseFor } from '../shared/delta/choose.js';
import { createPatchWithStats } from '../shared/delta/create.js';
import { crc32, readPatchHeader, Transform } from '../shared/delta/format.js';
import { STREAM_END } from '../shared/delta/inflate.js';
import { SparseDiffReader, sparseConsumption, toSparse } from '../shared/delta/sparse.js';
import { ProtocolError, Reason } from '../shared/errors.js';
import { Capability, Encoding } from '../shared/messages.js';
import { firmware } from './helpers/fixtures.js';

/** Sparse diff streams (transform bit 3, docs/delta.md "Sparse diff") and delta progress in the node status. */

function readAll(sparse: number[], copies: number): number[] {
  let pos = 0;
  const r = new SparseDiffReader(() => (pos < sparse.length ? sparse[pos++] : STREAM_END));
  const out: number[] = [];
  for (let i = 0; i < copies; i++) out.push(r.pull());
  r.finish();
  return out;
}

t.test('sparse form: zero runs and explicit bytes, a final run for the tail', async (t) => {
  const cases: { dense: number[]; sparse: number[] }[] = [
    { dense: [], sparse: [0] },
    { dense: [0, 0, 0], sparse: [3] },
    { dense: [5], sparse: [0, 5, 0] },
    { dense: [0, 0, 7, 9, 0], sparse: [2, 7, 0, 9, 1] },
    { dense: [...new Array(200).fill(0), 1], sparse: [0xc8, 0x01, 1, 0] },
  ];
  for (const c of cases) {
    t.same([...toSparse(Uint8Array.from(c.dense))], c.sparse, `${JSON.stringify(c.dense.length > 8 ? `${c.dense.length} bytes` : c.dense)} -> ${JSON.stringify(c.sparse)}`);
    t.same(readAll(c.sparse, c.dense.length), c.dense, 'and back');
  }
  t.same(sparseConsumption(Uint8Array.from([2, 7, 0, 9, 1]), [1, 2, 0, 2]), [1, 2, 2, 5], 'run lengths are read lazily: at the first diff byte that needs one');
});

t.test('sparse form: a stream that does not fit its copies is refused with a clear error', async (t) => {
  const bad: { what: string; sparse: number[]; copies: number; msg: RegExp }[] = [
    { what: 'zeros left over', sparse: [5], copies: 3, msg: /holds 2 zero bytes no step uses/ },
    { what: 'no final run length', sparse: [0, 4], copies: 1, msg: /ends without its final run length/ },
    { what: 'run length cut short', sparse: [0x80], copies: 0, msg: /ends inside a run length/ },
    { what: 'run length over 5 bytes', sparse: [0x80, 0x80, 0x80, 0x80, 0x80, 1], copies: 1, msg: /longer than 5 bytes/ },
  ];
  for (const b of bad) t.throws(() => readAll(b.sparse, b.copies), b.msg, b.what);
  let pos = 0;
  const short = [1];
  const r = new SparseDiffReader(() => (pos < short.length ? short[pos++] : STREAM_END));
  t.equal(r.pull(), 0, 'one zero');
  t.equal(r.pull(), STREAM_END, 'then the stream ends where a byte is needed: the applier reports it');
});

t.test('sparse patches: version 2 header with bit 3, applied in any piece size, never larger than dense', async (t) => {
  for (const [a, b] of [['foo/old', 'foo/new'], ['programmer/0.8.0.bin', 'programmer/0.9.0.bin'], ['shell/old', 'shell/new']]) {
    const oldImage = firmware(a);
    const newImage = firmware(b);
    const dense = createPatchWithStats(oldImage, newImage, {}).patch;
    const { patch, stats } = createPatchWithStats(oldImage, newImage, { sparse: true });
    const h = readPatchHeader(patch);
    t.ok(patch.length <= dense.length, `${a}: sparse-capable ${patch.length} B <= dense ${dense.length} B (${stats.transform})`);
    if (h.transforms & Transform.sparseDiff) t.equal(h.version, 2, `${a}: a plain sparse patch keeps the 88-byte version 2 header`);
    t.notOk(readPatchHeader(dense).transforms & Transform.sparseDiff, `${a}: without the option, no bit 3`);
    for (const piece of [1, 3, 512]) {
      const { image } = applyPatch(oldImage, patch, { pieceSize: piece });
      t.ok(Buffer.from(image).equals(newImage), `${a}: rebuilt from ${piece}-byte pieces`);
    }
    const aware = createPatchWithStats(oldImage, newImage, { sparse: true, arch: 'auto' }).patch;
    t.ok(Buffer.from(applyPatch(oldImage, aware).image).equals(newImage), `${a}: instruction-aware sparse patch rebuilds the image`);
  }
});

t.test('a sparse patch whose diff bytes are tampered with fails cleanly', async (t) => {
  const oldImage = firmware('shell/old');
  const newImage = firmware('shell/new');
  const { patch } = createPatchWithStats(oldImage, newImage, { sparse: true });
  t.ok(readPatchHeader(patch).transforms & Transform.sparseDiff, 'the shell pair takes the sparse form');
  // An applier that predates bit 3 refuses it by the header rule "reject any other bit"; here, a bit beyond bit 3.
  const bad = Buffer.from(patch);
  bad[6] |= 16;
  bad.writeUInt32LE(crc32(bad.subarray(0, 84)), 84);
  t.throws(() => readPatchHeader(bad), /unknown delta transform flags/, 'unknown bits are still refused');
  // Clearing bit 3 makes the applier read the sparse stream as dense diff bytes: it must fail, not crash.
  const dense = Buffer.from(patch);
  dense[6] &= ~Transform.sparseDiff;
  dense.writeUInt32LE(crc32(dense.subarray(0, 84)), 84);
  const applier = new PatchApplier({ readOld: (o, l) => oldImage.subarray(o, o + l), write: () => {} });
  try {
    applier.push(dense);
    applier.finish();
    t.fail('accepted');
  } catch (err) {
    t.ok(err instanceof ProtocolError && err.reason === Reason.deltaFailed, `refused: ${(err as Error).message}`);
  }
});

t.test('capability 256 selects sparse patches', async (t) => {
  const rows: [number, boolean][] = [
    [0, false],
    [Capability.delta, false],
    [Capability.deltaSparse, false],
    [Capability.delta | Capability.deltaSparse, true],
    [Capability.delta | Capability.deltaSparse | Capability.deltaThumb2, true],
  ];
  for (const [caps, want] of rows) t.equal(deltaSparseFor(caps), want, `caps ${caps}`);
});

t.test('status: progress is a fraction of the payload; image size and image-equivalent beside it', async (t) => {
  const release = { row: { version: '2.0.0', size: 100_000, digest: Buffer.alloc(32, 0xab) } } as unknown as Release;
  const row = (encoding: number, chunks: number, bitmapBits: number): NodeRow =>
    ({
      id: 'n', hw: 'h', state: 'downloading', runningVersion: '1.0.0', chunkCount: chunks, chunkSize: 1000, payloadEncoding: encoding,
      bitmap: Buffer.from([(1 << bitmapBits) - 1]), acks: 0, attempts: 1, retransmits: 0, reason: 0, detail: '', imageState: 2, slot: 0, lastSeen: 0,
    }) as unknown as NodeRow;
  const cases: { what: string; row: NodeRow; payloadSize?: number; want: Record<string, unknown> }[] = [
    { what: 'delta, 2 of 4 chunks of a 3,500 B patch', row: row(Encoding.delta, 4, 2), payloadSize: 3500, want: { payload: 'delta', progress: 0.5, bytes: 2000, payloadSize: 3500, imageSize: 100_000, imageEquivalent: 50_000 } },
    { what: 'delta after the session (size no longer live)', row: row(Encoding.delta, 4, 4), want: { payload: 'delta', progress: 1, payloadSize: null, imageSize: 100_000, imageEquivalent: 100_000 } },
    { what: 'full image, 3 of 8 chunks', row: row(Encoding.full, 8, 3), want: { payload: 'full', progress: 0.375, bytes: 3000, payloadSize: 100_000, imageSize: 100_000, imageEquivalent: 37_500 } },
  ];
  for (const c of cases) {
    const s = nodeStatus(c.row, release, undefined, true, [], c.payloadSize);
    t.match(s, c.want, c.what);
  }
});
