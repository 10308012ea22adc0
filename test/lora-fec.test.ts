import t from 'tap';
import { codedFragment, codedRow, fragmentBlock, matrixLine, prbs23, specDecoderRamBytes } from '../shared/lora/fec.js';
import { FragDecoder, type PushOutcome } from '../shared/lora/fec-decoder.js';
import { runSeed, seeded } from '../harness/seeded.js';

const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** Rank over GF(2) of coded rows, computed independently of the decoder (BigInt rows, plain elimination). */
function rankOf(counters: number[], m: number): number {
  const basis = new Map<number, bigint>();
  let rank = 0;
  for (const n of counters) {
    let v = 0n;
    for (const i of codedRow(n, m)) v |= 1n << BigInt(i);
    while (v !== 0n) {
      const top = v.toString(2).length - 1;
      const b = basis.get(top);
      if (b === undefined) {
        basis.set(top, v);
        rank++;
        break;
      }
      v ^= b;
    }
  }
  return rank;
}

function randomBlock(rnd: () => number, size: number): Uint8Array {
  return Uint8Array.from({ length: size }, () => Math.floor(rnd() * 256));
}

t.test('prbs23 is the spec LFSR step', async (t) => {
  t.equal(prbs23(1), 1 << 22, 'bit0 ^ bit5 = 1 is fed back into bit 22');
  t.equal(prbs23(33), 16, 'bit0 ^ bit5 = 0: plain shift');
  t.equal(prbs23(0), 0);
  let x = 1 + 1001;
  for (let i = 0; i < 10_000; i++) {
    x = prbs23(x);
    if (x < 0 || x >= 2 ** 23) t.fail(`state ${x} left 23 bits`);
  }
});

t.test('parity rows reproduce the brocaar/lorawan encode_test.go vectors (data 0..99, FragSize 10, M 10)', async (t) => {
  // The interoperable vectors quoted in shared/reference/lora.md §1.3 (brocaar/lorawan @ a052dd3,
  // applayer/fragmentation/encode_test.go), the encoder chirpstack-fuota-server uses.
  const { fragments, padding } = fragmentBlock(Uint8Array.from({ length: 100 }, (_, i) => i), 10);
  t.equal(fragments.length, 10);
  t.equal(padding, 0);
  t.equal(toHex(codedFragment(fragments, 11)), '26262222' + '2e2e2222' + '2626', 'first parity fragment (N = 11)');
  t.equal(toHex(codedFragment(fragments, 12)), '5455565758596a6b7c7d', 'second (N = 12)');
  t.equal(toHex(codedFragment(fragments, 20)), '22232425262718190a0b', 'tenth (N = 20)');
  t.equal(toHex(codedFragment(fragments, 4)), '1e1f2021222324252627', 'N ≤ M is the data fragment itself');
});

t.test('matrix lines: at most M/2 members, in range, deterministic', async (t) => {
  for (const m of [1, 2, 3, 16, 20, 100, 127, 128, 2134]) {
    for (const n of [1, 2, 50, 999]) {
      const line = matrixLine(n, m);
      if (line.length > m >> 1 || line.some((i) => i < 0 || i >= m)) t.fail(`m ${m} n ${n}: ${line.length} members`);
      if (toHex(Uint8Array.from(line)) !== toHex(Uint8Array.from(matrixLine(n, m)))) t.fail('not deterministic');
    }
  }
  t.same(matrixLine(5, 1), [], 'M = 1 has empty parity rows (the spec says not to use the code below 20)');
  t.throws(() => matrixLine(0, 10), /parity row 0/);
  t.throws(() => fragmentBlock(new Uint8Array(0), 10), /empty/);
  t.throws(() => fragmentBlock(new Uint8Array(5), 256), /fragment size 256/);
  t.same(fragmentBlock(new Uint8Array(95), 10).padding, 5, 'padding fills the last fragment');
});

interface Run { sent: number; received: number; blockOk: boolean; exactly: boolean }

