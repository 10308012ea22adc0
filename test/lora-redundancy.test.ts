import t from 'tap';
import { codedFragment, fragmentBlock } from '../shared/lora/fec.js';
import { FragDecoder } from '../shared/lora/fec-decoder.js';
import { chooseRedundancy, chooseRepairCount, decodeProbability, planRepair, rankProbability } from '../shared/lora/redundancy.js';
import { runSeed, seeded } from '../harness/seeded.js';

t.test('rank model reproduces the spec figures (TS004 A.3)', async (t) => {
  // "when the number of coded fragments received equals M, the matrix cannot be inverted … for 70 % of the cases";
  // "With M+7 fragments, the matrix can be inverted in 99 % of the occurrences".
  t.equal(Math.round(rankProbability(1000, 1000) * 100), 29, 'M received: ~29 % decodable');
  t.ok(rankProbability(1007, 1000) >= 0.99, 'M+7 received: ≥ 99 %');
  t.equal(rankProbability(999, 1000), 0);
  t.equal(rankProbability(0, 0), 1);
});

t.test('chosen redundancy for p99 matches the simulated table in lora.md §1.4 for large M', async (t) => {
  // [M] figures from shared/reference/lora.md §1.4: p99 sent-overhead at M = 427 and M = 2,134.
  const cases: [number, number, number][] = [
    [427, 0.1, 15.7],
    [427, 0.3, 52.5],
    [2134, 0.1, 13.1],
    [2134, 0.3, 47.2],
    [100, 0.3, 66],
  ];
  for (const [m, loss, pct] of cases) {
    const r = chooseRedundancy(m, loss, 0.99);
    const got = (r / m) * 100;
    // The chooser aims at half the asked failure rate (MODEL_SAFETY), so it sits at or a little above the table.
    t.ok(got >= pct - 1 && got <= pct + 2.5, `M ${m} at ${loss * 100} %: ${r} coded = +${got.toFixed(1)} % (table +${pct} %)`);
  }
  t.equal(chooseRedundancy(500, 0), 0, 'no loss: the uncoded fragments suffice');
  t.ok(chooseRedundancy(427, 0.1, 0.9) < chooseRedundancy(427, 0.1, 0.99), 'a lower target needs fewer');
  t.ok(decodeProbability(427, chooseRedundancy(427, 0.1), 0.1) >= 0.995, 'the model is asked for half the failure rate');
  t.throws(() => chooseRedundancy(100, 1), /loss rate 1/);
  t.throws(() => chooseRedundancy(100, 0.1, 1), /target probability 1/);
  t.throws(() => chooseRedundancy(16000, 0.5), /cannot reach/);
});

/** Fraction of seeded trials in which M uncoded then R coded fragments over i.i.d. loss decode the block. */
function simulate(m: number, loss: number, r: number, trials: number, rnd: () => number): number {
  const { fragments } = fragmentBlock(new Uint8Array(m * 2).map((_, i) => i * 13), 2);
  const coded = Array.from({ length: m + r }, (_, i) => codedFragment(fragments, i + 1));
  let ok = 0;
  for (let k = 0; k < trials; k++) {
    const d = new FragDecoder({ nbFrag: m, fragSize: 2 });
    for (let n = 1; n <= m + r && !d.complete; n++) if (rnd() >= loss) d.push(n, coded[n - 1]);
    if (d.complete) ok++;
  }
  return ok / trials;
}

t.test('the real decoder decodes at the chosen redundancy about as often as the target says', async (t) => {
  const rnd = seeded(runSeed(1307));
  for (const [m, loss] of [[20, 0.1], [100, 0.1], [100, 0.3], [300, 0.1]] as const) {
    const r = chooseRedundancy(m, loss, 0.99);
    const rate = simulate(m, loss, r, 1000, rnd);
    t.comment(`M=${m} loss=${loss * 100}%: R=${r} (+${((r / m) * 100).toFixed(1)} %), decoded in ${(rate * 100).toFixed(1)} % of 1000 trials`);
    t.ok(rate >= 0.975, `M ${m} at ${loss * 100} %: ${rate} ≥ 0.975 (target 0.99; 1,000 trials)`);
  }
});

