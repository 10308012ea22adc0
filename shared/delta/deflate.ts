/**
 * A raw DEFLATE (RFC 1951) encoder that spends creation time for size: every match the window
 * allows is considered at every position (a shortest-path parse under a bit-cost model that is
 * re-estimated from its own output a few times), and block boundaries are chosen by merging small
 * blocks while that makes the total smaller. The output is ordinary DEFLATE: any decoder with a
 * 2^windowBits window (uzlib in MicroPython, zlib, ferry's own) reads it. Written for ferry's delta
 * streams, where zlib -9's greedy/lazy parse and fixed block lengths leave 3–6 % on the table.
 */

const MIN_MATCH = 3;
const MAX_MATCH = 258;
/** Hash-chain links followed per position when collecting match candidates. */
const MAX_CHAIN = 96;
/** Chain A links followed at positions inside runs, and chain B links (see findMatches). */
const RUN_CHAIN_A = 16;
const MAX_CHAIN_B = 256;
const RUN_MIN = 3;
const MAX_PREFIX = 0;
/** Shortest-path iterations over the whole stream, then per block. */
const GLOBAL_ITERATIONS = 3;
const BLOCK_ITERATIONS = 4;
/** Symbols per initial block before merging. */
const SPLIT_CHUNK = 256;

const LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
const DIST_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
const CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/** length 3..258 -> length symbol index 0..28 */
const LENGTH_SYM = new Uint8Array(MAX_MATCH + 1);
for (let i = 0; i < 29; i++) {
  const top = i === 28 ? 258 : LENGTH_BASE[i] + (1 << LENGTH_EXTRA[i]) - 1;
  for (let l = LENGTH_BASE[i]; l <= top && l <= MAX_MATCH; l++) LENGTH_SYM[l] = i;
}
LENGTH_SYM[258] = 28;

