/** A sustained rate with a burst above it: `rate` tokens per second, at most `burst` held. */
export interface Rate {
  rate: number;
  burst: number;
}

/**
 * Classic token bucket, refilled lazily from the caller's clock (milliseconds) on each use, so it is
 * as deterministic as the clock it is given. Used for the broker's publish, connection and login
 * rates and the agent's per-node resend budget.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly limit: Rate,
    now: number,
  ) {
    this.tokens = limit.burst;
    this.last = now;
  }

  private refill(now: number): void {
    if (now > this.last) this.tokens = Math.min(this.limit.burst, this.tokens + ((now - this.last) / 1000) * this.limit.rate);
    this.last = Math.max(this.last, now);
  }

  /** Takes one token; false when less than one is left. */
  take(now: number): boolean {
    this.refill(now);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Takes `amount` even past empty (an item already chosen goes out); nothing is open until the balance is positive again. */
  spend(amount: number, now: number): void {
    this.refill(now);
    this.tokens -= amount;
  }

  /** Whether the balance is positive. */
  open(now: number): boolean {
    this.refill(now);
    return this.tokens > 0;
  }

  /** Milliseconds until the balance is positive again (0 if it is). */
  waitMs(now: number): number {
    this.refill(now);
    return this.tokens > 0 ? 0 : Math.ceil(((1 - this.tokens) * 1000) / this.limit.rate);
  }
}
