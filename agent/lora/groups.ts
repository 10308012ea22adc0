import { RX2_FREQUENCY_HZ, regionByName } from '../../shared/lora/duty.js';
import { cancel, type LoraClock, type LoraTimer } from './clock.js';
import { blockFragmentSize, fragmentBlock } from '../../shared/lora/fec.js';
import { maxFragmentSize, type Region } from '../../shared/lora/regions.js';
import { initialSession, step, type SessionEffect, type SessionInput, type SessionState } from '../../shared/lora/session.js';
import { encodeTs005Requests, TS005_PORT, type Ts005Answer } from '../../shared/lora/ts005.js';
import type { Release } from '../types.js';
import type { DownlinkQueue } from './downlinks.js';
import { downlinkDr, UNICAST_ROUNDS, type LoraNode } from './record.js';
import type { TransferInput } from './transfer-fsm.js';

/**
 * Multicast transfers (docs/lora.md §7.4): nodes of one hw updating to one release share a TS005 group and one
 * fragment stream per block. Each member keeps its own transfer machine (offer, verification, activation); the
 * group takes over its blocks: a block's multicast session starts once every member asked for that block, and a
 * member that asks for another (it rebooted) or fails leaves the group and goes on unicast.
 */
export interface GroupDeps {
  region: Region['name'];
  queue: DownlinkQueue;
  release: (id: string | null) => Release | undefined;
  feedTransfer: (n: LoraNode, input: TransferInput) => void;
  /** Runs the block unicast for a node that left its group. */
  startUnicast: (n: LoraNode, index: number, resumeUnknown: number[] | undefined) => void;
  /** The transfer of a node that left its group goes on unicast (offer again with Class C seconds). */
  goUnicast: (n: LoraNode) => boolean;
  log: (level: 'info' | 'warn' | 'error', msg: string) => void;
  answerTimeoutMs: number;
  maxTries: number;
  /** How far ahead the Class C window of a new group of n members opens. */
  windowLeadMs: (members: number) => number;
  clock: LoraClock;
}

interface Member {
  node: LoraNode;
  ready: boolean;
  wants: number | null;
  /** TS005 setups sent; each is repeated when no McClassCSessionAns follows it on the air within the timeout. */
  setupTries: number;
  setupTimer: LoraTimer | undefined;
}

export interface Group {
  mcAddr: number;
  releaseId: string;
  transferId: number;
  members: Map<string, Member>;
  session: { index: number; state: SessionState; dr: number } | undefined;
  timer: LoraTimer | undefined;
  waitTimer: LoraTimer | undefined;
  /** When the members' Class C window opens (Unix ms): nothing goes on the group before. */
  windowStartMs: number;
  startTimer: LoraTimer | undefined;
}

/** GPS epoch (1980-01-06) in Unix seconds, plus the 18 leap seconds since. */
const GPS_OFFSET_S = 315_964_800 - 18;

export class MulticastGroups {
  readonly groups = new Map<number, Group>();
  private nextAddr = 0x0f00_0001;

  constructor(private readonly d: GroupDeps) {}

  create(release: Release, transferId: number, nodes: LoraNode[]): Group {
    const mcAddr = this.nextAddr++;
    // The window must open after every member got its Class A setup: one uplink period (60 s, §7.6) plus the
    // RX1 duty cycle each member's two TS005 frames cost (about 10 s at 1 %).
    const windowStartMs = this.d.clock.now() + this.d.windowLeadMs(nodes.length);
    const g: Group = {
      mcAddr, releaseId: release.row.id, transferId, members: new Map(nodes.map((n) => [n.row.id, { node: n, ready: false, wants: null, setupTries: 0, setupTimer: undefined }])), session: undefined,
      timer: undefined, waitTimer: undefined, windowStartMs, startTimer: undefined,
    };
    this.groups.set(mcAddr, g);
    for (const n of nodes) n.groupAddr = mcAddr;
    return g;
  }

  groupOf(n: LoraNode): Group | undefined {
    return n.groupAddr === undefined ? undefined : this.groups.get(n.groupAddr);
  }

  /** A member's transfer asks for block `index`. False: the node is not (or no longer) in a group. */
  wantBlock(n: LoraNode, index: number, resumeUnknown: number[] | undefined): boolean {
    const g = this.groupOf(n);
    const m = g?.members.get(n.row.id);
    if (!g || !m) return false;
    // The group moves block by block: the one after the running session, or the one the others wait for.
    const expected = g.session ? g.session.index + 1 : ([...g.members.values()].find((x) => x.wants !== null)?.wants ?? index);
    if (resumeUnknown || index !== expected) {
      this.leave(g, n, `asked for block ${index}${resumeUnknown ? ' after a reboot' : ''} apart from its group`);
      return false;
    }
    m.wants = index;
    if (!m.ready) this.setUp(g, m);
    this.maybeStart(g);
    if (!g.waitTimer) g.waitTimer = this.d.clock.after(Math.max(0, g.windowStartMs - this.d.clock.now()) + this.d.answerTimeoutMs * this.d.maxTries, () => this.giveUpWaiting(g));
    return true;
  }

