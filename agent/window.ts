import { ChunkBitmap } from '../shared/bitmap.js';
import { ackInterval } from '../shared/messages.js';
import type { RttEstimator } from './rtt.js';
import { growthStep, initialGrowth, type GrowthEffect, type GrowthState } from './window-growth.js';

const NOT_IN_FLIGHT = -1;

/**
 * Selective-repeat sender state for one transfer. It decides which chunk goes next and which are
 * lost; it does no I/O. Chunks go out in index order; a chunk is resent only when it is missing from
 * the node's acks and the retransmission timer (the oldest chunk in flight overdue by one RTO) has
 * declared it lost, so nothing the node has acked is ever sent again.
 *
 * Congestion window (window-growth.ts): starts at min(node window, 32), grows from the measured
 * delivery rate and round trip towards twice the bandwidth-delay product, and halves on each loss
 * event; never above the node's receive window, never below the node's ack interval (half its
 * window, at most 8): a smaller burst would only be acked by the retransmission timer.
 *
 * Silence: when a loss event follows a loss event with no ack in between, the node is probably gone
 * (link down, power cut) or the link is stalled. Then only the oldest chunk is resent, as a probe,
 * once per (backed-off) RTO, instead of a window's worth into the void; the rest wait for an answer.
 */
export class TransferWindow {
  private ackedBits: ChunkBitmap;
  private readonly sentAt: Float64Array;
  private readonly sends: Uint8Array;
  /** Send order of each chunk's latest copy: delivery to the node keeps this order. */
  private readonly sentSeq: Float64Array;
  /** Chunks acked, and when the latest of them was, at each chunk's latest send: its delivery-rate sample's start. */
  private readonly deliveredAtSend: Float64Array;
  private readonly deliveredTimeAtSend: Float64Array;
  private delivered = 0;
  private deliveredTime = -1;
  private seq = 0;
  /** Chunks in send order with their send time; entries go stale when acked or resent. */
  private fifo: { index: number; at: number }[] = [];
  private fifoHead = 0;
  private cursor = 0;
  private inFlight = 0;
  private growth: GrowthState;
  /** The window's changes, newest last (bounded), for benches and diagnostics. */
  readonly windowLog: (GrowthEffect & { at: number })[] = [];
  /** Loss events since the last ack: from the second one on, the window probes instead of resending. */
  private expiriesSinceAck = 0;
  private probing = false;
  /** While probing: chunks the current loss event may still send (one). */
  private probeBudget = 0;
  private lastEvent = -Infinity;
  /** The RTO after the last loss event's backoff: expiries sooner than that after it belong to it. */
  private lastEventRto = 0;
  /** Chunks declared lost and not yet sent again: they may go even when the halved window is full. */
  private lostPending = 0;
  /** How far beyond the window they may go: the younger chunks still in flight when they were declared lost. */
  private lostAllowance = 0;

  retransmits = 0;
  sent = 0;

  constructor(
    readonly count: number,
    readonly nodeWindow: number,
    private readonly rtt: RttEstimator,
    bitmap?: Uint8Array,
    /** Bytes per chunk: with it, the first chunks' timer allows for the first ack batch to cross a slow link. */
    chunkBytes?: number,
  ) {
    this.ackedBits = new ChunkBitmap(count, bitmap);
    this.sentAt = new Float64Array(count).fill(NOT_IN_FLIGHT);
    this.sends = new Uint8Array(count);
    this.sentSeq = new Float64Array(count);
    this.deliveredAtSend = new Float64Array(count);
    this.deliveredTimeAtSend = new Float64Array(count);
    this.growth = initialGrowth({ nodeWindow, floor: ackInterval(nodeWindow) }, 0);
    if (chunkBytes !== undefined) rtt.expectFirstAck(Math.min(count, ackInterval(nodeWindow)) * chunkBytes);
  }

  /** Chunks the node holds, as far as the sender knows. */
  get acked(): ChunkBitmap {
    return this.ackedBits;
  }

  get complete(): boolean {
    return this.acked.complete;
  }

  get received(): number {
    return this.acked.count;
  }

  get congestionWindow(): number {
    return this.growth.cwnd;
  }

  /** Growth phase, measured delivery rate (chunks per ms, max of recent rounds) and smallest round trip. */
  get growthState(): GrowthState {
    return this.growth;
  }

  private get cwnd(): number {
    return this.growth.cwnd;
  }

  private grow(input: Parameters<typeof growthStep>[1], now: number): void {
    const { state, effects } = growthStep(this.growth, input, now);
    this.growth = state;
    for (const e of effects) {
      if (this.windowLog.length >= 256) this.windowLog.shift();
      this.windowLog.push({ ...e, at: now });
    }
  }

  get outstanding(): number {
    return this.inFlight;
  }

