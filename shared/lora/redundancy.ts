import { matrixLine } from './fec.js';
import { MAX_FRAGMENT_COUNTER } from './fec-decoder.js';

/**
 * How many coded fragments to send. Model: the M uncoded fragments go first, each lost independently with
 * probability p, leaving ℓ unknown; then S coded fragments, each received with probability 1 − p. The c
 * received parity rows, restricted to the ℓ unknown columns, are treated as uniform random binary vectors, so
 * they reach rank ℓ with probability Q(c, ℓ) = ∏_{j=c−ℓ+1..c} (1 − 2^−j) (0 when c < ℓ), corrected for the rows'
 * sparsity when ℓ is small (rankCdf). This reproduces the
 * spec's figures (M received → ~30 % decodable, M+7 → 99 %) and is checked against the real decoder in
 * test/lora-redundancy.test.ts. Loss on real links is burstier than i.i.d.: choose the target accordingly and
 * rely on the repair round.
 */

const LOG_Q_TERMS = 64;
/** logQ[n] = Σ_{j=1..n} ln(1 − 2^−j); constant past 64 terms (the factors are 1 to double precision). */
const logQ: number[] = [0];
for (let j = 1; j <= LOG_Q_TERMS; j++) logQ.push(logQ[j - 1] + Math.log1p(-(2 ** -j)));
const logQAt = (n: number) => logQ[Math.min(n, LOG_Q_TERMS)];

/** Probability that c uniform random parity rows determine ℓ unknown fragments. */
export function rankProbability(c: number, unknown: number): number {
  if (unknown === 0) return 1;
  if (c < unknown) return 0;
  return Math.exp(logQAt(c) - logQAt(c - unknown));
}

/** Below this many unknowns a TS004 row's sparsity matters (it misses all of them with probability (1 − q)^ℓ). */
const SPARSE_LIMIT = 40;

/**
 * P(rank ℓ after c rows) for c = 0..cMax, with rows whose entries are 1 with probability q (a TS004 row draws
 * ⌊m/2⌋ of m columns with replacement, so q = 1 − (1 − 1/m)^⌊m/2⌋ ≈ 0.39). A row lies in a generic rank-r
 * span (codimension d = ℓ − r) with the probability below; a rank chain then gives the distribution.
 * Past SPARSE_LIMIT unknowns the uniform closed form is used (the correction is below 1e-8).
 */
function rankCdf(unknown: number, q: number, cMax: number): Float64Array {
  const out = new Float64Array(cMax + 1);
  if (unknown > SPARSE_LIMIT) {
    for (let c = 0; c <= cMax; c++) out[c] = rankProbability(c, unknown);
    return out;
  }
  // P(v ∈ V) = 2^−d · Σ_{u ∈ V⊥} (1 − 2q)^|u|; for a generic V⊥ the 2^d − 1 nonzero u weigh on average
  // e = ((2(1 − q))^ℓ − 1) / (2^ℓ − 1), which gives exactly (1 − q)^ℓ for the empty span.
  const e = ((2 * (1 - q)) ** unknown - 1) / (2 ** unknown - 1);
  const grow = new Float64Array(unknown);
  for (let r = 0; r < unknown; r++) {
    const span = 2 ** (unknown - r);
    grow[r] = 1 - (1 + (span - 1) * e) / span;
  }
  let dp = new Float64Array(unknown + 1);
  dp[0] = 1;
  out[0] = unknown === 0 ? 1 : 0;
  for (let c = 1; c <= cMax; c++) {
    const next = new Float64Array(unknown + 1);
    next[unknown] = dp[unknown];
    for (let r = 0; r < unknown; r++) {
      next[r + 1] += dp[r] * grow[r];
      next[r] += dp[r] * (1 - grow[r]);
    }
    dp = next;
    out[c] = dp[unknown];
  }
  return out;
}

/** Probability that one TS004 parity row over m fragments includes a given fragment. */
export function rowDensity(m: number): number {
  return 1 - (1 - 1 / m) ** (m >> 1);
}