/** Sends fragments 1, 2, 3… over a seeded i.i.d. loss until the decoder completes. */
function runSession(m: number, fragSize: number, loss: number, rnd: () => number): Run {
  const block = randomBlock(rnd, m * fragSize - 3);
  const { fragments, padding } = fragmentBlock(block, fragSize);
  const decoder = new FragDecoder({ nbFrag: m, fragSize });
  const got: number[] = [];
  let n = 0;
  let exactly = true;
  while (!decoder.complete && n < 16383) {
    n++;
    if (rnd() < loss) continue;
    got.push(n);
    const outcome = decoder.push(n, codedFragment(fragments, n));
    // Completion must come on exactly the fragment that brings the rank to M.
    const rank = rankOf(got, m);
    if ((outcome.kind === 'complete') !== (rank === m)) exactly = false;
  }
  return { sent: n, received: got.length, blockOk: Buffer.from(decoder.block(padding)).equals(Buffer.from(block)), exactly };
}

t.test('round trip at 0 / 10 / 30 % loss: the block is rebuilt, on exactly the fragment that makes it decodable', async (t) => {
  const seed = runSeed(1304);
  const rnd = seeded(seed);
  for (const m of [20, 100, 427]) {
    for (const loss of [0, 0.1, 0.3]) {
      const trials = m === 427 ? 4 : 12;
      let sent = 0;
      let extra = 0;
      for (let k = 0; k < trials; k++) {
        const r = m === 427 ? runFast(m, loss, rnd) : runSession(m, 8, loss, rnd);
        t.ok(r.blockOk, `M ${m} loss ${loss} trial ${k}: block intact (seed ${seed})`);
        t.ok(r.exactly, `M ${m} loss ${loss} trial ${k}: completion exactly at rank M`);
        sent += r.sent;
        extra += r.received - m;
      }
      t.comment(`M=${m} loss=${loss * 100}%: fragments sent / M = ${(sent / trials / m).toFixed(3)}, mean received beyond M = ${(extra / trials).toFixed(2)}`);
      if (loss === 0) t.equal(sent / trials, m, 'no loss: the M uncoded fragments alone complete it');
    }
  }
});

/** Like runSession without the per-fragment rank oracle (too slow at M = 427); checks the rank once at the end. */
function runFast(m: number, loss: number, rnd: () => number): Run {
  const fragSize = 4;
  const block = randomBlock(rnd, m * fragSize);
  const { fragments } = fragmentBlock(block, fragSize);
  const decoder = new FragDecoder({ nbFrag: m, fragSize });
  const got: number[] = [];
  let n = 0;
  while (!decoder.complete) {
    n++;
    if (rnd() < loss) continue;
    got.push(n);
    decoder.push(n, codedFragment(fragments, n));
  }
  const exactly = rankOf(got, m) === m && rankOf(got.slice(0, -1), m) < m;
  return { sent: n, received: got.length, blockOk: Buffer.from(decoder.block(0)).equals(Buffer.from(block)), exactly };
}

t.test('any order, with duplicates: still exact and intact (uncoded fragments arriving after coded ones)', async (t) => {
  const rnd = seeded(runSeed(1305));
  const m = 40;
  for (let trial = 0; trial < 20; trial++) {
    const block = randomBlock(rnd, m * 6);
    const { fragments } = fragmentBlock(block, 6);
    const pool = Array.from({ length: m + 30 }, (_, i) => i + 1).filter(() => rnd() > 0.25);
    for (let i = pool.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [pool[i], pool[j]] = [pool[j], pool[i]];
    }
    const decoder = new FragDecoder({ nbFrag: m, fragSize: 6 });
    const seen: number[] = [];
    let completedAt = -1;
    for (const n of pool.flatMap((n) => (rnd() < 0.2 ? [n, n] : [n]))) {
      const first = !seen.includes(n);
      if (first) seen.push(n);
      const o = decoder.push(n, codedFragment(fragments, n));
      if (o.kind === 'complete') completedAt = seen.length;
      if (!first && o.kind !== 'duplicate' && o.kind !== 'useless' && o.kind !== 'afterComplete') t.fail(`repeat of ${n} gave ${o.kind}`);
      if (decoder.complete) break;
    }
    if (rankOf(seen, m) === m) {
      t.equal(completedAt, seen.length, `trial ${trial}: completed on the fragment reaching rank M`);
      t.equal(rankOf(seen.slice(0, -1), m), m - 1, `trial ${trial}: one fewer was not enough`);
      t.ok(Buffer.from(decoder.block(0)).equals(Buffer.from(block)), `trial ${trial}: intact`);
    } else {
      t.notOk(decoder.complete, `trial ${trial}: rank ${rankOf(seen, m)} < M, not complete`);
      t.equal(decoder.missingCount, m - rankOf(seen, m), 'missingCount is M − rank');
    }
  }
});

