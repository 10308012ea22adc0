import mqtt, { type MqttClient } from 'mqtt';
import type { LogFn } from '../shared/log.js';
import '../broker/packet-numbers.js';
import { encodeMessage, type DownMessage } from '../shared/messages.js';
import type { Topics } from '../shared/topics.js';
import type { AgentConfig } from './config.js';
import { Outbox } from './outbox.js';
import { Backoff, keepReconnecting, untilConnected } from './reconnect.js';

export type LinkName = 'nodes' | 'upstream';

export interface LinkOptions {
  brokerUrl: string;
  upstreamUrl?: string;
  username?: string;
  password?: string;
  upstreamUsername?: string;
  upstreamPassword?: string;
  clientId: string;
  /** Upstream client id (default: clientId): the upstream identity's name. */
  upstreamClientId?: string;
  topics: Topics;
  cfg: AgentConfig;
  log: LogFn;
  onMessage: (topic: string, payload: Buffer) => void;
  onReconnect: (link: LinkName, delayMs: number, attempt: number) => void;
  /** The nodes' broker took our subscriptions (after every connect). */
  onNodesReady: () => void;
  /** The node link's QoS 1 backlog drained a little. */
  onDrain: () => void;
}

/**
 * The agent's MQTT connections: one to the nodes' broker, and one upstream for releases and statuses
 * when configured (else the same one). Publishes are fire-and-forget through bounded outboxes;
 * reconnects back off with jitter; subscriptions are made on every connect.
 */
export class Links {
  private nodes: MqttClient | undefined;
  private upstream: MqttClient | undefined;
  private outbox: Outbox | undefined;
  private opOutbox: Outbox | undefined;
  private readonly stopReconnecting: (() => void)[] = [];
  /** Part wildcards subscribed while releases assemble: subscribed again after a reconnect. */
  private readonly partSubs = new Set<string>();
  private closed = false;

  constructor(private readonly o: LinkOptions) {}

  get connected(): boolean {
    return this.nodes?.connected === true;
  }

  /** QoS 1 publishes on the node link still awaiting PUBACK. */
  get pending(): number {
    return this.outbox?.pending ?? 0;
  }

  get hasUpstream(): boolean {
    return this.o.upstreamUrl !== undefined;
  }

  describe(): string {
    return this.o.upstreamUrl ? `${this.o.brokerUrl} (nodes) and ${this.o.upstreamUrl} (releases, status)` : this.o.brokerUrl;
  }

  async start(): Promise<void> {
    const o = this.o;
    const client = this.connect(o.brokerUrl, o.username, o.password, 'nodes', o.clientId);
    this.nodes = client;
    this.outbox = this.makeOutbox(client, true);
    const upstream = o.upstreamUrl ? this.connect(o.upstreamUrl, o.upstreamUsername, o.upstreamPassword, 'upstream', o.upstreamClientId ?? o.clientId) : client;
    this.upstream = upstream;
    this.opOutbox = upstream === client ? this.outbox : this.makeOutbox(upstream, false);
    const t = o.topics;
    const firstReady = new Promise<void>((resolve, reject) => {
      client.on('connect', () => {
        const filters = [t.upWildcard, t.presenceWildcard, t.infoWildcard, ...(upstream === client ? [...this.releaseFilters(), ...this.partSubs] : [])];
        client.subscribeAsync(filters, { qos: 1 }).then(
          () => {
            if (this.closed) return;
            o.onNodesReady();
            resolve();
          },
          (err: Error) => {
            o.log('warn', `subscribing on ${o.brokerUrl}: ${err.message}`);
            reject(err);
          },
        );
      });
      if (upstream !== client) {
        upstream.on('connect', () => {
          upstream.subscribeAsync([...this.releaseFilters(), ...this.partSubs], { qos: 1 }).catch((err: Error) => o.log('warn', `subscribing on ${o.upstreamUrl}: ${err.message}`));
        });
      }
    });
    // A broker that is not up yet (a Pi whose WAN comes late) is waited for with backoff; only a
    // broker that refuses us (credentials, authorisation) fails the start.
    await Promise.all([
      untilConnected(client, (err) => o.log('warn', `waiting for the nodes broker ${o.brokerUrl} (${err.message}); retrying with backoff`)),
      upstream === client ? undefined : untilConnected(upstream, (err) => o.log('warn', `waiting for the upstream broker ${o.upstreamUrl} (${err.message}); retrying with backoff`)),
      firstReady,
    ]);
  }

  /** What the agent reads from operators: releases, withdraw markers, rollouts and the other agents' rollout states. */
  private releaseFilters(): string[] {
    const t = this.o.topics;
    return [t.manifestWildcard, t.withdrawnWildcard, t.eventsRequestWildcard, t.rolloutWildcard, t.rolloutStateWildcard];
  }

