import type { KeyObject } from 'node:crypto';
import type { LogFn } from '../shared/log.js';
import type { LnsConfig } from './lns/index.js';
import type { LnsAdapter } from './lns/types.js';
import type { LoraOptions } from './lora/runtime.js';
import type { LoraClock } from './lora/clock.js';
import { DEFAULT_RECONNECT, type ReconnectConfig } from './reconnect.js';
import { DEFAULT_RTT, type RttConfig } from './rtt.js';

export interface StageDeadlines {
  /** From Offer to the last chunk acked. */
  download: number;
  /** From the last chunk to the node's verified report. */
  verify: number;
  /** From Activate to the node's rebooting (or busy) report, and the longest a busy node may defer. */
  install: number;
  /** From reboot to the node's confirmed report. */
  confirm: number;
}

/**
 * Resends of chunks a node was sent before, per node: a token bucket of bytes. `windows` node windows
 * of chunks may be resent in a burst, refilled at that many per `perMs`. Hellos and base-0 Acks at any
 * rate then cost the link at most this (airtime is the scarce resource on a shared link).
 */
export interface ResendBudget {
  windows: number;
  perMs: number;
}

export interface AgentOptions {
  /** LoRa nodes behind a network server (docs/lora.md §7): the LNS link and the LoRa runtime's settings. */
  lora?: { lns: LnsConfig | LnsAdapter; options?: Partial<LoraOptions>; clock?: LoraClock };
  /** The broker the nodes talk to (the gateway's local broker). */
  brokerUrl: string;
  /**
   * Optional upstream broker for operator traffic: releases come from it and node statuses go to it
   * (and to the local broker too, for on-site tools). Without it, everything uses brokerUrl.
   */
  upstreamUrl?: string;
  upstreamUsername?: string;
  upstreamPassword?: string;
  dataDir: string;
  prefix?: string;
  /** Operator public keys: when given, releases whose manifest does not verify are refused at intake. */
  trust?: KeyObject[];
  username?: string;
  password?: string;
  clientId?: string;
  /** Largest chunk the agent sends, whatever the node could take. */
  maxChunk?: number;
  /** Transfers running at once; the rest wait their turn in arrival order. */
  maxConcurrent?: number;
  rtt?: Partial<RttConfig>;
  deadlines?: Partial<StageDeadlines>;
  /** Send delta patches to nodes that can apply them. */
  delta?: boolean;
  /** Send the delta only when it is at least this fraction smaller than the full image. */
  deltaMargin?: number;
  /** Resends of an unanswered Offer/Activate before the agent waits for the node to speak. */
  maxControlRetries?: number;
  /** Backoff between broker reconnect attempts (exponential with jitter). */
  reconnect?: Partial<ReconnectConfig>;
  /** QoS 1 publishes awaiting PUBACK per broker connection before further ones are refused. */
  maxInflight?: number;
  /** How long a node the broker reports online may stay silent before the agent sends it a Query. */
  queryGraceMs?: number;
  /** TCP_NODELAY on the broker connections; false only to measure what it buys. */
  tcpNoDelay?: boolean;
  /** Per-node bound on chunk resends (see ResendBudget). */
  resendBudget?: Partial<ResendBudget>;
  /** A release whose manifest arrived but not all its parts within this time is dropped and logged. */
  releaseAssemblyTimeoutMs?: number;
  /**
   * `auto` (the library default): a node with no rollout governing it gets the newest release of its
   * class, as before rollouts existed. `rollout`: releases are offered only through a rollout
   * (the `ferry gateway`/`ferry agent` default; `--auto-offer` selects `auto`).
   */
  offerPolicy?: 'auto' | 'rollout';
  /** Log lines with optional structured fields (device, release, session, reason). */
  log?: LogFn;
}

export interface AgentConfig {
  maxChunk: number;
  maxConcurrent: number;
  maxControlRetries: number;
  deadlines: StageDeadlines;
  rtt: RttConfig;
  reconnect: ReconnectConfig;
  delta: boolean;
  deltaMargin: number;
  maxInflight: number;
  queryGraceMs: number;
  tcpNoDelay: boolean;
  resendBudget: ResendBudget;
  releaseAssemblyTimeoutMs: number;
  /** How often a node's received bitmap is written to SQLite while it changes. */
  bitmapPersistMs: number;
  /** Least time between two status publishes of a node (state changes go out at once). */
  statusEveryMs: number;
  /** Queries waiting to be sent, at most (ids come from the network). */
  maxQueuedQueries: number;
  offerPolicy: 'auto' | 'rollout';
}

/** Every default in one place. */
export const DEFAULTS: AgentConfig = {
  maxChunk: 16 * 1024,
  maxConcurrent: 16,
  maxControlRetries: 8,
  deadlines: { download: 30 * 60_000, verify: 2 * 60_000, install: 10 * 60_000, confirm: 5 * 60_000 },
  rtt: DEFAULT_RTT,
  reconnect: DEFAULT_RECONNECT,
  delta: true,
  deltaMargin: 0.2,
  maxInflight: 256,
  queryGraceMs: 1000,
  tcpNoDelay: true,
  resendBudget: { windows: 4, perMs: 1000 },
  releaseAssemblyTimeoutMs: 5 * 60_000,
  bitmapPersistMs: 2000,
  statusEveryMs: 1000,
  maxQueuedQueries: 10_000,
  offerPolicy: 'auto',
};

export function resolveConfig(o: AgentOptions): AgentConfig {
  if (o.deltaMargin !== undefined && !(o.deltaMargin >= 0 && o.deltaMargin < 1)) {
    throw new RangeError(`deltaMargin ${o.deltaMargin} must be at least 0 and below 1 (the fraction a patch must save)`);
  }
  const d = DEFAULTS;
  const budget = { ...d.resendBudget, ...o.resendBudget };
  if (!(budget.windows > 0 && budget.perMs > 0)) throw new RangeError(`resendBudget ${JSON.stringify(budget)}: windows and perMs must be positive`);
  return {
    ...d,
    maxChunk: o.maxChunk ?? d.maxChunk,
    maxConcurrent: o.maxConcurrent ?? d.maxConcurrent,
    maxControlRetries: o.maxControlRetries ?? d.maxControlRetries,
    deadlines: { ...d.deadlines, ...o.deadlines },
    rtt: { ...d.rtt, ...o.rtt },
    reconnect: { ...d.reconnect, ...o.reconnect },
    delta: o.delta ?? d.delta,
    deltaMargin: o.deltaMargin ?? d.deltaMargin,
    maxInflight: o.maxInflight ?? d.maxInflight,
    queryGraceMs: o.queryGraceMs ?? d.queryGraceMs,
    tcpNoDelay: o.tcpNoDelay ?? d.tcpNoDelay,
    resendBudget: budget,
    releaseAssemblyTimeoutMs: o.releaseAssemblyTimeoutMs ?? d.releaseAssemblyTimeoutMs,
    offerPolicy: o.offerPolicy ?? d.offerPolicy,
  };
}
