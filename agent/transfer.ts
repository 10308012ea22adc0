import { LIMITS, MsgType, type Chunk } from '../shared/messages.js';
import type { ResendBudget } from './config.js';
import { TokenBucket } from '../shared/token-bucket.js';
import type { RttEstimator } from './rtt.js';
import type { Payload } from './types.js';
import { TransferWindow } from './window.js';

/**
 * The sending side of one session: its payload, the selective-repeat window over it, and the node's
 * resend budget. `pump` sends what the window allows; chunks sent before (resends) are charged to the
 * budget, so no sequence of Hellos or Acks can make the agent resend more than the budget per interval.
 */
export class Transfer {
  readonly window: TransferWindow;
  private readonly budget: TokenBucket;
  /** Resends held back by the budget since the session began. */
  deferredByBudget = 0;
  bytesSent = 0;

  constructor(
    readonly session: number,
    readonly payload: Payload,
    readonly chunkSize: number,
    nodeWindow: number,
    rtt: RttEstimator,
    budget: ResendBudget,
    now: number,
    bitmap?: Uint8Array,
  ) {
    const count = Math.ceil(payload.bytes.length / chunkSize);
    this.window = new TransferWindow(count, Math.min(nodeWindow, LIMITS.maxWindow), rtt, bitmap, chunkSize);
    // Bytes: a few node windows may be resent at once, refilled at that many per perMs.
    const bytes = budget.windows * this.window.nodeWindow * chunkSize;
    this.budget = new TokenBucket({ burst: bytes, rate: (bytes * 1000) / budget.perMs }, now);
  }

  get count(): number {
    return this.window.count;
  }

  /**
   * Sends chunks while the window and the budget allow. Returns when to call again: the window's
   * retransmission timer, or the budget's refill, whichever is sooner (undefined: nothing pending).
   */
  pump(now: number, send: (c: Chunk) => void): number | undefined {
    const w = this.window;
    w.expire(now);
    let blocked = false;
    for (;;) {
      if (!this.budget.open(now)) {
        blocked = true;
        break;
      }
      const before = w.retransmits;
      const i = w.next(now);
      if (i === undefined) break;
      const data = this.payload.bytes.subarray(i * this.chunkSize, Math.min(this.payload.bytes.length, (i + 1) * this.chunkSize));
      if (w.retransmits > before) this.budget.spend(data.length, now);
      send({ type: MsgType.chunk, session: this.session, index: i, data });
      this.bytesSent += data.length;
    }
    if (blocked) this.deferredByBudget++;
    const due = w.nextDeadline(now);
    const refill = blocked ? this.budget.waitMs(now) : undefined;
    if (due === undefined) return refill;
    return refill === undefined ? due : Math.min(due, refill);
  }
}
