/**
 * TS004 (Fragmented Data Block Transport v1.0.0, appendix "FEC") forward error correction, written from the
 * spec's pseudo-code. Coded fragment N (1-based) is data fragment N for N ≤ M ("uncoded"); for N > M it is
 * the XOR of the data fragments selected by matrixLine(N − M, M). LoRaMac-node's FragDecoder, ChirpStack's
 * lrwn and brocaar/lorawan seed the line with n = N − M, and so does this module (the spec's prose example
 * disagrees with every implementation; see docs/lora.md).
 */

/** The spec's 23-bit pseudo-random binary sequence step. */
export function prbs23(x: number): number {
  const b0 = x & 1;
  const b1 = (x & 32) >> 5;
  return (x >>> 1) + ((b0 ^ b1) << 22);
}

function isPowerOfTwo(m: number): boolean {
  return m > 0 && (m & (m - 1)) === 0;
}

/**
 * Parity row n (n ≥ 1) for a block of m fragments: the 0-based indices of the data fragments XORed into it,
 * ascending. The spec draws m/2 positions (duplicates collapse), so a row has at most ⌊m/2⌋ members.
 */
export function matrixLine(n: number, m: number): number[] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`parity row ${n} is not ≥ 1`);
  if (!Number.isInteger(m) || m < 1) throw new RangeError(`fragment count ${m} is not ≥ 1`);
  const mm = isPowerOfTwo(m) ? 1 : 0;
  let x = 1 + 1001 * n;
  const chosen = new Uint8Array(m);
  for (let k = 0; k < m >> 1; k++) {
    let r = 1 << 16;
    while (r >= m) {
      x = prbs23(x);
      r = x % (m + mm);
    }
    chosen[r] = 1;
  }
  const out: number[] = [];
  for (let i = 0; i < m; i++) if (chosen[i]) out.push(i);
  return out;
}

/** Indices (0-based) of the data fragments that coded fragment `counter` (1-based N) combines. */
export function codedRow(counter: number, m: number): number[] {
  if (!Number.isInteger(counter) || counter < 1) throw new RangeError(`fragment counter ${counter} is not ≥ 1`);
  return counter <= m ? [counter - 1] : matrixLine(counter - m, m);
}

export interface FragmentedBlock {
  fragments: Uint8Array[];
  fragSize: number;
  /** Zero bytes appended to the last fragment (announced in FragSessionSetupReq.Padding). */
  padding: number;
}

/** Splits a data block into M fragments of `fragSize`, zero-padding the last (as chirpstack-fuota-server does). */
export function fragmentBlock(block: Uint8Array, fragSize: number): FragmentedBlock {
  if (!Number.isInteger(fragSize) || fragSize < 1 || fragSize > 255) throw new RangeError(`fragment size ${fragSize} is not 1..255`);
  if (block.length === 0) throw new RangeError('data block is empty');
  const m = Math.ceil(block.length / fragSize);
  const fragments: Uint8Array[] = [];
  for (let i = 0; i < m; i++) {
    const f = new Uint8Array(fragSize);
    f.set(block.subarray(i * fragSize, (i + 1) * fragSize));
    fragments.push(f);
  }
  return { fragments, fragSize, padding: m * fragSize - block.length };
}

/**
 * The fragment size for a block: the largest the data rate allows, but small enough for at least `minFragments`
 * fragments (TS004 parity rows draw ⌊M/2⌋ fragments: with M = 1 a coded fragment is empty, with M = 2 or 3 it
 * repairs poorly). Never below 8 bytes.
 */
export function blockFragmentSize(blockBytes: number, maxFragSize: number, minFragments = 4): number {
  return Math.max(Math.min(8, maxFragSize), Math.min(maxFragSize, Math.ceil(blockBytes / minFragments)));
}

/** The payload of coded fragment `counter` (1-based N) over the M data fragments. */
export function codedFragment(fragments: readonly Uint8Array[], counter: number): Uint8Array {
  const m = fragments.length;
  const out = new Uint8Array(fragments[0]?.length ?? 0);
  for (const i of codedRow(counter, m)) xorInto(out, fragments[i]);
  return out;
}

export function xorInto(target: Uint8Array, source: Uint8Array): void {
  for (let i = 0; i < target.length; i++) target[i] ^= source[i];
}

/**
 * The spec's decoder RAM on top of the data block when it must tolerate L lost fragments among the first M
 * (TS004 appendix, "Parity matrix memory = L·(L+1)/2/8 + 2·L" octets). A node model refuses a session
 * (FragSessionSetupAns "not enough memory") when this exceeds its budget.
 */
export function specDecoderRamBytes(maxLost: number): number {
  if (!Number.isInteger(maxLost) || maxLost < 0) throw new RangeError(`tolerated losses ${maxLost} is not a count`);
  return Math.ceil((maxLost * (maxLost + 1)) / 16) + 2 * maxLost;
}
