/**
 * Congestion-window sizing for one transfer from what the acks measure: the link's delivery rate
 * (each ack's sample: chunks acked between the newest acked chunk's send and this ack, over that
 * time; the largest of the last few round trips) and its smallest round trip.
 * Their product is the bandwidth-delay product (BDP): what must be in flight to keep the link busy.
 * The window aims at twice that plus one ack interval (the node holds up to an interval before it
 * acks), so a measurement taken while window-limited still lets the window grow, and a queue that
 * builds beyond that is not fed: on a long fat link the window opens up to what the link holds, on
 * a slow short one it stays small instead of parking the node's whole window in a buffer.
 *
 * Phases: `startup` grows the window by two per chunk acked (tripling per round trip) until a round
 * trip shows queueing (a sample well above the smallest) or three rounds bring no 25 % more rate;
 * `steady` then follows the target. A loss event halves the window (as before this module), and it
 * grows back towards the target. The window always stays within [floor, node window]: the floor is
 * the node's ack interval, since a smaller burst would draw no ack until the retransmission timer,
 * and the node's window is what it said it can take.
 *
 * Pure: step(state, input, now) with no clock or I/O of its own; TransferWindow drives it.
 */
export interface GrowthLimits {
  /** The node's receive window (its Hello): the ceiling. */
  nodeWindow: number;
  /** The node's ack interval: the smallest window that still draws acks. */
  floor: number;
}

/** Where the current round trip began: it ends with the first ack of a chunk sent after `seq`. */
interface RoundMark {
  seq: number;
  delivered: number;
  at: number;
}

interface Measured {
  limits: GrowthLimits;
  cwnd: number;
  /** Chunks acked so far. */
  delivered: number;
  /** Smallest round trip seen, ms. */
  minRtt: number | undefined;
  /** Largest delivery-rate sample of each recent round, chunks per ms, the current round last. */
  rates: readonly number[];
  round: RoundMark;
}

export type GrowthState =
  | (Measured & { phase: 'startup'; fullRate: number; flatRounds: number })
  | (Measured & { phase: 'steady' });

export type GrowthInput =
  /**
   * An ack confirmed `fresh` chunks; the newest of them went out as send number `newestSeq`;
   * `seqNow` chunks have gone so far; `rate` is the ack's delivery-rate sample (chunks per ms).
   */
  | { type: 'ack'; fresh: number; newestSeq: number; seqNow: number; rttMs?: number; rate?: number }
  /** The retransmission timer declared a loss event. */
  | { type: 'loss' };

export type GrowthEffect = { type: 'window'; cwnd: number; why: 'startup' | 'target' | 'additive' | 'loss' };

/** Rounds whose rates the bandwidth estimate keeps (a max filter over them). */
export const RATE_ROUNDS = 10;
/** The window starts here (or at the node's window when that is smaller). */
export const INITIAL_WINDOW = 32;
/** Startup ends after this many rounds without RATE_GROWTH more rate. */
const FLAT_ROUNDS = 3;
const RATE_GROWTH = 1.25;
/**
 * Startup adds this many chunks per chunk acked: the window triples per round trip, so a 600 ms
 * satellite round trip fills a 2 Mbit/s link in two rounds instead of three.
 */
const STARTUP_GAIN = 2;
/** Target = CWND_GAIN × BDP + one ack interval. */
const CWND_GAIN = 2;

export function initialGrowth(limits: GrowthLimits, now: number): GrowthState {
  const cwnd = clamp(Math.min(limits.nodeWindow, INITIAL_WINDOW), limits);
  return { phase: 'startup', limits, cwnd, delivered: 0, minRtt: undefined, rates: [], round: { seq: 0, delivered: 0, at: now }, fullRate: 0, flatRounds: 0 };
}

/** Largest delivery rate of the recent rounds, chunks per ms (0 before the first round ends). */
export function bottleneckRate(s: GrowthState): number {
  let best = 0;
  for (const r of s.rates) best = Math.max(best, r);
  return best;
}

