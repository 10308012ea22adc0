import { Reason, reasonName } from '../shared/errors.js';
import { releaseName, type LogFields, type LogFn } from '../shared/log.js';
import { Capability, Encoding, ImageState, MsgType, type Ack, type Hello, type Report } from '../shared/messages.js';
import type { Topics } from '../shared/topics.js';
import { Admission } from './admission.js';
import type { ReleaseCatalog } from './catalog.js';
import type { AgentConfig } from './config.js';
import type { AgentCounters } from './counters.js';
import type { Clock } from './clock.js';
import type { Links } from './links.js';
import type { ReleaseChoice } from './rollouts.js';
import { blankRow, helloFacts, syncRow, updateFromRow } from './node-record.js';
import { decide, releaseOf } from './offer-policy.js';
import type { PatchCache } from './patches.js';
import { PayloadChooser } from './payload.js';
import { Sessions } from './sessions.js';
import { RttEstimator } from './rtt.js';
import { nodeStatus, type NodeStatus } from './status.js';
import type { AgentStore } from './store.js';
import { Transfer } from './transfer.js';
import type { NodeRow, Payload, Release } from './types.js';
import { classifyAck, holdsSlot, IDLE, step, timersOf, type Effect, type Env, type Input, type TimerKind, type Update } from './update-fsm.js';
import { isLoraRow } from './lora/record.js';

export { SYSTEM_CLOCK, type Clock } from './clock.js';

/** One node: its stored row, its update machine, and the runtime pieces around them. */
export interface NodeRuntime {
  row: NodeRow;
  update: Update;
  rtt: RttEstimator;
  transfer?: Transfer;
  /** Payload made ready for the next session, with its chunk size. */
  prepared?: { payload: Payload; chunkSize: number };
  /** Bumped when a payload being prepared is no longer wanted. */
  prepGen: number;
  timers: Map<TimerKind, { at: number; handle: NodeJS.Timeout }>;
  windowTimer?: NodeJS.Timeout;
  silentExpiries: number;
  bitmapDirty: boolean;
  lastBitmapSave: number;
  statusDirty: boolean;
  lastStatus: number;
  online: boolean;
  warnings: string[];
  /** Boot count of the newest Hello: an older one is a late duplicate and is ignored. */
  bootCount?: number;
  /** Battery percent from the newest Hello (null: mains powered); the revert permit for an authorised downgrade's Offer. */
  battery: number | null;
  permit?: Buffer;
}

export interface UpdatesDeps {
  cfg: AgentConfig;
  store: AgentStore;
  catalog: ReleaseCatalog;
  patches: PatchCache;
  links: Links;
  topics: Topics;
  clock: Clock;
  /** Process-wide counters for metrics. */
  counters: AgentCounters;
  log: LogFn;
  /** This agent's name, carried in every node status. */
  agentName?: string;
  onStatus: (s: NodeStatus) => void;
  onWindowTimeout: (e: { id: string; rto: number; expiries: number }) => void;
  /** Which release a rollout lets the node have now (agent/rollouts.ts); `free`: no rollout governs it. */
  choose: (row: NodeRow) => ReleaseChoice;
  /** A node said Hello or its update changed state (rollouts count outcomes). */
  onNodeChange: (id: string) => void;
}

/**
 * The runtime around the update machines: feeds each node's machine its inputs (messages, timers,
 * releases), carries out the effects (publishes, timers, SQLite, the transfer window) and admits
 * transfers. Nothing here awaits the network.
 */
export class Updates {
  readonly nodes = new Map<string, NodeRuntime>();
  private readonly admission: Admission;
  private readonly payloads: PayloadChooser;
  private readonly sessions: Sessions;
  private closed = false;

