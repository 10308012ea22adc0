import { lorawanTimeOnAirMs, type LoraModulation } from './airtime.js';

/**
 * Regional parameters ferry plans with (LoRaWAN Regional Parameters RP002 / v1.0.3revA; the same tables as
 * LoRaMac-node RegionEU868.h `MaxPayloadOfDatarateEU868` and RegionUS915.h `MaxPayloadOfDatarateUS915`).
 * N is the maximum FRMPayload without FOpts (repeater-incompatible variant); M = N + 8 is the MACPayload.
 * A TS004 DataFragment spends 3 of the N bytes (CID + Index&N), so its fragment is at most N − 3.
 */
export interface DataRate {
  dr: number;
  modulation: LoraModulation;
  /** Maximum FRMPayload (application bytes) without FOpts. */
  maxAppPayload: number;
  direction: 'up' | 'down' | 'both';
}

export interface Region {
  name: 'EU868' | 'US915';
  dataRates: readonly DataRate[];
  /** Maximum time on air of one uplink, when the region imposes a dwell time (US915: 400 ms). */
  uplinkDwellMs?: number;
}

const dr = (d: number, sf: DataRate['modulation']['sf'], bw: DataRate['modulation']['bw'], n: number, direction: DataRate['direction']): DataRate =>
  ({ dr: d, modulation: { sf, bw }, maxAppPayload: n, direction });

export const EU868: Region = {
  name: 'EU868',
  dataRates: [
    dr(0, 12, 125_000, 51, 'both'),
    dr(1, 11, 125_000, 51, 'both'),
    dr(2, 10, 125_000, 51, 'both'),
    dr(3, 9, 125_000, 115, 'both'),
    dr(4, 8, 125_000, 242, 'both'),
    dr(5, 7, 125_000, 242, 'both'),
    dr(6, 7, 250_000, 242, 'both'),
    // DR7 is FSK 50 kbit/s: not a LoRa modulation, so not planned here.
  ],
};

export const US915: Region = {
  name: 'US915',
  uplinkDwellMs: 400,
  dataRates: [
    dr(0, 10, 125_000, 11, 'up'),
    dr(1, 9, 125_000, 53, 'up'),
    dr(2, 8, 125_000, 125, 'up'),
    dr(3, 7, 125_000, 242, 'up'),
    dr(4, 8, 500_000, 242, 'up'),
    dr(8, 12, 500_000, 53, 'down'),
    dr(9, 11, 500_000, 129, 'down'),
    dr(10, 10, 500_000, 242, 'down'),
    dr(11, 9, 500_000, 242, 'down'),
    dr(12, 8, 500_000, 242, 'down'),
    dr(13, 7, 500_000, 242, 'down'),
  ],
};

/** Bytes a TS004 DataFragment spends on protocol: CID (1) + Index&N (2). */
export const DATA_FRAGMENT_OVERHEAD = 3;

export function dataRate(region: Region, drIndex: number, direction: 'up' | 'down'): DataRate {
  const found = region.dataRates.find((d) => d.dr === drIndex);
  if (!found) throw new RangeError(`${region.name} has no LoRa data rate DR${drIndex}`);
  if (found.direction !== 'both' && found.direction !== direction) {
    throw new RangeError(`${region.name} DR${drIndex} is ${found.direction}link only, not usable for ${direction}link`);
  }
  return found;
}

/** Largest TS004 fragment at this data rate (N − 3). */
export function maxFragmentSize(region: Region, drIndex: number): number {
  return dataRate(region, drIndex, 'down').maxAppPayload - DATA_FRAGMENT_OVERHEAD;
}

/** Time on air of a LoRaWAN frame with `appBytes` of FRMPayload at a region's data rate; checks the size limit and dwell time. */
export function frameAirtimeMs(region: Region, drIndex: number, appBytes: number, direction: 'up' | 'down'): number {
  const d = dataRate(region, drIndex, direction);
  if (!Number.isInteger(appBytes) || appBytes < 0 || appBytes > d.maxAppPayload) {
    throw new RangeError(`${appBytes} B does not fit ${region.name} DR${drIndex} (max ${d.maxAppPayload} B)`);
  }
  const ms = lorawanTimeOnAirMs(d.modulation, appBytes, direction);
  if (direction === 'up' && region.uplinkDwellMs !== undefined && ms > region.uplinkDwellMs) {
    throw new RangeError(`${region.name} DR${drIndex} uplink of ${appBytes} B lasts ${ms.toFixed(1)} ms, over the ${region.uplinkDwellMs} ms dwell time`);
  }
  return ms;
}