/** The window the measurements ask for, or undefined before there is a rate and a round trip. */
export function targetWindow(s: GrowthState): number | undefined {
  const rate = bottleneckRate(s);
  if (s.minRtt === undefined || rate === 0) return undefined;
  return clamp(Math.ceil(CWND_GAIN * rate * s.minRtt) + s.limits.floor, s.limits);
}

/** Startup ends when a round trip exceeds the smallest by half plus 4 ms: a queue is building. */
export function queueing(rttMs: number, minRtt: number): boolean {
  return rttMs > 1.5 * minRtt + 4;
}

export function growthStep(state: GrowthState, input: GrowthInput, now: number): { state: GrowthState; effects: GrowthEffect[] } {
  if (input.type === 'loss') {
    const cwnd = clamp(Math.floor(state.cwnd / 2), state.limits);
    return { state: { ...common(state), phase: 'steady', cwnd }, effects: changed(state, cwnd, 'loss') };
  }
  const delivered = state.delivered + input.fresh;
  const minRtt = input.rttMs === undefined ? state.minRtt : state.minRtt === undefined ? input.rttMs : Math.min(state.minRtt, input.rttMs);
  let rates = state.rates;
  let round = state.round;
  let roundEnded = false;
  if (input.fresh > 0 && input.newestSeq > round.seq) {
    // A round trip ended. Its own rate (delivered over its length) is one more sample, for acks
    // that came without one.
    const elapsed = now - round.at;
    const whole = elapsed > 0 ? (delivered - round.delivered) / elapsed : 0;
    rates = [...rates.slice(0, -1), Math.max(rates[rates.length - 1] ?? 0, whole), 0].slice(-RATE_ROUNDS);
    round = { seq: input.seqNow, delivered, at: now };
    roundEnded = true;
  }
  if (input.rate !== undefined && input.rate > 0) {
    const current = rates.length > 0 ? rates[rates.length - 1] : 0;
    if (input.rate > current) rates = [...rates.slice(0, -1), input.rate];
  }
  const measured: Measured = { limits: state.limits, cwnd: state.cwnd, delivered, minRtt, rates, round };

  if (state.phase === 'startup') {
    let { fullRate, flatRounds } = state;
    if (roundEnded) {
      const rate = Math.max(0, ...rates);
      if (rate >= fullRate * RATE_GROWTH) {
        fullRate = rate;
        flatRounds = 0;
      } else flatRounds++;
    }
    const queued = input.rttMs !== undefined && minRtt !== undefined && queueing(input.rttMs, minRtt);
    if (!queued && flatRounds < FLAT_ROUNDS) {
      const cwnd = clamp(state.cwnd + STARTUP_GAIN * input.fresh, state.limits);
      return { state: { ...measured, phase: 'startup', cwnd, fullRate, flatRounds }, effects: changed(state, cwnd, 'startup') };
    }
    const steady: GrowthState = { ...measured, phase: 'steady' };
    const cwnd = targetWindow(steady) ?? state.cwnd;
    return { state: { ...steady, cwnd }, effects: changed(state, cwnd, 'target') };
  }

  if (input.fresh === 0) return { state: { ...measured, phase: 'steady' }, effects: [] };
  const next: GrowthState = { ...measured, phase: 'steady' };
  const target = targetWindow(next);
  // Without measurements yet (after an early loss), grow one chunk per ack as before; with them,
  // grow by what was acked up to the target, or come down to it.
  const cwnd = target === undefined ? clamp(state.cwnd + 1, state.limits) : state.cwnd < target ? Math.min(target, state.cwnd + input.fresh) : target;
  return { state: { ...next, cwnd }, effects: changed(state, cwnd, target === undefined ? 'additive' : 'target') };
}

function common(s: GrowthState): Measured {
  return { limits: s.limits, cwnd: s.cwnd, delivered: s.delivered, minRtt: s.minRtt, rates: s.rates, round: s.round };
}

function clamp(cwnd: number, l: GrowthLimits): number {
  return Math.max(l.floor, Math.min(l.nodeWindow, cwnd));
}

function changed(s: GrowthState, cwnd: number, why: GrowthEffect['why']): GrowthEffect[] {
  return cwnd === s.cwnd ? [] : [{ type: 'window', cwnd, why }];
}