  constructor(private readonly d: UpdatesDeps) {
    this.admission = new Admission(d.cfg.maxConcurrent, () => this.activeCount());
    this.payloads = new PayloadChooser({
      catalog: d.catalog, patches: d.patches, delta: d.cfg.delta, deltaMargin: d.cfg.deltaMargin,
      deltaRefused: (node, release) => d.store.refusals(node).some((r) => r.kind === 'delta' && r.release === release),
      event: (node, kind, detail) => d.store.event(node, kind, detail),
      log: d.log,
      progress: (node, detail) => {
        const n = this.nodes.get(node);
        if (!n || (!detail && !n.row.detail.startsWith('making delta patch'))) return;
        n.row.detail = detail;
        this.publishStatus(n);
      },
      closed: () => this.closed,
    });
    this.sessions = new Sessions(d, this.payloads, (n, input) => this.input(n, input), () => this.closed);
    const now = d.clock.now();
    for (const row of d.store.nodes()) if (!isLoraRow(row)) this.nodes.set(row.id, this.runtime(row, updateFromRow(row, d.catalog, now, d.cfg.deadlines.download)));
  }

  private runtime(row: NodeRow, update: Update): NodeRuntime {
    return {
      row, update, rtt: new RttEstimator(this.d.cfg.rtt), prepGen: 0, timers: new Map(), silentExpiries: 0, bitmapDirty: false, lastBitmapSave: 0,
      statusDirty: true, lastStatus: 0, online: false, warnings: [], battery: null,
    };
  }

  private activeCount(): number {
    let c = 0;
    for (const n of this.nodes.values()) if (holdsSlot(n.update.phase)) c++;
    return c;
  }

  /** Log fields of a node's line: device, the target release, the session (when there is one). */
  private fieldsOf(n: NodeRuntime, extra: LogFields = {}): LogFields {
    const f: LogFields = { device: n.row.id };
    if (n.update.target) f.release = releaseName(n.row.hw, n.update.target.version);
    if (n.update.session !== null) f.session = n.update.session;
    for (const [k, v] of Object.entries(extra)) if (v !== undefined) f[k] = v;
    return f;
  }

  private env(n: NodeRuntime): Env {
    return { cfg: this.d.cfg, rto: n.rtt.rto, random: Math.random };
  }

  /** Feeds one input to a node's machine and carries out what it says. */
  input(n: NodeRuntime, input: Input): void {
    if (this.closed) return;
    const now = this.d.clock.now();
    const wasName = n.row.state;
    const wasSlot = holdsSlot(n.update.phase);
    const { update, effects } = step(n.update, input, now, this.env(n));
    n.update = update;
    let consider: { lostDownload?: boolean } | undefined;
    for (const e of effects) {
      if (e.kind === 'consider') consider = e;
      else this.execute(n, e, now);
    }
    const changed = syncRow(n.row, update);
    if (n.row.state !== wasName) {
      this.d.store.event(n.row.id, 'state', `${wasName} -> ${n.row.state}`);
      this.d.log('info', `node ${n.row.id}: ${wasName} -> ${n.row.state}`, this.fieldsOf(n, { from: wasName, state: n.row.state }));
    }
    if (changed) {
      this.persist(n);
      this.publishStatus(n, true);
    }
    this.rearm(n);
    if (consider) this.consider(n, consider.lostDownload);
    if (wasSlot && !holdsSlot(n.update.phase)) this.admitWaiting();
    if (n.row.state !== wasName) this.d.onNodeChange(n.row.id);
  }

