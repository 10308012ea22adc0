import t from 'tap';
import { bottleneckRate, growthStep, initialGrowth, targetWindow, type GrowthInput, type GrowthState } from '../agent/window-growth.js';
import { ackInterval } from '../shared/messages.js';
import { simulateTransfer } from './helpers/link-sim.js';

// Sans-IO, fake clock: every time below is a number passed in, no timers.

const limits = (nodeWindow: number, floor = Math.max(1, Math.min(Math.floor(nodeWindow / 2), 8))) => ({ nodeWindow, floor });
const ack = (fresh: number, newestSeq: number, seqNow: number, rttMs?: number, rate?: number): GrowthInput => ({ type: 'ack', fresh, newestSeq, seqNow, rttMs, rate });

/** A state in `phase` with a measured rate (chunks/ms) and smallest round trip. */
function measured(phase: 'startup' | 'steady', nodeWindow: number, cwnd: number, rate: number, minRtt: number): GrowthState {
  const base = initialGrowth(limits(nodeWindow), 0);
  const m = { ...base, cwnd, minRtt, rates: [rate], round: { seq: 1000, delivered: 0, at: 0 } };
  return phase === 'startup' ? { ...m, phase: 'startup', fullRate: rate, flatRounds: 0 } : { ...m, phase: 'steady' };
}

t.test('a node acks every min(window / 2, 8) new chunks, at least every chunk', async (t) => {
  const rows: [number, number][] = [[1, 1], [2, 1], [3, 1], [4, 2], [16, 8], [17, 8], [128, 8], [1024, 8]];
  for (const [w, want] of rows) t.equal(ackInterval(w), want, `window ${w}`);
});

t.test('initial window: min(node window, 32), never below the ack interval', async (t) => {
  const rows: [number, number][] = [[1, 1], [4, 4], [16, 16], [128, 32], [1024, 32]];
  for (const [w, want] of rows) t.equal(initialGrowth(limits(w), 0).cwnd, want, `node window ${w}`);
});

t.test('one step at a time', async (t) => {
  const rows: { name: string; state: GrowthState; input: GrowthInput; now: number; cwnd: number; phase: string }[] = [
    { name: 'startup grows by two per chunk acked', state: initialGrowth(limits(128), 0), input: ack(8, 3, 32), now: 100, cwnd: 48, phase: 'startup' },
    { name: 'startup never passes the node window', state: { ...initialGrowth(limits(20), 0), cwnd: 18 }, input: ack(8, 3, 18), now: 100, cwnd: 20, phase: 'startup' },
    {
      // 0.05 chunks/ms × 600 ms = 30 chunks BDP: target 2 × 30 + 8 = 68.
      name: 'a round trip well above the smallest (queueing) ends startup at the target',
      state: measured('startup', 128, 40, 0.05, 600), input: ack(8, 2000, 2040, 1000), now: 5000, cwnd: 68, phase: 'steady',
    },
    {
      name: 'a round trip near the smallest keeps startup going',
      state: measured('startup', 128, 40, 0.05, 600), input: ack(8, 20, 40, 650), now: 5000, cwnd: 56, phase: 'startup',
    },
    { name: 'steady below the target grows by what was acked', state: measured('steady', 128, 40, 0.05, 600), input: ack(8, 20, 40, 700), now: 5000, cwnd: 48, phase: 'steady' },
    { name: 'steady grows no further than the target', state: measured('steady', 128, 66, 0.05, 600), input: ack(8, 20, 66, 700), now: 5000, cwnd: 68, phase: 'steady' },
    { name: 'steady above the target comes down to it', state: measured('steady', 128, 120, 0.05, 600), input: ack(8, 20, 120, 700), now: 5000, cwnd: 68, phase: 'steady' },
    {
      // 0.01 chunks/ms × 20 ms: BDP 0.2, target rounds up to 1 + 8 = 9.
      name: 'a small BDP keeps the window near the ack interval, not the node window', state: measured('steady', 128, 16, 0.01, 20), input: ack(8, 20, 16, 25), now: 5000, cwnd: 9, phase: 'steady',
    },
    { name: 'the target never passes the node window', state: measured('steady', 32, 32, 1, 600), input: ack(8, 20, 32, 700), now: 5000, cwnd: 32, phase: 'steady' },
    { name: 'a loss event halves the window and ends startup', state: measured('startup', 128, 64, 0.05, 600), input: { type: 'loss' }, now: 5000, cwnd: 32, phase: 'steady' },
    { name: 'a loss event never goes below the ack interval', state: measured('steady', 16, 8, 0.05, 600), input: { type: 'loss' }, now: 5000, cwnd: 8, phase: 'steady' },
    {
      name: 'without measurements, steady grows one chunk per ack', state: { ...initialGrowth(limits(16), 0), phase: 'steady', cwnd: 8 }, input: ack(30, 0, 30), now: 5000, cwnd: 9, phase: 'steady',
    },
  ];
  for (const r of rows) {
    const { state } = growthStep(r.state, r.input, r.now);
    t.equal(state.cwnd, r.cwnd, `${r.name}: window`);
    t.equal(state.phase, r.phase, `${r.name}: phase`);
  }
});

