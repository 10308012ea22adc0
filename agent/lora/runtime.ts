import { randomInt } from 'node:crypto';
import { encodeDown, FERRY_LORA_PORT, pageIndices, StatusFlag, type LoraDown, type LoraUp } from '../../shared/lora/control.js';
import { DEFAULT_RX1_HZ, regionByName, RX2_FREQUENCY_HZ } from '../../shared/lora/duty.js';
import { maxFragmentSize, type Region } from '../../shared/lora/regions.js';
import { MulticastGroups } from './groups.js';
import { parseUplink } from './uplink.js';
import { UnicastBlocks } from './unicast-blocks.js';
import type { ReleaseCatalog } from '../catalog.js';
import { rateLimited } from '../lns/json.js';
import type { LnsAdapter, LnsUplink } from '../lns/types.js';
import { nodeStatus, type NodeStatus } from '../status.js';
import type { AgentStore } from '../store.js';
import type { Release } from '../types.js';
import { DownlinkQueue } from './downlinks.js';
import { cancel, realClock, type LoraClock } from './clock.js';
import { downlinkDr, isLoraRow, loraRow, newLoraNode, type LoraNode } from './record.js';
import { stateOf, stepTransfer, untilAir, type TransferAction, type TransferInput } from './transfer-fsm.js';

/**
 * The agent's LoRa side (docs/lora.md §7): LoRa nodes reached through an LNS adapter, kept in the same store and
 * status topics as MQTT nodes. It decides who gets which release, runs each node's transfer machine and, per
 * block, a TS004 session machine, and sends every downlink through the airtime-scheduled queue.
 */
export interface LoraOptions {
  region: Region['name'];
  /**
   * Payload KiB per TS004 block (1..255), or 'auto': the most that keeps a block within BLOCK_FRAGMENTS fragments at
   * the downlink DR of the offer (one session for 100 KiB at DR5, 48 KiB blocks at DR0). Fewer blocks cost fewer
   * setups, status rounds and padded last fragments; the cap bounds a node's decoder RAM for coded repair.
   */
  blockKiB: number | 'auto';
  classCSeconds: number;
  /** Wait for an answer after a control downlink or status request went out. */
  answerTimeoutMs: number;
  initialLoss: number;
  /**
   * Sends of one request before its exchange counts as failed. At 30 % loss a request or its answer is lost with
   * p ≈ 0.3: 5 tries fail 0.24 % of exchanges, about one in two 50-node campaigns (~300 exchanges); 8 tries, 2 %.
   */
  maxTries: number;
  /**
   * Lead before a multicast group's Class C window: every member must get its TS005 setup first, in Class A after
   * its next uplink (≤ 60 s, §7.6) and paying the RX1 duty cycle (~10 s each at 1 %).
   */
  multicastLeadMs: number;
  multicastLeadPerMemberMs: number;
}

export const DEFAULT_LORA: LoraOptions = { region: 'EU868', blockKiB: 'auto', classCSeconds: 120, answerTimeoutMs: 40_000, initialLoss: 0.1, maxTries: 8, multicastLeadMs: 60_000, multicastLeadPerMemberMs: 10_000 };

export interface LoraDeps {
  lns: LnsAdapter;
  store: AgentStore;
  catalog: ReleaseCatalog;
  publishStatus: (id: string, doc: string) => void;
  onStatus?: (s: NodeStatus) => void;
  log: (level: 'info' | 'warn' | 'error', msg: string) => void;
  options?: Partial<LoraOptions>;
  /** Real time unless a simulator shares its virtual clock. */
  clock?: LoraClock;
  /**
   * The agent's offer policy. Rollouts do not cover LoRa nodes yet, so under `rollout` a LoRa node
   * is offered nothing (its status says why) rather than every release at once behind a canary's back.
   */
  offerPolicy?: 'auto' | 'rollout';
}

