import t from 'tap';
import { lorawanTimeOnAirMs, needsLowDataRateOptimize, timeOnAirMs, type LoraModulation } from '../shared/lora/airtime.js';
import {
  EU868, US915, dataRate, fragmentsAirtimeMs, emptyDutyCycle, frameAirtimeMs, maxFragmentSize, nextStartMs, offTimeMs, recordTransmission, subBandOf, type Region,
} from '../shared/lora/regions.js';

/** Rounded to the microsecond: the reference figures are exact to 1 µs; doubles are not. */
const us = (ms: number) => Math.round(ms * 1000) / 1000;
const m = (sf: LoraModulation['sf'], bw: LoraModulation['bw'] = 125_000): LoraModulation => ({ sf, bw });

t.test('PHY time on air matches the reference calculators', async (t) => {
  // Semtech LoRa calculator spreadsheet / rfwireless-world figures quoted in shared/reference/lora.md §2.3:
  // PHY payload, CRC on, explicit header, CR 4/5, 8-symbol preamble.
  const cases: [LoraModulation, number, number][] = [
    [m(9), 13, 164.864],
    [m(7), 10, 41.216],
    [m(11), 10, 577.536],
  ];
  for (const [mod, phy, ms] of cases) t.equal(us(timeOnAirMs(mod, phy)), ms, `SF${mod.sf}/${mod.bw / 1000} ${phy} B`);
});

t.test('LoRaWAN frame airtimes match lora.md §2.3 (N + 13 B PHY, CRC on uplink only)', async (t) => {
  const cases: [string, LoraModulation, number, 'up' | 'down', number][] = [
    ['EU868 DR0 51 B up', m(12), 51, 'up', 2793.5],
    ['EU868 DR0 51 B down', m(12), 51, 'down', 2793.5],
    ['EU868 DR1 51 B up', m(11), 51, 'up', 1560.6],
    ['EU868 DR1 51 B down', m(11), 51, 'down', 1478.7],
    ['EU868 DR2 51 B up', m(10), 51, 'up', 698.4],
    ['EU868 DR3 115 B up', m(9), 115, 'up', 676.9],
    ['EU868 DR4 242 B up', m(8), 242, 'up', 707.1],
    ['EU868 DR4 242 B down', m(8), 242, 'down', 696.8],
    ['EU868 DR5 242 B up', m(7), 242, 'up', 399.6],
    ['EU868 DR5 242 B down', m(7), 242, 'down', 394.5],
    ['EU868 DR5 222 B up', m(7), 222, 'up', 368.9],
    ['EU868 DR6 242 B up', m(7, 250_000), 242, 'up', 199.8],
    ['SF12 1 B up', m(12), 1, 'up', 1155.1],
    ['SF7 1 B up', m(7), 1, 'up', 46.3],
    ['US915 DR0 11 B up', m(10), 11, 'up', 370.7],
    ['US915 DR8 53 B down', m(12, 500_000), 53, 'down', 616.4],
    ['US915 DR13 242 B up', m(7, 500_000), 242, 'up', 99.9],
    ['US915 DR13 242 B down', m(7, 500_000), 242, 'down', 98.6],
  ];
  for (const [name, mod, n, dir, ms] of cases) t.equal(Math.round(lorawanTimeOnAirMs(mod, n, dir) * 10) / 10, ms, name);
  t.equal(us(lorawanTimeOnAirMs(m(12), 51, 'up')), 2793.472, 'exact: 12.25 + 73 symbols of 32.768 ms');
});

t.test('low data rate optimisation is automatic when a symbol lasts ≥ 16 ms', async (t) => {
  t.same([7, 8, 9, 10, 11, 12].map((sf) => needsLowDataRateOptimize(m(sf as LoraModulation['sf']))), [false, false, false, false, true, true]);
  t.ok(needsLowDataRateOptimize(m(12, 250_000)), 'SF12/250 kHz too (as LoRaMac-node)');
  t.notOk(needsLowDataRateOptimize(m(12, 500_000)));
  t.ok(timeOnAirMs(m(11), 64, { lowDataRateOptimize: false }) < timeOnAirMs(m(11), 64), 'forcing it off shortens SF11');
});

t.test('bad modulation or sizes are refused with the field named', async (t) => {
  t.throws(() => timeOnAirMs({ sf: 6 as 7, bw: 125_000 }, 10), /spreading factor 6/);
  t.throws(() => timeOnAirMs({ sf: 7, bw: 200_000 as 125_000 }, 10), /bandwidth 200000/);
  t.throws(() => timeOnAirMs(m(7), 256), /PHY payload 256/);
  t.throws(() => timeOnAirMs(m(7), 10, { cr: 5 as 1 }), /coding rate 5/);
  t.throws(() => timeOnAirMs(m(7), 10, { preamble: 2 }), /preamble 2/);
});

t.test('regional tables: max payload and TS004 fragment size per DR', async (t) => {
  const eu: [number, number, number][] = [[0, 51, 48], [1, 51, 48], [2, 51, 48], [3, 115, 112], [4, 242, 239], [5, 242, 239], [6, 242, 239]];
  for (const [d, n, frag] of eu) {
    t.equal(dataRate(EU868, d, 'down').maxAppPayload, n, `EU868 DR${d} N`);
    t.equal(maxFragmentSize(EU868, d), frag, `EU868 DR${d} fragment`);
  }
  t.same(US915.dataRates.filter((d) => d.direction === 'up').map((d) => d.maxAppPayload), [11, 53, 125, 242, 242]);
  t.same([8, 9, 10, 11, 12, 13].map((d) => maxFragmentSize(US915, d)), [50, 126, 239, 239, 239, 239]);
  t.throws(() => dataRate(US915, 8, 'up'), /downlink only/);
  t.throws(() => maxFragmentSize(US915, 0), /uplink only/);
  t.throws(() => dataRate(EU868, 7, 'down'), /no LoRa data rate DR7/);
});