t.test('rounds: a round ends with the first ack of a chunk sent after it began; the rate is the largest sample of recent rounds', async (t) => {
  let s = initialGrowth(limits(128), 0);
  s = growthStep(s, ack(8, 8, 16, 600), 600).state; // round 0 (from 0 to 600): 8 chunks, no per-ack sample
  t.same(s.rates, [8 / 600, 0], 'the round\'s own rate, then a slot for the next round');
  t.equal(s.round.seq, 16);
  s = growthStep(s, ack(8, 16, 32, 610, 0.02), 620).state; // chunk 16 was sent in round 0: same round
  t.same(s.rates, [8 / 600, 0.02], 'a per-ack sample goes to the current round');
  s = growthStep(s, ack(8, 20, 40, 615), 1230).state; // chunk 20 was sent after round 1 began
  t.same(s.rates, [8 / 600, 16 / 630, 0]);
  t.equal(bottleneckRate(s), 16 / 630);
  t.equal(s.minRtt, 600);
});

t.test('three rounds without 25 % more rate end startup', async (t) => {
  let s = measured('startup', 1024, 100, 0.05, 600);
  let seq = 1000;
  for (let round = 0; round < 3; round++) {
    t.equal(s.phase, 'startup', `round ${round}`);
    // Each round delivers 30 chunks in 600 ms: 0.05 chunks/ms, no growth.
    s = growthStep(s, ack(30, seq + 1, seq + 30, 600), (round + 1) * 600).state;
    seq += 30;
  }
  t.equal(s.phase, 'steady');
  t.equal(s.cwnd, targetWindow(s));
});

// Whole transfers over simulated links: the window sizes itself from what it measures.
const MiB = 260; // about 1 MiB in 4 KiB chunks
const links = [
  // Chunks of 4032 B: 2 Mbit/s = 0.062 chunks/ms; 1 Mbit/s = 0.031; 20 Mbit/s = 0.62.
  { name: 'VSAT (2 Mbit/s, 300 ms one way), node window 128', link: { chunksPerMs: 0.062, delayMs: 300 }, window: 128, minUtil: 0.9 },
  { name: 'cellular (1 Mbit/s, 80 ms), node window 128', link: { chunksPerMs: 0.031, delayMs: 80 }, window: 128, minUtil: 0.9 },
  { name: 'Wi-Fi (20 Mbit/s, 5 ms), node window 128', link: { chunksPerMs: 0.62, delayMs: 5 }, window: 128, minUtil: 0.9 },
];
for (const c of links) {
  t.test(`simulated ${c.name}: keeps the link busy, sends nothing twice, stays within the node window`, async (t) => {
    const r = simulateTransfer(MiB, c.window, c.link);
    // The round trip the window sees includes the node's ack interval (8 chunks' serialization).
    const bdp = c.link.chunksPerMs * (2 * c.link.delayMs + 8 / c.link.chunksPerMs);
    t.ok(r.utilization >= c.minUtil, `utilization ${r.utilization.toFixed(3)} ≥ ${c.minUtil}`);
    t.equal(r.retransmits, 0, 'no retransmission (nothing was lost)');
    t.ok(r.maxCwnd <= c.window, `window ${r.maxCwnd} ≤ node window`);
    t.ok(r.finalCwnd <= Math.ceil(2 * bdp) + 9, `final window ${r.finalCwnd} at most twice the BDP (${bdp.toFixed(1)}) plus an ack interval, not the node window`);
  });
}

t.test('simulated VSAT with the old fixed window of 16 is window-bound', async (t) => {
  const r = simulateTransfer(MiB, 16, { chunksPerMs: 0.062, delayMs: 300 });
  t.ok(r.utilization < 0.6, `utilization ${r.utilization.toFixed(3)}: 16 chunks per 600 ms round trip`);
});
