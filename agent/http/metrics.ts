import { exposition, type Family } from './exposition.js';
import { rolloutsOf } from './rollout-shape.js';
import { NODE_STATES, type StatusSources } from './snapshot.js';

/** Figures of the HTTP server itself, shown beside the agent's. */
export interface HttpStats {
  sseClients: number;
  sseDropped: number;
}

const OUTCOMES = ['confirmed', 'rolledBack', 'rejected', 'timedOut', 'failed', 'cancelled'] as const;

/** `/metrics`: the families of docs/observability.md, from the live agent (and broker). */
export function metricsText(src: StatusSources, http: HttpStats, now = Date.now()): string {
  const agent = src.agent;
  const c = agent.counters;
  const nodes = agent.statuses();
  const byState = new Map<string, number>(NODE_STATES.map((s) => [s, 0]));
  let online = 0;
  for (const n of nodes) {
    byState.set(n.state, (byState.get(n.state) ?? 0) + 1);
    if (n.online) online++;
  }
  const families: Family[] = [
    { name: 'ferry_nodes', type: 'gauge', help: 'Known nodes by update state.', samples: [...byState].map(([state, value]) => ({ labels: { state }, value })) },
    { name: 'ferry_nodes_online', type: 'gauge', help: 'Known nodes whose broker connection is up.', samples: [{ value: online }] },
    { name: 'ferry_releases', type: 'gauge', help: 'Releases the agent holds (verified, all parts).', samples: [{ value: agent.catalog.all().length }] },
    { name: 'ferry_release_verdicts_total', type: 'counter', help: 'Release verdicts the agent published, by state.', samples: (['accepted', 'refused'] as const).map((state) => ({ labels: { state }, value: c.verdicts[state] })) },
    { name: 'ferry_relayed_bytes_total', type: 'counter', help: 'Payload bytes (image or patch) sent to nodes in chunks, resends included.', samples: [{ value: c.bytesRelayed }] },
    { name: 'ferry_chunks_sent_total', type: 'counter', help: 'Chunk messages sent to nodes, resends included.', samples: [{ value: c.chunksSent }] },
    { name: 'ferry_retransmits_total', type: 'counter', help: 'Chunks sent again because their ack did not come in time.', samples: [{ value: c.retransmits }] },
    { name: 'ferry_acks_total', type: 'counter', help: 'Acks received for live transfers.', samples: [{ value: c.acks }] },
    { name: 'ferry_update_outcomes_total', type: 'counter', help: 'Updates that ended, by outcome.', samples: OUTCOMES.map((outcome) => ({ labels: { outcome }, value: c.outcomes.get(outcome) ?? 0 })) },
    ...rolloutFamilies(src),
  ];
  const b = src.broker?.();
  if (b) {
    families.push(
      { name: 'ferry_broker_clients', type: 'gauge', help: 'Authenticated broker connections, by role.', samples: Object.entries(b.clients).map(([role, value]) => ({ labels: { role }, value })) },
      { name: 'ferry_broker_auth_failures_total', type: 'counter', help: 'Refused broker logins, by reason.', samples: Object.entries(b.authFailures).map(([reason, value]) => ({ labels: { reason }, value })) },
      { name: 'ferry_broker_connections_refused_total', type: 'counter', help: 'Broker connections its guards closed, by cause: rate (new connections per address), pending (caps on connections not yet logged in), frame (packet over its size cap).', samples: Object.entries(b.connectionsRefused).map(([reason, value]) => ({ labels: { reason }, value })) },
    );
  }
  families.push(
    { name: 'ferry_http_sse_clients', type: 'gauge', help: 'Status pages receiving live updates.', samples: [{ value: http.sseClients }] },
    { name: 'ferry_http_sse_dropped_total', type: 'counter', help: 'Live-update clients dropped for reading too slowly.', samples: [{ value: http.sseDropped }] },
    { name: 'ferry_uptime_seconds', type: 'gauge', help: 'Seconds since the process started.', samples: [{ value: Math.floor((now - src.startedAt) / 1000) }] },
    { name: 'ferry_process_resident_memory_bytes', type: 'gauge', help: 'Resident set size of the process.', samples: [{ value: process.memoryUsage.rss() }] },
  );
  return exposition(families);
}

function rolloutFamilies(src: StatusSources): Family[] {
  const rollouts = rolloutsOf(src.agent);
  const info: Family = { name: 'ferry_rollout_info', type: 'gauge', help: 'One per rollout: its release and state (value 1).', samples: [] };
  const current: Family = { name: 'ferry_rollout_current_wave', type: 'gauge', help: 'The wave a rollout is at (0 = canary).', samples: [] };
  const waveNodes: Family = { name: 'ferry_rollout_wave_nodes', type: 'gauge', help: 'Nodes of a rollout wave, by where their update stands (target: nodes the wave is meant to reach).', samples: [] };
  for (const r of rollouts) {
    info.samples.push({ labels: { rollout: r.id, hw: r.hw, version: r.version, state: r.state }, value: 1 });
    current.samples.push({ labels: { rollout: r.id }, value: r.currentWave });
    for (const w of r.waves) {
      const wave = String(w.index);
      const pending = Math.max(0, w.nodes - w.confirmed - w.failed - w.inProgress);
      for (const [state, value] of [['target', w.target], ['confirmed', w.confirmed], ['failed', w.failed], ['in_progress', w.inProgress], ['pending', pending]] as const) {
        waveNodes.samples.push({ labels: { rollout: r.id, wave, state }, value });
      }
    }
  }
  return [info, current, waveNodes];
}
