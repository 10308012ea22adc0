/**
 * Keeps password verification (scrypt: ~30 ms of CPU and 16 MiB each) from being a CPU weapon:
 * at most a few run at once, a bounded queue waits for them, and an address that keeps failing is
 * refused without any KDF for a back-off that doubles with each further failure.
 */
export interface AuthLimits {
  /** Password verifications running at once. */
  maxConcurrent: number;
  /** Verifications waiting for a slot; beyond this a connect is refused as "server unavailable". */
  maxWaiting: number;
  /** Verifications per second for addresses without a recent login (token bucket rate and size). */
  newAddressRate: number;
  newAddressBurst: number;
  /** Failures an address may have before back-off starts. */
  freeFailures: number;
  /** First back-off, doubled with every further failure up to `backoffMaxMs`. */
  backoffBaseMs: number;
  backoffMaxMs: number;
  /** Addresses remembered at most (oldest forgotten first). */
  maxAddresses: number;
}

interface Entry {
  failures: number;
  /** Refuse until this time (ms, monotonic). */
  until: number;
  last: number;
}

/** Per-address failure back-off. The table is bounded and entries expire after a quiet backoffMaxMs. */
export class FailureBackoff {
  private readonly table = new Map<string, Entry>();

  constructor(
    private readonly limits: () => AuthLimits,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Milliseconds `addr` must still wait, or 0 when it may try now. */
  blockedFor(addr: string): number {
    const e = this.fresh(addr);
    return e ? Math.max(0, Math.ceil(e.until - this.now())) : 0;
  }

  failed(addr: string): void {
    const l = this.limits();
    const t = this.now();
    const e = this.fresh(addr) ?? { failures: 0, until: 0, last: t };
    e.failures += 1;
    e.last = t;
    const over = e.failures - l.freeFailures;
    if (over > 0) e.until = t + Math.min(l.backoffMaxMs, l.backoffBaseMs * 2 ** Math.min(over - 1, 30));
    this.table.delete(addr); // re-insert: Map order is then least recently failed first
    this.table.set(addr, e);
    while (this.table.size > l.maxAddresses) this.table.delete(this.table.keys().next().value as string);
  }

  succeeded(addr: string): void {
    this.table.delete(addr);
  }

  get size(): number {
    return this.table.size;
  }

  private fresh(addr: string): Entry | undefined {
    const e = this.table.get(addr);
    if (!e) return undefined;
    if (this.now() - Math.max(e.last, e.until) > this.limits().backoffMaxMs) {
      this.table.delete(addr);
      return undefined;
    }
    return e;
  }
}

/** A counting semaphore with a bounded queue; priority waiters are served first. */
export class Semaphore {
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly urgent: (() => void)[] = [];

  constructor(private readonly limits: () => { maxConcurrent: number; maxWaiting: number }) {}

  /** Resolves with a release function, or undefined at once when the queue is full. */
  acquire(priority = false): Promise<(() => void) | undefined> {
    const { maxConcurrent, maxWaiting } = this.limits();
    if (this.running < maxConcurrent) {
      this.running++;
      return Promise.resolve(this.releaser());
    }
    const queue = priority ? this.urgent : this.waiting;
    if (queue.length >= maxWaiting) return Promise.resolve(undefined);
    return new Promise((resolve) => queue.push(() => resolve(this.releaser())));
  }

  get queued(): number {
    return this.waiting.length + this.urgent.length;
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.urgent.shift() ?? this.waiting.shift();
      if (next) next();
      else this.running--;
    };
  }
}

/** Addresses with a successful login in the last `ttlMs`, at most `max` of them (oldest dropped first). */
export class RecentLogins {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly ttlMs: number,
    private readonly max: () => number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  add(addr: string): void {
    this.seen.delete(addr);
    this.seen.set(addr, this.now());
    while (this.seen.size > this.max()) this.seen.delete(this.seen.keys().next().value as string);
  }

  has(addr: string): boolean {
    const at = this.seen.get(addr);
    if (at === undefined) return false;
    if (this.now() - at > this.ttlMs) {
      this.seen.delete(addr);
      return false;
    }
    return true;
  }
}