  private makeOutbox(client: MqttClient, nodeLink: boolean): Outbox {
    const max = this.o.cfg.maxInflight;
    return new Outbox(
      client,
      max,
      (what) => this.o.log('warn', `publish backlog full (${max} QoS 1 messages unacknowledged by the broker): dropping ${what} and later ones until it drains`),
      () => {
        if (nodeLink) this.o.onDrain();
      },
    );
  }

  private connect(url: string, username: string | undefined, password: string | undefined, link: LinkName, clientId: string): MqttClient {
    const client = mqtt.connect(url, {
      protocolVersion: 4,
      clientId,
      username,
      password,
      clean: true,
      // MQTT.js would retry at a fixed period; keepReconnecting below backs off with jitter instead.
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      // Chunks are QoS 0 and resent by the window logic: queueing them while offline only floods
      // the node with stale data on reconnect.
      queueQoSZero: false,
      resubscribe: false,
    });
    client.on('message', (topic, payload) => this.o.onMessage(topic, payload));
    client.on('error', (err) => this.o.log('warn', `mqtt ${url}: ${err.message}`));
    // Without TCP_NODELAY, Nagle holds a small write (a control message, the tail of a chunk burst)
    // until the previous segment is acked, and the receiver may delay that ack: MQTT.js leaves it on.
    client.on('connect', () => {
      const socket = client.stream as { setNoDelay?: (on: boolean) => void };
      socket.setNoDelay?.(this.o.cfg.tcpNoDelay);
    });
    const backoff = new Backoff(this.o.cfg.reconnect);
    this.stopReconnecting.push(
      keepReconnecting(client, backoff, (delayMs, attempt) => {
        if (this.closed) return;
        if (attempt === 1) this.o.log('warn', `lost the ${link} broker ${url}; reconnecting with backoff`);
        this.o.onReconnect(link, delayMs, attempt);
      }),
    );
    return client;
  }

  /** Fire-and-forget publish to a node: offline or with the backlog full it is dropped (timers resend). */
  sendDown(id: string, msg: DownMessage, qos: 0 | 1 = 1): boolean {
    const box = this.outbox;
    if (!box) return false;
    return box.publish(this.o.topics.down(id), encodeMessage(msg), { qos }, `message ${msg.type} to ${id}`, (err) => {
      if (!this.closed) this.o.log('warn', `publish to ${id}: ${err.message}`);
    });
  }

  /** Publishes a retained status on both links; false when a link refused it (try again later). */
  publishStatus(id: string, doc: string): boolean {
    let ok = true;
    for (const box of new Set([this.outbox, this.opOutbox])) {
      if (!box) continue;
      const sent = box.publish(this.o.topics.status(id), doc, { qos: 1, retain: true }, `status of ${id}`, (err) => {
        if (!this.closed) this.o.log('warn', `status for ${id}: ${err.message}`);
      });
      if (!sent) ok = false;
    }
    return ok;
  }

  /** Publishes a retained release verdict or rollout state on the release link (upstream, else the one link). */
  publishReleaseStatus(topic: string, doc: string): boolean {
    const box = this.opOutbox;
    if (!box) return false;
    return box.publish(topic, doc, { qos: 1, retain: true }, `release status ${topic}`, (err) => {
      if (!this.closed) this.o.log('warn', `release status ${topic}: ${err.message}`);
    });
  }

  /**
   * Publishes event-log traffic on the operators' link (QoS 1, not retained). It may take at most a
   * quarter of the publish backlog: events must never crowd out node traffic or release verdicts.
   */
  publishEvents(topic: string, doc: string): boolean {
    const box = this.opOutbox;
    if (!box || box.pending >= this.o.cfg.maxInflight >> 2) return false;
    return box.publish(topic, doc, { qos: 1 }, `events ${topic}`);
  }

  subscribeParts(filter: string): void {
    this.partSubs.add(filter);
    this.upstream?.subscribe(filter, { qos: 1 }, (err) => {
      if (err && !this.closed) this.o.log('warn', `subscribing to ${filter}: ${err.message}`);
    });
  }

  unsubscribeParts(filter: string): void {
    if (!this.partSubs.delete(filter)) return;
    if (this.upstream?.connected) this.upstream.unsubscribe(filter);
  }

  get partSubscriptions(): number {
    return this.partSubs.size;
  }

  async stop(): Promise<void> {
    this.closed = true;
    for (const stop of this.stopReconnecting.splice(0)) stop();
    for (const box of new Set([this.outbox, this.opOutbox])) await box?.end(1000);
  }
}