const MAX_LORA_NODES = 100_000;
/** loffer key 6 and the node's NVS hold the block size in one byte. */
export const MAX_BLOCK_KIB = 255;
/** Fragments per block that 'auto' aims at: coded repair over it needs ≤ ~1 KiB of decoder RAM at 10 % loss. */
const BLOCK_FRAGMENTS = 1024;

function clearSession(n: LoraNode): void {
  cancel(n.sessionTimer);
  n.session = undefined;
}

export class LoraRuntime {
  readonly nodes = new Map<string, LoraNode>();
  readonly queue: DownlinkQueue;
  readonly groups: MulticastGroups;
  private readonly blocks: UnicastBlocks;
  private readonly o: LoraOptions;
  private readonly warnOnce = rateLimited(1000);
  private closed = false;
  private readonly clock: LoraClock;

  constructor(private readonly d: LoraDeps) {
    this.o = { ...DEFAULT_LORA, ...d.options };
    this.clock = d.clock ?? realClock;
    if (this.o.blockKiB !== 'auto' && !(Number.isInteger(this.o.blockKiB) && this.o.blockKiB >= 1 && this.o.blockKiB <= MAX_BLOCK_KIB)) {
      throw new RangeError(`LoRa block size ${this.o.blockKiB} KiB is not 1..${MAX_BLOCK_KIB}`);
    }
    this.queue = new DownlinkQueue(d.lns, this.o.region, d.log, this.clock);
    this.groups = new MulticastGroups({
      region: this.o.region, queue: this.queue, log: d.log, clock: this.clock, answerTimeoutMs: this.o.answerTimeoutMs, maxTries: this.o.maxTries,
      windowLeadMs: (members) => this.o.multicastLeadMs + members * this.o.multicastLeadPerMemberMs,
      release: (id) => d.catalog.get(id),
      feedTransfer: (n, input) => this.feedTransfer(n, input),
      startUnicast: (n, index, resume) => this.blocks.start(n, index, resume, true),
      goUnicast: (n) => this.goUnicast(n),
    });
    this.blocks = new UnicastBlocks({
      region: this.o.region, answerTimeoutMs: this.o.answerTimeoutMs, maxTries: this.o.maxTries, queue: this.queue, groups: this.groups, clock: this.clock,
      release: (id) => d.catalog.get(id), feedTransfer: (n, input) => this.feedTransfer(n, input), guard: (f) => this.guard(f), log: d.log,
    });
    for (const row of d.store.nodes()) if (isLoraRow(row)) this.nodes.set(row.id, newLoraNode(row, this.o.initialLoss));
    const handled = () => this.clock.arrived?.();
    d.lns.on('up', (u) => (this.guard(() => this.onUp(u)), handled()));
    d.lns.on('error', (e) => (this.guard(() => this.onLnsError(e.devEui, e.id, e.code, e.description)), handled()));
    d.lns.on('txAck', (a) => (this.guard(() => this.queue.txAck(a.id)), handled()));
    d.lns.on('ack', handled);
  }

  async start(): Promise<void> {
    await this.d.lns.start();
    this.d.log('info', `LoRa: ${this.d.lns.kind} adapter up, region ${this.o.region}, ${this.nodes.size} known LoRa node(s)`);
  }

  async stop(): Promise<void> {
    this.closed = true;
    this.queue.stop();
    this.groups.stop();
    for (const n of this.nodes.values()) {
      cancel(n.transferTimer);
      cancel(n.sessionTimer);
      this.d.store.saveNode(n.row);
    }
    await this.d.lns.stop();
  }

  statuses(): NodeStatus[] {
    return [...this.nodes.values()].map((n) => this.statusOf(n));
  }

