import type { IncomingMessage, ServerResponse } from 'node:http';
import type { NodeStatus } from '../status.js';
import { rolloutsOf } from './rollout-shape.js';
import { snapshot, summaryOf, type StatusSources } from './snapshot.js';

export interface LiveOptions {
  /** Live-update clients at once; one more is refused (503). */
  maxClients: number;
  /** Bytes written to a client and not yet taken by its socket, above which the client is dropped. */
  maxBacklogBytes: number;
  /** Node changes are gathered and sent at most this often (ms). */
  flushMs: number;
  /** A comment line goes out after this long without events, so dead connections are noticed (ms). */
  heartbeatMs: number;
  log?: (level: 'info' | 'warn' | 'error', msg: string) => void;
}

/**
 * Server-Sent Events for the status page (`/api/events`). Node status changes are coalesced per
 * node and sent as one `nodes` event per flush, the same bytes to every client; rollouts and the
 * summary follow when they changed. A client whose socket does not take what it is sent falls
 * behind; past `maxBacklogBytes` it is dropped, so a slow reader costs at most that much memory and
 * never holds up the others (the browser's EventSource reconnects by itself and gets a fresh snapshot).
 */
export class LiveUpdates {
  private readonly clients = new Set<ServerResponse>();
  private readonly changed = new Map<string, NodeStatus>();
  private lastRollouts = '[]';
  private lastSummary = '';
  private lastSummaryAt = 0;
  private lastWrite = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Clients dropped for reading too slowly, since start. */
  dropped = 0;
  private readonly onStatus = (s: NodeStatus) => {
    if (this.clients.size > 0) this.changed.set(s.id, s);
  };

  constructor(
    private readonly src: StatusSources,
    private readonly o: LiveOptions,
  ) {}

  start(): void {
    this.src.agent.on('status', this.onStatus);
    this.timer = setInterval(() => this.flush(), this.o.flushMs);
    this.timer.unref();
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** Takes an `/api/events` request: false (nothing written) when the client limit is reached. */
  add(req: IncomingMessage, res: ServerResponse, headers: Record<string, string>): boolean {
    if (this.clients.size >= this.o.maxClients) return false;
    res.writeHead(200, { ...headers, 'Content-Type': 'text/event-stream; charset=utf-8', 'X-Accel-Buffering': 'no' });
    if (req.method === 'HEAD') {
      res.end();
      return true;
    }
    req.socket.setNoDelay(true);
    this.clients.add(res);
    res.on('close', () => this.clients.delete(res));
    const snap = snapshot(this.src);
    res.write(`retry: 3000\n\n${frame('snapshot', snap)}`);
    return true;
  }

  /** Sends what changed since the last flush to every client, dropping those too far behind. */
  flush(now = Date.now()): void {
    if (this.clients.size === 0) {
      this.changed.clear();
      return;
    }
    let out = '';
    if (this.changed.size > 0) {
      out += frame('nodes', [...this.changed.values()]);
      this.changed.clear();
    }
    const rollouts = JSON.stringify(rolloutsOf(this.src.agent));
    if (rollouts !== this.lastRollouts) {
      this.lastRollouts = rollouts;
      out += `event: rollouts\ndata: ${rollouts}\n\n`;
    }
    // The summary walks every node: only when something moved, or once a second for the counters.
    if (out !== '' || now - this.lastSummaryAt >= 1000) {
      this.lastSummaryAt = now;
      const summary = summaryOf(this.src, this.src.agent.statuses(), now);
      const { uptimeSeconds: _, ...figures } = summary;
      const key = JSON.stringify(figures);
      if (key !== this.lastSummary || out !== '') {
        this.lastSummary = key;
        out += frame('summary', summary);
      }
    }
    if (out === '' && now - this.lastWrite < this.o.heartbeatMs) return;
    if (out === '') out = ': keep-alive\n\n';
    this.lastWrite = now;
    for (const res of this.clients) {
      if (res.writableLength > this.o.maxBacklogBytes) {
        this.dropped++;
        this.o.log?.('warn', `http: dropped the live-update client at ${res.req.socket.remoteAddress ?? '?'}: ${res.writableLength} bytes it has not read (limit ${this.o.maxBacklogBytes})`);
        this.clients.delete(res);
        res.destroy();
        continue;
      }
      res.write(out);
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.src.agent.off('status', this.onStatus);
    for (const res of this.clients) res.destroy();
    this.clients.clear();
  }
}

/** One SSE event. JSON.stringify leaves no raw line feed in the data, so it is one `data:` line. */
function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}
