import { suffixArray } from './suffix-array.js';

/**
 * One step of a patch, in the order the applier executes it: `copyLen` bytes made from the old
 * image at the current old position plus a difference byte each ("diff" bytes, mostly zero when
 * code merely moved), then `extraLen` bytes that are new ("extra" bytes, sent literally), then the
 * old position moves by `seek` (may be negative).
 */
export interface Step {
  copyLen: number;
  extraLen: number;
  seek: number;
  /** Where the copy reads in the old image (informational: the applier tracks it via seek). */
  oldPos: number;
}

/** Longest exact match of target[from..] in old, found by binary search of old's suffix array. */
export class MatchFinder {
  private readonly sa: Int32Array;
  constructor(private readonly old: Uint8Array) {
    this.sa = suffixArray(old);
  }

  /** Length of the common prefix of old[a..] and target[b..], starting the count at `skip`. */
  private common(a: number, target: Uint8Array, b: number, skip: number): number {
    const old = this.old;
    let k = skip;
    const max = Math.min(old.length - a, target.length - b);
    while (k < max && old[a + k] === target[b + k]) k++;
    return k;
  }

  /** SA index of the last longest() answer. */
  private lastIndex = 0;

  /**
   * Among the old positions that share the last longest() answer's `len` bytes with target[from..]
   * (neighbours in the suffix array, at most `max` on each side), the one `score` rates highest.
   */
  bestTie(target: Uint8Array, from: number, len: number, max: number, score: (pos: number) => number): number {
    const sa = this.sa;
    let best = sa[this.lastIndex];
    let bestScore = score(best);
    for (const dir of [-1, 1]) {
      for (let k = 1; k <= max; k++) {
        const i = this.lastIndex + dir * k;
        if (i < 0 || i >= sa.length) break;
        const a = sa[i];
        if (a + len > this.old.length) break;
        let same = true;
        for (let j = 0; j < len; j++) {
          if (this.old[a + j] !== target[from + j]) {
            same = false;
            break;
          }
        }
        if (!same) break;
        const sc = score(a);
        if (sc > bestScore) {
          bestScore = sc;
          best = a;
        }
      }
    }
    return best;
  }

  longest(target: Uint8Array, from: number): { pos: number; len: number } {
    const sa = this.sa;
    const old = this.old;
    if (sa.length === 0) return { pos: 0, len: 0 };
    let lo = 0;
    let hi = sa.length - 1;
    // Common-prefix lengths with the bounds: every suffix between them shares at least the smaller.
    let loLen = this.common(sa[lo], target, from, 0);
    let hiLen = this.common(sa[hi], target, from, 0);
    while (hi - lo > 1) {
      const mid = (lo + hi) >>> 1;
      const k = this.common(sa[mid], target, from, Math.min(loLen, hiLen));
      const a = sa[mid] + k;
      const b = from + k;
      // old suffix shorter than or smaller than the target's: target sorts after it.
      const oldSmaller = a >= old.length || (b < target.length && old[a] < target[b]);
      if (oldSmaller) {
        lo = mid;
        loLen = k;
      } else {
        hi = mid;
        hiLen = k;
      }
    }
    this.lastIndex = loLen >= hiLen ? lo : hi;
    return loLen >= hiLen ? { pos: sa[lo], len: loLen } : { pos: sa[hi], len: hiLen };
  }
}

