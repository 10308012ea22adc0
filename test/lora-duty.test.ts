import t from 'tap';
import { commitDownlink, emptyAirtime, planDownlink, RX2_FREQUENCY_HZ, type PlannedDownlink } from '../shared/lora/duty.js';
import { EU868_SUB_BANDS, subBandOf } from '../shared/lora/regions.js';
import { runSeed, seeded } from '../harness/seeded.js';

const HOUR = 3_600_000;

/** ETSI's view: in any hour-long window starting at a frame, a band's airtime is at most DC·hour (+ one frame). */
function worstHourShare(frames: PlannedDownlink[]): { band: string; share: number; limit: number }[] {
  const out = [];
  for (const band of EU868_SUB_BANDS) {
    const own = frames.filter((f) => subBandOf(f.frequencyHz) === band).sort((a, b) => a.startMs - b.startMs);
    let worst = 0;
    const longest = Math.max(0, ...own.map((f) => f.airtimeMs));
    for (const f of own) {
      const inHour = own.filter((g) => g.startMs >= f.startMs && g.startMs < f.startMs + HOUR).reduce((s, g) => s + g.airtimeMs, 0);
      worst = Math.max(worst, inHour - longest);
    }
    if (own.length) out.push({ band: band.name, share: worst / HOUR, limit: band.dutyCycle });
  }
  return out;
}

t.test('random downlink sequences never exceed EU868 duty cycles nor overlap on the radio', async (t) => {
  const seed = runSeed(868);
  const freqs = [868_100_000, 868_300_000, 868_500_000, RX2_FREQUENCY_HZ.EU868, 867_100_000, 869_800_000];
  for (let trial = 0; trial < 20; trial++) {
    const rnd = seeded(seed + trial);
    // Odd trials saturate the Class C band alone (the multicast case); even ones mix bands.
    const pick = trial % 2 ? [RX2_FREQUENCY_HZ.EU868] : freqs;
    let state = emptyAirtime('EU868');
    let now = 0;
    const frames: PlannedDownlink[] = [];
    for (let i = 0; i < 400; i++) {
      now += Math.floor(rnd() * (trial % 2 ? 2_000 : 20_000));
      const dr = Math.floor(rnd() * 7);
      const appBytes = 1 + Math.floor(rnd() * (dr < 3 ? 51 : dr === 3 ? 115 : 242));
      const plan = planDownlink(state, { frequencyHz: pick[Math.floor(rnd() * pick.length)], dr, appBytes }, now);
      if (plan.startMs < now) t.fail(`planned in the past: ${plan.startMs} < ${now}`);
      state = commitDownlink(state, plan);
      frames.push(plan);
    }
    frames.sort((a, b) => a.startMs - b.startMs);
    const overlaps = frames.filter((f, i) => i > 0 && f.startMs < frames[i - 1].startMs + frames[i - 1].airtimeMs).length;
    t.equal(overlaps, 0, `trial ${trial}: no two frames on air at once`);
    for (const b of worstHourShare(frames)) t.ok(b.share <= b.limit + 1e-9, `trial ${trial}: ${b.band} worst hour ${(b.share * 100).toFixed(3)} % ≤ ${b.limit * 100} %`);
  }
});

t.test('the scheduler refuses what it did not allow, and sizes frames by DR (table)', async (t) => {
  let s = emptyAirtime('EU868');
  const first = planDownlink(s, { frequencyHz: RX2_FREQUENCY_HZ.EU868, dr: 0, appBytes: 51 }, 0);
  t.equal(first.startMs, 0);
  t.equal(Math.round(first.airtimeMs), 2793, 'SF12 51 B: 2,793 ms');
  s = commitDownlink(s, first);
  const second = planDownlink(s, { frequencyHz: RX2_FREQUENCY_HZ.EU868, dr: 0, appBytes: 51 }, 0);
  t.equal(Math.round(second.startMs / 100) / 10, 27.9, '10 % band: the next frame waits ToA/0.1 = 27.9 s');
  t.throws(() => commitDownlink(s, { ...second, startMs: 10_000 }), /breaks the 10 % duty cycle/);
  t.throws(() => commitDownlink(s, { ...second, startMs: 1_000 }), /overlaps/);
  const other = planDownlink(s, { frequencyHz: 868_100_000, dr: 5, appBytes: 242 }, 0);
  t.equal(Math.round(other.startMs), Math.round(first.airtimeMs), 'another band waits only for the radio');
  t.throws(() => planDownlink(s, { frequencyHz: 868_100_000, dr: 0, appBytes: 52 }, 0), /does not fit EU868 DR0/);

  let us = emptyAirtime('US915');
  const a = planDownlink(us, { frequencyHz: RX2_FREQUENCY_HZ.US915, dr: 13, appBytes: 242 }, 0);
  us = commitDownlink(us, a);
  const b = planDownlink(us, { frequencyHz: RX2_FREQUENCY_HZ.US915, dr: 13, appBytes: 242 }, 0);
  t.equal(b.startMs, a.airtimeMs, 'US915: no duty cycle, back to back');
  t.throws(() => planDownlink(us, { frequencyHz: RX2_FREQUENCY_HZ.US915, dr: 0, appBytes: 5 }, 0), /uplink only/);
  t.throws(() => emptyAirtime('AS923' as never) && planDownlink(emptyAirtime('AS923' as never), { frequencyHz: 1, dr: 0, appBytes: 1 }, 0), /unknown region/);
});
