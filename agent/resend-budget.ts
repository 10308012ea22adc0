/**
 * A token bucket of bytes: `capacity` may go at once, refilled at `capacity` per `perMs`. Taking may
 * overdraw by one item (a chunk already chosen goes out); nothing more goes until the balance is positive.
 */
export class TokenBucket {
  private tokens: number;
  private at: number;

  constructor(
    readonly capacity: number,
    private readonly perMs: number,
    now: number,
  ) {
    this.tokens = capacity;
    this.at = now;
  }

  private refill(now: number): void {
    if (now > this.at) this.tokens = Math.min(this.capacity, this.tokens + ((now - this.at) * this.capacity) / this.perMs);
    this.at = Math.max(this.at, now);
  }

  /** Whether anything may be taken now. */
  open(now: number): boolean {
    this.refill(now);
    return this.tokens > 0;
  }

  take(bytes: number, now: number): void {
    this.refill(now);
    this.tokens -= bytes;
  }

  /** Milliseconds until the balance is positive again (0 if it is). */
  waitMs(now: number): number {
    this.refill(now);
    return this.tokens > 0 ? 0 : Math.ceil(((1 - this.tokens) * this.perMs) / this.capacity);
  }
}