  private execute(n: NodeRuntime, e: Exclude<Effect, { kind: 'consider' }>, now: number): void {
    const row = n.row;
    switch (e.kind) {
      case 'prepare':
        this.sessions.prepare(n);
        return;
      case 'open':
        this.sessions.open(n, e.session, now);
        return;
      case 'send':
        if (e.msg === 'offer') this.sessions.sendOffer(n);
        else if (n.update.session !== null) this.d.links.sendDown(row.id, { type: MsgType.activate, session: n.update.session });
        return;
      case 'cancel':
        this.d.links.sendDown(row.id, { type: MsgType.cancel, session: e.session, reason: Reason.cancelled });
        return;
      case 'pump':
        this.sessions.pump(n);
        return;
      case 'persistBitmap':
        this.persistBitmap(n);
        return;
      case 'fallBackToFull':
        this.sessions.fallBackToFull(n, e.reason, e.detail);
        return;
      case 'dropTransfer':
        if (n.windowTimer) this.d.clock.clearTimeout(n.windowTimer);
        n.windowTimer = undefined;
        if (n.transfer) row.bitmap = n.transfer.window.acked.toBytes();
        n.transfer = undefined;
        n.prepared = undefined;
        n.prepGen++;
        return;
      case 'outcome': {
        row.reason = e.reason;
        row.detail = e.detail.slice(0, 200);
        this.d.counters.outcome(e.outcome);
        if (e.refuse && n.update.target) this.d.store.addRefusal(row.id, n.update.target.id, 'release');
        const level = e.outcome === 'confirmed' ? 'info' : 'warn';
        this.d.log(level, `node ${row.id}: ${e.outcome}${e.reason ? ` (${reasonName(e.reason)})` : ''}: ${e.detail}`, this.fieldsOf(n, { outcome: e.outcome, reason: e.reason ? reasonName(e.reason) : undefined }));
        return;
      }
      case 'event':
        this.d.store.event(row.id, e.event, e.detail);
        return;
    }
  }

  /** Timers keyed by (node, kind), derived from the machine's state after every step. */
  private rearm(n: NodeRuntime): void {
    const want = timersOf(n.update);
    const clock = this.d.clock;
    for (const [kind, t] of n.timers) {
      if (want[kind] === t.at) continue;
      clock.clearTimeout(t.handle);
      n.timers.delete(kind);
    }
    for (const kind of Object.keys(want) as TimerKind[]) {
      const at = want[kind]!;
      if (n.timers.has(kind)) continue;
      // setTimeout's ceiling is ~24.8 days; a longer wait is re-armed when it fires early.
      const handle = clock.setTimeout(() => {
        n.timers.delete(kind);
        if (clock.now() < at) this.rearm(n);
        else this.input(n, { kind: 'timer', timer: kind });
      }, Math.min(0x7fffffff, Math.max(0, at - clock.now()) + 1));
      handle.unref?.();
      n.timers.set(kind, { at, handle });
    }
  }

  private admitWaiting(): void {
    this.admission.admit((id) => {
      const n = this.nodes.get(id);
      if (!n || n.update.phase.kind !== 'queued' || !n.update.target) return false;
      this.input(n, { kind: 'begin', release: n.update.target });
      return true;
    });
  }

  /** Decides whether a node should get a release (its rollout's, or see releaseOf), and starts it. */
  consider(n: NodeRuntime, lostDownload = false): void {
    const row = n.row;
    const c = releaseOf(this.d.choose(row), row.hw, this.d.cfg.offerPolicy, this.d.catalog);
    const release = c.release;
    const refused = release !== undefined && !c.downgrade && this.d.store.refusals(row.id).some((r) => r.kind === 'release' && r.release === release.row.id);
    const d = decide(row, n.update, release, refused, lostDownload, c.downgrade);
    if (d.kind === 'start' || d.kind === 'newer') {
      n.permit = c.permit;
      Object.assign(row, { rollout: c.rollout, wave: c.wave });
    }
    switch (d.kind) {
      case 'none':
        return;
      case 'finish':
        this.input(n, { kind: 'finish', outcome: d.outcome, reason: d.reason, detail: d.detail, release: d.release });
        return;
      case 'newer':
        this.input(n, { kind: 'newer', release: d.release });
        return;
      case 'start':
        Object.assign(row, { attempts: 0, retransmits: 0, acks: 0, bytesSent: 0, reason: 0, detail: '' });
        this.input(n, this.admission.request(row.id) ? { kind: 'begin', release: d.release } : { kind: 'queue', release: d.release });
        return;
    }
  }

  // ---- messages from nodes ------------------------------------------------------------------

