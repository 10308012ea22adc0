/**
 * TS004 FEC figures with ferry's own encoder and decoder, in one run: for each block size M and i.i.d.
 * downlink loss, fragments sent until decoded (median and p99 as overhead over M), mean fragments received
 * beyond M (the code's inefficiency), the redundancy the chooser picks for p ≥ 0.99 and how often the real
 * decoder succeeds with exactly that many, the decoder's peak parity-row memory beside the spec formula for
 * the same losses, and decoder speed. Seeded (FERRY_SEED) so a run can be replayed.
 *
 *   node dist/scripts/bench/lora-fec.js [--trials N] [--json]
 */
import { runSeed, seeded } from '../../harness/seeded.js';
import { codedFragment, fragmentBlock, specDecoderRamBytes } from '../../shared/lora/fec.js';
import { FragDecoder } from '../../shared/lora/fec-decoder.js';
import { chooseRedundancy } from '../../shared/lora/redundancy.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const trialsArg = args.indexOf('--trials');
const trials = trialsArg >= 0 ? Number(args[trialsArg + 1]) : 200;
if (!Number.isInteger(trials) || trials < 1) {
  console.error(`lora-fec: --trials must be a positive integer, got ${args[trialsArg + 1]}`);
  process.exit(2);
}

// 100 KiB at EU868 DR5 (239 B) is M = 429; at DR0 (48 B) M = 2,134.
const blocks: [number, number][] = [[20, 48], [100, 48], [429, 239], [2134, 48]];
const losses = [0, 0.1, 0.3];
const seed = runSeed(13);
const rnd = seeded(seed);

interface Row {
  m: number; fragSize: number; loss: number; trials: number;
  sentOverheadMedian: number; sentOverheadP99: number; meanExtraReceived: number;
  chosenRedundancy: number; successAtChosen: number;
  peakMatrixBytes: number; specRamForObservedLosses: number; fragmentsPerSecond: number;
}

const rows: Row[] = [];
for (const [m, fragSize] of blocks) {
  const block = Uint8Array.from({ length: m * fragSize }, () => Math.floor(rnd() * 256));
  const { fragments } = fragmentBlock(block, fragSize);
  const coded: Uint8Array[] = [];
  const fragment = (n: number) => {
    while (coded.length < n) coded.push(codedFragment(fragments, coded.length + 1));
    return coded[n - 1];
  };
  for (const loss of losses) {
    const chosen = chooseRedundancy(m, loss, 0.99);
    const t = Math.max(1, Math.round(m > 1000 ? trials / 4 : trials));
    const overheads: number[] = [];
    let extra = 0;
    let ok = 0;
    let peak = 0;
    let maxLost = 0;
    let pushed = 0;
    let ms = 0;
    for (let k = 0; k < t; k++) {
      const d = new FragDecoder({ nbFrag: m, fragSize });
      let n = 0;
      let received = 0;
      let lost = 0;
      const started = performance.now();
      while (!d.complete) {
        n++;
        const frag = fragment(n);
        if (rnd() < loss) {
          if (n <= m) lost++;
          continue;
        }
        received++;
        d.push(n, frag);
        peak = Math.max(peak, d.matrixBytes);
      }
      ms += performance.now() - started;
      pushed += received;
      maxLost = Math.max(maxLost, lost);
      overheads.push((n - m) / m);
      extra += received - m;
      if (n - m <= chosen) ok++;
    }
    overheads.sort((a, b) => a - b);
    rows.push({
      m, fragSize, loss, trials: t,
      sentOverheadMedian: overheads[Math.floor(t / 2)], sentOverheadP99: overheads[Math.min(t - 1, Math.floor(t * 0.99))],
      meanExtraReceived: extra / t, chosenRedundancy: chosen, successAtChosen: ok / t,
      peakMatrixBytes: peak, specRamForObservedLosses: specDecoderRamBytes(maxLost), fragmentsPerSecond: pushed / (ms / 1000),
    });
  }
}

if (json) {
  console.log(JSON.stringify({ seed, rows }, null, 2));
} else {
  const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
  console.log(`TS004 FEC, ferry encoder + decoder, i.i.d. loss, seed ${seed}`);
  console.log('M      frag  loss  trials  sent/M−1 p50  p99      extra rx  chosen R (R/M)     ok@R     peak rows B  spec RAM B  frag/s');
  for (const r of rows) {
    console.log([
      String(r.m).padEnd(6), String(r.fragSize).padEnd(5), pct(r.loss).padEnd(6), String(r.trials).padEnd(7),
      pct(r.sentOverheadMedian).padEnd(13), pct(r.sentOverheadP99).padEnd(8), r.meanExtraReceived.toFixed(2).padEnd(9),
      `${r.chosenRedundancy} (${pct(r.chosenRedundancy / r.m)})`.padEnd(18), pct(r.successAtChosen).padEnd(8),
      String(r.peakMatrixBytes).padEnd(12), String(r.specRamForObservedLosses).padEnd(11), Math.round(r.fragmentsPerSecond),
    ].join(' '));
  }
}
