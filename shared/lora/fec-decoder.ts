import { codedRow, xorInto } from './fec.js';

/**
 * Streaming TS004 decoder. Uncoded fragments go straight to the block store (on a node: flash at
 * (N−1)·FragSize); each coded fragment is reduced against what is known and Gaussian-eliminated on arrival
 * into a set of pivot rows over the still-unknown fragments only, as LoRaMac-node's FragDecoder does. The
 * block is solved by back-substitution the moment the rank equals the number of unknown fragments, so it
 * completes on exactly the first fragment that makes it decodable (all uncoded fragments suffice on their own).
 *
 * Memory beyond the block: at most `maxMissing` rows of ⌈M/32⌉·4 + FragSize bytes. Rows are kept over all M
 * columns for simplicity, where the spec's low-memory layout indexes only the L missing ones (L(L+1)/16 + 2L B).
 */

/** Where the decoded fragments live; a node would back this with flash. */
export interface FragmentStore {
  read(index: number): Uint8Array;
  write(index: number, data: Uint8Array): void;
}

export function memoryStore(m: number, fragSize: number): FragmentStore & { bytes: Uint8Array } {
  const bytes = new Uint8Array(m * fragSize);
  return {
    bytes,
    read: (i) => bytes.subarray(i * fragSize, (i + 1) * fragSize),
    write: (i, data) => bytes.set(data, i * fragSize),
  };
}

export type PushOutcome =
  | { kind: 'stored' }
  | { kind: 'complete' }
  | { kind: 'duplicate' }
  /** A coded fragment that added no information (linearly dependent on what is held). */
  | { kind: 'useless' }
  /** More fragments are unknown than the decoder may hold rows for: the spec's "not enough matrix memory". */
  | { kind: 'memoryError' }
  | { kind: 'afterComplete' }
  | { kind: 'rejected'; reason: string };

export interface DecoderOptions {
  /** M, the number of data fragments. */
  nbFrag: number;
  fragSize: number;
  /** The most unknown fragments the decoder will hold parity rows for (L). Default: M. */
  maxMissing?: number;
  store?: FragmentStore;
}

/** TS004 counters are 14 bits. */
export const MAX_FRAGMENT_COUNTER = 0x3fff;

interface Row {
  coeffs: Uint32Array;
  data: Uint8Array;
}

export class FragDecoder {
  readonly nbFrag: number;
  readonly fragSize: number;
  readonly maxMissing: number;
  readonly store: FragmentStore;
  /** Every fragment counted (uncoded, coded and repeated), as FragSessionStatusAns.NbFragReceived. */
  received = 0;
  memoryError = false;
  private readonly known: Uint8Array;
  private unknownCount: number;
  private readonly pivots: (Row | undefined)[];
  private rank = 0;
  private done = false;

  constructor(o: DecoderOptions) {
    if (!Number.isInteger(o.nbFrag) || o.nbFrag < 1 || o.nbFrag > MAX_FRAGMENT_COUNTER) throw new RangeError(`NbFrag ${o.nbFrag} is not 1..${MAX_FRAGMENT_COUNTER}`);
    if (!Number.isInteger(o.fragSize) || o.fragSize < 1 || o.fragSize > 255) throw new RangeError(`FragSize ${o.fragSize} is not 1..255`);
    this.nbFrag = o.nbFrag;
    this.fragSize = o.fragSize;
    this.maxMissing = o.maxMissing ?? o.nbFrag;
    if (!Number.isInteger(this.maxMissing) || this.maxMissing < 0) throw new RangeError(`maxMissing ${this.maxMissing} is not a count`);
    this.store = o.store ?? memoryStore(o.nbFrag, o.fragSize);
    this.known = new Uint8Array(o.nbFrag);
    this.unknownCount = o.nbFrag;
    this.pivots = new Array<Row | undefined>(o.nbFrag);
  }

  get complete(): boolean {
    return this.done;
  }

  /** Fragments still unknown: what a FragSessionStatusAns.MissingFrag would report (before clamping to 255). */
  get missingCount(): number {
    return this.done ? 0 : this.unknownCount - this.rank;
  }

  /** 0-based indices of the data fragments neither received nor solved yet (for a unicast repair bitmap). */
  unknownFragments(): number[] {
    const out: number[] = [];
    if (!this.done) for (let i = 0; i < this.nbFrag; i++) if (!this.known[i]) out.push(i);
    return out;
  }

  /** Bytes held in parity rows now (the block store not counted). */
  get matrixBytes(): number {
    return this.rank * (Math.ceil(this.nbFrag / 32) * 4 + this.fragSize);
  }

  /**
   * Resume after a node reset: the data fragments at these 0-based indices are already in the store (persisted
   * with their received bitmap). Marks them known without rewriting them; parity rows held before the reset are
   * lost, as they were only in RAM. Only valid on a fresh decoder.
   */
  restoreKnown(indices: Iterable<number>): void {
    if (this.received !== 0 || this.rank !== 0) throw new Error('restoreKnown is only valid on a fresh decoder');
    for (const j of indices) {
      if (!Number.isInteger(j) || j < 0 || j >= this.nbFrag) throw new RangeError(`fragment index ${j} is not 0..${this.nbFrag - 1}`);
      if (this.known[j]) continue;
      this.known[j] = 1;
      this.unknownCount--;
    }
    if (this.unknownCount === 0) this.done = true;
  }