t.test('US915 uplinks at their max payload all fit the 400 ms dwell time; a longer one is refused', async (t) => {
  for (const d of US915.dataRates.filter((x) => x.direction === 'up')) {
    const ms = frameAirtimeMs(US915, d.dr, d.maxAppPayload, 'up');
    t.ok(ms <= 400, `DR${d.dr} ${d.maxAppPayload} B: ${ms.toFixed(1)} ms`);
  }
  const loose: Region = { ...US915, dataRates: [{ dr: 0, modulation: m(10), maxAppPayload: 40, direction: 'up' }] };
  t.throws(() => frameAirtimeMs(loose, 0, 30, 'up'), /over the 400 ms dwell time/);
  t.throws(() => frameAirtimeMs(EU868, 0, 52, 'down'), /52 B does not fit EU868 DR0 \(max 51 B\)/);
  t.equal(Math.round(frameAirtimeMs(EU868, 5, 242, 'down') * 10) / 10, 394.5);
});

t.test('duty-cycle accountant: 1 % on 868.1 MHz, 10 % on 869.525 MHz, bands independent', async (t) => {
  t.equal(Math.round(offTimeMs(2793.472, 0.01) / 100) / 10, 276.6, 'Toff 1 % after 51 B at SF12 (s)');
  t.equal(Math.round(offTimeMs(2793.472, 0.1) / 100) / 10, 25.1, 'Toff 10 % (s)');
  t.equal(Math.round(offTimeMs(399.616, 0.01) / 100) / 10, 39.6, 'Toff 1 % after 242 B at SF7 (s)');
  const sf12 = frameAirtimeMs(EU868, 0, 51, 'down');
  let s = emptyDutyCycle;
  t.equal(nextStartMs(s, 868_100_000, 5), 5, 'a fresh band is free now');
  s = recordTransmission(s, { frequencyHz: 868_100_000, startMs: 0, airtimeMs: sf12 });
  t.equal(nextStartMs(s, 868_300_000, 1000), sf12 * 100, 'same sub-band g1: blocked until start + ToA/1 %');
  t.equal(nextStartMs(s, 869_525_000, 1000), 1000, 'the 10 % band is independent');
  t.throws(() => recordTransmission(s, { frequencyHz: 868_500_000, startMs: 1000, airtimeMs: sf12 }), /breaks the 1 % duty cycle of g1/);
  s = recordTransmission(s, { frequencyHz: 869_525_000, startMs: 1000, airtimeMs: sf12 });
  t.equal(nextStartMs(s, 869_525_000, 1000), 1000 + sf12 * 10);
  // A schedule that always waits for nextStart never spends more than 1 % of the elapsed time on air.
  let g = emptyDutyCycle;
  let at = 0;
  let air = 0;
  for (let i = 0; i < 50; i++) {
    at = nextStartMs(g, 868_100_000, at);
    g = recordTransmission(g, { frequencyHz: 868_100_000, startMs: at, airtimeMs: sf12 });
    air += sf12;
  }
  t.ok(air / (nextStartMs(g, 868_100_000, at)) <= 0.01 + 1e-12, 'back-to-back frames use at most 1 %');
  t.equal(subBandOf(869_525_000).dutyCycle, 0.1);
  t.throws(() => subBandOf(915_000_000), /915000000 Hz is in no EU868 sub-band/);
  t.throws(() => recordTransmission(emptyDutyCycle, { frequencyHz: 868_100_000, startMs: 0, airtimeMs: 0 }), /airtime 0 ms/);
});

t.test('a 100 KiB image as TS004 fragments: the airtime figures of lora.md §2.4', async (t) => {
  const image = 100 * 1024;
  const cases: [Region, number, number, number, string][] = [
    [EU868, 0, 48, 2134, '1.66 h'],
    [EU868, 5, 239, 429, '2.8 min'],
    [US915, 13, 239, 429, '42 s'],
  ];
  const show = (ms: number) => (ms >= 3_600_000 ? `${(ms / 3_600_000).toFixed(2)} h` : ms >= 60_000 ? `${(ms / 60_000).toFixed(1)} min` : `${Math.round(ms / 1000)} s`);
  for (const [region, d, frag, m, airtime] of cases) {
    t.equal(maxFragmentSize(region, d), frag);
    t.equal(Math.ceil(image / frag), m, `${region.name} DR${d}: M`);
    t.equal(show(fragmentsAirtimeMs(region, d, frag, m)), airtime, `${region.name} DR${d}: airtime`);
  }
  // Lower bound in the 10 % sub-band at DR0: airtime / 0.1 = 16.6 h.
  t.equal((fragmentsAirtimeMs(EU868, 0, 48, 2134) / 0.1 / 3_600_000).toFixed(1), '16.6');
  t.throws(() => fragmentsAirtimeMs(EU868, 0, 49, 1), /52 B does not fit EU868 DR0/);
});
