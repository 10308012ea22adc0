import type { KeyObject } from 'node:crypto';
import { reasonName } from '../shared/errors.js';
import { ImageState } from '../shared/messages.js';
import { newestFirst, RolloutError, verifyRollout, type RolloutSpec } from '../shared/rollout.js';
import type { ReleaseCatalog } from './catalog.js';
import { initial, offerFor, step, targets, type AgentRolloutState, type NodeEntry, type NodeFacts, type NodePhase, type RolloutEffect, type RolloutStatus, type RolloutInput, type RolloutState } from './rollout-fsm.js';
import { isDeviceId } from '../shared/topics.js';
import { rolloutView, type RolloutView } from './rollout-view.js';
import type { AgentStore } from './store.js';
import type { NodeRow, Release } from './types.js';

/** Where a node's release comes from: a rollout (with its wave, maybe an authorised downgrade), or no rollout governs it. */
export type ReleaseChoice =
  | { kind: 'rollout'; release: Release | undefined; rollout: string; wave: number; downgrade: boolean; permit?: Buffer; why?: string }
  | { kind: 'free' };

/** What the runtime tells the rollouts about one node. */
export interface NodeSource {
  row: NodeRow;
  battery: number | null;
}

export interface RolloutsDeps {
  store: AgentStore;
  catalog: ReleaseCatalog;
  trust: readonly KeyObject[];
  /** This agent's name: its state topic's last level; its own retained state is not a peer's. */
  agent: string;
  now: () => number;
  log: (level: 'info' | 'warn' | 'error', msg: string) => void;
  /** Publishes this agent's retained state of a rollout (JSON). */
  publish: (id: string, doc: string) => void;
  /** Every node the agent knows. */
  nodes: () => Iterable<NodeSource>;
  node: (id: string) => NodeSource | undefined;
  /** Ask the update runtime to reconsider these nodes (their offer may have changed). */
  consider: (ids: string[]) => void;
}

interface Held {
  doc: Buffer;
  state: RolloutState;
}

/**
 * The rollouts this agent takes part in: the thin runtime around agent/rollout-fsm.ts. Reads the
 * signed documents and the peers' states from MQTT, feeds node facts, persists and publishes its own
 * state, and answers "which release may this node get now" for agent/updates.ts.
 */
export class Rollouts {
  private readonly held = new Map<string, Held>();
  private readonly groups = new Map<string, string[]>();
  /** Documents refused (bad signature, malformed), by rollout id: published in the state so operators see why. */
  private readonly refused = new Map<string, string>();
  private stepping = false;
  private readonly queue: [string, RolloutInput][] = [];
  private readonly dirty = new Set<string>();
  private flushTimer: NodeJS.Timeout | undefined;

  constructor(private readonly d: RolloutsDeps) {
    for (const r of d.store.rollouts()) {
      try {
        const spec = verifyRollout(r.doc, d.trust);
        const saved = JSON.parse(r.state) as Partial<RolloutState>;
        this.held.set(spec.id, { doc: r.doc, state: { ...initial(spec), ...saved, spec, peers: {} } });
      } catch (err) {
        d.log('warn', `stored rollout ${r.id} not resumed: ${(err as Error).message}`);
      }
    }
  }

  /** Republishes every state after a (re)connect: the broker may have lost retained messages. */
  republishAll(): void {
    for (const id of this.held.keys()) this.dirty.add(id);
    this.scheduleFlush();
  }

  // ---- inputs from MQTT ---------------------------------------------------------------------

  onDocument(topicId: string, bytes: Buffer): void {
    if (bytes.length === 0) return;
    let spec: RolloutSpec;
    try {
      spec = verifyRollout(bytes, this.d.trust);
      if (spec.id !== topicId) throw new RolloutError(`rollout document names ${spec.id} but was published on the topic of ${topicId}`);
    } catch (err) {
      const why = err instanceof RolloutError ? err.message : String(err);
      if (this.refused.get(topicId) !== why) {
        this.d.log('warn', `rollout ${topicId} refused: ${why}`);
        this.d.store.event(null, 'rollout-refused', `${topicId}: ${why}`);
      }
      this.refused.set(topicId, why);
      this.publishRefused(topicId, why);
      return;
    }
    this.refused.delete(topicId);
    const h = this.held.get(spec.id);
    if (!h) {
      this.held.set(spec.id, { doc: bytes, state: initial(spec) });
      this.d.log('info', `rollout ${spec.id}: ${spec.hw} ${spec.version}${spec.auto ? ' to every node at once (--auto)' : ''}, ${spec.command}`);
      this.d.store.event(null, 'rollout', `${spec.id} ${spec.hw} ${spec.version} ${spec.command}`);
      this.run(spec.id, { kind: 'facts', nodes: this.allFacts(spec) });
      return;
    }
    if (spec.seq <= h.state.spec.seq) return; // a replay of an older command
    h.doc = bytes;
    this.run(spec.id, { kind: 'command', spec });
  }

