import type { Principal, TopicClass } from './acl.js';
import type { AuthLimits } from './auth-guard.js';
import type { DeliveryLimits } from './delivery-guard.js';
import type { FrameLimits } from './frame-guard.js';

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
  /** A signed rollout document, and one agent's rollout state (a few dozen bytes per node it serves). */
  rollout: number;
  rolloutState: number;
  /** Any topic outside the prefix (the plain-broker part). */
  outside: number;
}

type Role = Principal['role'];

export interface RateLimit {
  /** Sustained publishes per second. */
  rate: number;
  /** Bucket size: publishes allowed in a burst above the rate. */
  burst: number;
}

export interface Limits {
  payload: PayloadLimits;
  /** Per role; `anonymous` also covers every client on a broker without an identity store. */
  rate: Record<Role, RateLimit>;
  /**
   * Retained bytes (topic + payload) one identity may hold on the broker, per role; all anonymous
   * clients share one allowance. Presence, written by the broker itself, is not counted.
   */
  retained: Record<Role, number>;
  /** Packet size caps checked on the fixed header (broker/frame-guard.ts). */
  frames: FrameLimits;
  /** Slow-subscriber isolation (broker/delivery-guard.ts): backlog caps per role, one drain timeout. */
  delivery: { dropQos0Above: number; maxBacklog: Record<Role, number>; drainTimeoutMs: number };
  /** Password verification (broker/auth-guard.ts). */
  auth: AuthLimits;
  /** Connections accepted but not yet authenticated: in total and per remote address; time allowed for the CONNECT. */
  pending: { total: number; perAddress: number; connectTimeoutMs: number };
  /** New connections per second from one address (token bucket), for at most maxAddresses addresses. */
  connections: { perAddressRate: number; perAddressBurst: number; maxAddresses: number };
}

/** The largest legitimate ferry packet: a 64 KiB release part + 1 KiB, its topic and header, rounded up. */
export const DEFAULT_MAX_PACKET = 70 * 1024;

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
    rollout: 16 * 1024,
    rolloutState: 64 * 1024,
    outside: 64 * 1024,
  },
  rate: {
    node: { rate: 50, burst: 200 },
    agent: { rate: 5000, burst: 20000 },
    operator: { rate: 1000, burst: 5000 },
    anonymous: { rate: 200, burst: 1000 },
  },
  retained: {
    node: 64 * 1024,
    // One retained status per served node (a few hundred bytes each, 8 KiB at most).
    agent: 32 * 1024 * 1024,
    // Releases: manifest + parts of every retained image.
    operator: 256 * 1024 * 1024,
    anonymous: 1024 * 1024,
  },
  frames: {
    maxPacket: DEFAULT_MAX_PACKET,
    // A CONNECT with client id, username, password and a small will fits many times over.
    maxPacketBeforeAuth: 1024,
    maxBytesBeforeAuth: 4096,
  },
  delivery: {
    // Beyond what the kernel already holds: a burst of chunks to a node that reads stays under it.
    dropQos0Above: 1024 * 1024,
    maxBacklog: { node: 4 * 1024 * 1024, anonymous: 4 * 1024 * 1024, agent: 16 * 1024 * 1024, operator: 16 * 1024 * 1024 },
    drainTimeoutMs: 10_000,
  },
  // One scrypt at a time: on a 2-core gateway a second would take the core the broker needs.
  auth: { maxConcurrent: 1, maxWaiting: 1024, newAddressRate: 10, newAddressBurst: 30, freeFailures: 3, backoffBaseMs: 1000, backoffMaxMs: 60_000, maxAddresses: 10_000 },
  pending: { total: 1024, perAddress: 128, connectTimeoutMs: 10_000 },
  // Generous: a whole simulated fleet may reconnect from one host at once; a flood may not.
  connections: { perAddressRate: 100, perAddressBurst: 500, maxAddresses: 10_000 },
};

/** A partial {@link Limits}: every group may be given in part. */
export interface LimitsInput {
  payload?: Partial<PayloadLimits>;
  rate?: Partial<Record<Role, Partial<RateLimit>>>;
  retained?: Partial<Limits['retained']>;
  frames?: Partial<FrameLimits>;
  delivery?: Partial<Omit<Limits['delivery'], 'maxBacklog'>> & { maxBacklog?: Partial<Limits['delivery']['maxBacklog']> };
  auth?: Partial<AuthLimits>;
  pending?: Partial<Limits['pending']>;
  connections?: Partial<Limits['connections']>;
}

