import { randomInt, type KeyObject } from 'node:crypto';
import { EventEmitter } from 'node:events';
import mqtt, { type MqttClient } from 'mqtt';
import { ProtocolError, Reason, reasonName } from '../shared/errors.js';
import { ManifestFlag } from '../shared/manifest.js';
import {
  Capability,
  Encoding,
  encodeMessage,
  decodeUp,
  ImageState,
  LIMITS,
  MsgType,
  negotiateChunkSize,
  QueryReason,
  Stage,
  type Ack,
  type DownMessage,
  type Hello,
  type Report,
} from '../shared/messages.js';
import { topics as makeTopics, type Topics } from '../shared/topics.js';
import { compareVersions } from '../shared/version.js';
import { ReleaseCatalog, type Release } from './catalog.js';
import { PatchCache } from './patches.js';
import { sha256 } from '../shared/manifest.js';
import { DEFAULT_RTT, jittered, RttEstimator, type RttConfig } from './rtt.js';
import { Outbox } from './outbox.js';
import { Backoff, DEFAULT_RECONNECT, keepReconnecting, type ReconnectConfig } from './reconnect.js';
import { AgentStore, type NodeRow, type NodeStateName } from './store.js';
import { nodeStatus, type NodeStatus } from './status.js';
import { TransferWindow } from './window.js';

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

export interface AgentOptions {
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
  /** Send delta patches to nodes that can apply them (default true). */
  delta?: boolean;
  /** Send the delta only when it is at least this fraction smaller than the full image (default 0.2). */
  deltaMargin?: number;
  /** Resends of an unanswered Offer/Activate before the agent waits for the node to speak. */
  maxControlRetries?: number;
  /** Backoff between broker reconnect attempts (exponential with jitter). */
  reconnect?: Partial<ReconnectConfig>;
  /** QoS 1 publishes awaiting PUBACK per broker connection before further ones are refused (default 256). */
  maxInflight?: number;
  /** How long a node the broker reports online may stay silent before the agent sends it a Query (default 1000 ms). */
  queryGraceMs?: number;
  /** TCP_NODELAY on the broker connections (default true); false only to measure what it buys. */
  tcpNoDelay?: boolean;
  log?: (level: 'info' | 'warn' | 'error', msg: string) => void;
}

const DEFAULT_DEADLINES: StageDeadlines = { download: 30 * 60_000, verify: 2 * 60_000, install: 10 * 60_000, confirm: 5 * 60_000 };
const ACTIVE: ReadonlySet<NodeStateName> = new Set(['offered', 'downloading', 'verifying']);
const TERMINAL: ReadonlySet<NodeStateName> = new Set(['confirmed', 'rolledBack', 'rejected', 'timedOut', 'failed', 'idle']);
/** Delta refusals that say nothing against the patch itself (the node, the link or the slot was the problem). */
const NOT_THE_PATCH: ReadonlySet<number> = new Set([Reason.deltaBaseMismatch, Reason.digestMismatch, Reason.noSpace]);
/** Refusals of the release itself: a full image would be refused too, so a delta session ends on them. */
const RELEASE_REFUSALS: ReadonlySet<number> = new Set([
  Reason.badSignature, Reason.unknownKey, Reason.wrongHardware, Reason.downgrade, Reason.securityDowngrade, Reason.noRollbackSupport, Reason.unsupportedVersion,
]);
const BITMAP_PERSIST_MS = 2000;
const MAX_QUEUED_QUERIES = 10_000;

/** Runtime state of one node; the persisted part is `row`. */
/** What travels in a session: the full image, or a patch from the node's running image. */
interface Payload {
  bytes: Buffer;
  encoding: number;
  digest: Buffer;
  baseDigest?: Buffer;
}

interface NodeRuntime {
  row: NodeRow;
  rtt: RttEstimator;
  window?: TransferWindow;
  release?: Release;
  payload?: Payload;
  timer?: NodeJS.Timeout;
  controlTries: number;
  silentExpiries: number;
  rebootSeen: boolean;
  bitmapDirty: boolean;
  lastBitmapSave: number;
  lastError: number;
  statusDirty: boolean;
  lastStatus: number;
  online: boolean;
  warnings: string[];
  /** A Hello arrived since this agent process started: the agent knows the node's current truth. */
  helloSinceStart: boolean;
  /** Boot count of the newest Hello: an older one is a late duplicate and is ignored. */
  bootCount?: number;
  /** An Offer went out: the node's next Ack answers it and describes everything the node holds. */
  offerAnswerPending: boolean;
}

export interface AgentEvents {
  status: [NodeStatus];
  release: [Release];
  /** A transfer's retransmission timer fired: the RTO (after backoff) and how many silent expiries in a row. */
  windowTimeout: [{ id: string; rto: number; expiries: number }];
  /** A broker connection was lost; the next attempt comes after delayMs. */
  reconnect: [{ link: 'nodes' | 'upstream'; delayMs: number; attempt: number }];
  /** Subscriptions are in place after a (re)connect and every known node has been asked to say Hello. */
  linkUp: [];
}

/**
 * The ferry agent: relays releases from operators to nodes and keeps, per node, the truth of
 * where its update stands. One MQTT connection; every node's state machine runs off that
 * connection's messages and per-node timers, and nothing in the message handler awaits the network.
 */
export class Agent extends EventEmitter<AgentEvents> {
  readonly store: AgentStore;
  readonly catalog: ReleaseCatalog;
  readonly topics: Topics;
  private readonly patches: PatchCache;
  /** Connection to the nodes' broker. */
  private client: MqttClient | undefined;
  /** Connection for releases and statuses: the same client unless an upstream broker is configured. */
  private opClient: MqttClient | undefined;
  private readonly nodes = new Map<string, NodeRuntime>();
  private readonly queue: string[] = [];
  private readonly opts: Required<Pick<AgentOptions, 'maxChunk' | 'maxConcurrent' | 'maxControlRetries'>> & AgentOptions;
  private readonly deadlines: StageDeadlines;
  private readonly rttConfig: RttConfig;
  private sweeper: NodeJS.Timeout | undefined;
  private closed = false;
  private outbox: Outbox | undefined;
  private opOutbox: Outbox | undefined;
  private readonly stopReconnecting: (() => void)[] = [];
  /** Part wildcards subscribed while releases assemble: subscribed again after a reconnect. */
  private readonly partSubs = new Set<string>();
  /** Nodes waiting for a Query, in order (sent a few at a time so the QoS 1 backlog stays bounded). */
  private readonly queryQueue = new Map<string, number>();
  /** Presence-triggered Queries waiting out the grace period (keyed by device id, known or not). */
  private readonly presenceTimers = new Map<string, NodeJS.Timeout>();