  /** TS005 answers from a member. */
  onTs005(n: LoraNode, answers: Ts005Answer[]): void {
    const g = this.groupOf(n);
    const m = g?.members.get(n.row.id);
    if (!g || !m) return;
    for (const a of answers) {
      if (a.cmd === 'McGroupSetupAns' && a.idError) return this.leave(g, n, 'McGroupSetup refused');
      if (a.cmd === 'McClassCSessionAns') {
        if (a.drError || a.freqError || a.mcGroupUndefined) return this.leave(g, n, 'McClassCSession refused');
        m.ready = true;
        cancel(m.setupTimer);
        this.maybeStart(g);
      }
    }
  }

  /** Feeds the group's block session when the input concerns it (right fragIndex, a member). */
  feed(n: LoraNode, input: SessionInput, fragIndex: number): boolean {
    const g = this.groupOf(n);
    if (!g?.session || g.session.index % 4 !== fragIndex || !g.members.has(n.row.id)) return false;
    this.feedSession(g, input);
    return true;
  }

  /** In the group's status phase for this block: the page belongs to the session. */
  inStatus(n: LoraNode, done: number): boolean {
    const g = this.groupOf(n);
    return g?.session !== undefined && g.session.index === done && g.session.state.phase.kind === 'status' && g.members.has(n.row.id);
  }

  leave(g: Group, n: LoraNode, why: string): void {
    const m = g.members.get(n.row.id);
    if (!m) return;
    this.detach(g, m);
    this.d.log('info', `LoRa node ${n.row.id} leaves multicast group ${hex(g.mcAddr)}: ${why}`);
    if (g.session) this.feedSession(g, { kind: 'statusAns', devEui: n.row.id, received: 0, missing: 0, memoryError: true });
    // Out of the group the node has no Class C window: it is offered the transfer again with unicast Class C, and
    // its answer (what it holds) sets its block up. Without that, the block goes on at once.
    // A member past its blocks (verified, activating) left because its transfer stopped the block: nothing to resend.
    const phase = n.transfer?.phase.kind;
    const reoffered = (phase === 'offered' || phase === 'collecting' || phase === 'block') && this.d.goUnicast(n);
    if (!reoffered && m.wants !== null && n.transfer?.phase.kind === 'block') this.d.startUnicast(n, m.wants, undefined);
    if (g.members.size === 0) this.close(g);
    else this.maybeStart(g);
  }

  close(g: Group): void {
    cancel(g.timer);
    cancel(g.waitTimer);
    cancel(g.startTimer);
    for (const m of [...g.members.values()]) this.detach(g, m);
    this.groups.delete(g.mcAddr);
  }

  /** The member is out of the group: no more TS005 retries, and its node belongs to no group. */
  private detach(g: Group, m: Member): void {
    g.members.delete(m.node.row.id);
    cancel(m.setupTimer);
    m.node.groupAddr = undefined;
  }

  stop(): void {
    for (const g of [...this.groups.values()]) this.close(g);
  }

  private setUp(g: Group, m: Member): void {
    const n = m.node;
    m.setupTries++;
    const start = Math.ceil(g.windowStartMs / 1000) - GPS_OFFSET_S;
    const bytes = encodeTs005Requests([
      { cmd: 'McGroupSetupReq', mcGroupId: 0, mcAddr: g.mcAddr, mcKeyEncrypted: new Uint8Array(16), minMcFCount: 0, maxMcFCount: 0xffff_ffff },
      { cmd: 'McClassCSessionReq', mcGroupId: 0, sessionTime: start, sessionTimeOut: 15, dlFrequencyHz: RX2_FREQUENCY_HZ[this.d.region], dr: this.groupDr(g) },
    ]);
    this.d.queue.push({ to: { kind: 'node', devEui: n.row.id }, fPort: TS005_PORT, bytes, dr: downlinkDr(this.d.region, n.dr), frequencyHz: n.frequencyHz ?? RX2_FREQUENCY_HZ[this.d.region], classA: true,
      onAir: () => {
        cancel(m.setupTimer);
        m.setupTimer = this.d.clock.after(this.d.answerTimeoutMs, () => this.setupTimedOut(g, m));
      },
    });
  }

  /** A lost TS005 setup (or its answer) is sent again; a member that never answers goes on without the group. */
  private setupTimedOut(g: Group, m: Member): void {
    m.setupTimer = undefined;
    if (m.ready || g.members.get(m.node.row.id) !== m) return;
    if (m.setupTries >= this.d.maxTries) return this.leave(g, m.node, `no TS005 answer after ${m.setupTries} tries`);
    this.setUp(g, m);
  }

  private groupDr(g: Group): number {
    return Math.min(...[...g.members.values()].map((m) => downlinkDr(this.d.region, m.node.dr)));
  }