  /**
   * The node said everything it holds (a Hello, or its answer to an Offer): that replaces what the
   * sender believed, since after a power cut a node may hold less than it once acked (chunks it had
   * not yet saved). What was in flight is forgotten: it is lost or will be acked again.
   */
  resync(bitmap: Uint8Array, now?: number): void {
    this.ackedBits = new ChunkBitmap(this.count, bitmap);
    // With `now` (a Hello just arrived), chunks sent so recently that they may still be in transit
    // (within about one round trip) stay in flight: they went out after the node came back and are
    // on their way. Older ones were lost with the old connection and go again at once. Sending the
    // young ones again would duplicate them on the node's link.
    const keep: { index: number; at: number }[] = [];
    const young = this.rtt.inTransit;
    for (let k = this.fifoHead; k < this.fifo.length; k++) {
      const e = this.fifo[k];
      if (this.sentAt[e.index] !== e.at) continue;
      if (now !== undefined && !this.ackedBits.has(e.index) && now - e.at < young) {
        keep.push(e);
        // Whether it crossed the outage is unknown: no RTT sample from it (Karn).
        if (this.sends[e.index] === 1) this.sends[e.index] = 2;
      } else this.sentAt[e.index] = NOT_IN_FLIGHT;
    }
    this.fifo = keep;
    this.fifoHead = 0;
    this.inFlight = keep.length;
    this.cursor = 0;
    this.expiriesSinceAck = 0;
    this.probing = false;
    this.lostPending = 0;
  }

  /** resync() from an Ack's form: every chunk below base, plus the selective bits after it. */
  resyncFromAck(base: number, selective: Uint8Array | undefined): void {
    const b = new ChunkBitmap(this.count);
    b.applyAck(base, selective);
    this.resync(b.toBytes());
  }

  /** Next chunk to send now, or undefined when the window is full or nothing is left unsent. */
  next(now: number): number | undefined {
    // The congestion window limits what is in flight, except that chunks declared lost may go while
    // younger ones fill the halved window (up to the node's window, the hard limit): otherwise the
    // lost ones would wait for those to time out too.
    if (this.probing) {
      if (this.probeBudget === 0) return undefined;
    } else {
      const limit = this.lostPending > 0 ? Math.min(this.nodeWindow, this.cwnd + this.lostAllowance) : this.cwnd;
      if (this.inFlight >= limit) return undefined;
    }
    let i = this.acked.firstMissing(this.cursor);
    while (i < this.count && (this.acked.has(i) || this.sentAt[i] !== NOT_IN_FLIGHT)) i++;
    this.cursor = i;
    if (i >= this.count) {
      this.lostPending = 0;
      return undefined;
    }
    if (this.probing) this.probeBudget--;
    else if (this.sends[i] > 0) this.lostPending = Math.max(0, this.lostPending - 1);
    else if (this.inFlight >= this.cwnd) {
      this.lostPending = 0; // the lowest unsent chunk is new: every lost one has gone again
      return undefined;
    }
    // The first round trip is timed from the first send, not from when the window was made.
    if (this.seq === 0) this.growth = { ...this.growth, round: { seq: 0, delivered: this.growth.delivered, at: now } };
    if (this.deliveredTime < 0) this.deliveredTime = now;
    this.deliveredAtSend[i] = this.delivered;
    this.deliveredTimeAtSend[i] = this.deliveredTime;
    this.sentAt[i] = now;
    this.sentSeq[i] = ++this.seq;
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
    if (this.expiriesSinceAck > 0) this.rearm(now);
    this.expiriesSinceAck = 0;
    this.probing = false;
    const fresh = this.acked.applyAck(base, selective);
    let newestOnce: number | undefined;
    let oldestOnce: number | undefined;
    let newestSeq = 0;
    let newestIndex = -1;
    for (const i of fresh) {
      if (this.sentAt[i] !== NOT_IN_FLIGHT) {
        this.inFlight--;
        if (this.sends[i] === 1 && (newestOnce === undefined || this.sentAt[i] > newestOnce)) newestOnce = this.sentAt[i];
        if (this.sends[i] === 1 && (oldestOnce === undefined || this.sentAt[i] < oldestOnce)) oldestOnce = this.sentAt[i];
        if (this.sentSeq[i] > newestSeq) {
          newestSeq = this.sentSeq[i];
          newestIndex = i;
        }
        this.sentAt[i] = NOT_IN_FLIGHT;
      }
    }
    // The timer runs on the oldest chunk in flight, and the node acks a batch when its last chunk
    // arrives: so the retransmission timeout is estimated from the oldest chunk of the batch (its
    // wait includes the node's ack interval, as a delayed ack's does in TCP), while the window's
    // round trip comes from the newest (the path itself).
    const rttMs = newestOnce === undefined ? undefined : now - newestOnce;
    if (oldestOnce !== undefined) this.rtt.sample(now - oldestOnce);
    // Chunks reach the node in the order they were sent (one agent connection, one broker, one node
    // connection). So a chunk sent before one the node now acks, which this ack describes as missing,
    // was lost (typically sent just before the node's subscription was back): it goes again now,
    // without waiting for the timer.
    const described = base + (selective ? selective.length * 8 : 0);
    if (newestSeq > 0) {
      for (let k = this.fifoHead; k < this.fifo.length; k++) {
        const e = this.fifo[k];
        if (!this.live(e) || this.sentSeq[e.index] >= newestSeq || e.index >= described) continue;
        this.sentAt[e.index] = NOT_IN_FLIGHT;
        this.inFlight--;
        this.lostPending++;
        if (e.index < this.cursor) this.cursor = e.index;
      }
    }
    let rate: number | undefined;
    if (fresh.length > 0) {
      this.delivered += fresh.length;
      this.deliveredTime = now;
      // Delivery rate (as BBR measures it): what was acked since the newest acked chunk was sent,
      // over the time since the ack before that send.
      if (newestIndex >= 0) {
        const elapsed = now - this.deliveredTimeAtSend[newestIndex];
        if (elapsed > 0) rate = (this.delivered - this.deliveredAtSend[newestIndex]) / elapsed;
      }
      this.grow({ type: 'ack', fresh: fresh.length, newestSeq, seqNow: this.seq, rttMs, rate }, now);
    }
    this.compactFifo();
    return fresh.length;
  }

