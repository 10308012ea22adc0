/**
 * LoRa time on air, from the Semtech formula (AN1200.13 "LoRa Modem Designer's Guide"; the same arithmetic as
 * LoRaMac-node's SX1276GetLoRaTimeOnAirNumerator and the SX126x datasheet §6.1.4 for SF7–SF12):
 *
 *   Tsym      = 2^SF / BW
 *   Tpreamble = (nPreamble + 4.25) · Tsym
 *   nPayload  = 8 + max(ceil((8·PL − 4·SF + 28 + 16·CRC − 20·IH) / (4·(SF − 2·DE))) · (CR + 4), 0)
 *   ToA       = Tpreamble + nPayload · Tsym
 *
 * PL is the PHY payload (LoRaWAN: FRMPayload + 13), IH = 1 for implicit header, DE = 1 with low data rate
 * optimisation, CR = 1..4 for 4/5..4/8. LoRaWAN uplinks carry a CRC, downlinks do not.
 */

export type SpreadingFactor = 7 | 8 | 9 | 10 | 11 | 12;
export type Bandwidth = 125_000 | 250_000 | 500_000;
/** Coding rate 4/(4+cr): 1 = 4/5 (LoRaWAN's), 4 = 4/8. */
export type CodingRate = 1 | 2 | 3 | 4;

export interface LoraModulation {
  sf: SpreadingFactor;
  bw: Bandwidth;
}

export interface AirtimeOptions {
  /** Coding rate; LoRaWAN uses 4/5 (1). */
  cr?: CodingRate;
  /** Programmed preamble symbols; LoRaWAN uses 8. */
  preamble?: number;
  /** Explicit PHY header; LoRaWAN always uses it. */
  explicitHeader?: boolean;
  /** Payload CRC: on for LoRaWAN uplinks, off for downlinks. */
  crc?: boolean;
  /** Low data rate optimisation; by default on when a symbol lasts ≥ 16 ms (SF11/SF12 at 125 kHz, SF12 at 250 kHz). */
  lowDataRateOptimize?: boolean;
}

/** LoRaWAN's fixed overhead around FRMPayload: MHDR 1 + FHDR 7 (no FOpts) + FPort 1 + MIC 4. */
export const LORAWAN_OVERHEAD = 13;

/** Symbol duration in milliseconds. */
export function symbolMs(m: LoraModulation): number {
  return (2 ** m.sf / m.bw) * 1000;
}

/** The default low data rate optimisation rule (LoRaMac-node and the SX127x datasheet): Tsym ≥ 16 ms. */
export function needsLowDataRateOptimize(m: LoraModulation): boolean {
  return symbolMs(m) >= 16;
}

/** Number of payload symbols (including the 8 fixed ones) for a PHY payload of `phyBytes`. */
export function payloadSymbols(m: LoraModulation, phyBytes: number, o: AirtimeOptions = {}): number {
  checkModulation(m);
  if (!Number.isInteger(phyBytes) || phyBytes < 0 || phyBytes > 255) {
    throw new RangeError(`PHY payload ${phyBytes} is not a byte count in 0..255`);
  }
  const cr = o.cr ?? 1;
  if (![1, 2, 3, 4].includes(cr)) throw new RangeError(`coding rate ${cr} is not 1..4 (4/5..4/8)`);
  const ih = (o.explicitHeader ?? true) ? 0 : 1;
  const crc = (o.crc ?? true) ? 1 : 0;
  const de = (o.lowDataRateOptimize ?? needsLowDataRateOptimize(m)) ? 1 : 0;
  const num = 8 * phyBytes - 4 * m.sf + 28 + 16 * crc - 20 * ih;
  const den = 4 * (m.sf - 2 * de);
  return 8 + Math.max(Math.ceil(num / den) * (cr + 4), 0);
}

/** Time on air in milliseconds of one LoRa frame with a PHY payload of `phyBytes`. */
export function timeOnAirMs(m: LoraModulation, phyBytes: number, o: AirtimeOptions = {}): number {
  const preamble = o.preamble ?? 8;
  if (!Number.isInteger(preamble) || preamble < 6 || preamble > 65535) {
    throw new RangeError(`preamble ${preamble} is not a symbol count in 6..65535`);
  }
  const tsym = symbolMs(m);
  return (preamble + 4.25) * tsym + payloadSymbols(m, phyBytes, o) * tsym;
}

/** Time on air of a LoRaWAN frame carrying `appBytes` of FRMPayload (no FOpts); CRC on uplink only. */
export function lorawanTimeOnAirMs(m: LoraModulation, appBytes: number, direction: 'up' | 'down'): number {
  return timeOnAirMs(m, appBytes + LORAWAN_OVERHEAD, { crc: direction === 'up' });
}

function checkModulation(m: LoraModulation): void {
  if (!Number.isInteger(m.sf) || m.sf < 7 || m.sf > 12) throw new RangeError(`spreading factor ${m.sf} is not 7..12`);
  if (m.bw !== 125_000 && m.bw !== 250_000 && m.bw !== 500_000) {
    throw new RangeError(`bandwidth ${m.bw} Hz is not 125000, 250000 or 500000`);
  }
}