  /**
   * A release became available: offer it to the LoRa nodes of its hardware that are idle, as one multicast group
   * when several need it (one airtime for all), else unicast.
   */
  releaseReady(release: Release): void {
    const want = [...this.nodes.values()].filter((n) => n.row.hw === release.row.hw && !n.transfer && this.needs(n, release));
    if (this.d.offerPolicy === 'rollout') {
      for (const n of want) this.holdForRollout(n);
      return;
    }
    if (want.length < 2 || !this.d.lns.unicastFuota || this.d.lns.kind !== 'chirpstack') {
      for (const n of want) this.consider(n);
      return;
    }
    const transferId = randomInt(1, 0xffff_ffff);
    const g = this.groups.create(release, transferId, want);
    this.d.log('info', `LoRa: ${release.row.version} to ${want.length} ${release.row.hw} nodes as multicast group ${g.mcAddr.toString(16).padStart(8, '0')}`);
    const blockKiB = this.blockKiBFor(want);
    for (const n of want) this.beginTransfer(n, release, transferId, undefined, blockKiB, g.mcAddr);
  }

  private needs(n: LoraNode, release: Release): boolean {
    const r = n.row;
    if (release.row.version === r.runningVersion) return false;
    if (r.runningDigest && release.row.digest.subarray(0, 4).equals(r.runningDigest)) return false;
    return !this.d.store.refusals(r.id).some((x) => x.release === release.row.id);
  }

  private guard(f: () => void): void {
    try {
      if (!this.closed) f();
    } catch (err) {
      this.d.log('error', `LoRa: ${(err as Error).stack ?? err}`);
    }
  }

  private warn(key: string, msg: string): void {
    if (this.warnOnce(key)) this.d.log('warn', msg);
  }

  // ---- uplinks ----------------------------------------------------------------------------

  private onUp(u: LnsUplink): void {
    const n = this.nodes.get(u.devEui);
    if (n) {
      n.dr = u.dr;
      n.frequencyHz = u.frequencyHz ?? n.frequencyHz;
      n.row.lastSeen = this.clock.now();
      n.online = true;
    }
    const p = parseUplink(u.devEui, u.fPort, u.bytes);
    if (p.port === 'bad') return this.warn(`bad:${u.devEui}`, `LoRa node ${u.devEui}: ignored ${p.what} uplink: ${p.why}`);
    if (p.port === 'ferry') {
      const m = p.message;
      if (m.type === 'hello') return this.onHello(u, m);
      if (!n) return this.askHello(u.devEui, u.dr);
      if (m.type === 'status') return this.onStatusPage(n, m);
      return this.feedTransfer(n, { kind: 'report', stage: m.stage, reason: m.reason });
    }
    if (!n) return;
    if (p.port === 'ts005') this.groups.onTs005(n, p.answers);
    else if (p.port === 'ts004') for (const { input, fragIndex } of p.inputs) this.blocks.feed(n, input, fragIndex);
  }

  private askHello(devEui: string, dr: number): void {
    if (!this.warnOnce(`query:${devEui}`)) return;
    this.queue.push({ to: { kind: 'node', devEui }, fPort: FERRY_LORA_PORT, bytes: encodeDown({ type: 'query' }), dr: downlinkDr(this.o.region, dr), frequencyHz: DEFAULT_RX1_HZ[this.o.region], classA: true });
  }