  constructor(opts: AgentOptions) {
    super();
    if (opts.deltaMargin !== undefined && !(opts.deltaMargin >= 0 && opts.deltaMargin < 1)) {
      throw new RangeError(`deltaMargin ${opts.deltaMargin} must be at least 0 and below 1 (the fraction a patch must save)`);
    }
    this.opts = { maxChunk: 16 * 1024, maxConcurrent: 16, maxControlRetries: 8, ...opts };
    this.deadlines = { ...DEFAULT_DEADLINES, ...opts.deadlines };
    this.rttConfig = { ...DEFAULT_RTT, ...opts.rtt };
    this.topics = makeTopics(opts.prefix);
    this.store = new AgentStore(opts.dataDir);
    this.catalog = new ReleaseCatalog(this.store, opts.trust ?? []);
    this.patches = new PatchCache(opts.dataDir, { log: (level, msg) => this.log(level, msg) });
    for (const row of this.store.nodes()) this.nodes.set(row.id, this.newRuntime(row));
  }

  private log(level: 'info' | 'warn' | 'error', msg: string): void {
    this.opts.log?.(level, msg);
  }

  private newRuntime(row: NodeRow): NodeRuntime {
    return {
      row,
      rtt: new RttEstimator(this.rttConfig),
      controlTries: 0,
      silentExpiries: 0,
      rebootSeen: row.state === 'confirming',
      bitmapDirty: false,
      lastBitmapSave: 0,
      lastError: 0,
      statusDirty: true,
      lastStatus: 0,
      online: false,
      warnings: [],
      helloSinceStart: false,
      offerAnswerPending: false,
    };
  }

  async start(): Promise<void> {
    // The client id is the identity's name: a ferry broker admits an agent under no other (no takeover).
    const id = this.opts.clientId ?? this.opts.username ?? `ferry-agent-${randomInt(1e9).toString(36)}`;
    const client = this.connect(this.opts.brokerUrl, id, this.opts.username, this.opts.password, 'nodes');
    this.client = client;
    this.outbox = this.makeOutbox(client);
    const upstream = this.opts.upstreamUrl ? this.connect(this.opts.upstreamUrl, this.opts.clientId ?? this.opts.upstreamUsername ?? id, this.opts.upstreamUsername, this.opts.upstreamPassword, 'upstream') : client;
    this.opClient = upstream;
    this.opOutbox = upstream === client ? this.outbox : this.makeOutbox(upstream);
    // Subscriptions are made on every connect (not by MQTT.js's resubscribe) so that the agent knows
    // when they are in place: only then is it worth asking nodes to say Hello.
    const firstReady = new Promise<void>((resolve, reject) => {
      client.on('connect', () => this.subscribeNodes(client, upstream === client).then(resolve, reject));
      if (upstream !== client) upstream.on('connect', () => void this.subscribeUpstream(upstream).catch(() => {}));
    });
    await Promise.all([connected(client), connected(upstream)]);
    await firstReady;
    this.sweeper = setInterval(() => this.sweep(), 500);
    this.sweeper.unref();
    const where = upstream === client ? this.opts.brokerUrl : `${this.opts.brokerUrl} (nodes) and ${this.opts.upstreamUrl} (releases, status)`;
    this.log('info', `agent connected to ${where}, ${this.catalog.all().length} release(s), ${this.nodes.size} known node(s)`);
    for (const why of this.catalog.skipped) this.log('warn', `stored release not offered: ${why}`);
  }

  private makeOutbox(client: MqttClient): Outbox {
    const max = this.opts.maxInflight ?? 256;
    return new Outbox(
      client,
      max,
      (what) => this.log('warn', `publish backlog full (${max} QoS 1 messages unacknowledged by the broker): dropping ${what} and later ones until it drains`),
      () => {
        if (this.queryQueue.size > 0) this.drainQueries();
      },
    );
  }

  private async subscribeNodes(client: MqttClient, withReleases: boolean): Promise<void> {
    const t = this.topics;
    try {
      await client.subscribeAsync([t.upWildcard, t.presenceWildcard, ...(withReleases ? [t.manifestWildcard, ...this.partSubs] : [])], { qos: 1 });
    } catch (err) {
      this.log('warn', `subscribing on ${this.opts.brokerUrl}: ${(err as Error).message}`);
      throw err;
    }
    if (this.closed) return;
    this.resumeAfterRestart();
    this.queryKnownNodes();
    for (const n of this.nodes.values()) n.statusDirty = true; // retained statuses may have been lost with the broker
    this.emit('linkUp');
  }

  private async subscribeUpstream(upstream: MqttClient): Promise<void> {
    try {
      await upstream.subscribeAsync([this.topics.manifestWildcard, ...this.partSubs], { qos: 1 });
    } catch (err) {
      this.log('warn', `subscribing on ${this.opts.upstreamUrl}: ${(err as Error).message}`);
      throw err;
    }
  }

  private connect(url: string, clientId: string, username: string | undefined, password: string | undefined, link: 'nodes' | 'upstream'): MqttClient {
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
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
    client.on('error', (err) => this.log('warn', `mqtt ${url}: ${err.message}`));
    // Without TCP_NODELAY, Nagle holds a small write (a control message, the tail of a chunk burst)
    // until the previous segment is acked, and the receiver may delay that ack: MQTT.js leaves it on.
    client.on('connect', () => {
      const socket = client.stream as { setNoDelay?: (on: boolean) => void };
      socket.setNoDelay?.(this.opts.tcpNoDelay !== false);
    });
    const backoff = new Backoff({ ...DEFAULT_RECONNECT, ...this.opts.reconnect });
    this.stopReconnecting.push(
      keepReconnecting(client, backoff, (delayMs, attempt) => {
        if (this.closed) return;
        if (attempt === 1) this.log('warn', `lost the ${link} broker ${url}; reconnecting with backoff`);
        this.emit('reconnect', { link, delayMs, attempt });
      }),
    );
    return client;
  }

  async stop(): Promise<void> {
    this.closed = true;
    if (this.sweeper) clearInterval(this.sweeper);
    for (const stop of this.stopReconnecting.splice(0)) stop();
    for (const t of this.presenceTimers.values()) clearTimeout(t);
    this.presenceTimers.clear();
    for (const n of this.nodes.values()) {
      if (n.timer) clearTimeout(n.timer);
      this.persist(n);
    }
    for (const box of new Set([this.outbox, this.opOutbox])) await box?.end(1000);
    await this.patches.close();
    this.store.close();
  }

  /** Snapshot of every node's status. */
  statuses(): NodeStatus[] {
    return [...this.nodes.values()].map((n) => this.statusOf(n));
  }

  status(id: string): NodeStatus | undefined {
    const n = this.nodes.get(id);
    return n && this.statusOf(n);
  }