  onPeerState(id: string, agent: string, bytes: Buffer): void {
    if (agent === this.d.agent || !this.held.has(id)) return;
    let state: AgentRolloutState | null = null;
    if (bytes.length > 0) {
      try {
        const o = JSON.parse(bytes.toString('utf8')) as Partial<AgentRolloutState> & { refused?: string };
        const status = validStatus(o.status);
        if (!o.refused && status && Number.isInteger(o.wave) && o.nodes && typeof o.nodes === 'object') state = { status, wave: o.wave as number, nodes: validEntries(o.nodes) };
      } catch {
        this.d.log('warn', `rollout ${id}: state of agent ${agent} is not JSON; ignored`);
        return;
      }
    }
    this.run(id, { kind: 'peer', agent, state });
  }

  /** The broker's retained `P/d/<id>/info`: the node's groups (only the broker can write it). */
  onInfo(device: string, bytes: Buffer): void {
    let groups: string[] = [];
    try {
      const o = JSON.parse(bytes.toString('utf8')) as { groups?: unknown };
      if (Array.isArray(o.groups)) groups = o.groups.filter((g): g is string => typeof g === 'string').slice(0, 64);
    } catch {
      return;
    }
    const before = this.groups.get(device);
    this.groups.set(device, groups);
    if (JSON.stringify(before) !== JSON.stringify(groups)) this.nodeChanged(device);
  }

  // ---- inputs from the update runtime -------------------------------------------------------

  /** A node said Hello or its update changed state. */
  nodeChanged(id: string): void {
    const src = this.d.node(id);
    if (!src) return;
    for (const [rid, h] of this.held) {
      if (src.row.hw !== h.state.spec.hw) continue;
      this.run(rid, { kind: 'facts', nodes: [this.facts(src, h.state.spec)] });
    }
  }

  tick(): void {
    for (const id of this.held.keys()) this.run(id, { kind: 'tick' });
  }

  /** Which release the node may get now, or `free` when no rollout governs it. */
  choose(row: NodeRow): ReleaseChoice {
    const h = this.governing(row);
    if (!h) return { kind: 'free' };
    const s = h.state;
    const v = offerFor(s, row.id, this.d.now());
    const wave = s.nodes[row.id]?.wave ?? 0;
    const base = { kind: 'rollout' as const, rollout: s.spec.id, wave, downgrade: false };
    switch (v.kind) {
      case 'hold':
        return { ...base, release: undefined, why: v.why };
      case 'revert': {
        const release = this.d.catalog.all().find((r) => r.row.hw === row.hw && r.row.digest.toString('hex') === v.to);
        const permit = s.spec.revertPermit ? Buffer.from(s.spec.revertPermit, 'base64') : undefined;
        return { ...base, release, downgrade: true, permit, why: release ? undefined : 'auto-revert: its previous image is not a release this agent holds' };
      }
      case 'offer': {
        const release = this.d.catalog.all().find((r) => r.row.hw === row.hw && r.row.version === s.spec.version && r.row.digest.toString('hex') === s.spec.digest);
        const withdrawn = release && this.d.catalog.isWithdrawn(row.hw, s.spec.version);
        return { ...base, release: withdrawn ? undefined : release, why: release ? undefined : `release ${s.spec.hw} ${s.spec.version} not held by this agent` };
      }
    }
  }

  views(): RolloutView[] {
    return [...this.held.values()].sort((a, b) => newestFirst(a.state.spec, b.state.spec)).map((h) => rolloutView(h.state.spec, h.state, h.state.peers));
  }

  stop(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flush();
  }

  // ---- internals ----------------------------------------------------------------------------

  /** The newest rollout of the node's class that includes the node and was not aborted. */
  private governing(row: NodeRow): Held | undefined {
    let best: Held | undefined;
    for (const h of this.held.values()) {
      const s = h.state;
      if (s.spec.hw !== row.hw || s.status.kind === 'aborted' || !s.nodes[row.id]) continue;
      if (!best || newestFirst(s.spec, best.state.spec) < 0) best = h;
    }
    return best;
  }

  private allFacts(spec: RolloutSpec): NodeFacts[] {
    const out: NodeFacts[] = [];
    for (const src of this.d.nodes()) if (src.row.hw === spec.hw && src.row.lastSeen > 0) out.push(this.facts(src, spec));
    return out;
  }