t.test('repair count grows with the missing count and the loss', async (t) => {
  t.equal(chooseRepairCount(400, 0, 0.1), 0);
  const counts = [1, 3, 10, 50].map((u) => chooseRepairCount(400, u, 0.1));
  t.same([...counts].sort((a, b) => a - b), counts, `monotone in missing: ${counts.join(', ')}`);
  t.ok(chooseRepairCount(400, 10, 0.3) > chooseRepairCount(400, 10, 0.1));
  for (let i = 0; i < 4; i++) t.ok(counts[i] >= [1, 3, 10, 50][i], 'never fewer than missing');
});

/** A node that got every uncoded fragment except `missing`, then the plan's coded fragments through `loss`. */
function repairedNode(m: number, missing: number[], counters: number[], loss: number, rnd: () => number): boolean {
  const block = new Uint8Array(m * 3).map((_, i) => i * 7 + 1);
  const { fragments } = fragmentBlock(block, 3);
  const d = new FragDecoder({ nbFrag: m, fragSize: 3 });
  for (let i = 0; i < m; i++) if (!missing.includes(i)) d.push(i + 1, fragments[i]);
  for (const n of counters) if (rnd() >= loss) d.push(n, codedFragment(fragments, n));
  return d.complete && Buffer.from(d.block(0)).equals(Buffer.from(block));
}

t.test('unicast repair plan from a missing-fragment bitmap', async (t) => {
  const m = 100;
  const missing = [3, 17, 42];
  const plan = planRepair({ m, missingByNode: [missing], nextCounter: 130, loss: 0 });
  t.equal(plan.counters.length, 3, 'no loss: exactly as many rows as missing fragments, chosen independent');
  t.ok(plan.counters.every((n, i) => n >= 130 && (i === 0 || n > plan.counters[i - 1])), `fresh ascending counters ${plan.counters.join(', ')}`);
  t.ok(repairedNode(m, missing, plan.counters, 0, () => 1), 'the node decodes from them');
  t.same(planRepair({ m, missingByNode: [[]], nextCounter: 101, loss: 0.2 }).counters, [], 'nothing missing, nothing sent');

  const rnd = seeded(runSeed(1308));
  const lossy = Array.from({ length: 12 }, (_, i) => i * 8 + 1);
  const lossyPlan = planRepair({ m, missingByNode: [lossy], nextCounter: 101, loss: 0.3 });
  let ok = 0;
  for (let k = 0; k < 300; k++) if (repairedNode(m, lossy, lossyPlan.counters, 0.3, rnd)) ok++;
  t.comment(`12 missing of 100 at 30 % loss: ${lossyPlan.counters.length} repair fragments, decoded in ${ok}/300`);
  t.ok(ok / 300 >= 0.97, 'the repair round succeeds about as often as targeted');
});

t.test('group repair shares rows across nodes', async (t) => {
  const m = 200;
  const nodes = [[5, 6, 7, 150], [60, 61], [100, 101, 102, 103, 104, 190]];
  const plan = planRepair({ m, missingByNode: nodes, nextCounter: 250, loss: 0 });
  const alone = nodes.map((missing) => planRepair({ m, missingByNode: [missing], nextCounter: 250, loss: 0 }).counters.length);
  t.ok(plan.counters.length < alone.reduce((a, b) => a + b, 0), `one multicast round of ${plan.counters.length} vs ${alone.join('+')} unicast`);
  for (const missing of nodes) t.ok(repairedNode(m, missing, plan.counters, 0, () => 1), `node missing ${missing.join(',')} decodes`);
});

t.test('repair plan input is checked', async (t) => {
  t.throws(() => planRepair({ m: 100, missingByNode: [[1]], nextCounter: 100, loss: 0 }), /next counter 100 is not above M = 100/);
  t.throws(() => planRepair({ m: 100, missingByNode: [[100]], nextCounter: 101, loss: 0 }), /missing fragment 100 is not 0\.\.99/);
  t.throws(() => planRepair({ m: 16000, missingByNode: [Array.from({ length: 50 }, (_, i) => i)], nextCounter: 16370, loss: 0.1 }), /past 16383: start a new session/);
});