  private statusOf(n: NodeRuntime): NodeStatus {
    return nodeStatus(n.row, this.catalog.get(n.row.targetRelease), n.window, n.online, n.warnings);
  }

  // ---- MQTT intake -------------------------------------------------------------------------

  private onMessage(topic: string, payload: Buffer): void {
    try {
      const levels = topic.split('/');
      const p = this.topics.prefix.split('/').length;
      if (levels[p] === 'd') {
        const id = this.topics.deviceOf(topic);
        if (!id) {
          this.badTopic(topic, payload.length);
          return;
        }
        if (levels[p + 2] === 'up') this.onUp(id, payload);
        else if (levels[p + 2] === 'presence') this.onPresence(id, payload.toString());
      } else if (levels[p] === 'r') {
        this.onRelease(levels.slice(p + 1), payload);
      }
    } catch (err) {
      // Nothing from the network may take the agent down.
      this.log('error', `handling ${topic}: ${(err as Error).stack ?? err}`);
    }
  }

  /** A message on a device topic whose id cannot be a device id: logged (rate-limited), never answered. */
  private lastBadTopic = 0;
  private badTopic(topic: string, bytes: number): void {
    const now = Date.now();
    if (now - this.lastBadTopic < 1000) return;
    this.lastBadTopic = now;
    const shown = topic.length > 120 ? `${topic.slice(0, 120)}…` : topic;
    this.log('warn', `ignored ${bytes} bytes on ${JSON.stringify(shown)}: not a valid device topic`);
    this.store.event(null, 'bad-topic', shown);
  }

  private onRelease(rest: string[], payload: Buffer): void {
    const [hw, version, kind, index] = rest;
    if (kind === 'manifest') {
      if (payload.length === 0) return; // retained release cleared
      try {
        const r = this.catalog.onManifest(hw, version, payload);
        if (r.kind === 'need-parts') this.subscribeParts(hw, version);
        else if (r.kind === 'complete') this.releaseReady(r.release);
      } catch (err) {
        const why = err instanceof ProtocolError ? `${err.reasonName}: ${err.message}` : (err as Error).message;
        this.log('warn', `release ${hw} ${version} refused: ${why}`);
        this.store.event(null, 'release-refused', `${hw} ${version}: ${why}`);
      }
    } else if (kind === 'part' && /^\d{1,5}$/.test(index ?? '')) {
      try {
        const r = this.catalog.onPart(hw, version, Number(index), payload);
        if (r.kind === 'complete') {
          this.unsubscribeParts(hw, version);
          this.releaseReady(r.release);
        }
      } catch (err) {
        this.unsubscribeParts(hw, version);
        this.log('warn', `release ${hw} ${version} refused: ${(err as Error).message}`);
        this.store.event(null, 'release-refused', `${hw} ${version}: ${(err as Error).message}`);
      }
    }
  }

  private subscribeParts(hw: string, version: string): void {
    const filter = this.topics.partWildcard(hw, version);
    this.partSubs.add(filter);
    this.opClient?.subscribe(filter, { qos: 1 }, (err) => {
      if (err && !this.closed) this.log('warn', `subscribing to ${filter}: ${err.message}`);
    });
  }

  private unsubscribeParts(hw: string, version: string): void {
    const filter = this.topics.partWildcard(hw, version);
    this.partSubs.delete(filter);
    if (this.opClient?.connected) this.opClient.unsubscribe(filter);
  }

  private releaseReady(release: Release): void {
    this.log('info', `release ${release.row.hw} ${release.row.version} ready (${release.row.size} bytes, security version ${release.row.securityVersion})`);
    this.store.event(null, 'release', `${release.row.hw} ${release.row.version} ${release.row.id}`);
    this.emit('release', release);
    for (const n of this.nodes.values()) {
      if (n.row.hw === release.row.hw && !ACTIVE.has(n.row.state) && n.row.lastSeen > 0) this.consider(n);
    }
  }

  private onPresence(id: string, text: string): void {
    const n = this.nodes.get(id);
    const online = text === 'online';
    if (online && !n?.helloSinceStart) this.queryAfterGrace(id);
    if (!online) this.cancelPresenceQuery(id);
    if (!n) return;
    if (online === n.online) return;
    n.online = online;
    n.statusDirty = true;
    // A node that comes back is asked to resume at once rather than at the next backoff tick.
    if (online && ACTIVE.has(n.row.state)) {
      // Chunks in flight went to the dead connection: forget them, or they would hold the window
      // until their RTO expires. The node's answer to the Offer says what it actually holds.
      n.window?.resync(n.window.acked.toBytes());
      n.controlTries = 0;
      n.silentExpiries = 0;
      n.rtt.resetBackoff();
      this.store.event(id, 'resume', 'on presence: node back online');
      this.sendOffer(n);
    }
  }

  /**
   * The broker says the node is online but we have no Hello from it since we started: its Hello went
   * out before we subscribed (or while we were down). A node that just connected says Hello on its
   * own within moments, so wait a little first; then ask.
   */
  private queryAfterGrace(id: string): void {
    if (this.presenceTimers.has(id)) return;
    const t = setTimeout(() => {
      this.presenceTimers.delete(id);
      const n = this.nodes.get(id);
      if (this.closed || n?.helloSinceStart) return;
      this.enqueueQuery(id, QueryReason.presence);
    }, this.opts.queryGraceMs ?? 1000);
    t.unref();
    this.presenceTimers.set(id, t);
  }

  private cancelPresenceQuery(id: string): void {
    const t = this.presenceTimers.get(id);
    if (t) clearTimeout(t);
    this.presenceTimers.delete(id);
  }

  /** After (re)connecting: every node we know and are not already poking is asked to say Hello. */
  private queryKnownNodes(): void {
    for (const n of this.nodes.values()) {
      const s = n.row.state;
      // Mid-transfer and mid-activation nodes got an Offer or Activate from resumeAfterRestart: their
      // answer carries what they hold, and a Hello on top would only resend the chunks in flight.
      if ((ACTIVE.has(s) || s === 'activating' || s === 'deferred') && n.row.session !== null) continue;
      this.enqueueQuery(n.row.id, QueryReason.agentConnected);
    }
  }

  private enqueueQuery(id: string, reason: number): void {
    // Bounded: ids from the network must not grow agent memory without limit.
    if (!this.queryQueue.has(id) && this.queryQueue.size < MAX_QUEUED_QUERIES) this.queryQueue.set(id, reason);
    this.drainQueries();
  }

