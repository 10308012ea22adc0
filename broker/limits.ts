import type { Principal, TopicClass } from './acl.js';

/**
 * Broker-side limits. Payload caps are per ferry topic class and sized from the protocol: an up
 * message is at most a Hello with an 8 KiB bitmap; a release part is at most 64 KiB; a signed
 * manifest at most 1 KiB (protocol LIMITS.maxManifest). Rates are a token bucket per client and role:
 * an agent streams chunks, a node only sends acks, so their budgets differ by two orders.
 */
export interface PayloadLimits {
  up: number;
  dn: number;
  groupDn: number;
  status: number;
  manifest: number;
  part: number;
}

export interface RateLimit {
  /** Sustained publishes per second. */
  rate: number;
  /** Bucket size: publishes allowed in a burst above the rate. */
  burst: number;
}

export interface Limits {
  payload: PayloadLimits;
  /** Per role; `anonymous` also covers every client on a broker without an identity store. */
  rate: Record<Principal['role'], RateLimit>;
}

export const DEFAULT_LIMITS: Limits = {
  payload: {
    up: 16 * 1024,
    // Chunks: the node's max-message is at most 1 MiB in theory, but agents cap chunks at 16 KiB by
    // default; 64 KiB + framing leaves room for a raised agent cap without letting a dn topic carry images.
    dn: 64 * 1024 + 512,
    groupDn: 64 * 1024 + 512,
    status: 8 * 1024,
    manifest: 1024,
    part: 64 * 1024 + 1024,
  },
  rate: {
    node: { rate: 50, burst: 200 },
    agent: { rate: 5000, burst: 20000 },
    operator: { rate: 1000, burst: 5000 },
    anonymous: { rate: 200, burst: 1000 },
  },
};

/** Merges a partial limits object over the defaults. */
export function resolveLimits(partial?: { payload?: Partial<PayloadLimits>; rate?: Partial<Limits['rate']> }): Limits {
  return {
    payload: { ...DEFAULT_LIMITS.payload, ...partial?.payload },
    rate: { ...DEFAULT_LIMITS.rate, ...partial?.rate },
  };
}

/** The cap for one topic class, or undefined outside the prefix (a plain broker has no cap of ours). */
export function payloadCap(limits: PayloadLimits, c: TopicClass): number | undefined {
  switch (c.kind) {
    case 'up':
      return limits.up;
    case 'dn':
      return limits.dn;
    case 'group-dn':
      return limits.groupDn;
    case 'status':
      return limits.status;
    case 'manifest':
      return limits.manifest;
    case 'part':
      return limits.part;
    default:
      return undefined;
  }
}

/** Classic token bucket, refilled lazily from a monotonic clock on each take. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly limit: RateLimit,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = limit.burst;
    this.last = now();
  }

  /** Takes one token; false when the bucket is empty. */
  take(): boolean {
    const t = this.now();
    this.tokens = Math.min(this.limit.burst, this.tokens + ((t - this.last) / 1000) * this.limit.rate);
    this.last = t;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