const logFact: number[] = [0];
function logFactorial(n: number): number {
  while (logFact.length <= n) logFact.push(logFact[logFact.length - 1] + Math.log(logFact.length));
  return logFact[n];
}

/** Binomial(n, q) probabilities for k = 0..n. */
function binomial(n: number, q: number): Float64Array {
  const out = new Float64Array(n + 1);
  if (q <= 0) out[0] = 1;
  else if (q >= 1) out[n] = 1;
  else {
    const lq = Math.log(q);
    const lr = Math.log1p(-q);
    for (let k = 0; k <= n; k++) out[k] = Math.exp(logFactorial(n) - logFactorial(k) - logFactorial(n - k) + k * lq + (n - k) * lr);
  }
  return out;
}

function checkLoss(loss: number): void {
  if (!(loss >= 0 && loss < 1)) throw new RangeError(`loss rate ${loss} is not in [0, 1)`);
}

/** Probability that `coded` fresh parity fragments of an M-fragment session, over a link losing `loss`, resolve `unknown` fragments. */
export function repairProbability(m: number, unknown: number, coded: number, loss: number): number {
  checkLoss(loss);
  const got = binomial(coded, 1 - loss);
  const cdf = rankCdf(unknown, rowDensity(m), coded);
  let p = 0;
  for (let c = unknown; c <= coded; c++) p += got[c] * cdf[c];
  return Math.min(1, p);
}

/** Probability that M uncoded then `coded` parity fragments over a link losing `loss` decode the block. */
export function decodeProbability(m: number, coded: number, loss: number): number {
  checkLoss(loss);
  const lost = binomial(m, loss);
  const got = binomial(coded, 1 - loss);
  const q = rowDensity(m);
  let p = 0;
  for (let l = 0; l <= m; l++) {
    if (lost[l] < 1e-15) continue;
    const cdf = rankCdf(l, q, coded);
    let inner = 0;
    for (let c = l; c <= coded; c++) inner += got[c] * cdf[c];
    p += lost[l] * inner;
  }
  return Math.min(1, p);
}

/** Smallest n in [lo, hi] with ok(n), for a monotone predicate; hi + 1 when none. */
function smallest(lo: number, hi: number, ok: (n: number) => boolean): number {
  let a = lo;
  let b = hi + 1;
  while (a < b) {
    const mid = (a + b) >> 1;
    if (ok(mid)) b = mid;
    else a = mid + 1;
  }
  return a;
}

/**
 * TS004 rows are phases of one LFSR sequence, not independent draws; against the real decoder the model is up
 * to ~1.5 pp optimistic near M = 100 (test/lora-redundancy.test.ts). Choosers therefore aim at half the
 * failure probability asked for.
 */
const MODEL_SAFETY = 2;

/** Checks a target decode probability and returns the one the model is asked for. */
function checkTarget(target: number): number {
  if (!(target > 0 && target < 1)) throw new RangeError(`target probability ${target} is not in (0, 1)`);
  return 1 - (1 - target) / MODEL_SAFETY;
}

/** Coded fragments to send after the M uncoded ones so the block decodes with probability ≥ target. */
export function chooseRedundancy(m: number, loss: number, target = 0.99): number {
  const aim = checkTarget(target);
  if (!Number.isInteger(m) || m < 1 || m > MAX_FRAGMENT_COUNTER) throw new RangeError(`M ${m} is not 1..${MAX_FRAGMENT_COUNTER}`);
  const room = MAX_FRAGMENT_COUNTER - m;
  const r = smallest(0, room, (coded) => decodeProbability(m, coded, loss) >= aim);
  if (r > room) throw new RangeError(`M = ${m} at ${loss * 100} % loss cannot reach ${target} within ${MAX_FRAGMENT_COUNTER} fragment counters`);
  return r;
}

/** Fresh coded fragments to send so `unknown` missing fragments are resolved with probability ≥ target. */
export function chooseRepairCount(m: number, unknown: number, loss: number, target = 0.99): number {
  const aim = checkTarget(target);
  if (!Number.isInteger(unknown) || unknown < 0) throw new RangeError(`missing count ${unknown} is not a count`);
  if (unknown === 0) return 0;
  const hi = MAX_FRAGMENT_COUNTER;
  const n = smallest(unknown, hi, (coded) => repairProbability(m, unknown, coded, loss) >= aim);
  if (n > hi) throw new RangeError(`${unknown} missing at ${loss * 100} % loss cannot reach ${target}`);
  return n;
}