  /** Sends queued Queries while the QoS 1 backlog is under half its bound; publish callbacks call again. */
  private drainQueries(): void {
    const box = this.outbox;
    if (!box || this.closed) return;
    const room = (this.opts.maxInflight ?? 256) >> 1;
    for (const [id, reason] of this.queryQueue) {
      if (box.pending >= room || !box.connected) return;
      this.queryQueue.delete(id);
      box.publish(this.topics.down(id), encodeMessage({ type: MsgType.query, reason }), { qos: 1 }, `query to ${id}`, (err) => {
        if (!this.closed) this.log('warn', `query to ${id}: ${err.message}`);
      });
    }
  }

  private onUp(id: string, payload: Buffer): void {
    let msg;
    try {
      msg = decodeUp(payload);
    } catch (err) {
      const e = err instanceof ProtocolError ? err : new ProtocolError(Reason.malformed, String(err));
      this.rejectFromNode(id, e.reason, e.message);
      return;
    }
    if (msg.type === MsgType.hello && msg.deviceId !== id) {
      this.rejectFromNode(id, Reason.unknownDevice, `hello.deviceId "${msg.deviceId}" does not match topic device "${id}"`);
      return;
    }
    let n = this.nodes.get(id);
    if (!n) {
      if (msg.type !== MsgType.hello) {
        // Nothing is stored for a device we have never heard a Hello from; asking it for one is the fix.
        this.rejectFromNode(id, Reason.unknownDevice, `${msg.type === MsgType.ack ? 'ack' : 'report'} from a node that has not said hello`);
        this.enqueueQuery(id, QueryReason.presence);
        return;
      }
      n = this.newRuntime(blankRow(id, msg));
      this.nodes.set(id, n);
    }
    if (msg.type === MsgType.hello && msg.bootCount !== undefined && n.bootCount !== undefined && msg.bootCount < n.bootCount) {
      // A Hello from an earlier boot (a late or replayed duplicate): acting on it could mistake the
      // image the node ran before its update for a failed boot.
      this.store.event(id, 'stale-hello', `boot ${msg.bootCount} after boot ${n.bootCount}`);
      return;
    }
    n.row.lastSeen = Date.now();
    n.online = true;
    n.silentExpiries = 0;
    switch (msg.type) {
      case MsgType.hello:
        this.onHello(n, msg);
        break;
      case MsgType.ack:
        this.onAck(n, msg);
        break;
      case MsgType.report:
        this.onReport(n, msg);
        break;
    }
    this.publishStatus(n);
  }

  private lastStrangerError = 0;

  /** Logs bad input from a node and tells it why (at most once a second per node). */
  private rejectFromNode(id: string, reason: number, detail: string): void {
    this.log('warn', `node ${id}: rejected message: ${reasonName(reason)}: ${detail}`);
    this.store.event(id, 'bad-message', `${reasonName(reason)}: ${detail}`);
    const n = this.nodes.get(id);
    const now = Date.now();
    if (n) {
      if (now - n.lastError < 1000) return;
      n.lastError = now;
    } else {
      // Devices we keep no record of share one budget: garbage from many ids cannot flood the broker.
      if (now - this.lastStrangerError < 100) return;
      this.lastStrangerError = now;
    }
    this.send(id, { type: MsgType.error, reason, detail: detail.slice(0, LIMITS.maxDetail) });
  }

  // ---- node protocol ------------------------------------------------------------------------

  private onHello(n: NodeRuntime, h: Hello): void {
    const row = n.row;
    const before = row.runningVersion;
    n.helloSinceStart = true;
    if (h.bootCount !== undefined) n.bootCount = h.bootCount;
    this.cancelPresenceQuery(row.id);
    Object.assign(row, {
      hw: h.hw,
      runningVersion: h.version,
      runningDigest: h.digest,
      securityVersion: h.securityVersion,
      slot: h.slot,
      imageState: h.imageState,
      caps: h.caps,
      maxMessage: h.maxMessage,
      window: h.window,
    });
    // Stored at every Hello (rare: once per connect or boot), so that after a crash the agent still
    // knows whom to Query, even for nodes that never had an update.
    this.persist(n);
    n.warnings = h.caps & Capability.rollback ? [] : ['bootloader cannot roll back: a bad image would stay installed'];
    if (h.imageState === ImageState.recovery) n.warnings.push('node is in recovery mode (failed starts, or a failed image with no way back): it takes a full image of a newer release');
    n.controlTries = 0;
    n.rtt.resetBackoff();
    this.store.event(row.id, 'hello', `${h.version} slot ${h.slot} state ${h.imageState}${h.transfer ? ` transfer ${h.transfer.session}` : ''}`);
    const target = this.catalog.get(row.targetRelease);

    // A node we told to activate: reconcile what it runs now against what we expected.
    if (target && (row.state === 'activating' || row.state === 'confirming' || row.state === 'deferred')) {
      if (h.digest.equals(target.row.digest) && h.imageState === ImageState.recovery) {
        // Installed, failed, and nothing older left to boot (MCUboot overwrite-only): not confirmed.
        const o = h.lastOutcome;
        const reason = o && o.version === target.row.version && o.stage === Stage.failed ? o.reason : Reason.bootFailed;
        this.finish(n, 'failed', reason, `runs ${h.version} in recovery mode: ${reasonName(reason)}, no previous image to return to`);
        return;
      }
      if (h.digest.equals(target.row.digest)) {
        if (h.imageState === ImageState.pendingVerify) {
          n.rebootSeen = true;
          this.setState(n, 'confirming', this.deadlines.confirm);
        } else this.finish(n, 'confirmed', Reason.none, `running ${h.version}`);
        return;
      }
      const outcome = h.lastOutcome;
      if (outcome && outcome.version === target.row.version && outcome.stage === Stage.rolledBack) {
        this.finish(n, 'rolledBack', outcome.reason, `back on ${h.version}: ${reasonName(outcome.reason)}`);
        return;
      }
      if (n.rebootSeen || row.state === 'confirming') {
        this.finish(n, 'rolledBack', Reason.bootFailed, `expected ${target.row.version}, node booted ${h.version}`);
        return;
      }
      if (h.transfer && (h.transfer.digest.equals(target.row.digest) || n.payload?.digest.equals(h.transfer.digest))) {
        // Reconnected before it could act on Activate: ask again.
        this.sendActivate(n);
        return;
      }
    }
    if (before !== h.version) this.log('info', `node ${row.id} runs ${h.version}`);

    // A node that reports how its last update ended, for a release we were still tracking.
    if (target && h.lastOutcome && h.lastOutcome.version === target.row.version && !TERMINAL.has(row.state)) {
      if (h.lastOutcome.stage === Stage.rolledBack) {
        this.finish(n, 'rolledBack', h.lastOutcome.reason, reasonName(h.lastOutcome.reason));
        return;
      }
      if (h.lastOutcome.stage === Stage.failed) {
        this.finish(n, 'failed', h.lastOutcome.reason, `${reasonName(h.lastOutcome.reason)}, no previous image to return to`);
        return;
      }
    }

    // Mid-transfer: the node says what it holds, and that is the truth (after a power cut it may hold
    // less than it acked: chunks not yet saved). Continue from there.
    if (n.window && ACTIVE.has(row.state) && n.payload) {
      const t = h.transfer;
      const same = t !== undefined && t.digest.equals(n.payload.digest) && t.chunkSize === row.chunkSize;
      // Chunks of this session sent since the node came back (it subscribes before its Hello) are
      // on their way to it: those stay in flight; if they were lost after all, the RTO resends them.
      n.window.resync(same ? t.bitmap : new Uint8Array(0), same && t.session === row.session ? Date.now() : undefined);
      n.bitmapDirty = true;
      if (row.state === 'verifying' && !n.window.complete) this.setState(n, 'downloading', this.deadlines.download);
      else if (row.state !== 'offered') this.setState(n, n.window.complete ? 'verifying' : 'downloading');
      if (same && t.session === row.session && !n.window.complete) this.pump(n);
      // Another session, lost progress, or all stored (the Offer makes the node verify): offer again.
      else this.sendOffer(n);
      return;
    }
    this.consider(n, h);
  }

