import t from 'tap';
import { Gateway, makeLink, parseLossModel } from '../device/lora/radio.js';
import { EU868 } from '../shared/lora/regions.js';
import { seeded } from '../harness/seeded.js';

t.test('loss models parse and name what is wrong', async (t) => {
  t.same(parseLossModel('10%'), { kind: 'iid', p: 0.1 });
  t.same(parseLossModel('30%,burst=4'), { kind: 'burst', p: 0.3, burst: 4 });
  t.same(parseLossModel('0'), { kind: 'iid', p: 0 });
  for (const bad of ['100%', 'ten', '10%,burst=0.5', '-1%']) t.throws(() => parseLossModel(bad), /loss|burst/, bad);
});

t.test('seeded links lose the asked share; Gilbert–Elliott losses come in bursts of the asked mean length', async (t) => {
  const n = 200_000;
  for (const [model, p] of [[parseLossModel('10%'), 0.1], [parseLossModel('30%'), 0.3], [parseLossModel('10%,burst=4'), 0.1], [parseLossModel('30%,burst=8'), 0.3]] as const) {
    const link = makeLink(model, seeded(99));
    let lost = 0;
    let bursts = 0;
    let prev = false;
    for (let i = 0; i < n; i++) {
      const l = link.lost();
      if (l) lost++;
      if (l && !prev) bursts++;
      prev = l;
    }
    t.ok(Math.abs(lost / n - p) < 0.01, `${JSON.stringify(model)}: ${(lost / n * 100).toFixed(2)} % lost`);
    const meanBurst = lost / bursts;
    const want = model.kind === 'burst' ? model.burst : 1 / (1 - p);
    t.ok(Math.abs(meanBurst - want) / want < 0.05, `mean burst ${meanBurst.toFixed(2)} frames, expected ${want.toFixed(2)}`);
  }
});

t.test('the gateway keeps the EU868 duty cycle per sub-band and accounts airtime', async (t) => {
  const g = new Gateway(EU868);
  const first = g.transmit({ startMs: 0, frequencyHz: 869_525_000, dr: 5, bytes: 242, kind: 'multicast' }, 0);
  t.equal(Math.round(first.airtimeMs * 10) / 10, 394.5, 'DR5 242 B downlink: 394.5 ms');
  t.equal(Math.round(g.earliest(869_525_000, 0)), 3945, 'the 10 % band is free again after ToA / 0.1');
  t.equal(Math.round(g.earliest(868_100_000, 0) * 10) / 10, 394.5, 'another sub-band only waits for the radio (half duplex)');
  t.throws(() => g.transmit({ startMs: 1000, frequencyHz: 869_525_000, dr: 5, bytes: 10, kind: 'unicast' }, 1000), /duty cycle/);
  t.notOk(g.fits(0, 52), 'DR0 carries at most 51 B');
  t.same(g.frames, { unicast: 0, multicast: 1 });
});
