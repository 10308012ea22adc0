import { emptyDutyCycle, EU868, frameAirtimeMs, nextStartMs, recordTransmission, US915, type DutyCycleState, type Region } from './regions.js';

/**
 * The agent's airtime scheduler (docs/lora.md §7.6): before every downlink the runtime asks when it may go and
 * accounts it once handed to the LNS. EU868: the per-sub-band off-time rule of regions.ts (1 % on the default
 * channels, 10 % on 869.525 MHz for Class C and multicast), which is stricter than ETSI's one-hour average.
 * Both regions: one frame at a time on the gateway's radio. US915 has no duty cycle; its 400 ms dwell time binds
 * uplinks (frameAirtimeMs refuses them), and downlinks at 500 kHz are not frequency-hopping, so none applies.
 * Pure and immutable: the runtime keeps the state.
 */
export interface AirtimeState {
  readonly region: Region['name'];
  readonly dutyCycle: DutyCycleState;
  /** The gateway's radio transmits one frame at a time. */
  readonly radioFreeAt: number;
  /** Downlink airtime accounted so far, ms (for reports and benches). */
  readonly airtimeMs: number;
}

export interface DownlinkRequest {
  frequencyHz: number;
  dr: number;
  appBytes: number;
}

export interface PlannedDownlink {
  startMs: number;
  airtimeMs: number;
  frequencyHz: number;
}

export const RX2_FREQUENCY_HZ = { EU868: 869_525_000, US915: 923_300_000 } as const;
/** Class A downlinks when the uplink's frequency is not known: EU868's first default channel. */
export const DEFAULT_RX1_HZ = { EU868: 868_100_000, US915: 923_300_000 } as const;

export function regionByName(name: string): Region {
  if (name === 'EU868') return EU868;
  if (name === 'US915') return US915;
  throw new RangeError(`unknown region "${name}" (EU868 or US915)`);
}

export function emptyAirtime(region: Region['name']): AirtimeState {
  return { region, dutyCycle: emptyDutyCycle, radioFreeAt: -Infinity, airtimeMs: 0 };
}

/** Earliest legal start ≥ now of a downlink, and its airtime. Throws when the frame does not fit the DR. */
export function planDownlink(state: AirtimeState, req: DownlinkRequest, nowMs: number): PlannedDownlink {
  const region = regionByName(state.region);
  const airtimeMs = frameAirtimeMs(region, req.dr, req.appBytes, 'down');
  let startMs = Math.max(nowMs, state.radioFreeAt);
  if (region.name === 'EU868') startMs = Math.max(startMs, nextStartMs(state.dutyCycle, req.frequencyHz, nowMs));
  return { startMs, airtimeMs, frequencyHz: req.frequencyHz };
}

/** Accounts a downlink; throws if it starts before planDownlink allows (the caller must ask first). */
export function commitDownlink(state: AirtimeState, tx: PlannedDownlink): AirtimeState {
  if (tx.startMs < state.radioFreeAt) throw new RangeError(`downlink at ${tx.startMs} ms overlaps the previous one (radio busy until ${state.radioFreeAt} ms)`);
  const dutyCycle = state.region === 'EU868' ? recordTransmission(state.dutyCycle, { frequencyHz: tx.frequencyHz, startMs: tx.startMs, airtimeMs: tx.airtimeMs }) : state.dutyCycle;
  return { ...state, dutyCycle, radioFreeAt: tx.startMs + tx.airtimeMs, airtimeMs: state.airtimeMs + tx.airtimeMs };
}
