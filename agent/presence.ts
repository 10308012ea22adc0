export interface PresenceOptions {
  graceMs: number;
  maxQueued: number;
  /** Room for one more QoS 1 publish on the node link (the backlog is under half its bound). */
  hasRoom: () => boolean;
  sendQuery: (id: string, reason: number) => void;
}

/**
 * Queries: asking nodes to say Hello. One resume trigger after a node reboots: its Hello. The broker's
 * `online` only starts a grace period; if no Hello is heard in it, the node gets a Query (its Hello
 * went out before the agent listened, or was lost). Queries go out a few at a time so the QoS 1
 * backlog stays bounded; the queue itself is bounded, since ids come from the network.
 */
export class PresenceQueries {
  private readonly queue = new Map<string, number>();
  private readonly graceTimers = new Map<string, NodeJS.Timeout>();
  private closed = false;

  constructor(private readonly o: PresenceOptions) {}

  /** The broker says the node came online: a Query follows unless its Hello comes first. */
  online(id: string, reason: number): void {
    if (this.graceTimers.has(id) || this.closed) return;
    const t = setTimeout(() => {
      this.graceTimers.delete(id);
      if (!this.closed) this.enqueue(id, reason);
    }, this.o.graceMs);
    t.unref();
    this.graceTimers.set(id, t);
  }

  /** Offline, or a Hello arrived: no Query for it now. */
  settled(id: string): void {
    const t = this.graceTimers.get(id);
    if (t) clearTimeout(t);
    this.graceTimers.delete(id);
  }

  enqueue(id: string, reason: number): void {
    if (!this.queue.has(id) && this.queue.size < this.o.maxQueued) this.queue.set(id, reason);
    this.drain();
  }

  get queued(): number {
    return this.queue.size;
  }

  drain(): void {
    if (this.closed) return;
    for (const [id, reason] of this.queue) {
      if (!this.o.hasRoom()) return;
      this.queue.delete(id);
      this.o.sendQuery(id, reason);
    }
  }

  stop(): void {
    this.closed = true;
    for (const t of this.graceTimers.values()) clearTimeout(t);
    this.graceTimers.clear();
  }
}