t.test('bad fragments are rejected; after completion fragments are dropped; missing count and unknown list', async (t) => {
  const { fragments } = fragmentBlock(Uint8Array.from({ length: 100 }, (_, i) => i), 10);
  const d = new FragDecoder({ nbFrag: 10, fragSize: 10 });
  const kinds = (o: PushOutcome) => (o.kind === 'rejected' ? `rejected: ${o.reason}` : o.kind);
  t.equal(kinds(d.push(0, fragments[0])), 'rejected: fragment counter 0 is not 1..16383');
  t.equal(kinds(d.push(16384, fragments[0])), 'rejected: fragment counter 16384 is not 1..16383');
  t.equal(kinds(d.push(1, new Uint8Array(9))), "rejected: fragment 1 has 9 B, the session's FragSize is 10");
  t.equal(d.received, 0, 'rejected fragments are not counted');
  for (const n of [1, 2, 4, 5, 6, 7, 8, 9]) t.equal(d.push(n, codedFragment(fragments, n)).kind, 'stored');
  t.equal(d.push(2, fragments[1]).kind, 'duplicate');
  t.same(d.unknownFragments(), [2, 9]);
  t.equal(d.missingCount, 2);
  t.throws(() => d.block(0), /not decoded yet/);
  t.equal(d.push(11, codedFragment(fragments, 11)).kind, 'stored');
  t.equal(d.missingCount, 1);
  t.equal(d.push(12, codedFragment(fragments, 12)).kind, 'complete');
  t.equal(d.push(13, codedFragment(fragments, 13)).kind, 'afterComplete');
  t.equal(d.received, 12, 'NbFragReceived counts coded, uncoded and repeated');
  t.same(Array.from(d.block(0)), Array.from({ length: 100 }, (_, i) => i));
  t.throws(() => new FragDecoder({ nbFrag: 0, fragSize: 10 }), /NbFrag 0/);
  t.throws(() => new FragDecoder({ nbFrag: 10, fragSize: 256 }), /FragSize 256/);
});

t.test('bounded memory: rows never exceed the unknowns; over maxMissing the decoder reports a memory error', async (t) => {
  const rnd = seeded(runSeed(1306));
  const m = 200;
  const { fragments } = fragmentBlock(randomBlock(rnd, m * 16), 16);
  const d = new FragDecoder({ nbFrag: m, fragSize: 16, maxMissing: 30 });
  const rowBytes = Math.ceil(m / 32) * 4 + 16;
  let peak = 0;
  for (let n = 1; !d.complete; n++) {
    if (n <= m && rnd() < 0.1) continue;
    d.push(n, codedFragment(fragments, n));
    peak = Math.max(peak, d.matrixBytes);
  }
  t.ok(peak <= 30 * rowBytes, `peak parity memory ${peak} B ≤ maxMissing × ${rowBytes} B`);
  t.notOk(d.memoryError);
  const small = new FragDecoder({ nbFrag: m, fragSize: 16, maxMissing: 5 });
  for (let n = 11; n <= m; n++) small.push(n, codedFragment(fragments, n));
  t.equal(small.push(m + 1, codedFragment(fragments, m + 1)).kind, 'memoryError', '10 unknown > maxMissing 5');
  t.ok(small.memoryError);
  for (let n = 1; n <= 10; n++) small.push(n, codedFragment(fragments, n));
  t.ok(small.complete, 'late uncoded fragments still complete it');
});

t.test('spec decoder RAM formula gives the TS004 appendix table', async (t) => {
  // TS004 appendix table: L = 32 → 130 B, 40 → 183, 48 → 243, 56 → 312, 64 → 388.
  t.same([32, 40, 48, 56, 64].map(specDecoderRamBytes), [130, 183, 243, 312, 388]);
  t.throws(() => specDecoderRamBytes(-1), /tolerated losses -1/);
});