  private onHello(u: LnsUplink, h: Extract<LoraUp, { type: 'hello' }>): void {
    let n = this.nodes.get(u.devEui);
    const now = this.clock.now();
    if (!n) {
      if (this.nodes.size >= MAX_LORA_NODES) return this.warn('full', `LoRa: ${MAX_LORA_NODES} nodes known, ${u.devEui} ignored`);
      n = newLoraNode(loraRow(u.devEui, h, now), this.o.initialLoss);
      n.dr = u.dr;
      n.frequencyHz = u.frequencyHz;
      n.online = true;
      this.nodes.set(u.devEui, n);
      this.d.store.event(u.devEui, 'lora-hello', `${h.hw} ${h.version}`);
    }
    const r = n.row;
    r.hw = h.hw;
    r.runningVersion = h.version;
    r.runningDigest = Buffer.from(h.digestPrefix);
    r.imageState = h.imageState;
    r.caps = h.caps;
    n.bootCount = h.bootCount;
    n.battery = h.battery;
    if (n.transfer) {
      this.feedTransfer(n, { kind: 'hello', version: h.version });
      // A node that forgot the transfer (no transfer id) while we were sending it: offer it again.
      if (n.transfer && h.transferId === undefined && (n.transfer.phase.kind === 'block' || n.transfer.phase.kind === 'collecting')) {
        this.d.log('info', `LoRa node ${r.id}: lost transfer ${n.transfer.plan.transferId}, offering again`);
        n.session = undefined;
        this.feedTransfer(n, { kind: 'start' });
      }
    } else if (h.transferId !== undefined) {
      // A transfer from before an agent restart, or one we gave up on.
      const release = this.d.catalog.get(r.targetRelease);
      if (r.session === h.transferId && release && ['offered', 'downloading', 'verifying'].includes(r.state)) {
        // The node holds the offer's geometry: keep its block size, whatever the DR says now.
        const kib = r.chunkSize / 1024;
        this.beginTransfer(n, release, h.transferId, { type: 'query', transferId: h.transferId }, Number.isInteger(kib) && kib >= 1 && kib <= MAX_BLOCK_KIB ? kib : this.blockKiBFor([n]));
      } else this.sendControl(n, { type: 'cancel', transferId: h.transferId, reason: 16 });
    } else this.consider(n);
    this.persist(n);
  }

  private onStatusPage(n: LoraNode, m: Extract<LoraUp, { type: 'status' }>): void {
    const t = n.transfer;
    if (!t || t.plan.transferId !== m.transferId) return;
    const indices = m.bitmap && m.page !== undefined ? pageIndices(m.page, m.bitmap) : [];
    const last = (m.flags & StatusFlag.lastPage) !== 0 || m.bitmap === undefined;
    const resume = (m.flags & StatusFlag.resume) !== 0;
    if (!resume && m.unknown !== undefined && this.groups.inStatus(n, m.done)) {
      this.groups.feed(n, { kind: 'statusPage', devEui: n.row.id, deficiency: m.unknown, indices, last }, m.done % 4);
      return;
    }
    const g = this.groups.groupOf(n);
    // A member that rebooted lost its Class C window: leaving the group offers it the transfer again (unicast
    // Class C), and its answer, what it holds, sets its block up.
    if (resume && g) return this.groups.leave(g, n, 'rebooted');
    const s = n.session;
    if (s && !resume && s.index === m.done && s.state.phase.kind === 'status' && m.unknown !== undefined) {
      return this.blocks.feed(n, { kind: 'statusPage', devEui: n.row.id, deficiency: m.unknown, indices, last }, s.index % 4);
    }
    if (resume && s) {
      // The node rebooted: its TS004 session (RAM) is gone; the transfer machine restarts the block from its pages.
      cancel(n.sessionTimer);
      n.session = undefined;
      this.queue.dropFor(n.row.id);
    }
    this.feedTransfer(n, { kind: 'status', done: m.done, deficiency: m.unknown, indices, last, resume });
  }

  private onLnsError(devEui: string, id: string, code: string, description: string | undefined): void {
    const n = this.nodes.get(devEui);
    this.warn(`lns:${devEui}:${code}`, `LoRa node ${devEui}: LNS reports ${code}${description ? `: ${description}` : ''}`);
    // Only a refusal of this session's own frames: frames of a session already set up again smaller do not count.
    if (n?.session && code === 'DOWNLINK_PAYLOAD_SIZE' && (id === '' || n.session.ids.has(id))) this.blocks.feed(n, { kind: 'tooBig', devEui }, n.session.index % 4);
  }

  // ---- decisions -----------------------------------------------------------------------------