  private giveUpWaiting(g: Group): void {
    g.waitTimer = undefined;
    if (g.session) return;
    for (const m of [...g.members.values()]) if (m.wants === null || !m.ready) this.leave(g, m.node, 'not ready for the multicast session in time');
  }

  private maybeStart(g: Group): void {
    const ms = [...g.members.values()];
    if (g.session || ms.length === 0 || !ms.every((m) => m.ready && m.wants !== null)) return;
    const wait = g.windowStartMs + 1000 - this.d.clock.now();
    if (wait > 0) {
      cancel(g.startTimer);
      g.startTimer = this.d.clock.after(wait, () => this.maybeStart(g));
      return;
    }
    const index = ms[0].wants!;
    const release = this.d.release(g.releaseId);
    if (!release) return;
    cancel(g.waitTimer);
    g.waitTimer = undefined;
    const plan = ms[0].node.transfer!.plan;
    const B = plan.blockKiB * 1024;
    const data = index === 0 ? release.row.manifest : release.image.subarray((index - 1) * B, index * B);
    const dr = this.groupDr(g);
    const { fragments, padding } = fragmentBlock(data, blockFragmentSize(data.length, maxFragmentSize(regionByName(this.d.region), dr)));
    const loss = Math.max(...ms.map((m) => m.node.loss));
    const state = initialSession({
      members: ms.map((m) => m.node.row.id), multicast: ms.length > 1, fragIndex: index % 4, descriptor: (((g.transferId & 0xffff) << 16) | index) >>> 0,
      fragments, padding, loss, firstRoundMargin: 1, repairTarget: 0.75, answerTimeoutMs: this.d.answerTimeoutMs + 32_000, maxRounds: ms.length > 1 ? 6 : UNICAST_ROUNDS, maxTries: this.d.maxTries, pages: true, resendUncoded: ms.length === 1,
    });
    g.session = { index, state, dr };
    for (const m of ms) m.wants = null;
    this.feedSession(g, { kind: 'start' });
  }

  private feedSession(g: Group, input: SessionInput): void {
    const s = g.session;
    if (!s) return;
    const r = step(s.state, input, this.d.clock.now());
    s.state = r.state;
    for (const e of r.effects) this.effect(g, s, e);
  }

  private effect(g: Group, s: NonNullable<Group['session']>, e: SessionEffect): void {
    const current = () => g.session === s;
    const guard = (f: () => void) => () => {
      try {
        if (current()) f();
      } catch (err) {
        this.d.log('error', `LoRa group ${hex(g.mcAddr)}: ${(err as Error).stack ?? err}`);
      }
    };
    switch (e.kind) {
      case 'send': {
        const multicast = e.to.kind === 'group' && s.state.cfg.multicast;
        const devEui = e.to.kind === 'node' ? e.to.devEui : s.state.cfg.members[0];
        this.d.queue.push({
          to: multicast ? { kind: 'group', groupId: hex(g.mcAddr) } : { kind: 'node', devEui }, fPort: e.fPort, bytes: e.bytes, dr: s.dr, frequencyHz: RX2_FREQUENCY_HZ[this.d.region],
          onSent: guard(() => this.feedSession(g, { kind: 'sent' })),
          onError: guard(() => this.feedSession(g, { kind: 'sent' })),
          onAir: e.fragment ? undefined : guard(() => this.feedSession(g, { kind: 'onAir' })),
        });
        return;
      }
      case 'wakeAt':
        cancel(g.timer);
        g.timer = this.d.clock.after(e.at - this.d.clock.now(), guard(() => this.feedSession(g, { kind: 'tick' })));
        return;
      case 'report': {
        const rep = e.report;
        const member = (id: string) => g.members.get(id)?.node;
        if (rep.kind === 'memberDone') {
          const n = member(rep.devEui);
          if (n) {
            n.loss = rep.loss;
            this.d.feedTransfer(n, { kind: 'blockDone', index: s.index });
          }
        } else if (rep.kind === 'memberFailed') {
          const m = g.members.get(rep.devEui);
          if (m) {
            const n = m.node;
            this.detach(g, m);
            // Silence on a lossy link is no verdict: the member goes on unicast from what it holds.
            if (rep.alone && this.d.goUnicast(n)) this.d.log('info', `LoRa node ${n.row.id} leaves multicast group ${hex(g.mcAddr)}: ${rep.reason}; going on unicast`);
            else this.d.feedTransfer(n, { kind: 'blockFailed', index: s.index, detail: rep.reason });
          }
        } else if (rep.kind === 'done' || rep.kind === 'failed') {
          cancel(g.timer);
          g.session = undefined;
          if (rep.kind === 'failed') for (const m of [...g.members.values()]) this.d.feedTransfer(m.node, { kind: 'blockFailed', index: s.index, detail: rep.reason });
          if (g.members.size === 0) this.close(g);
          else this.maybeStart(g);
        }
        return;
      }
    }
  }
}

export function hex(mcAddr: number): string {
  return mcAddr.toString(16).padStart(8, '0');
}