/** Airtime of `count` TS004 DataFragments of `fragSize` B at a downlink data rate (each frame: fragSize + 3 B FRMPayload). */
export function fragmentsAirtimeMs(region: Region, drIndex: number, fragSize: number, count: number): number {
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`fragment count ${count} is not a count`);
  return count * frameAirtimeMs(region, drIndex, fragSize + DATA_FRAGMENT_OVERHEAD, 'down');
}

/**
 * EU868 sub-bands and their duty cycle (ETSI EN 300 220 as applied in LoRaMac-node RegionEU868.c). Frequencies in Hz,
 * upper bound exclusive. 869.525 MHz (RX2, Class C / multicast default) sits in the 10 % band.
 */
export interface SubBand {
  name: string;
  minHz: number;
  maxHz: number;
  dutyCycle: number;
}

export const EU868_SUB_BANDS: readonly SubBand[] = [
  { name: 'g (863-865 MHz)', minHz: 863_000_000, maxHz: 865_000_000, dutyCycle: 0.001 },
  { name: 'g (865-868 MHz)', minHz: 865_000_000, maxHz: 868_000_000, dutyCycle: 0.01 },
  { name: 'g1 (868.0-868.6 MHz)', minHz: 868_000_000, maxHz: 868_600_000, dutyCycle: 0.01 },
  { name: 'g2 (868.7-869.2 MHz)', minHz: 868_700_000, maxHz: 869_200_000, dutyCycle: 0.001 },
  { name: 'g3 (869.4-869.65 MHz)', minHz: 869_400_000, maxHz: 869_650_000, dutyCycle: 0.1 },
  { name: 'g4 (869.7-870 MHz)', minHz: 869_700_000, maxHz: 870_000_000, dutyCycle: 0.01 },
];

export function subBandOf(frequencyHz: number, bands: readonly SubBand[] = EU868_SUB_BANDS): SubBand {
  const band = bands.find((b) => frequencyHz >= b.minHz && frequencyHz < b.maxHz);
  if (!band) throw new RangeError(`${frequencyHz} Hz is in no EU868 sub-band`);
  return band;
}

/** Silence after a frame so that the band's duty cycle holds: Toff = ToA / DC − ToA. */
export function offTimeMs(airtimeMs: number, dutyCycle: number): number {
  return airtimeMs / dutyCycle - airtimeMs;
}

/**
 * Duty-cycle accountant, per sub-band, by the per-transmission off-time rule (LoRaMac-node, TTN): a frame of
 * ToA t started at s blocks its sub-band until s + t/DC. Conservative against ETSI's 1-hour averaging, so a
 * schedule it accepts is legal under both. Immutable: `record` returns a new state.
 */
export interface DutyCycleState {
  /** Sub-band name → earliest start (ms) of the next frame on it. */
  readonly freeAt: Readonly<Record<string, number>>;
}

export const emptyDutyCycle: DutyCycleState = { freeAt: {} };

export interface Transmission {
  frequencyHz: number;
  startMs: number;
  airtimeMs: number;
}

/** Earliest start ≥ now of a frame on `frequencyHz`. */
export function nextStartMs(state: DutyCycleState, frequencyHz: number, nowMs: number, bands: readonly SubBand[] = EU868_SUB_BANDS): number {
  const band = subBandOf(frequencyHz, bands);
  return Math.max(nowMs, state.freeAt[band.name] ?? -Infinity);
}

/** Accounts a transmission; throws if it starts before its sub-band is free (the scheduler must ask first). */
export function recordTransmission(state: DutyCycleState, tx: Transmission, bands: readonly SubBand[] = EU868_SUB_BANDS): DutyCycleState {
  if (!(tx.airtimeMs > 0) || !Number.isFinite(tx.airtimeMs)) throw new RangeError(`airtime ${tx.airtimeMs} ms is not positive`);
  const band = subBandOf(tx.frequencyHz, bands);
  const free = state.freeAt[band.name] ?? -Infinity;
  if (tx.startMs < free) {
    throw new RangeError(`transmission at ${tx.startMs} ms breaks the ${band.dutyCycle * 100} % duty cycle of ${band.name} (free at ${free} ms)`);
  }
  return { freeAt: { ...state.freeAt, [band.name]: tx.startMs + tx.airtimeMs / band.dutyCycle } };
}