  /** A Hello: the node's truth about itself. Returns the runtime (created for a new node). */
  hello(id: string, h: Hello): void {
    const now = this.d.clock.now();
    let n = this.nodes.get(id);
    if (!n) {
      n = this.runtime(blankRow(id, h, now), IDLE);
      this.nodes.set(id, n);
    }
    if (h.bootCount !== undefined && n.bootCount !== undefined && h.bootCount < n.bootCount) {
      // A Hello from an earlier boot (a late or replayed duplicate): acting on it could mistake the
      // image the node ran before its update for a failed boot.
      this.d.store.event(id, 'stale-hello', `boot ${h.bootCount} after boot ${n.bootCount}`);
      return;
    }
    this.heard(n, now);
    const row = n.row;
    n.battery = h.battery ?? null;
    if (h.bootCount !== undefined) n.bootCount = h.bootCount;
    if (row.runningVersion !== h.version) this.d.log('info', `node ${id} runs ${h.version}`, { device: id, release: releaseName(h.hw, h.version) });
    Object.assign(row, {
      hw: h.hw, runningVersion: h.version, runningDigest: h.digest, securityVersion: h.securityVersion, slot: h.slot, imageState: h.imageState,
      caps: h.caps, maxMessage: h.maxMessage, window: h.window,
    });
    // Stored at every Hello (rare: once per connect or boot), so that after a crash the agent still
    // knows whom to Query, even for nodes that never had an update.
    this.persist(n);
    n.warnings = h.caps & Capability.rollback ? [] : ['bootloader cannot roll back: a bad image would stay installed'];
    if (h.imageState === ImageState.recovery) n.warnings.push('node is in recovery mode (failed starts, or a failed image with no way back): it takes a full image of a newer release');
    n.rtt.resetBackoff();
    this.d.store.event(id, 'hello', `${h.version} slot ${h.slot} state ${h.imageState}${h.transfer ? ` transfer ${h.transfer.session}` : ''}`);
    // Rollouts learn of the node (and its battery) before its machine may ask what to offer.
    this.d.onNodeChange(id);
    const facts = helloFacts(h, n.update, this.d.catalog, n.transfer, now);
    if (n.transfer) n.bitmapDirty = true;
    this.input(n, { kind: 'hello', hello: facts });
    this.publishStatus(n);
  }

  ack(n: NodeRuntime, a: Ack): 'ok' | 'past-end' {
    const now = this.d.clock.now();
    this.heard(n, now);
    const verdict = classifyAck(n.update, a);
    const t = n.transfer;
    if (verdict === 'stale' || !t || t.session !== a.session) {
      this.d.store.event(n.row.id, 'stale-ack', `session ${a.session}: no live transfer with it (current ${n.update.session ?? 'none'}, state ${n.row.state})`);
      return 'ok';
    }
    if (a.base > t.count) return 'past-end';
    n.row.acks++;
    this.d.counters.acks++;
    // The answer to the latest Offer describes all the node holds: it replaces what we believed (the
    // store's coarse bitmap after a restart, or acks of chunks a power cut has since lost).
    let fresh = 1;
    if (verdict === 'answer') t.window.resyncFromAck(a.base, a.bitmap);
    else fresh = t.window.onAck(a.base, a.bitmap, now);
    if (fresh > 0) {
      n.bitmapDirty = true;
      n.statusDirty = true;
    }
    this.input(n, { kind: 'ack', verdict, session: a.session, complete: t.window.complete });
    this.publishStatus(n);
    return 'ok';
  }

  report(n: NodeRuntime, r: Report): void {
    this.heard(n, this.d.clock.now());
    const deltaPayload = n.transfer?.payload.encoding === Encoding.delta;
    this.input(n, { kind: 'report', report: { session: r.session, stage: r.stage, reason: r.reason, version: r.version, detail: r.detail, retryAfter: r.retryAfter, deltaPayload } });
    this.publishStatus(n);
  }

  private heard(n: NodeRuntime, now: number): void {
    n.row.lastSeen = now;
    n.online = true;
    n.silentExpiries = 0;
  }

  presence(id: string, online: boolean): void {
    const n = this.nodes.get(id);
    if (!n || n.online === online) return;
    n.online = online;
    n.statusDirty = true;
  }