  /** Decides whether a node should get the latest release for its hardware, and starts it. */
  private consider(n: NodeRuntime, hello?: Hello): void {
    const row = n.row;
    const release = this.catalog.latestFor(row.hw);
    if (!release) {
      if (!TERMINAL.has(row.state) && row.state !== 'queued') this.setState(n, 'idle');
      return;
    }
    // Running the release is not enough to be confirmed: not while its trial boot awaits the
    // self-test (pending-verify), nor in recovery mode (it runs it because it failed).
    const settled = row.imageState !== ImageState.pendingVerify && row.imageState !== ImageState.recovery;
    if (row.runningDigest && release.row.digest.equals(row.runningDigest) && settled) {
      if (row.targetRelease !== release.row.id || row.state !== 'confirmed') {
        row.targetRelease = release.row.id;
        this.finish(n, 'confirmed', Reason.none, `already running ${release.row.version}`);
      }
      return;
    }
    const refused = row.refused ? row.refused.split(',') : [];
    if (refused.includes(release.row.id)) return; // rolled back or rejected before: not offered again
    if (compareVersions(release.row.version, row.runningVersion) <= 0) return;
    if (release.row.securityVersion < row.securityVersion) return;
    if (!(row.caps & Capability.rollback) && !(release.row.flags & ManifestFlag.allowNoRollback)) {
      if (row.targetRelease !== release.row.id || row.state !== 'rejected') {
        row.targetRelease = release.row.id;
        this.finish(n, 'rejected', Reason.noRollbackSupport, 'bootloader cannot roll back and the release does not allow that (publish with --allow-no-rollback)');
      }
      return;
    }
    if (ACTIVE.has(row.state) && row.targetRelease === release.row.id) return;
    row.targetRelease = release.row.id;
    row.attempts = 0;
    row.retransmits = 0;
    row.acks = 0;
    row.bytesSent = 0;
    n.release = release;
    const resumeBitmap = hello?.transfer && hello.transfer.digest.equals(release.row.digest) ? hello.transfer : undefined;
    if (this.activeCount() >= this.opts.maxConcurrent) {
      this.setState(n, 'queued');
      if (!this.queue.includes(row.id)) this.queue.push(row.id);
      return;
    }
    this.beginTransfer(n, resumeBitmap?.chunkSize, resumeBitmap?.bitmap);
  }

  private activeCount(): number {
    let c = 0;
    for (const n of this.nodes.values()) if (ACTIVE.has(n.row.state)) c++;
    return c;
  }

  private beginTransfer(n: NodeRuntime, nodeChunkSize?: number, nodeBitmap?: Buffer): void {
    const row = n.row;
    const release = n.release!;
    let chunkSize: number;
    try {
      chunkSize = negotiateChunkSize(row.maxMessage, this.topics.down(row.id), this.opts.maxChunk);
    } catch (err) {
      this.finish(n, 'rejected', Reason.badField, (err as Error).message);
      return;
    }
    // Claim a transfer slot now: patch creation may take a while and must not let others overtake.
    this.setState(n, 'offered', this.deadlines.download);
    this.choosePayload(n, release).then(
      (payload) => {
        if (row.state !== 'offered' || row.targetRelease !== release.row.id || this.closed) return;
        this.startSession(n, payload, chunkSize, nodeChunkSize === chunkSize && payload.digest.equals(release.row.digest) ? nodeBitmap : undefined);
      },
      (err: Error) => this.log('error', `node ${row.id}: preparing payload: ${err.message}`),
    );
  }

  /**
   * A delta when the node can apply one, we hold the image it runs (matched by the digest in its
   * Hello), and the patch is smaller than the image by the margin; the full image otherwise. The
   * choice and its reason go to the event log. Patches are made once per (base, target) in the
   * patch cache's worker thread, so this may take seconds without holding up other nodes.
   */
  private async choosePayload(n: NodeRuntime, release: Release): Promise<Payload> {
    const full: Payload = { bytes: release.image, encoding: Encoding.full, digest: release.row.digest };
    const row = n.row;
    const why = this.deltaRefusal(row, release);
    if (why !== undefined) {
      if (why && !this.closed) this.store.event(row.id, 'payload', `full image: ${why}`);
      return full;
    }
    const base = this.catalog.all().find((r) => r.row.digest.equals(row.runningDigest!));
    if (!base) {
      this.store.event(row.id, 'payload', `full image: the agent does not hold the image the node runs (${row.runningVersion})`);
      return full;
    }
    const pair = `${release.row.hw} ${base.row.version} -> ${release.row.version}`;
    let patch = this.patches.cached(base.row.digest, release.row.digest);
    if (!patch) {
      this.log('info', `node ${row.id}: making delta patch ${pair} in the background (${this.patches.pending} other job(s) pending)`);
      row.detail = `making delta patch ${pair}`;
      this.publishStatus(n, true);
      let logged = '';
      try {
        patch = await this.patches.get({ image: base.image, digest: base.row.digest }, { image: release.image, digest: release.row.digest }, (phase, done, total) => {
          const pct = total ? Math.floor((done / total) * 100) : 0;
          row.detail = `making delta patch ${pair}: ${phase} ${pct} %`;
          const step = `${phase} ${Math.floor(pct / 25) * 25} %`; // the log gets quarters, the status every report
          if (step !== logged) this.log('info', `delta patch ${pair}: ${(logged = step)}`);
          this.publishStatus(n);
        });
      } catch (err) {
        if (this.closed) return full;
        this.log('warn', `node ${row.id}: no delta ${pair}: ${(err as Error).message}; sending the full image`);
        this.store.event(row.id, 'payload', `full image: no delta ${pair}: ${(err as Error).message}`);
        return full;
      } finally {
        if (row.detail.startsWith('making delta patch')) row.detail = '';
      }
    }
    if (this.closed) return full;
    const margin = this.opts.deltaMargin ?? 0.2;
    if (patch.length > release.image.length * (1 - margin)) {
      const msg = `full image: delta ${pair} is ${patch.length} B, not ${Math.round(margin * 100)} % smaller than the ${release.image.length} B image`;
      this.log('info', `node ${row.id}: ${msg}`);
      this.store.event(row.id, 'payload', msg);
      return full;
    }
    this.store.event(row.id, 'payload', `delta ${pair}: ${patch.length} B for a ${release.image.length} B image`);
    return { bytes: patch, encoding: Encoding.delta, digest: sha256(patch), baseDigest: base.row.digest };
  }

