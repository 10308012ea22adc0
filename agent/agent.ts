import { randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { ProtocolError, Reason, reasonName } from '../shared/errors.js';
import type { LogFields, LogFn, LogLevel } from '../shared/log.js';
import { decodeUp, LIMITS, MsgType, QueryReason } from '../shared/messages.js';
import { encodeReleaseStatus, markerWithdraws } from '../shared/release-status.js';
import { isDeviceId, topics as makeTopics, type Topics } from '../shared/topics.js';
import { ReleaseCatalog } from './catalog.js';
import { AgentCounters } from './counters.js';
import { EventFeed } from './event-feed.js';
import { resolveConfig, type AgentConfig, type AgentOptions } from './config.js';
import { Links, type LinkName } from './links.js';
import { PatchCache } from './patches.js';
import { PresenceQueries } from './presence.js';
import { ReleaseIntake, type Verdict } from './release-intake.js';
import { Rollouts } from './rollouts.js';
import type { RolloutView } from './rollout-view.js';
import type { NodeStatus } from './status.js';
import { createLnsAdapter } from './lns/index.js';
import { LoraRuntime } from './lora/runtime.js';
import { AgentStore } from './store.js';
import type { Release } from './types.js';
import { SYSTEM_CLOCK, Updates, type Clock } from './updates.js';

export type { AgentOptions, StageDeadlines } from './config.js';

export interface AgentEvents {
  status: [NodeStatus];
  release: [Release];
  /** A transfer's retransmission timer fired: the RTO (after backoff) and how many silent expiries in a row. */
  windowTimeout: [{ id: string; rto: number; expiries: number }];
  /** A broker connection was lost; the next attempt comes after delayMs. */
  reconnect: [{ link: LinkName; delayMs: number; attempt: number }];
  /** Subscriptions are in place after a (re)connect and every known node has been asked to say Hello. */
  linkUp: [];
}

/**
 * The ferry agent: relays releases from operators to nodes and keeps, per node, the truth of where
 * its update stands. This class wires the parts: MQTT links, release intake, presence and Queries,
 * and the per-node update machines (agent/updates.ts around agent/update-fsm.ts).
 */
export class Agent extends EventEmitter<AgentEvents> {
  readonly store: AgentStore;
  readonly catalog: ReleaseCatalog;
  readonly topics: Topics;
  readonly config: AgentConfig;
  /** The name the agent's release verdicts are published under: its identity on the release link. */
  readonly name: string;
  /** What the agent has done since it started: chunks, bytes, acks, outcomes, verdicts (for metrics). */
  readonly counters = new AgentCounters();
  private readonly patches: PatchCache;
  private readonly links: Links;
  private readonly intake: ReleaseIntake;
  private readonly presence: PresenceQueries;
  private readonly updates: Updates;
  /** The event log on MQTT: live batches and history on request (docs/protocol.md 2.3). */
  readonly events: EventFeed;
  private readonly rolloutsRuntime: Rollouts;
  private sweeper: NodeJS.Timeout | undefined;
  /** LoRa nodes behind a network server, when `lora` is configured. */
  readonly lora: LoraRuntime | undefined;
  private closed = false;
  private lastBadTopic = 0;
  private lastStrangerError = 0;
  private readonly lastError = new Map<string, number>();

  constructor(
    private readonly opts: AgentOptions,
    clock: Clock = SYSTEM_CLOCK,
  ) {
    super();
    this.config = resolveConfig(opts);
    this.topics = makeTopics(opts.prefix);
    this.store = new AgentStore(opts.dataDir);
    this.catalog = new ReleaseCatalog(this.store, opts.trust ?? []);
    const log: LogFn = (level, msg, fields) => this.opts.log?.(level, msg, fields);
    this.patches = new PatchCache(opts.dataDir, { log });
    const clientId = opts.clientId ?? opts.username ?? `ferry-agent-${randomInt(1e9).toString(36)}`;
    // The broker's ACL lets an agent publish only the verdicts named after its username on that link.
    const name = (opts.upstreamUrl ? opts.upstreamUsername : opts.username) ?? clientId;
    this.name = isDeviceId(name) ? name : 'agent';
    this.links = new Links({
      ...opts,
      // The client id is the identity's name: a ferry broker admits an agent under no other (no takeover).
      clientId,
      upstreamClientId: opts.clientId ?? opts.upstreamUsername,
      topics: this.topics,
      cfg: this.config,
      log,
      onMessage: (topic, payload) => this.onMessage(topic, payload),
      onReconnect: (link, delayMs, attempt) => this.emit('reconnect', { link, delayMs, attempt }),
      onNodesReady: () => this.onLinkUp(),
      onDrain: () => this.presence.drain(),
    });
    this.presence = new PresenceQueries({
      graceMs: this.config.queryGraceMs,
      maxQueued: this.config.maxQueuedQueries,
      hasRoom: () => this.links.connected && this.links.pending < this.config.maxInflight >> 1,
      sendQuery: (id, reason) => this.links.sendDown(id, { type: MsgType.query, reason }),
    });
    this.rolloutsRuntime = new Rollouts({
      store: this.store, catalog: this.catalog, trust: opts.trust ?? [], agent: this.name, now: () => clock.now(), log,
      publish: (id, doc) => this.links.publishReleaseStatus(this.topics.rolloutState(id, this.name), doc),
      nodes: () => this.updates.nodes.values(),
      node: (id) => this.updates.nodes.get(id),
      // After the current step: a rollout's wake-up never runs inside the node machine's own step.
      consider: (ids) =>
        setImmediate(() => {
          if (this.closed) return;
          for (const id of ids) {
            const n = this.updates.nodes.get(id);
            if (n && n.row.lastSeen > 0) this.updates.consider(n);
          }
        }),
    });
    this.updates = new Updates({
      cfg: this.config, store: this.store, catalog: this.catalog, patches: this.patches, links: this.links, topics: this.topics, clock, log, agentName: this.name,
      counters: this.counters,
      onStatus: (s) => this.emit('status', s),
      onWindowTimeout: (e) => this.emit('windowTimeout', e),
      choose: (row) => this.rolloutsRuntime.choose(row),
      onNodeChange: (id) => this.rolloutsRuntime.nodeChanged(id),
    });
    this.events = new EventFeed({
      store: this.store, topics: this.topics, name: this.name, log,
      publish: (topic, doc) => this.links.publishEvents(topic, doc),
    });
    this.intake = new ReleaseIntake({
      catalog: this.catalog, store: this.store, topics: this.topics, timeoutMs: this.config.releaseAssemblyTimeoutMs, log,
      subscribeParts: (f) => this.links.subscribeParts(f),
      unsubscribeParts: (f) => this.links.unsubscribeParts(f),
      onReady: (release) => {
        this.emit('release', release);
        this.updates.releaseReady(release);
        this.lora?.releaseReady(release);
      },
      onVerdict: (v) => this.publishVerdict(v),
    });
    if (opts.lora) {
      const lns = 'kind' in opts.lora.lns && 'sendDown' in opts.lora.lns ? opts.lora.lns : createLnsAdapter(opts.lora.lns, log);
      this.lora = new LoraRuntime({
        lns, store: this.store, catalog: this.catalog, log, options: opts.lora.options, clock: opts.lora.clock, offerPolicy: this.config.offerPolicy,
        publishStatus: (id, doc) => void this.links.publishStatus(id, doc),
        onStatus: (s) => this.emit('status', s),
      });
    }
  }

  private log(level: LogLevel, msg: string, fields?: LogFields): void {
    this.opts.log?.(level, msg, fields);
  }

  async start(): Promise<void> {
    try {
      await this.links.start();
      this.intake.start();
      await this.lora?.start();
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.events.start();
    this.sweeper = setInterval(() => {
      this.updates.sweep();
      this.rolloutsRuntime.tick();
    }, 500);
    this.sweeper.unref();
    this.log('info', `agent connected to ${this.links.describe()}, ${this.catalog.all().length} release(s), ${this.updates.nodes.size} known node(s)`);
    for (const why of this.catalog.skipped) this.log('warn', `stored release not offered: ${why}`);
  }

  /** Subscriptions are in place: resume what was in progress, and ask every other known node for a Hello. */
  private onLinkUp(): void {
    if (this.closed) return;
    this.updates.resumeAll();
    this.rolloutsRuntime.republishAll();
    for (const id of this.updates.toQuery()) this.presence.enqueue(id, QueryReason.agentConnected);
    this.emit('linkUp');
  }

  async stop(): Promise<void> {
    this.closed = true;
    if (this.sweeper) clearInterval(this.sweeper);
    this.events.flush();
    this.events.stop();
    this.intake.stop();
    this.presence.stop();
    this.rolloutsRuntime.stop();
    this.updates.stop();
    await this.lora?.stop();
    await this.links.stop();
    await this.patches.close();
    this.store.close();
  }

  /** Snapshot of every node's status. */
  statuses(): NodeStatus[] {
    return [...[...this.updates.nodes.values()].map((n) => this.updates.statusOf(n)), ...(this.lora?.statuses() ?? [])];
  }

  status(id: string): NodeStatus | undefined {
    const n = this.updates.nodes.get(id);
    const l = this.lora?.nodes.get(id);
    return n ? this.updates.statusOf(n) : l && this.lora?.statusOf(l);
  }

  /** Every rollout this agent takes part in, merged with the other agents' published states. */
  rollouts(): RolloutView[] {
    return this.rolloutsRuntime.views();
  }

  /** Releases whose manifest arrived but not yet all their parts. */
  get assemblingReleases(): number {
    return this.catalog.assembling;
  }

  /** Part subscriptions held for releases being assembled. */
  get partSubscriptions(): number {
    return this.links.partSubscriptions;
  }

  /** Publishes this agent's retained verdict on a release (docs/protocol.md section 2.1). */
  private publishVerdict(v: Verdict): void {
    this.counters.verdicts[v.state]++;
    const withdrawn = v.state === 'accepted' && this.catalog.isWithdrawn(v.hw, v.version) ? true : undefined;
    const doc = encodeReleaseStatus({ v: 1, agent: this.name, ...v, withdrawn, at: Math.floor(Date.now() / 1000) });
    this.links.publishReleaseStatus(this.topics.releaseStatus(v.hw, v.version, this.name), doc);
  }

  /** A withdraw marker was set or cleared (a restore marker, or an empty payload) by an operator. */
  private onWithdrawn(hw: string, version: string, on: boolean): void {
    if (this.catalog.isWithdrawn(hw, version) === on) return;
    const held = this.catalog.setWithdrawn(hw, version, on);
    this.log('info', `release ${hw} ${version} ${on ? 'withdrawn: no longer offered' : 'restored: offered again'}`, { release: `${hw}/${version}`, withdrawn: on });
    this.store.event(null, on ? 'release-withdrawn' : 'release-restored', `${hw} ${version}`);
    for (const r of held) {
      this.updates.withdrawn(r, on);
      this.publishVerdict({ state: 'accepted', hw, version, digest: r.row.digest.toString('hex') });
    }
  }

  // ---- MQTT intake -------------------------------------------------------------------------

  private onMessage(topic: string, payload: Buffer): void {
    try {
      const levels = topic.split('/');
      const p = this.topics.prefix.split('/').length;
      if (levels[p] === 'd') {
        const id = this.topics.deviceOf(topic);
        if (!id) return this.badTopic(topic, payload.length);
        if (levels[p + 2] === 'up') this.onUp(id, payload);
        else if (levels[p + 2] === 'presence') this.onPresence(id, payload.toString());
        else if (levels[p + 2] === 'info') this.rolloutsRuntime.onInfo(id, payload);
      } else if (levels[p] === 'e') {
        if (levels.length === p + 3 && levels[p + 1] === 'req' && isDeviceId(levels[p + 2])) this.events.onRequest(levels[p + 2], payload);
      } else if (levels[p] === 'rollout') {
        const rest = levels.slice(p + 1);
        if (rest.length === 1) this.rolloutsRuntime.onDocument(rest[0], payload);
        else if (rest.length === 3 && rest[1] === 'state') this.rolloutsRuntime.onPeerState(rest[0], rest[2], payload);
      } else if (levels[p] === 'r') {
        const rest = levels.slice(p + 1);
        if (rest.length === 3 && rest[2] === 'withdrawn') this.onWithdrawn(rest[0], rest[1], markerWithdraws(payload));
        else this.intake.onMessage(rest, payload);
      }
    } catch (err) {
      // Nothing from the network may take the agent down.
      this.log('error', `handling ${topic}: ${(err as Error).stack ?? err}`);
    }
  }

  /** A message on a device topic whose id cannot be a device id: logged (rate-limited), never answered. */
  private badTopic(topic: string, bytes: number): void {
    const now = Date.now();
    if (now - this.lastBadTopic < 1000) return;
    this.lastBadTopic = now;
    const shown = topic.length > 120 ? `${topic.slice(0, 120)}…` : topic;
    this.log('warn', `ignored ${bytes} bytes on ${JSON.stringify(shown)}: not a valid device topic`);
    this.store.event(null, 'bad-topic', shown);
  }

  /** One resume trigger: the node's Hello. `online` only starts the grace period before a Query. */
  private onPresence(id: string, text: string): void {
    const online = text === 'online';
    if (online) this.presence.online(id, QueryReason.presence);
    else this.presence.settled(id);
    this.updates.presence(id, online);
  }

  private onUp(id: string, payload: Buffer): void {
    let msg;
    try {
      msg = decodeUp(payload);
    } catch (err) {
      const e = err instanceof ProtocolError ? err : new ProtocolError(Reason.malformed, String(err));
      return this.rejectFromNode(id, e.reason, e.message);
    }
    if (msg.type === MsgType.hello) {
      if (msg.deviceId !== id) return this.rejectFromNode(id, Reason.unknownDevice, `hello.deviceId "${msg.deviceId}" does not match topic device "${id}"`);
      this.presence.settled(id);
      this.updates.hello(id, msg);
      return;
    }
    const n = this.updates.nodes.get(id);
    if (!n) {
      // Nothing is stored for a device we have never heard a Hello from; asking it for one is the fix.
      this.rejectFromNode(id, Reason.unknownDevice, `${msg.type === MsgType.ack ? 'ack' : 'report'} from a node that has not said hello`);
      this.presence.enqueue(id, QueryReason.presence);
      return;
    }
    if (msg.type === MsgType.ack) {
      if (this.updates.ack(n, msg) === 'past-end') this.rejectFromNode(id, Reason.badField, `ack.base ${msg.base} is past the last chunk ${n.row.chunkCount}`);
    } else this.updates.report(n, msg);
  }

  /** Logs bad input from a node and tells it why (at most once a second per node). */
  private rejectFromNode(id: string, reason: number, detail: string): void {
    this.log('warn', `node ${id}: rejected message: ${reasonName(reason)}: ${detail}`, { device: id, reason: reasonName(reason) });
    this.store.event(id, 'bad-message', `${reasonName(reason)}: ${detail}`);
    const now = Date.now();
    if (this.updates.nodes.has(id)) {
      if (now - (this.lastError.get(id) ?? 0) < 1000) return;
      this.lastError.set(id, now);
    } else {
      // Devices we keep no record of share one budget: garbage from many ids cannot flood the broker.
      if (now - this.lastStrangerError < 100) return;
      this.lastStrangerError = now;
    }
    this.links.sendDown(id, { type: MsgType.error, reason, detail: detail.slice(0, LIMITS.maxDetail) });
  }
}
