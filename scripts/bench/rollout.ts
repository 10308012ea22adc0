import { performance } from 'node:perf_hooks';
import { initial, step, type NodeFacts, type RolloutState } from '../../agent/rollout-fsm.js';
import type { RolloutSpec } from '../../shared/rollout.js';

/**
 * Cost of the rollout machine at fleet sizes: one agent feeds every node's Hello, then every node's
 * confirmed outcome one at a time (the worst case: each outcome a step that recomputes waves over
 * the whole fleet). Prints ms per phase and µs per step for N = 100, 1000, 5000, side by side.
 *   node dist/scripts/bench/rollout.js
 */
const DIGEST = 'ab'.repeat(32);

function spec(): RolloutSpec {
  return {
    v: 1, id: 'bench', hw: 'hw', version: '1.1.0', digest: DIGEST, groups: [], devices: [], canary: { n: 10 }, waves: [10, 50, 100], maxFailures: { pct: 5 },
    window: null, minBattery: null, autoRevert: false, auto: false, plan: null, revertPermit: null, command: 'run', seq: 1, created: 1,
  };
}

function facts(id: string, progress: NodeFacts['progress']): NodeFacts {
  return { id, hw: 'hw', groups: [], battery: null, progress, reason: null, detail: '', running: progress === 'confirmed' ? DIGEST : 'cd'.repeat(32), settled: true };
}

for (const n of [100, 1000, 5000]) {
  const ids = Array.from({ length: n }, (_, i) => `node-${i + 1}`);
  let s: RolloutState = initial(spec());
  const now = Date.now();
  const t0 = performance.now();
  for (const id of ids) s = step(s, { kind: 'facts', nodes: [facts(id, 'none')] }, now).state;
  const t1 = performance.now();
  let steps = 0;
  while (s.status.kind === 'running' && steps < 10 * n) {
    const w = s.wave;
    for (const [id, e] of Object.entries(s.nodes)) {
      if (e.wave > w || e.phase !== 'waiting') continue;
      s = step(s, { kind: 'facts', nodes: [facts(id, 'confirmed')] }, now).state;
      steps++;
    }
    if (s.wave === w) break;
  }
  const t2 = performance.now();
  console.log(`${String(n).padStart(5)} nodes: hellos ${(t1 - t0).toFixed(0).padStart(6)} ms (${((1000 * (t1 - t0)) / n).toFixed(0)} µs/step), outcomes ${(t2 - t1).toFixed(0).padStart(6)} ms (${((1000 * (t2 - t1)) / Math.max(1, steps)).toFixed(0)} µs/step), ended ${s.status.kind} after ${steps} outcomes`);
}