  /** Why this node gets no delta for this release ('' = nothing worth logging), or undefined if it may. */
  private deltaRefusal(row: NodeRow, release: Release): string | undefined {
    if (this.opts.delta === false) return 'delta patches are turned off';
    if (!(row.caps & Capability.delta)) return 'the node does not apply delta patches';
    if (!row.runningDigest) return '';
    if (row.refused.split(',').includes(`full:${release.row.id}`)) return 'a delta of this release failed on this node before';
    return undefined;
  }

  private startSession(n: NodeRuntime, payload: Payload, chunkSize: number, bitmap?: Buffer): void {
    const row = n.row;
    const release = n.release!;
    const count = Math.ceil(payload.bytes.length / chunkSize);
    if (count > LIMITS.maxChunks) {
      this.finish(n, 'rejected', Reason.oversize, `payload needs ${count} chunks of ${chunkSize} B, limit ${LIMITS.maxChunks}`);
      return;
    }
    n.payload = payload;
    row.payloadEncoding = payload.encoding;
    row.session = randomInt(1, 0xffffffff);
    row.chunkSize = chunkSize;
    row.chunkCount = count;
    row.attempts++;
    n.window = new TransferWindow(count, Math.min(row.window, LIMITS.maxWindow), n.rtt, bitmap);
    row.bitmap = n.window.acked.toBytes();
    n.controlTries = 0;
    this.persist(n);
    const what = payload.encoding === Encoding.delta ? `delta patch (${payload.bytes.length} B for a ${release.row.size} B image)` : `${release.row.size} B`;
    this.log('info', `node ${row.id}: offering ${release.row.version}: ${what} in ${count} chunks of ${chunkSize} B`);
    this.sendOffer(n);
  }

  /**
   * The node could not use the patch (base not what it runs, patch damaged in transit or on disk,
   * no room for patch and image together): send the full image instead, once. Refusals of the
   * release itself (signature, version, hardware) would refuse the full image too and end the update.
   */
  private fallBackToFull(n: NodeRuntime, release: Release, r: Report): void {
    const row = n.row;
    const why = `${reasonName(r.reason)}${r.detail ? `: ${r.detail}` : ''}`;
    this.log('warn', `node ${row.id}: delta patch refused (${why}); falling back to the full image`);
    this.store.event(row.id, 'delta-fallback', why);
    // The patch arrived intact on a node running its base and still failed: the patch itself is
    // suspect (damaged on the agent's disk, say), so the next node gets a freshly made one.
    if (n.window?.complete && !NOT_THE_PATCH.has(r.reason) && n.payload?.baseDigest) this.patches.forget(n.payload.baseDigest, release.row.digest);
    row.refused = [...row.refused.split(',').filter(Boolean), `full:${release.row.id}`].slice(-16).join(',');
    n.window = undefined;
    n.payload = undefined;
    this.setState(n, 'queued');
    this.beginTransfer(n);
  }

  /** Rebuilds the session payload after a restart from what the row says it was. */
  private async restorePayload(n: NodeRuntime, release: Release): Promise<Payload | undefined> {
    if (n.row.payloadEncoding !== Encoding.delta) return { bytes: release.image, encoding: Encoding.full, digest: release.row.digest };
    const p = await this.choosePayload(n, release);
    return p.encoding === Encoding.delta ? p : undefined;
  }

  private sendOffer(n: NodeRuntime): void {
    const row = n.row;
    const release = n.release ?? this.catalog.get(row.targetRelease);
    const payload = n.payload;
    if (!release || !payload || row.session === null) return;
    n.release = release;
    n.offerAnswerPending = true;
    this.send(row.id, {
      type: MsgType.offer,
      session: row.session,
      manifest: release.row.manifest,
      encoding: payload.encoding,
      payloadSize: payload.bytes.length,
      payloadDigest: payload.digest,
      chunkSize: row.chunkSize,
      baseDigest: payload.baseDigest,
    });
    this.armControlTimer(n, () => this.sendOffer(n));
  }

  private sendActivate(n: NodeRuntime): void {
    if (n.row.session === null) return;
    this.send(n.row.id, { type: MsgType.activate, session: n.row.session });
    this.armControlTimer(n, () => this.sendActivate(n));
  }

  /** Resend a control message until answered, backing off with jitter; then wait for the node. */
  private armControlTimer(n: NodeRuntime, resend: () => void): void {
    if (n.timer) clearTimeout(n.timer);
    if (n.controlTries >= this.opts.maxControlRetries) {
      n.timer = undefined;
      this.store.event(n.row.id, 'silent', `no answer after ${n.controlTries} tries; waiting for the node`);
      return;
    }
    const delay = jittered(n.rtt.rto * 2 ** Math.min(n.controlTries, 6));
    n.controlTries++;
    n.timer = setTimeout(() => {
      n.timer = undefined;
      if (!this.closed) resend();
    }, delay);
  }

  private onAck(n: NodeRuntime, a: Ack): void {
    const row = n.row;
    if (a.session !== row.session || !n.window || !ACTIVE.has(row.state)) {
      this.store.event(row.id, 'stale-ack', `session ${a.session}: no live transfer with it (current ${row.session ?? 'none'}, state ${row.state})`);
      return; // late or duplicate: harmless
    }
    if (a.base > row.chunkCount) {
      this.rejectFromNode(row.id, Reason.badField, `ack.base ${a.base} is past the last chunk ${row.chunkCount}`);
      return;
    }
    row.acks++;
    n.controlTries = 0;
    if (n.timer) {
      clearTimeout(n.timer);
      n.timer = undefined;
    }
    let fresh: number;
    if (n.offerAnswerPending) {
      // The answer to an Offer describes all the node holds: it replaces what we believed (the
      // store's coarse bitmap after a restart, or acks of chunks a power cut has since lost).
      n.offerAnswerPending = false;
      n.window.resyncFromAck(a.base, a.bitmap);
      fresh = 1;
    } else fresh = n.window.onAck(a.base, a.bitmap, Date.now());
    if (fresh > 0) {
      n.bitmapDirty = true;
      n.statusDirty = true;
    }
    if (row.state === 'offered') this.setState(n, 'downloading');
    if (n.window.complete) {
      if (row.state !== 'verifying') {
        this.persistBitmap(n);
        this.setState(n, 'verifying', this.deadlines.verify);
      }
      return;
    }
    this.pump(n);
  }