  private consider(n: LoraNode): void {
    const r = n.row;
    const release = this.d.catalog.offerableFor(r.hw);
    if (!release || !this.needs(n, release)) return;
    if (this.d.offerPolicy === 'rollout') return this.holdForRollout(n);
    if (!this.d.lns.unicastFuota) {
      const why = `${this.d.lns.kind}: no LoRa FUOTA planned (fair use allows ~10 downlinks a day); ${r.id} stays on ${r.runningVersion}`;
      if (r.detail !== why) {
        r.detail = why;
        this.d.log('warn', `LoRa node ${r.id}: release ${release.row.version} not sent: ${why}`);
        this.publish(n);
      }
      return;
    }
    if (release.row.version.length > 10 || !/^[0-9A-Za-z][0-9A-Za-z._+-]*$/.test(release.row.version)) {
      return this.warn(`ver:${release.row.id}`, `LoRa: release ${release.row.hw} ${release.row.version} not offered to LoRa nodes: versions there are at most 10 characters`);
    }
    this.beginTransfer(n, release, randomInt(1, 0xffff_ffff), undefined, this.blockKiBFor([n]));
  }

  /** The block size for a transfer to these nodes (one multicast group shares it): see LoraOptions.blockKiB. */
  private blockKiBFor(nodes: LoraNode[]): number {
    if (this.o.blockKiB !== 'auto') return this.o.blockKiB;
    const dr = Math.min(...nodes.map((n) => Math.min(downlinkDr(this.o.region, n.dr), n.drCap ?? Infinity)));
    const fragSize = maxFragmentSize(regionByName(this.o.region), dr);
    return Math.max(1, Math.min(MAX_BLOCK_KIB, Math.floor((BLOCK_FRAGMENTS * fragSize) / 1024)));
  }

  private holdForRollout(n: LoraNode): void {
    const why = 'not offered: releases go out through rollouts, which do not cover LoRa nodes yet (run the agent with --auto-offer)';
    if (n.row.detail === why) return;
    n.row.detail = why;
    this.d.log('info', `LoRa node ${n.row.id}: ${why}`);
    this.publish(n);
  }

  private beginTransfer(n: LoraNode, release: Release, transferId: number, first: LoraDown | undefined, blockKiB: number, mcAddr?: number): void {
    const r = n.row;
    const blockBytes = blockKiB * 1024;
    const blocks = 1 + Math.ceil(release.image.length / blockBytes);
    const deadline = untilAir({ timeoutMs: this.o.answerTimeoutMs }, this.clock.now());
    n.transfer = {
      plan: { transferId, version: release.row.version, digestPrefix: release.row.digest.subarray(0, 4), blocks, size: release.image.length, blockKiB, classCSeconds: this.o.classCSeconds, mcAddr, timeoutMs: this.o.answerTimeoutMs, maxTries: this.o.maxTries },
      phase: { kind: 'offered', tries: 1, deadline },
    };
    Object.assign(r, { targetRelease: release.row.id, session: transferId, chunkCount: blocks, chunkSize: blockBytes, bitmap: null, reason: 0, detail: '', attempts: r.attempts + 1 });
    this.d.store.event(r.id, 'lora-offer', `${release.row.version} transfer ${transferId}, ${blocks} blocks`);
    this.d.log('info', `LoRa node ${r.id}: offering ${release.row.version} (${release.image.length} B in ${blocks} blocks)`);
    if (first) {
      this.sendControl(n, first);
      this.armTransferTimer(n, deadline);
      this.syncState(n);
    } else this.feedTransfer(n, { kind: 'start' });
  }

  // ---- machines ----------------------------------------------------------------------------

  private feedTransfer(n: LoraNode, input: TransferInput): void {
    const t = n.transfer;
    if (!t) return;
    const { t: next, actions } = stepTransfer(t, input, this.clock.now());
    n.transfer = next;
    for (const a of actions) this.doTransfer(n, a);
    this.syncState(n);
  }

