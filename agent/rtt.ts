/**
 * Retransmission timeout estimator after RFC 6298: smoothed RTT and variance from Ack round trips
 * (Karn's rule is applied by the caller: only chunks sent once give samples), exponential backoff on
 * timeout, clamped to [minRto, maxRto]. The RFC's 1 s floor suits the Internet; a gateway's LAN or
 * loopback link is far faster, so the floor is configurable and defaults lower.
 */
export interface RttConfig {
  initialRto: number;
  minRto: number;
  maxRto: number;
  /**
   * Link rate assumed before any round trip is measured, bytes per second (default
   * {@link DEFAULT_INITIAL_RATE}): a transfer's first chunks wait for the node's first ack batch to
   * cross a link this slow on top of the initial RTO (see {@link RttEstimator.expectFirstAck}).
   */
  initialRate?: number;
}

/**
 * 256 kbit/s: slower than any link ferry is benchmarked on (cellular 1 Mbit/s), so the first ack of a
 * burst of big chunks is waited for on slow links too. Too low costs only a later resend when a
 * whole first batch is lost; too high resends chunks that are on their way, halves the window and
 * backs the timer off at the start of every transfer.
 */
export const DEFAULT_INITIAL_RATE = 32_000;

export const DEFAULT_RTT: RttConfig = { initialRto: 1000, minRto: 200, maxRto: 60_000, initialRate: DEFAULT_INITIAL_RATE };

export class RttEstimator {
  private srtt: number | undefined;
  private minRtt: number | undefined;
  private rttvar = 0;
  private base: number;
  private backoffFactor = 1;
  /** Before the first sample: how long the node's first ack batch takes to cross a slow link, ms. */
  private firstBatchMs = 0;

  constructor(private readonly cfg: RttConfig = DEFAULT_RTT) {
    this.base = cfg.initialRto;
  }

  /** Current retransmission timeout in ms, including any backoff. */
  get rto(): number {
    return Math.min(this.cfg.maxRto, this.base * this.backoffFactor);
  }

  /**
   * Retransmission timeout for chunks, which go out in bursts: the node acks a batch only when its
   * last chunk arrived, so before any round trip is measured the first chunk's ack also waits for the
   * batch to cross the link (RFC 6298's initial 1 s assumes one small segment). From the first sample
   * on, the samples include that wait and this is {@link rto}.
   */
  get dataRto(): number {
    if (this.srtt !== undefined) return this.rto;
    return Math.min(this.cfg.maxRto, (this.base + this.firstBatchMs) * this.backoffFactor);
  }

  /** A transfer begins: `bytes` must reach the node before it sends its first ack. */
  expectFirstAck(bytes: number): void {
    if (this.srtt !== undefined) return;
    this.firstBatchMs = (bytes * 1000) / (this.cfg.initialRate ?? DEFAULT_INITIAL_RATE);
  }

  get smoothed(): number | undefined {
    return this.srtt;
  }

  /**
   * How long a message may plausibly still be on its way: twice the smallest round trip seen, plus
   * 10 ms, capped by the RTO; 0 before any sample. Not the smoothed RTT: one ack that waited out a
   * link outage inflates that for many samples (it was sent once, so Karn's rule keeps it), and a
   * configured RTO floor (or a pinned RTO) says how long to wait before resending, not how long
   * delivery takes.
   */
  get inTransit(): number {
    if (this.minRtt === undefined) return 0;
    return Math.min(this.rto, 2 * this.minRtt + 10);
  }

  sample(ms: number): void {
    const r = Math.max(0, ms);
    this.minRtt = this.minRtt === undefined ? r : Math.min(this.minRtt, r);
    if (this.srtt === undefined) {
      this.srtt = r;
      this.rttvar = r / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - r);
      this.srtt = 0.875 * this.srtt + 0.125 * r;
    }
    this.base = Math.min(this.cfg.maxRto, Math.max(this.cfg.minRto, this.srtt + Math.max(10, 4 * this.rttvar)));
    this.backoffFactor = 1; // a fresh sample proves the path works again
  }

  /** A timeout fired with no answer: double the timeout (RFC 6298 §5.5). */
  backoff(): void {
    if (this.base * this.backoffFactor < this.cfg.maxRto) this.backoffFactor *= 2;
  }

  resetBackoff(): void {
    this.backoffFactor = 1;
  }
}

/** Full jitter around an exponential backoff: spreads retries of many silent nodes apart. */
export function jittered(ms: number, random: () => number = Math.random): number {
  return Math.round(ms / 2 + random() * (ms / 2));
}
