import mqtt, { type MqttClient } from 'mqtt';
import { topics } from '../shared/topics.js';
import type { StatusDoc } from './status-table.js';

export interface FeedOptions {
  brokerUrl: string;
  prefix?: string;
  username?: string;
  password?: string;
}

/** Status documents are small JSON; anything far bigger on a status topic is not one. */
const MAX_STATUS_BYTES = 64 * 1024;
/** A broker could hold statuses of any number of ids: an operator's view keeps at most this many. */
export const MAX_NODES = 100_000;

/**
 * The fleet as the broker holds it: the retained status of every node, with ONLINE taken from the
 * broker's own retained presence when it has one (the agent's `online` lags when the agent is down).
 * Calls `onChange` after each accepted message; the caller decides how often to redraw.
 */
export class FleetFeed {
  readonly nodes = new Map<string, StatusDoc>();
  private readonly presence = new Map<string, boolean>();
  private client: MqttClient | undefined;
  onChange: () => void = () => {};

  constructor(private readonly o: FeedOptions) {}

  async start(keepAlive = false): Promise<void> {
    const t = topics(this.o.prefix);
    this.client = await mqtt.connectAsync(this.o.brokerUrl, {
      protocolVersion: 4, username: this.o.username, password: this.o.password, connectTimeout: 10_000,
      // A one-shot read gives up on a lost connection; a watch reconnects and the retained messages come again.
      reconnectPeriod: keepAlive ? 2000 : 0,
    });
    // After the first connect, a lost broker is retried quietly (a watch shows the last known state).
    this.client.on('error', () => {});
    this.client.on('message', (topic, payload) => this.onMessage(t.deviceOf(topic), topic.endsWith('/presence'), payload));
    await this.client.subscribeAsync([t.statusWildcard, t.presenceWildcard], { qos: 1 });
  }

  private onMessage(id: string | undefined, isPresence: boolean, payload: Buffer): void {
    if (!id || payload.length > MAX_STATUS_BYTES) return;
    if (isPresence) {
      this.presence.set(id, payload.toString() === 'online');
      const s = this.nodes.get(id);
      if (s) this.nodes.set(id, { ...s, online: this.presence.get(id)! });
    } else if (payload.length === 0) {
      this.nodes.delete(id);
    } else {
      let doc: StatusDoc;
      try {
        doc = JSON.parse(payload.toString()) as StatusDoc;
      } catch {
        return; // not a ferry status document
      }
      if (typeof doc !== 'object' || doc === null || typeof doc.state !== 'string') return;
      if (!this.nodes.has(id) && this.nodes.size >= MAX_NODES) return;
      const online = this.presence.get(id);
      this.nodes.set(id, { ...doc, id, warnings: Array.isArray(doc.warnings) ? doc.warnings : [], online: online ?? Boolean(doc.online) });
    }
    this.onChange();
  }

  /** The nodes sorted by id (numbers in ids in numeric order), optionally those of one rollout. */
  rows(rollout?: string): StatusDoc[] {
    const all = [...this.nodes.values()];
    const picked = rollout === undefined ? all : all.filter((s) => (s.rollout ?? null) === rollout);
    return picked.sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
  }

  async stop(): Promise<void> {
    await this.client?.endAsync();
  }
}

/** Collects the retained documents: they arrive right after subscribing, then go quiet for `quietMs`. */
export async function readFleet(o: FeedOptions & { quietMs?: number }): Promise<FleetFeed> {
  const feed = new FleetFeed(o);
  let timer: NodeJS.Timeout | undefined;
  let settle = () => {};
  const quiet = new Promise<void>((resolve) => (settle = resolve));
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(settle, o.quietMs ?? 300);
  };
  // The quiet period counts from the subscription, not from the start of connecting.
  feed.onChange = () => timer && arm();
  await feed.start();
  arm();
  await quiet;
  await feed.stop();
  return feed;
}