export interface MatchOptions {
  /** A new exact match replaces the running alignment only if it beats it by more than this. */
  minGain?: number;
  /** Threshold instead of minGain when the new match is within nearRange of the running alignment. */
  minGainNear?: number;
  nearRange?: number;
  /** Threshold when the new match returns to the alignment before the running one. */
  minGainRepeat?: number;
  /** Equal-length matches compared per position (each side in the suffix array), look-ahead and jump weight. */
  maxTies?: number;
  /** A copy is extended over bytes while agreements × extendWeight outnumber the bytes (bsdiff: 2). */
  extendWeight?: number;
  tieLook?: number;
  tieJump?: number;
  /** How many recent alignments count as "near" (1 = only the running one). */
  recentCount?: number;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Splits `target` into steps against `old` with the approximate-match scheme of bsdiff (Colin
 * Percival, "Naive differences of executable code", 2003): follow exact suffix-array matches, but
 * keep an alignment going while it still agrees on most bytes, because code that merely moved
 * differs from the old copy only in a few displaced addresses, and those differences compress well.
 */
export function findSteps(old: Uint8Array, target: Uint8Array, opts: MatchOptions = {}, finder: MatchFinder = new MatchFinder(old)): Step[] {
  // Measured on the ESP8266 pair with separate streams: a far jump costs ~3 control bytes, so it must
  // beat the running alignment by more than 7 bytes; a match within 256 bytes of one of the last 4
  // alignments costs about one byte and needs only 3, as does a return to the previous alignment.
  // (bsdiff uses 8 everywhere, for bzip2.) Within ±200 B of the best on that pair over 6..8 / 2..4 /
  // 64..512: these are tuned, not derived.
  const minGain = opts.minGain ?? 7;
  const minGainNear = opts.minGainNear ?? 3;
  const nearRange = opts.nearRange ?? 256;
  const minGainRepeat = opts.minGainRepeat ?? 3;
  const recentCount = opts.recentCount ?? 4;
  // Alignments of the last steps, most recent first (the patch can jump near any of 4 cheaply).
  const recent = [0, 0, 0, 0];
  const threshold = (offset: number): number => {
    if (offset === recent[1]) return minGainRepeat;
    for (let k = 0; k < recentCount; k++) if (Math.abs(offset - (k === 0 ? lastOffset : recent[k])) <= nearRange) return minGainNear;
    return minGain;
  };
  const maxTies = opts.maxTies ?? 16;
  const extendWeight = opts.extendWeight ?? 4;
  const tieLook = opts.tieLook ?? 32;
  const tieJump = opts.tieJump ?? 2;
  /** How good a copy from old[p..] for target[at..] is: agreement after the exact part, minus jump cost. */
  const tieScore = (p: number, at: number, len: number): number => {
    let agree = 0;
    const end = Math.min(tieLook, oldLen - p - len, newLen - at - len);
    for (let k = 0; k < end; k++) if (old[p + len + k] === target[at + len + k]) agree++;
    const off = p - at;
    let jump = 3;
    if (off === lastOffset) jump = 0;
    else {
      for (let k = 0; k < recentCount; k++) if (Math.abs(off - (k === 0 ? lastOffset : recent[k])) <= nearRange) jump = 1;
    }
    return agree - tieJump * jump;
  };
  const steps: Step[] = [];
  const oldLen = old.length;
  const newLen = target.length;
  const agrees = (newIdx: number, offset: number): boolean => {
    const o = newIdx + offset;
    return o >= 0 && o < oldLen && old[o] === target[newIdx];
  };

  let scan = 0;
  let len = 0;
  let pos = 0;
  let lastScan = 0; // start in new of the pending copy
  let lastPos = 0; // start in old of the pending copy
  let lastOffset = 0; // old - new displacement of the running alignment
  let nextReport = 0;

  while (scan < newLen) {
    let alignedScore = 0; // bytes of the candidate match the running alignment gets right anyway
    scan += len;
    let counted = scan;
    while (scan < newLen) {
      ({ pos, len } = finder.longest(target, scan));
      if (len >= 4 && maxTies > 0) pos = finder.bestTie(target, scan, len, maxTies, (p) => tieScore(p, scan, len));
      for (; counted < scan + len; counted++) if (agrees(counted, lastOffset)) alignedScore++;
      // Either the match is just the running alignment continuing, or clearly better than it.
      if ((len === alignedScore && len !== 0) || len > alignedScore + threshold(pos - scan)) break;
      if (agrees(scan, lastOffset)) alignedScore--;
      scan++;
    }
    if (opts.onProgress && scan >= nextReport) {
      opts.onProgress(Math.min(scan, newLen), newLen);
      nextReport = scan + 65536;
    }
    if (len === alignedScore && scan !== newLen) continue;

    // Extend the pending alignment forward while it is right more often than not.
    let fwd = 0;
    {
      let good = 0;
      let best = 0;
      for (let i = 0; lastScan + i < scan && lastPos + i < oldLen; ) {
        if (old[lastPos + i] === target[lastScan + i]) good++;
        i++;
        if (good * extendWeight - i > best * extendWeight - fwd) {
          best = good;
          fwd = i;
        }
      }
    }
    // Extend the new match backward the same way.
    let back = 0;
    if (scan < newLen) {
      let good = 0;
      let best = 0;
      for (let i = 1; scan >= lastScan + i && pos >= i; i++) {
        if (old[pos - i] === target[scan - i]) good++;
        if (good * extendWeight - i > best * extendWeight - back) {
          best = good;
          back = i;
        }
      }
    }
    // If the two extensions overlap, split the overlap where it favours whichever agrees more.
    if (lastScan + fwd > scan - back) {
      const overlap = lastScan + fwd - (scan - back);
      let score = 0;
      let bestScore = 0;
      let split = 0;
      for (let i = 0; i < overlap; i++) {
        if (target[lastScan + fwd - overlap + i] === old[lastPos + fwd - overlap + i]) score++;
        if (target[scan - back + i] === old[pos - back + i]) score--;
        if (score > bestScore) {
          bestScore = score;
          split = i + 1;
        }
      }
      fwd += split - overlap;
      back -= split;
    }

    steps.push({
      copyLen: fwd,
      extraLen: scan - back - (lastScan + fwd),
      seek: pos - back - (lastPos + fwd),
      oldPos: lastPos,
    });
    lastScan = scan - back;
    lastPos = pos - back;
    lastOffset = pos - scan;
    recent.unshift(lastOffset);
    recent.length = 4;
  }
  opts.onProgress?.(newLen, newLen);
  return steps;
}