/** Merges a partial limits object over the defaults and checks that every figure is usable. */
export function resolveLimits(partial: LimitsInput = {}): Limits {
  const d = DEFAULT_LIMITS;
  const l: Limits = {
    payload: { ...d.payload, ...partial.payload },
    rate: {
      node: { ...d.rate.node, ...partial.rate?.node },
      agent: { ...d.rate.agent, ...partial.rate?.agent },
      operator: { ...d.rate.operator, ...partial.rate?.operator },
      anonymous: { ...d.rate.anonymous, ...partial.rate?.anonymous },
    },
    retained: { ...d.retained, ...partial.retained },
    frames: { ...d.frames, ...partial.frames },
    delivery: { ...d.delivery, ...partial.delivery, maxBacklog: { ...d.delivery.maxBacklog, ...partial.delivery?.maxBacklog } },
    auth: { ...d.auth, ...partial.auth },
    pending: { ...d.pending, ...partial.pending },
    connections: { ...d.connections, ...partial.connections },
  };
  const numbers: [string, number][] = [
    ...Object.entries(l.payload).map(([k, v]): [string, number] => [`payload.${k}`, v]),
    ...Object.entries(l.rate).flatMap(([k, v]): [string, number][] => [[`rate.${k}.rate`, v.rate], [`rate.${k}.burst`, v.burst]]),
    ...Object.entries(l.retained).map(([k, v]): [string, number] => [`retained.${k}`, v]),
    ...Object.entries(l.frames).map(([k, v]): [string, number] => [`frames.${k}`, v]),
    ['delivery.dropQos0Above', l.delivery.dropQos0Above],
    ['delivery.drainTimeoutMs', l.delivery.drainTimeoutMs],
    ...Object.entries(l.delivery.maxBacklog).map(([k, v]): [string, number] => [`delivery.maxBacklog.${k}`, v]),
    ...Object.entries(l.auth).map(([k, v]): [string, number] => [`auth.${k}`, v]),
    ...Object.entries(l.pending).map(([k, v]): [string, number] => [`pending.${k}`, v]),
    ...Object.entries(l.connections).map(([k, v]): [string, number] => [`connections.${k}`, v]),
  ];
  for (const [name, v] of numbers) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new Error(`limit ${name} must be a number >= 0, got ${String(v)}`);
  }
  if (l.frames.maxPacket > 268_435_455) throw new Error(`limit frames.maxPacket must be at most 268435455 (the MQTT maximum), got ${l.frames.maxPacket}`);
  if (l.auth.maxConcurrent < 1) throw new Error('limit auth.maxConcurrent must be at least 1');
  return l;
}

/** The payload cap for one topic class (undefined for classes nobody may publish to). */
export function payloadCap(limits: PayloadLimits, c: TopicClass): number | undefined {
  switch (c.kind) {
    case 'up':
      return limits.up;
    case 'dn':
      return limits.dn;
    case 'group-dn':
      return limits.groupDn;
    case 'status':
    case 'release-status':
    case 'withdrawn':
      return limits.status;
    case 'manifest':
      return limits.manifest;
    case 'part':
      return limits.part;
    case 'rollout':
      return limits.rollout;
    case 'rollout-state':
      return limits.rolloutState;
    case 'outside':
      return limits.outside;
    default:
      return undefined;
  }
}

/**
 * Parses `--limit NAME=VALUE` flags (e.g. `frames.maxPacket=70k`, `rate.node.rate=20`,
 * `retained.node=1M`) into a {@link LimitsInput}. NAME is a path in {@link DEFAULT_LIMITS}; VALUE a
 * non-negative number, optionally with k/M/G (×1024) for byte figures. Throws a message naming the
 * flag that is wrong.
 */
export function parseLimitFlags(flags: readonly string[]): LimitsInput {
  const out: Record<string, unknown> = {};
  for (const flag of flags) {
    const m = /^([A-Za-z0-9.]+)=([0-9]+(?:\.[0-9]+)?)([kKmMgG]?)$/.exec(flag);
    if (!m) throw new Error(`--limit ${flag}: expected NAME=NUMBER, e.g. frames.maxPacket=70k`);
    const path = m[1].split('.');
    let def: unknown = DEFAULT_LIMITS;
    for (const key of path) def = typeof def === 'object' && def !== null && Object.hasOwn(def, key) ? (def as Record<string, unknown>)[key] : undefined;
    if (typeof def !== 'number') throw new Error(`--limit ${flag}: unknown limit "${m[1]}" (see docs/broker.md, "Limits")`);
    const scale = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[3].toLowerCase() as '' | 'k' | 'm' | 'g'];
    let node = out;
    for (const key of path.slice(0, -1)) node = (node[key] ??= {}) as Record<string, unknown>;
    node[path[path.length - 1]] = Number(m[2]) * scale;
  }
  return out as LimitsInput;
}
