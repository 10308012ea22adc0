import type { Agent } from '../agent.js';
import type { NodeStatus } from '../status.js';
import type { NodeStateName } from '../types.js';
import type { BrokerStats } from '../../broker/plugin.js';
import { rolloutsOf, type RolloutView } from './rollout-shape.js';

/** Every state a node can be in, in the order an update walks through them (the page and metrics list all). */
export const NODE_STATES: readonly NodeStateName[] = [
  'idle', 'queued', 'offered', 'downloading', 'verifying', 'activating', 'deferred', 'confirming',
  'confirmed', 'rolledBack', 'rejected', 'timedOut', 'failed', 'cancelled',
];

/** Outcomes that count as a failed update on the page's "recent failures". */
export const FAILED_STATES: ReadonlySet<string> = new Set(['rolledBack', 'rejected', 'timedOut', 'failed']);

/** What the status page and metrics read: the agent, and the broker beside it when there is one. */
export interface StatusSources {
  agent: Agent;
  broker?: () => BrokerStats;
  /** When the process started (ms since the epoch). */
  startedAt: number;
}

export interface Summary {
  agent: string;
  uptimeSeconds: number;
  nodes: number;
  online: number;
  byState: Record<string, number>;
  releases: number;
  bytesRelayed: number;
  chunksSent: number;
  retransmits: number;
  acks: number;
  brokerClients: number | null;
  authFailures: number | null;
}

export interface Failure {
  device: string;
  outcome: string;
  reason: string | null;
  detail: string;
  version: string | null;
  at: string | null;
}

/** `/api/status`: everything the page shows, in one JSON document. */
export interface Snapshot {
  at: string;
  summary: Summary;
  nodes: NodeStatus[];
  rollouts: RolloutView[];
  failures: Failure[];
}

const MAX_FAILURES = 50;

export function summaryOf(src: StatusSources, nodes: NodeStatus[], now = Date.now()): Summary {
  const byState: Record<string, number> = Object.fromEntries(NODE_STATES.map((s) => [s, 0]));
  let online = 0;
  for (const n of nodes) {
    byState[n.state] = (byState[n.state] ?? 0) + 1;
    if (n.online) online++;
  }
  const c = src.agent.counters;
  const b = src.broker?.();
  return {
    agent: src.agent.name,
    uptimeSeconds: Math.floor((now - src.startedAt) / 1000),
    nodes: nodes.length,
    online,
    byState,
    releases: src.agent.catalog.all().length,
    bytesRelayed: c.bytesRelayed,
    chunksSent: c.chunksSent,
    retransmits: c.retransmits,
    acks: c.acks,
    brokerClients: b ? Object.values(b.clients).reduce((a, v) => a + v, 0) : null,
    authFailures: b ? Object.values(b.authFailures).reduce((a, v) => a + v, 0) : null,
  };
}

/** Nodes whose last update failed, newest first. */
export function failuresOf(nodes: NodeStatus[]): Failure[] {
  return nodes
    .filter((n) => FAILED_STATES.has(n.state))
    .sort((a, b) => (b.lastSeen ?? '').localeCompare(a.lastSeen ?? '') || a.id.localeCompare(b.id, 'en', { numeric: true }))
    .slice(0, MAX_FAILURES)
    .map((n) => ({ device: n.id, outcome: n.state, reason: n.reason, detail: n.detail, version: n.targetVersion, at: n.lastSeen }));
}

export function snapshot(src: StatusSources, now = Date.now()): Snapshot {
  const nodes = src.agent.statuses().sort((a, b) => a.id.localeCompare(b.id, 'en', { numeric: true }));
  return { at: new Date(now).toISOString(), summary: summaryOf(src, nodes, now), nodes, rollouts: rolloutsOf(src.agent), failures: failuresOf(nodes) };
}