  private doTransfer(n: LoraNode, a: TransferAction): void {
    switch (a.kind) {
      case 'send':
        return this.sendControl(n, a.msg);
      case 'wakeAt':
        return this.armTransferTimer(n, a.at);
      case 'stopBlock': {
        const g = this.groups.groupOf(n);
        if (g) this.groups.leave(g, n, 'its transfer stopped the block');
        cancel(n.sessionTimer);
        n.session = undefined;
        return;
      }
      case 'startBlock':
        return this.blocks.start(n, a.index, a.resumeUnknown);
    }
  }

  private armTransferTimer(n: LoraNode, at: number): void {
    cancel(n.transferTimer);
    n.transferTimer = this.clock.after(at - this.clock.now(), () => this.guard(() => this.feedTransfer(n, { kind: 'tick' })));
  }

  /**
   * A multicast member going on alone: the same offer again, now with Class C seconds instead of the McAddr. The
   * node keeps what it holds of the transfer (same id), listens in unicast Class C and answers with its lstatus.
   */
  private goUnicast(n: LoraNode): boolean {
    const t = n.transfer;
    if (!t || t.plan.mcAddr === undefined) return false;
    t.plan = { ...t.plan, mcAddr: undefined };
    clearSession(n);
    this.queue.dropFor(n.row.id);
    this.feedTransfer(n, { kind: 'start' });
    return true;
  }

  private sendControl(n: LoraNode, msg: LoraDown): void {
    const classC = n.transfer !== undefined && n.transfer.phase.kind !== 'offered';
    const bytes = encodeDown(msg);
    // A resend of what still waits for the duty cycle would only arrive twice.
    if (this.queue.hasQueued(n.row.id, FERRY_LORA_PORT, bytes)) return;
    this.queue.push({
      to: { kind: 'node', devEui: n.row.id }, fPort: FERRY_LORA_PORT, bytes, dr: downlinkDr(this.o.region, n.dr),
      frequencyHz: classC ? RX2_FREQUENCY_HZ[this.o.region] : n.frequencyHz ?? DEFAULT_RX1_HZ[this.o.region], classA: !classC,
      onAir: msg.type === 'cancel' ? undefined : () => this.guard(() => this.feedTransfer(n, { kind: 'onAir' })),
    });
  }

  // ---- truth ---------------------------------------------------------------------------------

  /** Copies the transfer's state into the row; records an ended transfer. */
  private syncState(n: LoraNode): void {
    const t = n.transfer;
    if (!t) return;
    const r = n.row;
    const before = r.state;
    r.state = stateOf(t);
    if (t.phase.kind === 'ended') {
      r.reason = t.phase.reason;
      if (t.phase.detail) r.detail = t.phase.detail;
      if (r.state === 'confirmed') r.runningVersion = t.plan.version;
      if ((r.state === 'rejected' || r.state === 'rolledBack') && r.targetRelease) this.d.store.addRefusal(r.id, r.targetRelease, 'release');
      this.d.store.event(r.id, `lora-${r.state}`, `${t.plan.version}${r.detail ? `: ${r.detail}` : ''}`);
      this.d.log(r.state === 'confirmed' ? 'info' : 'warn', `LoRa node ${r.id}: ${t.plan.version} ${r.state}${r.detail ? ` (${r.detail})` : ''}`);
      cancel(n.transferTimer);
      cancel(n.sessionTimer);
      const g = this.groups.groupOf(n);
      if (g) this.groups.leave(g, n, `transfer ${r.state}`);
      n.transfer = undefined;
      n.session = undefined;
    }
    if (before !== r.state || t.phase.kind === 'ended' || t.phase.kind === 'block') this.persist(n);
  }

  private persist(n: LoraNode): void {
    n.row.updatedAt = this.clock.now();
    this.d.store.saveNode(n.row);
    this.publish(n);
  }

  statusOf(n: LoraNode): NodeStatus {
    return nodeStatus(n.row, this.d.catalog.get(n.row.targetRelease), undefined, n.online, n.warnings);
  }

  private publish(n: LoraNode): void {
    const s = this.statusOf(n);
    this.d.onStatus?.(s);
    this.d.publishStatus(n.row.id, JSON.stringify(s));
  }
}