function distSym(d: number): number {
  let lo = 0;
  let hi = 29;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (DIST_BASE[mid] <= d) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** Huffman code lengths for `freq`, none longer than `limit`; every code has ≥ 2 used symbols. */
export function codeLengths(freqIn: ArrayLike<number>, limit: number): Uint8Array {
  const n = freqIn.length;
  const freq = Array.from(freqIn, (f) => f);
  let used = freq.filter((f) => f > 0).length;
  for (let i = 0; used < 2 && i < n; i++) {
    if (freq[i] === 0) {
      freq[i] = 1;
      used++;
    }
  }
  for (;;) {
    const lengths = huffman(freq);
    let max = 0;
    for (const l of lengths) if (l > max) max = l;
    if (max <= limit) return lengths;
    for (let i = 0; i < n; i++) if (freq[i] > 0) freq[i] = Math.max(1, freq[i] >> 1);
  }
}

function huffman(freq: number[]): Uint8Array {
  const n = freq.length;
  const lengths = new Uint8Array(n);
  // nodes: leaves 0..n-1, internal n..; simple O(k log k) with a sorted queue pair
  const leaves = [];
  for (let i = 0; i < n; i++) if (freq[i] > 0) leaves.push(i);
  leaves.sort((a, b) => freq[a] - freq[b] || a - b);
  const weight: number[] = [];
  const parent: number[] = [];
  for (const i of leaves) {
    weight.push(freq[i]);
    parent.push(-1);
  }
  const k = leaves.length;
  let li = 0;
  const internal: number[] = [];
  let ii = 0;
  const take = (): number => {
    if (li < k && (ii >= internal.length || weight[li] <= weight[internal[ii]])) return li++;
    return internal[ii++];
  };
  for (let m = 0; m < k - 1; m++) {
    const a = take();
    const b = take();
    const node = weight.length;
    weight.push(weight[a] + weight[b]);
    parent.push(-1);
    parent[a] = node;
    parent[b] = node;
    internal.push(node);
  }
  const depth = new Array<number>(weight.length).fill(0);
  for (let x = weight.length - 2; x >= 0; x--) depth[x] = depth[parent[x]] + 1;
  for (let j = 0; j < k; j++) lengths[leaves[j]] = depth[j];
  return lengths;
}

/** Run-length coded code lengths of a dynamic block header (RFC 1951 §3.2.7). */
function rleLengths(lengths: Uint8Array): { syms: number[]; extra: number[] } {
  const syms: number[] = [];
  const extra: number[] = [];
  let i = 0;
  while (i < lengths.length) {
    const v = lengths[i];
    let run = 1;
    while (i + run < lengths.length && lengths[i + run] === v) run++;
    if (v === 0 && run >= 3) {
      const r = Math.min(run, 138);
      if (r >= 11) {
        syms.push(18);
        extra.push(r - 11);
      } else {
        syms.push(17);
        extra.push(r - 3);
      }
      i += r;
      continue;
    }
    syms.push(v);
    extra.push(0);
    i++;
    run--;
    while (run >= 3) {
      const r = Math.min(run, 6);
      syms.push(16);
      extra.push(r - 3);
      i += r;
      run -= r;
    }
  }
  return { syms, extra };
}

interface Tables {
  lit: Uint8Array;
  dist: Uint8Array;
  /** header bits for a dynamic block, 0 for fixed */
  headerBits: number;
  fixed: boolean;
  /** prepared header pieces */
  hlit: number;
  hdist: number;
  hclen: number;
  clLengths: Uint8Array;
  rle: { syms: number[]; extra: number[] };
}

const FIXED_LIT = new Uint8Array(288);
FIXED_LIT.fill(8, 0, 144);
FIXED_LIT.fill(9, 144, 256);
FIXED_LIT.fill(7, 256, 280);
FIXED_LIT.fill(8, 280, 288);
const FIXED_DIST = new Uint8Array(30).fill(5);

function dynamicTables(litFreq: ArrayLike<number>, distFreq: ArrayLike<number>): Tables {
  const lf = Array.from(litFreq);
  lf[256] = Math.max(1, lf[256]);
  const lit = codeLengths(lf.slice(0, 286), 15);
  const dist = codeLengths(Array.from(distFreq).slice(0, 30), 15);
  let hlit = 286;
  while (hlit > 257 && lit[hlit - 1] === 0) hlit--;
  let hdist = 30;
  while (hdist > 1 && dist[hdist - 1] === 0) hdist--;
  const all = new Uint8Array(hlit + hdist);
  all.set(lit.subarray(0, hlit), 0);
  all.set(dist.subarray(0, hdist), hlit);
  const rle = rleLengths(all);
  const clFreq = new Array<number>(19).fill(0);
  for (const s of rle.syms) clFreq[s]++;
  const clLengths = codeLengths(clFreq, 7);
  let hclen = 19;
  while (hclen > 4 && clLengths[CODE_LENGTH_ORDER[hclen - 1]] === 0) hclen--;
  let bits = 5 + 5 + 4 + 3 * hclen;
  for (let j = 0; j < rle.syms.length; j++) {
    const s = rle.syms[j];
    bits += clLengths[s] + (s === 16 ? 2 : s === 17 ? 3 : s === 18 ? 7 : 0);
  }
  return { lit, dist, headerBits: bits, fixed: false, hlit, hdist, hclen, clLengths, rle };
}

/** Bits of a block's symbols under given tables (without the 3-bit block header). */
function dataBits(t: { lit: Uint8Array; dist: Uint8Array }, litFreq: ArrayLike<number>, distFreq: ArrayLike<number>): number {
  let bits = 0;
  for (let s = 0; s < 286; s++) {
    const f = litFreq[s];
    if (!f) continue;
    bits += f * (t.lit[s] + (s > 256 ? LENGTH_EXTRA[s - 257] : 0));
  }
  for (let s = 0; s < 30; s++) {
    const f = distFreq[s];
    if (f) bits += f * (t.dist[s] + DIST_EXTRA[s]);
  }
  return bits;
}

/** The cheaper of a dynamic and the fixed encoding of a block with these symbol counts. */
function bestTables(litFreq: ArrayLike<number>, distFreq: ArrayLike<number>): { tables: Tables; bits: number } {
  const dyn = dynamicTables(litFreq, distFreq);
  const dynBits = 3 + dyn.headerBits + dataBits(dyn, litFreq, distFreq);
  const fixBits = 3 + dataBits({ lit: FIXED_LIT, dist: FIXED_DIST }, litFreq, distFreq);
  if (fixBits < dynBits) {
    return { tables: { lit: FIXED_LIT, dist: FIXED_DIST, headerBits: 0, fixed: true, hlit: 0, hdist: 0, hclen: 0, clLengths: new Uint8Array(0), rle: { syms: [], extra: [] } }, bits: fixBits };
  }
  return { tables: dyn, bits: dynBits };
}

/** Match candidates per position: pairs (length, distance) with strictly growing length. */
interface Matches {
  start: Int32Array; // index into len/dist for position i; start[i+1] ends it
  len: Uint16Array;
  dist: Uint16Array;
}

function findMatches(data: Uint8Array, windowSize: number): Matches {
  const n = data.length;
  const HASH_BITS = 16;
  const mask = (1 << HASH_BITS) - 1;
  // Chain A: every position, keyed by its first 3 bytes. Chain B: positions at which a run of at
  // least RUN_MIN equal bytes starts or continues, keyed by the byte, the run's remaining length
  // and the 2 bytes after it; in data made mostly of zero runs (diff bytes) chain A is clogged with
  // run positions, while chain B leads straight to the few places where the same run ends the
  // same way.
  const headA = new Int32Array(1 << HASH_BITS).fill(-1);
  const prevA = new Int32Array(n);
  const headB = new Int32Array(1 << HASH_BITS).fill(-1);
  const prevB = new Int32Array(n);
  const run = new Int32Array(n + 1);
  for (let i = n - 1; i >= 0; i--) run[i] = i + 1 < n && data[i + 1] === data[i] ? run[i + 1] + 1 : 1;
  const start = new Int32Array(n + 1);
  let cap = n * 2 + 16;
  let len = new Uint16Array(cap);
  let dist = new Uint16Array(cap);
  let count = 0;
  const candLen: number[] = [];
  const candDist: number[] = [];
  const hashA = (i: number): number => ((data[i] << 10) ^ (data[i + 1] << 5) ^ data[i + 2]) & mask;
  /** Key of position i whose first run of ≥ RUN_MIN equal bytes starts at i + pre and has length r. */
  const keyB = (i: number, pre: number, r: number): number => {
    let h = Math.imul(pre * 0x10000 + r, 0x9e3779b1);
    for (let k = 0; k <= pre; k++) h = Math.imul(h ^ data[i + k], 0x85ebca6b);
    h ^= (data[i + pre + r] << 8) ^ data[i + pre + r + 1];
    return Math.imul(h, 0xc2b2ae35) >>> (32 - HASH_BITS);
  };
  const push = (l: number, d: number): void => {
    candLen.push(l);
    candDist.push(d);
  };
  for (let i = 0; i < n; i++) {
    start[i] = count;
    if (i + MIN_MATCH > n) continue;
    const maxLen = Math.min(MAX_MATCH, n - i);
    // The first run of at least RUN_MIN equal bytes at i, i + 1 or i + 2, if any.
    let pre = 0;
    while (pre <= MAX_PREFIX && i + pre < n && run[i + pre] < RUN_MIN) pre++;
    const r = pre <= MAX_PREFIX && i + pre < n ? run[i + pre] : 0;
    candLen.length = 0;
    candDist.length = 0;
    const h = hashA(i);
    let best = MIN_MATCH - 1;
    let chain = r >= RUN_MIN && pre === 0 ? RUN_CHAIN_A : MAX_CHAIN;
    for (let j = headA[h]; j >= 0 && chain-- > 0; j = prevA[j]) {
      const d = i - j;
      if (d > windowSize) break;
      if (data[j + best] !== data[i + best]) continue;
      let l = 0;
      while (l < maxLen && data[j + l] === data[i + l]) l++;
      if (l > best) {
        push(l, d);
        best = l;
        if (l === maxLen) break;
      }
    }
    const useB = r >= RUN_MIN && pre + r < MAX_MATCH && i + pre + r + 2 <= n;
    const k = useB ? keyB(i, pre, r) : 0;
    if (useB && best < maxLen) {
      let chainB = MAX_CHAIN_B;
      let bestB = best;
      for (let j = headB[k]; j >= 0 && chainB-- > 0; j = prevB[j]) {
        const d = i - j;
        if (d > windowSize) break;
        if (run[j + pre] !== r || data[j] !== data[i]) continue;
        if (data[j + bestB] !== data[i + bestB]) continue;
        let l = 0;
        while (l < maxLen && data[j + l] === data[i + l]) l++;
        if (l > bestB) {
          push(l, d);
          bestB = l;
          if (l === maxLen) break;
        }
      }
    }
    if (useB) {
      prevB[i] = headB[k];
      headB[k] = i;
    }
    prevA[i] = headA[h];
    headA[h] = i;
    // Keep the candidates that are longer than every nearer one.
    if (candLen.length > 1) {
      const order = candDist.map((_, x) => x).sort((x, y) => candDist[x] - candDist[y]);
      const l2 = order.map((x) => candLen[x]);
      const d2 = order.map((x) => candDist[x]);
      candLen.length = 0;
      candDist.length = 0;
      let top = MIN_MATCH - 1;
      for (let x = 0; x < l2.length; x++) {
        if (l2[x] > top) {
          candLen.push(l2[x]);
          candDist.push(d2[x]);
          top = l2[x];
        }
      }
    }
    if (count + candLen.length > cap) {
      cap = cap * 2 + candLen.length;
      const nl = new Uint16Array(cap);
      nl.set(len);
      len = nl;
      const nd = new Uint16Array(cap);
      nd.set(dist);
      dist = nd;
    }
    for (let x = 0; x < candLen.length; x++) {
      len[count] = candLen[x];
      dist[count] = candDist[x];
      count++;
    }
  }
  start[n] = count;
  return { start, len, dist };
}

interface Costs {
  lit: Float64Array; // 286 symbols, bits
  lenCost: Float64Array; // by length 0..258, bits incl. extra
  distCost: Float64Array; // by distance symbol, bits incl. extra
}

function costsFrom(lit: Uint8Array, dist: Uint8Array): Costs {
  const c: Costs = { lit: new Float64Array(286), lenCost: new Float64Array(MAX_MATCH + 1), distCost: new Float64Array(30) };
  for (let s = 0; s < 286; s++) c.lit[s] = lit[s] || 15;
  for (let l = MIN_MATCH; l <= MAX_MATCH; l++) {
    const ls = LENGTH_SYM[l];
    c.lenCost[l] = c.lit[257 + ls] + LENGTH_EXTRA[ls];
  }
  for (let s = 0; s < 30; s++) c.distCost[s] = (dist[s] || 15) + DIST_EXTRA[s];
  return c;
}

/** Estimated code lengths (fractional bits) from symbol counts, for the next parse. */
function costsFromCounts(litFreq: ArrayLike<number>, distFreq: ArrayLike<number>): Costs {
  // Fractional bits (-log2 p) rather than whole Huffman code lengths: a smoother guide for the parse.
  const c: Costs = { lit: new Float64Array(286), lenCost: new Float64Array(MAX_MATCH + 1), distCost: new Float64Array(30) };
  let lt = 0;
  for (let s = 0; s < 286; s++) lt += litFreq[s];
  let dt = 0;
  for (let s = 0; s < 30; s++) dt += distFreq[s];
  for (let s = 0; s < 286; s++) c.lit[s] = litFreq[s] ? Math.log2(lt / litFreq[s]) : Math.log2(lt) + 2;
  for (let l = MIN_MATCH; l <= MAX_MATCH; l++) {
    const ls = LENGTH_SYM[l];
    c.lenCost[l] = c.lit[257 + ls] + LENGTH_EXTRA[ls];
  }
  for (let s = 0; s < 30; s++) c.distCost[s] = (distFreq[s] ? Math.log2(dt / distFreq[s]) : Math.log2(dt + 1) + 2) + DIST_EXTRA[s];
  return c;
}

/** Parsed symbols of a range: per item either a literal (dist 0) or a match. */
interface Parse {
  len: Uint16Array; // 1 = literal
  dist: Uint16Array;
  count: number;
}

/** Shortest-path parse of data[from..to) under `costs`. */
function parseRange(data: Uint8Array, m: Matches, from: number, to: number, costs: Costs, distSymOf: Uint8Array): Parse {
  const n = to - from;
  const cost = new Float64Array(n + 1).fill(Infinity);
  const stepLen = new Uint16Array(n + 1);
  const stepDist = new Uint16Array(n + 1);
  cost[0] = 0;
  for (let i = 0; i < n; i++) {
    const c0 = cost[i];
    const p = from + i;
    const cl = c0 + costs.lit[data[p]];
    if (cl < cost[i + 1]) {
      cost[i + 1] = cl;
      stepLen[i + 1] = 1;
      stepDist[i + 1] = 0;
    }
    let prevLen = MIN_MATCH - 1;
    const e = m.start[p + 1];
    for (let k = m.start[p]; k < e; k++) {
      let L = m.len[k];
      if (L > to - p) L = to - p;
      if (L <= prevLen) continue;
      const d = m.dist[k];
      const dc = c0 + costs.distCost[distSymOf[d]];
      for (let l = prevLen + 1; l <= L; l++) {
        const c = dc + costs.lenCost[l];
        if (c < cost[i + l]) {
          cost[i + l] = c;
          stepLen[i + l] = l;
          stepDist[i + l] = d;
        }
      }
      prevLen = L;
    }
  }
  // backtrack
  let count = 0;
  for (let i = n; i > 0; i -= stepLen[i]) count++;
  const len = new Uint16Array(count);
  const dist = new Uint16Array(count);
  let k = count;
  for (let i = n; i > 0; i -= stepLen[i]) {
    k--;
    len[k] = stepLen[i];
    dist[k] = stepDist[i];
  }
  return { len, dist, count };
}

function histogram(data: Uint8Array, from: number, parse: Parse, a: number, b: number, distSymOf: Uint8Array): { lit: Int32Array; dist: Int32Array } {
  const lit = new Int32Array(286);
  const dist = new Int32Array(30);
  let p = from;
  for (let k = 0; k < a; k++) p += parse.len[k];
  for (let k = a; k < b; k++) {
    const l = parse.len[k];
    if (parse.dist[k] === 0) lit[data[p]]++;
    else {
      lit[257 + LENGTH_SYM[l]]++;
      dist[distSymOf[parse.dist[k]]]++;
    }
    p += l;
  }
  lit[256]++;
  return { lit, dist };
}

class BitWriter {
  private buf = new Uint8Array(1 << 16);
  private pos = 0;
  private bits = 0;
  private count = 0;
  write(value: number, n: number): void {
    this.bits |= value << this.count;
    this.count += n;
    while (this.count >= 8) {
      if (this.pos >= this.buf.length) {
        const b = new Uint8Array(this.buf.length * 2);
        b.set(this.buf);
        this.buf = b;
      }
      this.buf[this.pos++] = this.bits & 0xff;
      this.bits >>>= 8;
      this.count -= 8;
    }
  }
  finish(): Buffer {
    if (this.count > 0) this.write(0, 8 - this.count);
    return Buffer.from(this.buf.subarray(0, this.pos));
  }
}

/** Canonical codes, bit-reversed for LSB-first writing. */
function canonical(lengths: Uint8Array): Uint16Array {
  const counts = new Array<number>(16).fill(0);
  for (const l of lengths) if (l) counts[l]++;
  const next = new Array<number>(16).fill(0);
  let code = 0;
  for (let b = 1; b < 16; b++) {
    next[b] = code;
    code = (code + counts[b]) << 1;
  }
  const out = new Uint16Array(lengths.length);
  for (let s = 0; s < lengths.length; s++) {
    const l = lengths[s];
    if (!l) continue;
    let c = next[l]++;
    let r = 0;
    for (let k = 0; k < l; k++) {
      r = (r << 1) | (c & 1);
      c >>= 1;
    }
    out[s] = r;
  }
  return out;
}

function writeBlock(w: BitWriter, data: Uint8Array, pos: number, parse: Parse, a: number, b: number, t: Tables, last: boolean, distSymOf: Uint8Array): void {
  w.write(last ? 1 : 0, 1);
  w.write(t.fixed ? 1 : 2, 2);
  if (!t.fixed) {
    w.write(t.hlit - 257, 5);
    w.write(t.hdist - 1, 5);
    w.write(t.hclen - 4, 4);
    for (let i = 0; i < t.hclen; i++) w.write(t.clLengths[CODE_LENGTH_ORDER[i]], 3);
    const clCodes = canonical(t.clLengths);
    for (let j = 0; j < t.rle.syms.length; j++) {
      const s = t.rle.syms[j];
      w.write(clCodes[s], t.clLengths[s]);
      if (s === 16) w.write(t.rle.extra[j], 2);
      else if (s === 17) w.write(t.rle.extra[j], 3);
      else if (s === 18) w.write(t.rle.extra[j], 7);
    }
  }
  const litCodes = canonical(t.lit);
  const distCodes = canonical(t.dist);
  let p = pos;
  for (let k = a; k < b; k++) {
    const l = parse.len[k];
    const d = parse.dist[k];
    if (d === 0) w.write(litCodes[data[p]], t.lit[data[p]]);
    else {
      const ls = LENGTH_SYM[l];
      w.write(litCodes[257 + ls], t.lit[257 + ls]);
      if (LENGTH_EXTRA[ls]) w.write(l - LENGTH_BASE[ls], LENGTH_EXTRA[ls]);
      const ds = distSymOf[d];
      w.write(distCodes[ds], t.dist[ds]);
      if (DIST_EXTRA[ds]) w.write(d - DIST_BASE[ds], DIST_EXTRA[ds]);
    }
    p += l;
  }
  w.write(litCodes[256], t.lit[256]);
}

/**
 * Raw DEFLATE of `data` whose matches reach at most 2^windowBits back. Deterministic.
 */
export function deflateOptimal(data: Uint8Array, windowBits: number): Buffer {
  const windowSize = 1 << windowBits;
  const n = data.length;
  const w = new BitWriter();
  if (n === 0) {
    w.write(1, 1);
    w.write(1, 2);
    w.write(0, 7); // end of block in the fixed code
    return w.finish();
  }
  const distSymOf = new Uint8Array(windowSize + 1);
  for (let d = 1; d <= windowSize; d++) distSymOf[d] = distSym(d);
  const m = findMatches(data, windowSize);

  // 1. whole-stream parse, costs re-estimated from the previous parse
  let costs = costsFrom(FIXED_LIT, FIXED_DIST);
  let parse = parseRange(data, m, 0, n, costs, distSymOf);
  for (let it = 1; it < GLOBAL_ITERATIONS; it++) {
    const h = histogram(data, 0, parse, 0, parse.count, distSymOf);
    costs = costsFromCounts(h.lit, h.dist);
    parse = parseRange(data, m, 0, n, costs, distSymOf);
  }

  // 2. block boundaries: chunks of the parse, merged greedily while merging saves bits
  type Block = { a: number; b: number; from: number; to: number; lit: Int32Array; dist: Int32Array; bits: number };
  const blocks: Block[] = [];
  {
    let p = 0;
    for (let a = 0; a < parse.count; a += SPLIT_CHUNK) {
      const b = Math.min(parse.count, a + SPLIT_CHUNK);
      let q = p;
      for (let k = a; k < b; k++) q += parse.len[k];
      blocks.push({ a, b, from: p, to: q, lit: new Int32Array(286), dist: new Int32Array(30), bits: 0 });
      p = q;
    }
    for (const blk of blocks) {
      let pp = blk.from;
      for (let k = blk.a; k < blk.b; k++) {
        const l = parse.len[k];
        if (parse.dist[k] === 0) blk.lit[data[pp]]++;
        else {
          blk.lit[257 + LENGTH_SYM[l]]++;
          blk.dist[distSymOf[parse.dist[k]]]++;
        }
        pp += l;
      }
      blk.lit[256]++;
      blk.bits = bestTables(blk.lit, blk.dist).bits;
    }
  }
  const mergedBits = (x: Block, y: Block): number => {
    const lit = new Int32Array(286);
    const dist = new Int32Array(30);
    for (let s = 0; s < 286; s++) lit[s] = x.lit[s] + y.lit[s];
    lit[256]--;
    for (let s = 0; s < 30; s++) dist[s] = x.dist[s] + y.dist[s];
    return bestTables(lit, dist).bits;
  };
  const gain: number[] = [];
  for (let i = 0; i + 1 < blocks.length; i++) gain.push(blocks[i].bits + blocks[i + 1].bits - mergedBits(blocks[i], blocks[i + 1]));
  for (;;) {
    let best = -1;
    for (let i = 0; i < gain.length; i++) if (gain[i] > 0 && (best < 0 || gain[i] > gain[best])) best = i;
    if (best < 0) break;
    const x = blocks[best];
    const y = blocks[best + 1];
    for (let s = 0; s < 286; s++) x.lit[s] += y.lit[s];
    x.lit[256]--;
    for (let s = 0; s < 30; s++) x.dist[s] += y.dist[s];
    x.b = y.b;
    x.to = y.to;
    x.bits = bestTables(x.lit, x.dist).bits;
    blocks.splice(best + 1, 1);
    gain.splice(best, 1);
    if (best > 0) gain[best - 1] = blocks[best - 1].bits + x.bits - mergedBits(blocks[best - 1], x);
    if (best < blocks.length - 1) gain[best] = x.bits + blocks[best + 1].bits - mergedBits(x, blocks[best + 1]);
  }

  // 3. each block re-parsed under its own statistics; keep whichever parse is smaller
  for (let bi = 0; bi < blocks.length; bi++) {
    const blk = blocks[bi];
    let bestParse: Parse = { len: parse.len.subarray(blk.a, blk.b), dist: parse.dist.subarray(blk.a, blk.b), count: blk.b - blk.a };
    let bestH = { lit: blk.lit, dist: blk.dist };
    let bestFit = bestTables(bestH.lit, bestH.dist);
    for (let it = 0; it < BLOCK_ITERATIONS; it++) {
      const c = costsFromCounts(bestH.lit, bestH.dist);
      const p2 = parseRange(data, m, blk.from, blk.to, c, distSymOf);
      const h2 = histogram(data, blk.from, p2, 0, p2.count, distSymOf);
      const fit2 = bestTables(h2.lit, h2.dist);
      if (fit2.bits >= bestFit.bits) break;
      bestParse = p2;
      bestH = h2;
      bestFit = fit2;
    }
    writeBlock(w, data, blk.from, bestParse, 0, bestParse.count, bestFit.tables, bi === blocks.length - 1, distSymOf);
  }
  return w.finish();
}
