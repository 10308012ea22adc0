import type { Outcome } from './types.js';

/**
 * Monotonic counters of what the agent has done since its process started, for `/metrics`
 * (agent/http/metrics.ts). Per-node figures in the node rows restart with each session; these never
 * go down, which is what a Prometheus counter needs.
 */
export class AgentCounters {
  /** Chunk messages published to nodes, first sends and resends. */
  chunksSent = 0;
  /** Payload bytes in those chunks (image or patch bytes relayed). */
  bytesRelayed = 0;
  /** Chunks sent again because their ack did not come in time. */
  retransmits = 0;
  /** Acks from nodes that belonged to a live transfer. */
  acks = 0;
  /** Release verdicts this agent published, by state. */
  readonly verdicts = { accepted: 0, refused: 0 };
  /** Ended updates, by outcome. */
  readonly outcomes = new Map<Outcome, number>();

  outcome(o: Outcome): void {
    this.outcomes.set(o, (this.outcomes.get(o) ?? 0) + 1);
  }
}