  /**
   * The retransmission timer: chunks in flight longer than one RTO are declared lost and go again.
   * Expiries closer together than the RTO are one loss event (a burst expires a few ms apart); each
   * event halves the window and backs the RTO off once. On a repeated event with no ack in between
   * only the oldest overdue chunk goes (a probe); the other overdue ones are given another RTO,
   * uncounted for RTT samples (Karn: their send time is no longer known). Returns how many were
   * declared lost.
   */
  expire(now: number): number {
    const rto = this.rtt.dataRto;
    const overdue: { index: number; at: number }[] = [];
    while (this.fifoHead < this.fifo.length) {
      const e = this.fifo[this.fifoHead];
      if (!this.live(e)) {
        this.fifoHead++;
        continue;
      }
      if (e.at + rto > now) break;
      overdue.push(e);
      this.fifoHead++;
    }
    if (overdue.length === 0) {
      this.compactFifo();
      return 0;
    }
    const newEvent = now - this.lastEvent >= this.lastEventRto;
    if (newEvent) {
      this.probing = this.expiriesSinceAck > 0;
      this.expiriesSinceAck++;
      this.lastEvent = now;
      this.rtt.backoff();
      // Chunks still in flight now expire within the backed-off RTO: they belong to this event.
      this.lastEventRto = this.rtt.dataRto;
      this.grow({ type: 'loss' }, now);
      this.probeBudget = this.probing ? 1 : 0;
    }
    // Probing: the oldest overdue chunk is the probe (once per event); the others wait another RTO.
    const lost = !this.probing ? overdue : newEvent ? overdue.slice(0, 1) : [];
    for (const e of lost) {
      this.sentAt[e.index] = NOT_IN_FLIGHT;
      this.inFlight--;
      if (!this.probing) this.lostPending++;
      if (e.index < this.cursor) this.cursor = e.index;
    }
    for (const e of overdue.slice(lost.length)) {
      this.sentAt[e.index] = now;
      if (this.sends[e.index] === 1) this.sends[e.index] = 2;
      this.fifo.push({ index: e.index, at: now });
    }
    if (lost.length > 0) this.lostAllowance = this.inFlight;
    this.compactFifo();
    return lost.length;
  }

  /**
   * The first ack after timeouts: the node (or the link) is back, and the acks it queued meanwhile
   * may be right behind this one. Chunks still in flight get a fresh RTO instead of being declared
   * lost by a timer that ran while nobody could answer (no RTT sample from them: Karn).
   */
  private rearm(now: number): void {
    this.fifo = [];
    this.fifoHead = 0;
    this.inFlight = 0;
    this.lostPending = 0;
    // Everything sent and not acked counts as in flight again, including chunks a timer declared
    // lost during the silence but that have not gone again: they may have arrived before it.
    for (let i = this.acked.firstMissing(); i < this.count; i++) {
      if (this.sends[i] === 0 || this.acked.has(i)) continue;
      this.sentAt[i] = now;
      if (this.sends[i] === 1) this.sends[i] = 2;
      this.fifo.push({ index: i, at: now });
      this.inFlight++;
    }
    this.fifo.sort((a, b) => this.sentSeq[a.index] - this.sentSeq[b.index]);
  }

  /** A fifo entry still describes a chunk in flight (not acked, not resent since). */
  private live(e: { index: number; at: number }): boolean {
    return !this.acked.has(e.index) && this.sentAt[e.index] === e.at;
  }

  /** Milliseconds until the oldest chunk in flight is overdue, or undefined when none is in flight. */
  nextDeadline(now: number): number | undefined {
    for (let k = this.fifoHead; k < this.fifo.length; k++) {
      const e = this.fifo[k];
      if (!this.acked.has(e.index) && this.sentAt[e.index] === e.at) return Math.max(0, e.at + this.rtt.dataRto - now);
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
