/**
 * Suffix array construction by induced sorting (SA-IS: Nong, Zhang and Chan, "Two Efficient
 * Algorithms for Linear Time Suffix Array Construction", IEEE Trans. Computers 2011).
 * Linear time, so the 600 KB firmware images sort in well under a second; a comparison sort of
 * suffixes degrades badly on the long 0xFF/0x00 runs that flash images are full of.
 */

/** Suffix array of `bytes`: the start offsets of all suffixes in lexicographic order. */
export function suffixArray(bytes: Uint8Array): Int32Array {
  const n = bytes.length;
  if (n === 0) return new Int32Array(0);
  // Shift the alphabet up by one so 0 can be the unique, smallest sentinel SA-IS needs at the end.
  const text = new Int32Array(n + 1);
  for (let i = 0; i < n; i++) text[i] = bytes[i] + 1;
  text[n] = 0;
  const sa = sais(text, 257);
  // sa[0] is the sentinel's own suffix; drop it.
  return sa.subarray(1);
}

/** Bucket boundaries per symbol: exclusive ends (end=true) or starts. */
function buckets(text: Int32Array, alphabet: number, end: boolean): Int32Array {
  const counts = new Int32Array(alphabet);
  for (let i = 0; i < text.length; i++) counts[text[i]]++;
  const out = new Int32Array(alphabet);
  let sum = 0;
  for (let c = 0; c < alphabet; c++) {
    sum += counts[c];
    out[c] = end ? sum : sum - counts[c];
  }
  return out;
}

/**
 * SA-IS over an integer text whose last symbol is a unique 0 and all others are in 1..alphabet-1.
 * Types: S-type suffix is smaller than its successor, L-type larger; LMS = S-type with an L-type left
 * neighbour. Sorting the LMS substrings (recursively if they are not yet unique) and inducing from
 * them sorts every suffix.
 */
function sais(text: Int32Array, alphabet: number): Int32Array {
  const n = text.length;
  const sa = new Int32Array(n);
  if (n === 1) return sa; // only the sentinel

  const sType = new Uint8Array(n);
  sType[n - 1] = 1;
  for (let i = n - 2; i >= 0; i--) {
    sType[i] = text[i] < text[i + 1] || (text[i] === text[i + 1] && sType[i + 1] === 1) ? 1 : 0;
  }
  const isLms = (i: number): boolean => i > 0 && sType[i] === 1 && sType[i - 1] === 0;

  const induce = (): void => {
    const starts = buckets(text, alphabet, false);
    for (let i = 0; i < n; i++) {
      const j = sa[i] - 1;
      if (sa[i] > 0 && sType[j] === 0) sa[starts[text[j]]++] = j;
    }
    const ends = buckets(text, alphabet, true);
    for (let i = n - 1; i >= 0; i--) {
      const j = sa[i] - 1;
      if (sa[i] > 0 && sType[j] === 1) sa[--ends[text[j]]] = j;
    }
  };

  // Stage 1: LMS positions at their bucket ends in any order, then induce: this sorts LMS substrings.
  sa.fill(-1);
  let ends = buckets(text, alphabet, true);
  for (let i = 1; i < n; i++) if (isLms(i)) sa[--ends[text[i]]] = i;
  induce();

  // Gather the sorted LMS positions at the front.
  let lmsCount = 0;
  for (let i = 0; i < n; i++) if (isLms(sa[i])) sa[lmsCount++] = sa[i];

  // Name each LMS substring by rank; equal substrings share a name.
  sa.fill(-1, lmsCount);
  let names = 0;
  let prev = -1;
  for (let i = 0; i < lmsCount; i++) {
    const pos = sa[i];
    let differs = prev < 0;
    for (let d = 0; !differs; d++) {
      if (text[pos + d] !== text[prev + d] || sType[pos + d] !== sType[prev + d]) differs = true;
      else if (d > 0 && (isLms(pos + d) || isLms(prev + d))) break;
    }
    if (differs) {
      names++;
      prev = pos;
    }
    // pos >> 1 is unique per LMS position because LMS positions are at least two apart.
    sa[lmsCount + (pos >> 1)] = names - 1;
  }
  const reduced = new Int32Array(lmsCount);
  for (let i = n - 1, j = lmsCount - 1; i >= lmsCount; i--) if (sa[i] >= 0) reduced[j--] = sa[i];

  // Stage 2: order of the LMS suffixes, by recursion when names repeat.
  let reducedSa: Int32Array;
  if (names < lmsCount) reducedSa = sais(reduced, names);
  else {
    reducedSa = new Int32Array(lmsCount);
    for (let i = 0; i < lmsCount; i++) reducedSa[reduced[i]] = i;
  }

  // Stage 3: place the LMS suffixes in sorted order at their bucket ends, then induce the rest.
  const lmsPositions = new Int32Array(lmsCount);
  for (let i = 1, j = 0; i < n; i++) if (isLms(i)) lmsPositions[j++] = i;
  sa.fill(-1);
  ends = buckets(text, alphabet, true);
  for (let i = lmsCount - 1; i >= 0; i--) {
    const j = lmsPositions[reducedSa[i]];
    sa[--ends[text[j]]] = j;
  }
  induce();
  return sa;
}
