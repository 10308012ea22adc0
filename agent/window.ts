import { ChunkBitmap } from '../shared/bitmap.js';
import type { RttEstimator } from './rtt.js';

const NOT_IN_FLIGHT = -1;

/**
 * Selective-repeat sender state for one transfer. It decides which chunk goes next and which are
 * overdue; it does no I/O. Chunks go out in index order; a chunk is resent only when it is both
 * missing from the node's acks and overdue (sent longer than one RTO ago), so nothing the node has
 * acked is ever sent again.
 *
 * Congestion window: starts at the node's receive window and halves (once per RTO) on loss, never
 * below half the node's window: the node acks every window/2 chunks, so a smaller burst would only
 * be acked by the retransmission timer.
 */
export class TransferWindow {
  readonly acked: ChunkBitmap;
  private readonly sentAt: Float64Array;
  private readonly sends: Uint8Array;
  /** Chunks in send order with their send time; entries go stale when acked or resent. */
  private fifo: { index: number; at: number }[] = [];
  private fifoHead = 0;
  private cursor = 0;
  private inFlight = 0;
  private cwnd: number;
  private readonly floor: number;
  private lastCut = -Infinity;
  retransmits = 0;
  sent = 0;

  constructor(
    readonly count: number,
    readonly nodeWindow: number,
    private readonly rtt: RttEstimator,
    bitmap?: Uint8Array,
  ) {
    this.acked = new ChunkBitmap(count, bitmap);
    this.sentAt = new Float64Array(count).fill(NOT_IN_FLIGHT);
    this.sends = new Uint8Array(count);
    this.cwnd = nodeWindow;
    this.floor = Math.max(1, Math.ceil(nodeWindow / 2));
  }

  get complete(): boolean {
    return this.acked.complete;
  }

  get received(): number {
    return this.acked.count;
  }

  get congestionWindow(): number {
    return this.cwnd;
  }

  get outstanding(): number {
    return this.inFlight;
  }

  /** The node said what it holds (Hello after a reconnect or reboot): forget what was in flight. */
  resync(bitmap: Uint8Array): void {
    const fresh = new ChunkBitmap(this.count, bitmap);
    for (let i = 0; i < this.count; i++) if (fresh.has(i)) this.acked.set(i);
    this.sentAt.fill(NOT_IN_FLIGHT);
    this.fifo = [];
    this.fifoHead = 0;
    this.inFlight = 0;
    this.cursor = 0;
  }

  /** Next chunk to send now, or undefined when the window is full or nothing is left unsent. */
  next(now: number): number | undefined {
    if (this.inFlight >= this.cwnd) return undefined;
    let i = this.acked.firstMissing(this.cursor);
    while (i < this.count && (this.acked.has(i) || this.sentAt[i] !== NOT_IN_FLIGHT)) i++;
    this.cursor = i;
    if (i >= this.count) return undefined;
    this.sentAt[i] = now;
    if (this.sends[i] > 0) this.retransmits++;
    if (this.sends[i] < 255) this.sends[i]++;
    this.sent++;
    this.inFlight++;
    this.fifo.push({ index: i, at: now });
    this.cursor = i + 1;
    return i;
  }

  /** Applies an Ack; returns how many chunks it newly confirmed. */
  onAck(base: number, selective: Uint8Array | undefined, now: number): number {
    const fresh = this.acked.applyAck(base, selective);
    let newestOnce: number | undefined;
    for (const i of fresh) {
      if (this.sentAt[i] !== NOT_IN_FLIGHT) {
        this.inFlight--;
        if (this.sends[i] === 1 && (newestOnce === undefined || this.sentAt[i] > newestOnce)) newestOnce = this.sentAt[i];
        this.sentAt[i] = NOT_IN_FLIGHT;
      }
    }
    if (newestOnce !== undefined) this.rtt.sample(now - newestOnce);
    if (fresh.length > 0 && this.cwnd < this.nodeWindow) this.cwnd = Math.min(this.nodeWindow, this.cwnd + 1);
    this.compactFifo();
    return fresh.length;
  }

  /** Declares overdue chunks lost so next() sends them again; returns how many. */
  expire(now: number): number {
    const rto = this.rtt.rto;
    let lost = 0;
    while (this.fifoHead < this.fifo.length) {
      const e = this.fifo[this.fifoHead];
      if (this.acked.has(e.index) || this.sentAt[e.index] !== e.at) {
        this.fifoHead++;
        continue;
      }
      if (e.at + rto > now) break;
      this.sentAt[e.index] = NOT_IN_FLIGHT;
      this.inFlight--;
      if (e.index < this.cursor) this.cursor = e.index;
      this.fifoHead++;
      lost++;
    }
    if (lost > 0) {
      this.rtt.backoff();
      if (now - this.lastCut >= rto) {
        this.cwnd = Math.max(this.floor, Math.floor(this.cwnd / 2));
        this.lastCut = now;
      }
    }
    this.compactFifo();
    return lost;
  }

  /** Milliseconds until the oldest chunk in flight is overdue, or undefined when none is in flight. */
  nextDeadline(now: number): number | undefined {
    for (let k = this.fifoHead; k < this.fifo.length; k++) {
      const e = this.fifo[k];
      if (!this.acked.has(e.index) && this.sentAt[e.index] === e.at) return Math.max(0, e.at + this.rtt.rto - now);
    }
    return undefined;
  }

  private compactFifo(): void {
    if (this.fifoHead > 1024 && this.fifoHead * 2 > this.fifo.length) {
      this.fifo = this.fifo.slice(this.fifoHead);
      this.fifoHead = 0;
    }
  }
}
