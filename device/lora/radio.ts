import { frameAirtimeMs, nextStartMs, recordTransmission, emptyDutyCycle, dataRate, type DutyCycleState, type Region } from '../../shared/lora/regions.js';

/**
 * The simulated radio: seeded per-link loss and the gateway's transmit budget. Loss is either i.i.d. or
 * Gilbert–Elliott (a two-state Markov chain: good = no loss, bad = every frame lost; from mean loss p and mean
 * burst length b: P(bad→good) = 1/b, P(good→bad) = p/(b·(1 − p)), so the stationary share of bad is p).
 */
export type LossModel = { kind: 'iid'; p: number } | { kind: 'burst'; p: number; burst: number };

export interface Link {
  /** Draws whether the next frame on this link is lost. */
  lost(): boolean;
}

export function parseLossModel(text: string): LossModel {
  const m = /^(\d+(?:\.\d+)?)%?(?:,burst=(\d+(?:\.\d+)?))?$/.exec(text.trim());
  if (!m) throw new RangeError(`loss "${text}" is not P% or P%,burst=B (e.g. 10% or 10%,burst=4)`);
  const p = Number(m[1]) / (text.includes('%') ? 100 : 1);
  if (!(p >= 0 && p < 1)) throw new RangeError(`loss ${text} is not in [0, 100) %`);
  if (m[2] === undefined) return { kind: 'iid', p };
  const burst = Number(m[2]);
  if (!(burst >= 1)) throw new RangeError(`burst length ${m[2]} must be ≥ 1 frame`);
  return { kind: 'burst', p, burst };
}

export function makeLink(model: LossModel, random: () => number): Link {
  if (model.kind === 'iid') return { lost: () => model.p > 0 && random() < model.p };
  const toGood = 1 / model.burst;
  const toBad = model.p >= 1 ? 1 : (model.p * toGood) / (1 - model.p);
  let bad = random() < model.p;
  return {
    lost: () => {
      bad = bad ? random() >= toGood : random() < toBad;
      return bad;
    },
  };
}

/** One transmission the gateway made. */
export interface GatewayTx {
  startMs: number;
  airtimeMs: number;
  frequencyHz: number;
  dr: number;
  bytes: number;
  kind: 'unicast' | 'multicast';
}

/**
 * The gateway's radio: half duplex (one frame at a time) and the per-sub-band duty cycle of regions.ts. It
 * accounts every frame's airtime; the scheduler asks `earliest` and then `transmit`.
 */
export class Gateway {
  private duty: DutyCycleState = emptyDutyCycle;
  private radioFreeAt = -Infinity;
  airtimeMs = { unicast: 0, multicast: 0 };
  frames = { unicast: 0, multicast: 0 };
  /** Milliseconds frames waited for their sub-band's duty cycle. */
  dutyWaitMs = 0;

  constructor(readonly region: Region) {}

  airtime(dr: number, appBytes: number): number {
    return frameAirtimeMs(this.region, dr, appBytes, 'down');
  }

  fits(dr: number, appBytes: number): boolean {
    return appBytes <= dataRate(this.region, dr, 'down').maxAppPayload;
  }

  /** Earliest start ≥ now at which a frame on this frequency may go (EU868 duty cycle; other regions: radio only). */
  earliest(frequencyHz: number, nowMs: number): number {
    const radio = Math.max(nowMs, this.radioFreeAt);
    return this.region.name === 'EU868' ? nextStartMs(this.duty, frequencyHz, radio) : radio;
  }

  transmit(tx: Omit<GatewayTx, 'airtimeMs'>, wantedMs: number): GatewayTx {
    const airtimeMs = this.airtime(tx.dr, tx.bytes);
    if (this.region.name === 'EU868') this.duty = recordTransmission(this.duty, { frequencyHz: tx.frequencyHz, startMs: tx.startMs, airtimeMs });
    this.radioFreeAt = tx.startMs + airtimeMs;
    this.airtimeMs[tx.kind] += airtimeMs;
    this.frames[tx.kind]++;
    this.dutyWaitMs += Math.max(0, tx.startMs - wantedMs);
    return { ...tx, airtimeMs };
  }
}