  /** Fills the window with chunks and arms the retransmission timer. */
  private pump(n: NodeRuntime): void {
    const w = n.window;
    const payload = n.payload;
    if (!w || !payload || n.row.session === null || this.closed) return;
    if (this.client && !this.client.connected) return;
    const now = Date.now();
    w.expire(now);
    for (let i = w.next(now); i !== undefined; i = w.next(now)) {
      const data = payload.bytes.subarray(i * n.row.chunkSize, Math.min(payload.bytes.length, (i + 1) * n.row.chunkSize));
      this.send(n.row.id, { type: MsgType.chunk, session: n.row.session, index: i, data }, 0);
      n.row.bytesSent += data.length;
    }
    n.row.retransmits = w.retransmits;
    if (n.timer) clearTimeout(n.timer);
    const due = w.nextDeadline(Date.now());
    n.timer = due === undefined ? undefined : setTimeout(() => this.onWindowTimeout(n), due + 1);
  }

  private onWindowTimeout(n: NodeRuntime): void {
    n.timer = undefined;
    if (!n.window || !ACTIVE.has(n.row.state)) return;
    n.silentExpiries++;
    this.emit('windowTimeout', { id: n.row.id, rto: n.rtt.rto, expiries: n.silentExpiries });
    if (n.silentExpiries > this.opts.maxControlRetries) {
      // The node has gone quiet: stop spending airtime until it says hello again (or the deadline).
      this.store.event(n.row.id, 'silent', 'transfer paused until the node returns');
      n.window.resync(n.window.acked.toBytes());
      return;
    }
    this.pump(n);
  }

  private onReport(n: NodeRuntime, r: Report): void {
    const row = n.row;
    if ((r.session !== 0 && r.session !== row.session) || !reportFits(r, row.state)) {
      // Late, duplicated or replayed: acting on it could reopen a finished update.
      this.store.event(row.id, 'stale-report', `session ${r.session} stage ${r.stage} in state ${row.state}`);
      return;
    }
    this.store.event(row.id, 'report', `stage ${r.stage} reason ${reasonName(r.reason)}${r.detail ? ` (${r.detail})` : ''}`);
    if (n.timer) {
      clearTimeout(n.timer);
      n.timer = undefined;
    }
    n.controlTries = 0;
    switch (r.stage) {
      case Stage.rejected:
        if (n.payload?.encoding === Encoding.delta && n.release && r.session === row.session && !RELEASE_REFUSALS.has(r.reason)) {
          this.fallBackToFull(n, n.release, r);
          return;
        }
        this.finish(n, 'rejected', r.reason, r.detail ?? reasonName(r.reason));
        return;
      case Stage.verified:
        this.persistBitmap(n);
        this.setState(n, 'activating', this.deadlines.install);
        this.sendActivate(n);
        return;
      case Stage.busy: {
        // At least a second between asks (a node saying retry-after 0 must not get an Activate storm).
        // The install deadline bounds the whole deferral: an ask that would come at or after it is
        // not made (that was a storm of zero-delay asks at the deadline); the deadline sweep then
        // records timedOut, naming the stage.
        const wait = Math.max(1, r.retryAfter ?? 5) * 1000;
        this.setState(n, 'deferred');
        if (wait >= (row.stageDeadline ?? 0) - Date.now()) return;
        n.timer = setTimeout(() => {
          n.timer = undefined;
          if (row.state === 'deferred') {
            this.setState(n, 'activating');
            this.sendActivate(n);
          }
        }, wait);
        return;
      }
      case Stage.rebooting:
        n.rebootSeen = true;
        this.setState(n, 'confirming', this.deadlines.confirm);
        return;
      case Stage.confirmed:
        if (!r.version || r.version === this.catalog.get(row.targetRelease)?.row.version) {
          this.finish(n, 'confirmed', Reason.none, r.version ? `running ${r.version}` : 'confirmed');
        }
        return;
      case Stage.rolledBack:
        this.finish(n, 'rolledBack', r.reason, r.detail ?? reasonName(r.reason));
        return;
      case Stage.failed:
        this.finish(n, 'failed', r.reason, r.detail ?? `${reasonName(r.reason)}, no previous image to return to`);
        return;
    }
  }

  // ---- state, deadlines, persistence ------------------------------------------------------

  private setState(n: NodeRuntime, state: NodeStateName, deadlineMs?: number): void {
    const row = n.row;
    if (deadlineMs !== undefined) row.stageDeadline = Date.now() + deadlineMs;
    if (row.state === state && deadlineMs === undefined) return;
    const was = row.state;
    row.state = state;
    if (was !== state) this.store.event(row.id, 'state', `${was} -> ${state}`);
    this.persist(n);
    this.publishStatus(n, true);
    if (ACTIVE.has(was) && !ACTIVE.has(state)) this.startQueued();
  }

  /** Ends an update for a node with an outcome and a reason: no update stays "in progress". */
  private finish(n: NodeRuntime, state: NodeStateName, reason: number, detail: string): void {
    const row = n.row;
    if (n.timer) clearTimeout(n.timer);
    n.timer = undefined;
    row.reason = reason;
    row.detail = detail.slice(0, 200);
    row.stageDeadline = null;
    if ((state === 'rolledBack' || state === 'rejected') && row.targetRelease) {
      const refused = new Set(row.refused ? row.refused.split(',') : []);
      refused.add(row.targetRelease);
      row.refused = [...refused].slice(-16).join(',');
    }
    n.window = undefined;
    n.payload = undefined;
    n.rebootSeen = false;
    const level = state === 'confirmed' ? 'info' : 'warn';
    this.log(level, `node ${row.id}: ${state}${reason ? ` (${reasonName(reason)})` : ''}: ${detail}`);
    if (state !== 'confirmed') row.session = null;
    this.setState(n, state);
  }

  private startQueued(): void {
    while (this.queue.length > 0 && this.activeCount() < this.opts.maxConcurrent) {
      const id = this.queue.shift()!;
      const n = this.nodes.get(id);
      if (n && n.row.state === 'queued' && n.release) this.beginTransfer(n);
    }
  }

