import t from 'tap';
import { measureLink } from './helpers/shaping-proxy.js';

// The shaping proxy is a measuring instrument for the link benchmarks, so it is checked against what
// it was asked for. Loosely: it can never be faster than asked (rate at most a little over, delay
// at least the delay), and on a loaded machine it may be slower, so the other bound is generous.
const cases = [
  { name: 'cellular-like', profile: { rateBps: 1_000_000, delayMs: 80 }, bulk: 96 * 1024 },
  { name: 'Wi-Fi-like', profile: { rateBps: 20_000_000, delayMs: 5 }, bulk: 1024 * 1024 },
];

for (const c of cases) {
  t.test(`${c.name}: rate and one-way delay are what was asked`, async (t) => {
    const m = await measureLink(c.profile, c.bulk);
    t.ok(m.rateBps <= c.profile.rateBps * 1.1, `rate ${Math.round(m.rateBps)} bit/s is not above ${c.profile.rateBps}`);
    t.ok(m.rateBps >= c.profile.rateBps * 0.5, `rate ${Math.round(m.rateBps)} bit/s is at least half of ${c.profile.rateBps}`);
    t.ok(m.delayMs >= c.profile.delayMs * 0.97, `one-way delay ${m.delayMs.toFixed(1)} ms is not below ${c.profile.delayMs}`);
    t.ok(m.delayMs <= c.profile.delayMs * 1.5 + 20, `one-way delay ${m.delayMs.toFixed(1)} ms is near ${c.profile.delayMs}`);
  });
}