export interface RepairRequest {
  /** M of the session. */
  m: number;
  /** Per node, the 0-based indices of its still-unknown data fragments (one node: unicast). */
  missingByNode: readonly (readonly number[])[];
  /** First counter not yet sent (> M): LoRaMac-node drops counters lower than the last it saw. */
  nextCounter: number;
  loss: number;
  target?: number;
}

export interface RepairPlan {
  /** Counters (N) of the coded fragments to send, ascending. */
  counters: number[];
  /** Counters skipped because their parity row touched no node's unknown fragments usefully. */
  skipped: number;
}

/**
 * Picks fresh coded fragments for a repair round. Each node needs as many fragments as chooseRepairCount gives
 * for its missing count, and at least rows of full rank over its unknown fragments. Rows are picked in counter
 * order, taking a row only when it raises the rank of some node short of full rank or touches a full-rank node
 * still wanting margin against loss. A row no node can use costs a counter, never airtime.
 */
export function planRepair(req: RepairRequest): RepairPlan {
  const { m, nextCounter, loss } = req;
  const target = req.target ?? 0.99;
  if (!Number.isInteger(nextCounter) || nextCounter <= m) throw new RangeError(`next counter ${nextCounter} is not above M = ${m}`);
  const nodes = req.missingByNode.map((missing) => {
    for (const i of missing) if (!Number.isInteger(i) || i < 0 || i >= m) throw new RangeError(`missing fragment ${i} is not 0..${m - 1}`);
    const columns = new Map<number, number>([...new Set(missing)].map((i, k) => [i, k]));
    // Without loss the greedily picked independent rows are a basis by construction: exactly ℓ suffice.
    const want = loss === 0 ? columns.size : chooseRepairCount(m, columns.size, loss, target);
    return { columns, want, taken: 0, basis: new Map<number, bigint>() };
  });
  const counters: number[] = [];
  let skipped = 0;
  const needs = (x: (typeof nodes)[number]) => x.basis.size < x.columns.size || x.taken < x.want;
  for (let n = nextCounter; nodes.some(needs); n++) {
    if (n > MAX_FRAGMENT_COUNTER) throw new RangeError(`repair needs counters past ${MAX_FRAGMENT_COUNTER}: start a new session`);
    const line = matrixLine(n - m, m);
    const restricted = nodes.map((node) => {
      let v = 0n;
      for (const i of line) {
        const k = node.columns.get(i);
        if (k !== undefined) v |= 1n << BigInt(k);
      }
      return v;
    });
    // Useful: it raises the rank of a node short of full rank, or gives margin to a full-rank node wanting more.
    let useful = false;
    nodes.forEach((node, k) => {
      const v = restricted[k];
      if (v === 0n || !needs(node)) return;
      if (node.basis.size < node.columns.size ? independent(node.basis, v) : true) useful = true;
    });
    if (!useful) {
      skipped++;
      continue;
    }
    counters.push(n);
    nodes.forEach((node, k) => {
      if (restricted[k] === 0n) return;
      node.taken++;
      if (node.basis.size < node.columns.size) addToBasis(node.basis, restricted[k]);
    });
  }
  return { counters, skipped };
}

function independent(basis: ReadonlyMap<number, bigint>, v: bigint): boolean {
  while (v !== 0n) {
    const b = basis.get(v.toString(2).length - 1);
    if (b === undefined) return true;
    v ^= b;
  }
  return false;
}

/** GF(2) basis keyed by highest bit; true when v was independent and added. */
function addToBasis(basis: Map<number, bigint>, v: bigint): boolean {
  while (v !== 0n) {
    const top = v.toString(2).length - 1;
    const b = basis.get(top);
    if (b === undefined) {
      basis.set(top, v);
      return true;
    }
    v ^= b;
  }
  return false;
}