  /** Periodic: stage deadlines, coarse bitmap persistence, throttled status. */
  private sweep(): void {
    const now = Date.now();
    for (const n of this.nodes.values()) {
      const row = n.row;
      if (row.stageDeadline !== null && now > row.stageDeadline && !TERMINAL.has(row.state) && row.state !== 'queued') {
        const stage = stageOfState(row.state);
        this.finish(n, 'timedOut', Reason.timeout, `${stage} deadline passed in state ${row.state}`);
        continue;
      }
      if (n.bitmapDirty && now - n.lastBitmapSave >= BITMAP_PERSIST_MS) this.persistBitmap(n);
      if (n.statusDirty) this.publishStatus(n);
    }
  }

  private persistBitmap(n: NodeRuntime): void {
    if (n.window) n.row.bitmap = n.window.acked.toBytes();
    n.bitmapDirty = false;
    n.lastBitmapSave = Date.now();
    this.persist(n);
  }

  private persist(n: NodeRuntime): void {
    n.row.updatedAt = Date.now();
    this.store.saveNode(n.row);
  }

  /** After a restart (or broker reconnect), poke every node that was mid-update. */
  private resumeAfterRestart(): void {
    for (const n of this.nodes.values()) {
      const row = n.row;
      if (ACTIVE.has(row.state) && row.session !== null) {
        const release = this.catalog.get(row.targetRelease);
        if (!release) continue;
        n.release = release;
        if (n.window && n.payload) {
          n.window.resync(n.window.acked.toBytes());
          n.controlTries = 0;
          this.sendOffer(n); // same session: the node answers with an Ack carrying all it holds
          continue;
        }
        this.restorePayload(n, release).then((payload) => {
          // Rebuilding a patch can take a while: the node may have moved on (or been restarted) meanwhile.
          if (this.closed || !ACTIVE.has(row.state) || n.payload || row.targetRelease !== release.row.id) return;
          if (!payload || Math.ceil(payload.bytes.length / row.chunkSize) !== row.chunkCount) {
            this.setState(n, 'queued');
            this.beginTransfer(n);
            return;
          }
          n.payload = payload;
          n.window = new TransferWindow(row.chunkCount, Math.min(row.window, LIMITS.maxWindow), n.rtt, row.bitmap ?? undefined);
          n.controlTries = 0;
          this.sendOffer(n);
        }, (err: Error) => this.log('error', `node ${row.id}: restoring payload: ${err.message}`));
      } else if ((row.state === 'activating' || row.state === 'deferred') && row.session !== null) {
        n.release = this.catalog.get(row.targetRelease);
        this.sendActivate(n);
      }
    }
    // Waiting nodes keep their turn: the queue lives in memory, so rebuild it from the rows (oldest first).
    const waiting = [...this.nodes.values()].filter((n) => n.row.state === 'queued' && !this.queue.includes(n.row.id));
    waiting.sort((a, b) => a.row.updatedAt - b.row.updatedAt);
    for (const n of waiting) {
      n.release = this.catalog.get(n.row.targetRelease);
      this.queue.push(n.row.id);
    }
    this.startQueued();
  }

  private publishStatus(n: NodeRuntime, force = false): void {
    const now = Date.now();
    if (!force && now - n.lastStatus < 1000) {
      n.statusDirty = true;
      return;
    }
    n.statusDirty = false;
    n.lastStatus = now;
    const status = this.statusOf(n);
    this.emit('status', status);
    const doc = JSON.stringify(status);
    for (const box of new Set([this.outbox, this.opOutbox])) {
      if (!box) continue;
      const sent = box.publish(this.topics.status(n.row.id), doc, { qos: 1, retain: true }, `status of ${n.row.id}`, (err) => {
        if (!this.closed) this.log('warn', `status for ${n.row.id}: ${err.message}`);
      });
      if (!sent) n.statusDirty = true; // the sweep tries again
    }
  }

  /**
   * Fire-and-forget publish: never awaited inside a handler. Offline, or with the QoS 1 backlog full,
   * control messages are dropped and resent by their timers; chunks by the window.
   */
  private send(id: string, msg: DownMessage, qos: 0 | 1 = 1): boolean {
    const box = this.outbox;
    if (!box) return false;
    return box.publish(this.topics.down(id), encodeMessage(msg), { qos }, `message ${msg.type} to ${id}`, (err) => {
      if (!this.closed) this.log('warn', `publish to ${id}: ${err.message}`);
    });
  }
}

function connected(client: MqttClient): Promise<void> {
  if (client.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => {
      client.off('connect', onConnect);
      client.end(true);
      reject(err);
    };
    const onConnect = () => {
      client.off('error', onError);
      resolve();
    };
    client.once('connect', onConnect);
    client.once('error', onError);
  });
}

const AWAITING_BOOT: ReadonlySet<NodeStateName> = new Set(['activating', 'deferred', 'confirming']);

/** Whether a report can be news in this state; anything else is a duplicate or arrived too late. */
function reportFits(r: Report, state: NodeStateName): boolean {
  switch (r.stage) {
    case Stage.rejected:
      // Session 0: the node refused a message it could not even read; only a live transfer cares.
      // Once the node said it is rebooting into the image, a refusal for the session is a late
      // answer to a resent Activate: the boot that follows says how it went.
      return r.session === 0 ? ACTIVE.has(state) : ACTIVE.has(state) || state === 'activating' || state === 'deferred';
    case Stage.verified:
      return ACTIVE.has(state);
    case Stage.busy:
    case Stage.rebooting:
      return state === 'activating' || state === 'deferred';
    case Stage.confirmed:
      return ACTIVE.has(state) || AWAITING_BOOT.has(state);
    case Stage.rolledBack:
    case Stage.failed:
      return AWAITING_BOOT.has(state);
    default:
      return false;
  }
}

function stageOfState(state: NodeStateName): string {
  switch (state) {
    case 'offered':
    case 'downloading':
      return 'download';
    case 'verifying':
      return 'verify';
    case 'activating':
    case 'deferred':
      return 'install';
    default:
      return 'confirm';
  }
}

function blankRow(id: string, h: Hello): NodeRow {
  return {
    id,
    hw: h.hw,
    runningVersion: h.version,
    runningDigest: h.digest,
    securityVersion: h.securityVersion,
    slot: h.slot,
    imageState: h.imageState,
    caps: h.caps,
    maxMessage: h.maxMessage,
    window: h.window,
    state: 'idle',
    targetRelease: null,
    session: null,
    chunkSize: 0,
    chunkCount: 0,
    bitmap: null,
    payloadEncoding: 0,
    acks: 0,
    attempts: 0,
    retransmits: 0,
    bytesSent: 0,
    reason: 0,
    detail: '',
    stageDeadline: null,
    lastSeen: Date.now(),
    refused: '',
    updatedAt: Date.now(),
  };
}