  private facts(src: NodeSource, spec: RolloutSpec): NodeFacts {
    const row = src.row;
    const running = row.runningDigest?.toString('hex') ?? null;
    const settled = row.imageState !== ImageState.pendingVerify && row.imageState !== ImageState.recovery;
    const release = this.d.catalog.all().find((r) => r.row.hw === spec.hw && r.row.digest.toString('hex') === spec.digest);
    let progress: NodeFacts['progress'] = 'none';
    if (running === spec.digest && settled) progress = 'confirmed';
    else if (release && row.targetRelease === release.row.id) {
      const st = row.state;
      if (st === 'idle') progress = 'none';
      else if (st === 'confirmed' || st === 'rolledBack' || st === 'rejected' || st === 'failed' || st === 'timedOut' || st === 'cancelled') progress = st;
      else progress = 'inProgress';
    }
    return {
      id: row.id, hw: row.hw, groups: this.groups.get(row.id) ?? [], battery: src.battery, progress,
      reason: row.reason ? reasonName(row.reason) : null, detail: row.detail, running, settled,
    };
  }

  /** Steps one rollout; inputs arriving while effects run (consider → node change) are queued. */
  private run(id: string, input: RolloutInput): void {
    this.queue.push([id, input]);
    if (this.stepping) return;
    this.stepping = true;
    try {
      for (let next = this.queue.shift(); next; next = this.queue.shift()) {
        const h = this.held.get(next[0]);
        if (!h) continue;
        const { state, effects } = step(h.state, next[1], this.d.now());
        h.state = state;
        for (const e of effects) this.execute(next[0], h, e);
      }
    } finally {
      this.stepping = false;
    }
  }

  private execute(id: string, h: Held, e: RolloutEffect): void {
    switch (e.kind) {
      case 'publish':
        this.dirty.add(id);
        this.scheduleFlush();
        return;
      case 'event':
        this.d.log(e.detail.includes('halted') ? 'warn' : 'info', e.detail);
        this.d.store.event(null, 'rollout', e.detail);
        return;
      case 'consider': {
        const mine = e.devices.filter((d) => targets(h.state.spec, { id: d, hw: this.d.node(d)?.row.hw ?? '', groups: this.groups.get(d) ?? [] }));
        if (mine.length > 0) this.d.consider(mine);
        return;
      }
    }
  }

  private scheduleFlush(): void {
    if (this.flushTimer) return;
    // Coalesces the changes of a burst (a wave of outcomes) into one write and one publish.
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.flush();
    }, 50);
    this.flushTimer.unref?.();
  }

  private flush(): void {
    for (const id of this.dirty) {
      const h = this.held.get(id);
      if (!h) continue;
      const { status, wave, nodes, accepted, windowOpen } = h.state;
      this.d.store.saveRollout(id, h.doc, JSON.stringify({ status, wave, nodes, accepted, windowOpen }));
      this.d.publish(id, JSON.stringify({ v: 1, agent: this.d.agent, id, at: Math.floor(Date.now() / 1000), status, wave, nodes }));
    }
    this.dirty.clear();
  }

  private publishRefused(id: string, why: string): void {
    this.d.publish(id, JSON.stringify({ v: 1, agent: this.d.agent, id, at: Math.floor(Date.now() / 1000), refused: why }));
  }
}

const PHASES = new Set(['waiting', 'skipped', 'inProgress', 'confirmed', 'failed', 'reverting', 'reverted']);

/** A peer's node entries, keeping only well-formed ones (another agent's state is input like any other). */
function validEntries(nodes: object): Record<string, NodeEntry> {
  const out: Record<string, NodeEntry> = {};
  for (const [id, e] of Object.entries(nodes).slice(0, 100_000)) {
    if (!isDeviceId(id) || typeof e !== 'object' || e === null) continue;
    const x = e as Record<string, unknown>;
    if (!Number.isInteger(x.wave) || (x.wave as number) < 0 || !PHASES.has(x.phase as string)) continue;
    out[id] = {
      wave: x.wave as number, phase: x.phase as NodePhase, outcome: typeof x.outcome === 'string' ? x.outcome : null, reason: typeof x.reason === 'string' ? x.reason : null,
      detail: typeof x.detail === 'string' ? x.detail.slice(0, 200) : '', from: typeof x.from === 'string' ? x.from : null,
    };
  }
  return out;
}

function validStatus(x: unknown): RolloutStatus | undefined {
  const o = x as { kind?: unknown; reason?: unknown } | null;
  if (typeof o !== 'object' || o === null) return undefined;
  if (o.kind === 'running' || o.kind === 'paused' || o.kind === 'done') return { kind: o.kind };
  if (o.kind === 'halted' || o.kind === 'aborted') return { kind: o.kind, reason: typeof o.reason === 'string' ? o.reason.slice(0, 2000) : '' };
  return undefined;
}
