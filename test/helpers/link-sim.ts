import { ChunkBitmap } from '../../shared/bitmap.js';
import { ackInterval } from '../../shared/messages.js';
import { RttEstimator, type RttConfig } from '../../agent/rtt.js';
import { TransferWindow } from '../../agent/window.js';

/**
 * A sans-IO transfer over a simulated link, on a fake clock: the agent's TransferWindow on one
 * side, a node that acks per the protocol (every ackInterval(window) new chunks and at the end) on
 * the other, and between them a serializer at `chunksPerMs` with `delayMs` one way. Acks are small:
 * only the delay applies to them. Nothing is lost; what it shows is how the window sizes itself.
 */
export interface SimLink {
  chunksPerMs: number;
  delayMs: number;
  /** Bytes per chunk, for the sender's first timer (TransferWindow's chunkBytes); unset, it is not told. */
  chunkBytes?: number;
}

export interface SimResult {
  /** From the first chunk's arrival at the node to the last one's, ms. */
  dataPhaseMs: number;
  /** (chunks − 1) / dataPhaseMs over the link rate: 1 = the link never idled. */
  utilization: number;
  retransmits: number;
  maxCwnd: number;
  finalCwnd: number;
  /** Largest number of chunks waiting at the serializer at once. */
  maxQueue: number;
  phase: string;
  /** The window's changes with their (fake) times. */
  windowLog: TransferWindow['windowLog'];
  /** Chunks sent again before the node's first ack reached the sender. */
  retransmitsBeforeFirstAck: number;
  /** When the first ack reached the sender, ms. */
  firstAckAt: number;
}

export function simulateTransfer(count: number, nodeWindow: number, link: SimLink, rtt: Partial<RttConfig> = {}): SimResult {
  const est = new RttEstimator({ initialRto: 1000, minRto: 200, maxRto: 60_000, ...rtt });
  const w = new TransferWindow(count, nodeWindow, est, undefined, link.chunkBytes);
  const node = new ChunkBitmap(count);
  const interval = ackInterval(nodeWindow);
  const events: { at: number; run: () => void }[] = [];
  const at = (t: number, run: () => void) => {
    let k = events.length;
    while (k > 0 && events[k - 1].at > t) k--;
    events.splice(k, 0, { at: t, run });
  };
  let lastDeparture = 0;
  let newSinceAck = 0;
  let firstArrival = -1;
  let lastArrival = 0;
  let maxCwnd = w.congestionWindow;
  let maxQueue = 0;
  let timerAt = Infinity;
  let firstAckAt = -1;
  let retransmitsBeforeFirstAck = 0;
  const departures: number[] = [];
  const pump = (now: number) => {
    w.expire(now);
    for (let i = w.next(now); i !== undefined; i = w.next(now)) {
      const index = i;
      const dep = Math.max(now, lastDeparture) + 1 / link.chunksPerMs;
      lastDeparture = dep;
      departures.push(dep);
      const waiting = departures.filter((d) => d > now).length;
      maxQueue = Math.max(maxQueue, waiting);
      at(dep + link.delayMs, () => arrive(index, dep + link.delayMs));
    }
    maxCwnd = Math.max(maxCwnd, w.congestionWindow);
    const due = w.nextDeadline(now);
    if (due !== undefined && now + due + 1 < timerAt) {
      timerAt = now + due + 1;
      const t = timerAt;
      at(t, () => {
        if (timerAt === t) timerAt = Infinity;
        pump(t);
      });
    }
  };
  const arrive = (i: number, now: number) => {
    if (firstArrival < 0) firstArrival = now;
    const isNew = node.set(i);
    if (isNew) {
      lastArrival = now;
      newSinceAck++;
    }
    if (!isNew || node.complete || newSinceAck >= interval) {
      newSinceAck = 0;
      const base = node.firstMissing();
      const sel = base < count ? node.slice(base, 1024) : undefined;
      at(now + link.delayMs, () => {
        if (firstAckAt < 0) {
          firstAckAt = now + link.delayMs;
          retransmitsBeforeFirstAck = w.retransmits;
        }
        w.onAck(base, sel, now + link.delayMs);
        if (!w.complete) pump(now + link.delayMs);
      });
    }
  };
  pump(0);
  for (let steps = 0; events.length > 0 && steps < 1_000_000; steps++) {
    const e = events.shift()!;
    e.run();
    if (w.complete && node.complete) break;
  }
  const dataPhaseMs = lastArrival - firstArrival;
  return {
    dataPhaseMs,
    utilization: (count - 1) / dataPhaseMs / link.chunksPerMs,
    retransmits: w.retransmits,
    maxCwnd,
    finalCwnd: w.congestionWindow,
    maxQueue,
    phase: w.growthState.phase,
    windowLog: w.windowLog,
    retransmitsBeforeFirstAck,
    firstAckAt,
  };
}
