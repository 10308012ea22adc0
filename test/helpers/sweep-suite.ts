import t from 'tap';
import type { BootProfileName } from '../../device/profiles.js';
import { runAgentLoop } from '../../harness/sweep-loop.js';
import { sweepUpdate } from '../../harness/sweep.js';

/**
 * Issue 4's sweep for some boot profiles, small image, every cut point (before, torn and after every
 * flash erase and write), for an update whose self-test passes and one whose self-test fails: the
 * firmware alone, then with a real broker and agent in the loop. One test file per profile family
 * calls this, so tap runs the families in parallel.
 */
export function sweepEveryCutPoint(profiles: readonly BootProfileName[]): void {
  for (const profile of profiles) {
    for (const failSelfTest of [false, true]) {
      const name = `${profile} ${failSelfTest ? 'revert' : 'update'}`;
      t.test(`${name}: every cut point`, async (t) => {
        const fw = sweepUpdate({ profile, failSelfTest, imageSize: 9_000, chunkSize: 960 });
        t.equal(fw.cutPoints, fw.operations * 3, `firmware: ${fw.cutPoints} cut points`);
        t.equal(fw.bricked, 0, 'firmware: none bricked');
        t.equal(fw.truthful, fw.cutPoints, 'firmware: always truthful');
        t.same(fw.failures, []);
        const loop = await runAgentLoop({ profile, failSelfTest, imageSize: 9_000, concurrency: 4 });
        t.equal(loop.operations, fw.operations, 'the networked update does the same flash operations');
        t.equal(loop.tried, loop.operations * 3, `with agent: ${loop.tried} cut points tried`);
        t.equal(loop.bricked, 0, 'with agent: none bricked');
        t.equal(loop.bootable, loop.tried, 'with agent: bootable after every cut');
        t.equal(loop.converged, loop.tried, "with agent: the agent's record converged to what the node runs, every time");
        t.same(loop.failures, []);
      });
    }
  }
}
