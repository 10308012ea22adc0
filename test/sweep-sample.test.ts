import t from 'tap';
import { runAgentLoop, samplePoints } from '../harness/sweep-loop.js';
import { countOperations, sweepUpdate } from '../harness/sweep.js';

/**
 * A larger image has too many cut points to try them all on every run: a seeded random subset
 * (the same subset for the same seed, so a failure can be replayed with `ferry sim sweep --seed`).
 */
const SIZE = 200 * 1024;
const SAMPLE = 24;

t.test('samples are seeded: the same seed picks the same cut points, another seed others', async (t) => {
  const a = samplePoints(500, 30, 7);
  t.same(samplePoints(500, 30, 7), a);
  t.notSame(samplePoints(500, 30, 8), a);
  t.equal(new Set(a.map((p) => `${p.mode}@${p.at}`)).size, 30, 'no point twice');
  t.ok(a.every((p) => p.at >= 1 && p.at <= 500));
});

for (const profile of ['esp-idf', 'mcuboot-swap', 'mcuboot-overwrite'] as const) {
  t.test(`${profile}, ${SIZE / 1024} KiB image: a seeded sample of cut points, update and revert`, async (t) => {
    for (const failSelfTest of [false, true]) {
      const name = failSelfTest ? 'revert' : 'update';
      const seed = 1234 + (failSelfTest ? 1 : 0);
      const ops = countOperations({ profile, failSelfTest, imageSize: SIZE, chunkSize: 960 });
      const points = samplePoints(ops, SAMPLE, seed);
      const byMode = (mode: string) => points.filter((p) => p.mode === mode).map((p) => p.at);
      let cuts = 0;
      for (const mode of ['before', 'torn', 'after'] as const) {
        const fw = sweepUpdate({ profile, failSelfTest, imageSize: SIZE, chunkSize: 960, modes: [mode], points: byMode(mode) });
        cuts += fw.cutPoints;
        t.equal(fw.bricked, 0, `${name} firmware ${mode}: none bricked`);
        t.same(fw.failures, [], `${name} firmware ${mode}: no invariant broken`);
      }
      t.equal(cuts, SAMPLE, `${name}: ${SAMPLE} of ${ops * 3} cut points (seed ${seed})`);
      const loop = await runAgentLoop({ profile, failSelfTest, imageSize: SIZE, concurrency: 4, points: () => points });
      t.equal(loop.tried, SAMPLE, `${name} with agent: ${loop.tried} cut points`);
      t.equal(loop.bricked, 0);
      t.equal(loop.converged, loop.tried, `${name} with agent: all converged`);
      t.same(loop.failures, []);
    }
  });
}