  /** An operator withdrew (or restored) a release: updates to it end; a restore reconsiders its hardware class. */
  withdrawn(release: Release, on: boolean): void {
    for (const n of this.nodes.values()) {
      if (n.row.hw !== release.row.hw) continue;
      if (on) this.input(n, { kind: 'withdrawn', release: release.row.id });
      else if (n.row.lastSeen > 0) this.consider(n);
    }
  }

  releaseReady(release: Release): void {
    for (const n of this.nodes.values()) if (n.row.hw === release.row.hw && n.row.lastSeen > 0) this.consider(n);
  }

  /** After a (re)connect: poke every node that was mid-update; rebuild the line of waiting nodes. */
  resumeAll(): void {
    for (const n of this.nodes.values()) {
      const p = n.update.phase.kind;
      const release = this.d.catalog.get(n.update.target?.id);
      if ((p === 'offered' || p === 'downloading' || p === 'verifying') && n.update.session !== null && release) {
        if (n.transfer) {
          n.transfer.window.resync(n.transfer.window.acked.toBytes());
          this.input(n, { kind: 'resume' });
        } else this.sessions.restore(n, release);
      } else if (p === 'preparing' || ((p === 'activating' || p === 'deferred') && n.update.session !== null)) {
        this.input(n, { kind: 'resume' });
      }
      this.rearm(n);
    }
    const waiting = [...this.nodes.values()].filter((n) => n.update.phase.kind === 'queued' && !this.admission.waiting.includes(n.row.id));
    waiting.sort((a, b) => a.row.updatedAt - b.row.updatedAt);
    for (const n of waiting) this.admission.enqueue(n.row.id);
    this.admitWaiting();
    for (const n of this.nodes.values()) n.statusDirty = true; // retained statuses may have been lost with the broker
  }

  /** Nodes to ask for a Hello after a (re)connect: all but those just poked with an Offer or Activate. */
  toQuery(): string[] {
    return [...this.nodes.values()].filter((n) => !(n.update.session !== null && ['offered', 'downloading', 'verifying', 'activating', 'deferred'].includes(n.row.state))).map((n) => n.row.id);
  }

  /** Periodic: coarse bitmap persistence, throttled status. */
  sweep(): void {
    const now = this.d.clock.now();
    for (const n of this.nodes.values()) {
      if (n.bitmapDirty && now - n.lastBitmapSave >= this.d.cfg.bitmapPersistMs) this.persistBitmap(n);
      if (n.statusDirty) this.publishStatus(n);
    }
  }

  private persistBitmap(n: NodeRuntime): void {
    if (n.transfer) n.row.bitmap = n.transfer.window.acked.toBytes();
    n.bitmapDirty = false;
    n.lastBitmapSave = this.d.clock.now();
    this.persist(n);
  }

  private persist(n: NodeRuntime): void {
    n.row.updatedAt = this.d.clock.now();
    this.d.store.saveNode(n.row);
  }

  statusOf(n: NodeRuntime): NodeStatus {
    return nodeStatus(n.row, this.d.catalog.get(n.row.targetRelease), n.transfer?.window, n.online, n.warnings, n.transfer?.payload.bytes.length, this.d.agentName);
  }

  publishStatus(n: NodeRuntime, force = false): void {
    const now = this.d.clock.now();
    if (!force && now - n.lastStatus < this.d.cfg.statusEveryMs) {
      n.statusDirty = true;
      return;
    }
    n.statusDirty = false;
    n.lastStatus = now;
    const status = this.statusOf(n);
    this.d.onStatus(status);
    if (!this.d.links.publishStatus(n.row.id, JSON.stringify(status))) n.statusDirty = true; // the sweep tries again
  }

  stop(): void {
    this.closed = true;
    for (const n of this.nodes.values()) {
      for (const t of n.timers.values()) this.d.clock.clearTimeout(t.handle);
      n.timers.clear();
      if (n.windowTimer) this.d.clock.clearTimeout(n.windowTimer);
      this.persist(n);
    }
  }
}