  /** Whether data fragment `index` (0-based) is in the store, received or solved. */
  isKnown(index: number): boolean {
    return this.known[index] === 1;
  }

  /** Feeds one DataFragment: `counter` is its 1-based N. */
  push(counter: number, payload: Uint8Array): PushOutcome {
    if (!Number.isInteger(counter) || counter < 1 || counter > MAX_FRAGMENT_COUNTER) {
      return { kind: 'rejected', reason: `fragment counter ${counter} is not 1..${MAX_FRAGMENT_COUNTER}` };
    }
    if (payload.length !== this.fragSize) {
      return { kind: 'rejected', reason: `fragment ${counter} has ${payload.length} B, the session's FragSize is ${this.fragSize}` };
    }
    this.received++;
    if (this.done) return { kind: 'afterComplete' };
    const outcome = counter <= this.nbFrag ? this.pushUncoded(counter - 1, payload) : this.pushCoded(counter, payload);
    if (outcome.kind !== 'stored' || this.rank < this.unknownCount) return outcome;
    this.solve();
    return { kind: 'complete' };
  }

  private pushUncoded(j: number, payload: Uint8Array): PushOutcome {
    if (this.known[j]) return { kind: 'duplicate' };
    this.learn(j, payload);
    if (this.rank === 0) return { kind: 'stored' };
    const word = j >>> 5;
    const bit = 1 << (j & 31);
    const reinsert: Row[] = [];
    for (let p = 0; p <= j; p++) {
      const row = this.pivots[p];
      if (!row || (row.coeffs[word] & bit) === 0) continue;
      row.coeffs[word] ^= bit;
      xorInto(row.data, payload);
      if (p === j) {
        this.pivots[p] = undefined;
        this.rank--;
        reinsert.push(row);
      }
    }
    for (const row of reinsert) this.insert(row);
    return { kind: 'stored' };
  }

  private pushCoded(counter: number, payload: Uint8Array): PushOutcome {
    if (this.unknownCount > this.maxMissing) {
      this.memoryError = true;
      return { kind: 'memoryError' };
    }
    const row: Row = { coeffs: new Uint32Array(Math.ceil(this.nbFrag / 32)), data: Uint8Array.from(payload) };
    for (const i of codedRow(counter, this.nbFrag)) {
      if (this.known[i]) xorInto(row.data, this.store.read(i));
      else row.coeffs[i >>> 5] |= 1 << (i & 31);
    }
    return this.insert(row) ? { kind: 'stored' } : { kind: 'useless' };
  }

  /** Reduces a row against the pivots; keeps it under its lowest column. False when it reduces to nothing. */
  private insert(row: Row): boolean {
    for (;;) {
      const p = lowestBit(row.coeffs);
      if (p < 0) return false;
      const pivot = this.pivots[p];
      if (!pivot) {
        this.pivots[p] = row;
        this.rank++;
        return true;
      }
      for (let w = 0; w < row.coeffs.length; w++) row.coeffs[w] ^= pivot.coeffs[w];
      xorInto(row.data, pivot.data);
    }
  }

  private learn(j: number, data: Uint8Array): void {
    this.store.write(j, data);
    this.known[j] = 1;
    this.unknownCount--;
  }

  /** Back-substitution from the highest pivot down: each row then refers only to columns already solved. */
  private solve(): void {
    for (let p = this.nbFrag - 1; p >= 0; p--) {
      if (this.known[p]) continue;
      const row = this.pivots[p];
      if (!row) throw new Error(`decoder invariant broken: unknown fragment ${p} has no pivot row`);
      forEachBit(row.coeffs, (b) => { if (b !== p) xorInto(row.data, this.store.read(b)); });
      this.learn(p, row.data);
      this.pivots[p] = undefined;
    }
    this.rank = 0;
    this.done = true;
  }

  /** The reassembled data block without the session's padding; only once complete. */
  block(padding: number): Uint8Array {
    if (!this.done) throw new Error('data block is not decoded yet');
    const out = new Uint8Array(this.nbFrag * this.fragSize);
    for (let i = 0; i < this.nbFrag; i++) out.set(this.store.read(i), i * this.fragSize);
    return out.subarray(0, out.length - padding);
  }
}

function lowestBit(words: Uint32Array): number {
  for (let w = 0; w < words.length; w++) {
    const v = words[w];
    if (v !== 0) return w * 32 + (31 - Math.clz32(v & -v));
  }
  return -1;
}

function forEachBit(words: Uint32Array, f: (bit: number) => void): void {
  for (let w = 0; w < words.length; w++) {
    for (let v = words[w]; v !== 0; v &= v - 1) f(w * 32 + (31 - Math.clz32(v & -v)));
  }
}
