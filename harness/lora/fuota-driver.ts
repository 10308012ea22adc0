import mqtt, { type MqttClient } from 'mqtt';
import { decodeUp, encodeDown, FERRY_LORA_PORT, type LoraUp } from '../../shared/lora/control.js';
import { codedFragment, fragmentBlock } from '../../shared/lora/fec.js';
import { chooseRedundancy, chooseRepairCount } from '../../shared/lora/redundancy.js';
import { EU868, frameAirtimeMs, maxFragmentSize } from '../../shared/lora/regions.js';
import { gpsSeconds } from '../../shared/lora/ts003.js';
import { decodeAnswers, encodeRequests, TS004_PORT, type Ts004Answer, type Ts004Request } from '../../shared/lora/ts004.js';
import { decodeTs005Answers, encodeTs005Requests, sessionTimeoutFor, TS005_PORT, type Ts005Answer } from '../../shared/lora/ts005.js';
import { sha256 } from '../../shared/manifest.js';
import { Stage } from '../../shared/messages.js';

/**
 * A FUOTA campaign driven from the pure shared/lora pieces over ChirpStack's MQTT integration, for the
 * simulator's tests and `scripts/bench/lora`: per node (unicast, Class A) loffer + TS005 group + Class C
 * session; then per block one multicast TS004 session: setup, M uncoded + R coded fragments (R from
 * chooseRedundancy at the median), a status request, and repair rounds of fresh coded fragments sized by
 * chooseRepairCount from each node's MissingFrag and measured loss (multicast while several nodes miss,
 * unicast Class C for one); then lactivate per node and its boot report. It is the contract of docs/lora.md §7
 * seen from the network side; not the agent's own runtime (agent/lora/). Time is the simulator's: every event's
 * `time` advances the driver's clock.
 */
export interface DriverOptions {
  brokerUrl: string;
  appId: string;
  devEuis: readonly string[];
  image: Buffer;
  manifest: Buffer;
  version: string;
  transferId: number;
  blockKiB?: number;
  dr?: number;
  mcAddr?: number;
  frequencyHz?: number;
  priorLoss?: number;
  firstRoundTarget?: number;
  repairTarget?: number;
  log?: (msg: string) => void;
}

export interface DriverResult {
  confirmed: string[];
  failed: { devEui: string; stage: number; reason: number }[];
  /** Virtual ms from the first hello to the last boot report. */
  elapsedMs: number;
  rounds: number;
  fragmentsSent: number;
  imageFragments: number;
}

interface Inbox {
  devEui: string;
  fPort: number;
  bytes: Buffer;
}

const QUIET_REAL_MS = 1500;

/** chooseRepairCount, or missing/(1 − loss) + 2 when the model cannot reach the target within the counters. */
function repairCount(m: number, missing: number, loss: number, target: number): number {
  try {
    return chooseRepairCount(m, missing, loss, target);
  } catch {
    return Math.ceil(missing / (1 - loss)) + 2;
  }
}
/** The prior loss counts as this many fragments in the per-node loss estimate. */
const PRIOR_WEIGHT = 10;

export class FuotaDriver {
  private client!: MqttClient;
  private vnow = 0;
  private lastEventReal = performance.now();
  private readonly waiters = new Set<() => void>();
  private readonly inbox: Inbox[] = [];
  private multicastEst = 0;
  /** Multicast frames the simulator reported transmitted (its stand-in txack), and when its queue last ran dry. */
  private multicastDone = 0;
  private multicastQueued = 0;
  private multicastIdleAt = 0;
  rounds = 0;
  fragmentsSent = 0;
  private readonly history = new Map<string, { sent: number; received: number }>();
  private readonly reports = new Map<string, { stage: number; reason: number }[]>();

  constructor(readonly o: DriverOptions) {}

  async connect(): Promise<void> {
    this.client = await mqtt.connectAsync(this.o.brokerUrl, { protocolVersion: 4, reconnectPeriod: 0 });
    this.client.on('message', (_topic, payload) => this.onEvent(payload));
    await this.client.subscribeAsync([`application/${this.o.appId}/device/+/event/+`, `application/${this.o.appId}/multicast-group/+/event/txack`]);
  }

  async close(): Promise<void> {
    await this.client?.endAsync();
  }

  private onEvent(payload: Buffer): void {
    let e: { queued?: number; time?: string; deviceInfo?: { devEui?: string }; fPort?: number; data?: string; code?: string; description?: string };
    try {
      e = JSON.parse(payload.toString());
    } catch {
      return;
    }
    if (e.time) this.vnow = Math.max(this.vnow, Date.parse(e.time));
    if (process.env.FERRY_LORA_TRACE) console.log('event', e.time, e.deviceInfo?.devEui, e.fPort, e.data, e.code ?? '');
    this.lastEventReal = performance.now();
    if (e.queued !== undefined) {
      this.multicastDone++;
      if (e.queued === 0) this.multicastIdleAt = this.vnow;
    }
    if (e.code) this.o.log?.(`log event ${e.deviceInfo?.devEui}: ${e.code} ${e.description ?? ''}`);
    if (e.fPort !== undefined && e.data !== undefined && e.deviceInfo?.devEui) {
      const item = { devEui: e.deviceInfo.devEui, fPort: e.fPort, bytes: Buffer.from(e.data, 'base64') };
      if (item.fPort === FERRY_LORA_PORT) {
        try {
          const m = decodeUp(item.bytes);
          if (m.type === 'report') this.reports.set(item.devEui, [...(this.reports.get(item.devEui) ?? []), { stage: m.stage, reason: m.reason }]);
        } catch { /* judged where consumed */ }
      }
      this.inbox.push(item);
    }
    for (const w of [...this.waiters]) w();
  }

  /** Takes uplinks matching `take` until `done()` or the virtual deadline passes (or the simulator falls quiet). */
  private wait(take: (u: Inbox) => boolean, done: () => boolean, deadline: number | (() => number)): Promise<void> {
    const since = performance.now();
    return new Promise((resolve) => {
      const check = () => {
        for (let i = 0; i < this.inbox.length; ) {
          if (take(this.inbox[i])) this.inbox.splice(i, 1);
          else i++;
        }
        const dl = typeof deadline === 'number' ? deadline : deadline();
        const quiet = performance.now() - Math.max(since, this.lastEventReal) > QUIET_REAL_MS;
        if (done() || this.vnow > dl || quiet) {
          if (process.env.FERRY_LORA_TRACE) console.log('wait end', done() ? 'done' : quiet ? 'quiet' : `deadline ${new Date(dl).toISOString()}`);
          this.waiters.delete(check);
          clearInterval(timer);
          resolve();
        }
      };
      const timer = setInterval(check, 100);
      this.waiters.add(check);
      check();
    });
  }

  private down(devEui: string, fPort: number, bytes: Uint8Array): void {
    if (process.env.FERRY_LORA_TRACE) console.log('down', new Date(this.vnow).toISOString(), devEui, fPort, Buffer.from(bytes).toString('hex'));
    this.client.publish(`application/${this.o.appId}/device/${devEui}/command/down`, JSON.stringify({ devEui, confirmed: false, fPort, data: Buffer.from(bytes).toString('base64') }));
  }

  private multicast(fPort: number, bytes: Uint8Array): void {
    const a = frameAirtimeMs(EU868, this.dr, bytes.length, 'down');
    this.multicastEst = Math.max(this.multicastEst, this.vnow) + a / 0.1;
    this.multicastQueued++;
    this.client.publish(`application/${this.o.appId}/multicast-group/${this.mcAddr.toString(16).padStart(8, '0')}/command/down`, JSON.stringify({ fPort, data: Buffer.from(bytes).toString('base64') }));
  }

  /** A deadline `ms` after the multicast queue drains: unknown (Infinity) while frames are still queued. */
  private afterMulticast(ms: number): () => number {
    return () => (this.multicastDone >= this.multicastQueued ? this.multicastIdleAt + ms : this.multicastEst + 600_000 + ms);
  }

  /**
   * How long a Class A request waits for its answer before it is sent again: the gateway's RX1 sub-band (1 %) lets
   * about one downlink out per 8 s, shared by every node being set up, so it grows with the fleet.
   */
  private get classAPatience(): number {
    return 30_000 + 12_000 * this.o.devEuis.length;
  }

  private get dr(): number {
    return this.o.dr ?? 5;
  }

  private get mcAddr(): number {
    return this.o.mcAddr ?? 0x0f000001;
  }

  private ts004(u: Inbox): Ts004Answer[] {
    try {
      return u.fPort === TS004_PORT ? decodeAnswers(u.bytes) : [];
    } catch {
      return [];
    }
  }

  private ts005(u: Inbox): Ts005Answer[] {
    try {
      return u.fPort === TS005_PORT ? decodeTs005Answers(u.bytes) : [];
    } catch {
      return [];
    }
  }

  private control(u: Inbox): LoraUp | undefined {
    try {
      return u.fPort === FERRY_LORA_PORT ? decodeUp(u.bytes) : undefined;
    } catch {
      return undefined;
    }
  }

  async run(): Promise<DriverResult> {
    const nodes = [...this.o.devEuis];
    const hellos = new Set<string>();
    await this.wait((u) => (this.control(u)?.type === 'hello' ? (hellos.add(u.devEui), true) : false), () => hellos.size === nodes.length, Infinity);
    const t0 = this.vnow;
    const blockKiB = this.o.blockKiB ?? 64;
    const fragSize = maxFragmentSize(EU868, this.dr);
    const slices: Buffer[] = [this.o.manifest];
    for (let at = 0; at < this.o.image.length; at += blockKiB * 1024) slices.push(this.o.image.subarray(at, at + blockKiB * 1024));
    const frames = slices.reduce((n, s) => n + Math.ceil(s.length / fragSize), 0);
    const frameGapMs = frameAirtimeMs(EU868, this.dr, fragSize + 3, 'down') / 0.1;
    // Phase 1 (Class A, per node): offer and TS005 group. Phase 2: one Class C session for all, starting once the
    // requests can have reached every node; a node the request reached too late gets a later start, and the first
    // multicast frame waits for the last start.
    await Promise.all(nodes.map((d) => this.prepare(d, slices.length)));
    const k = sessionTimeoutFor(Math.ceil((frames * 2.2 * frameGapMs + 600_000 + nodes.length * 30_000) / 1000));
    let pending = nodes.filter((d) => !this.failedNode(d));
    let lastStart = this.vnow;
    for (let attempt = 0; attempt < 4 && pending.length > 0; attempt++) {
      const start = this.vnow + 120_000 + pending.length * 40_000;
      lastStart = Math.max(lastStart, start);
      const late = await Promise.all(pending.map((d) => this.classC(d, gpsSeconds(start), k, start)));
      pending = pending.filter((_, i) => late[i]);
      if (pending.length) this.o.log?.(`${pending.length} node(s) got the Class C session too late: a later start for them`);
    }
    await this.wait(() => false, () => this.vnow >= lastStart, lastStart);
    let active = nodes.filter((d) => !this.failedNode(d));
    const loss = new Map(nodes.map((d) => [d, this.o.priorLoss ?? 0.05]));
    for (let b = 0; b < slices.length && active.length > 0; b++) {
      active = await this.block(b, slices[b], fragSize, active, loss);
    }
    const verified = new Set<string>();
    await this.wait((u) => (this.control(u)?.type === 'report' && (this.control(u) as { stage: number }).stage === Stage.verified ? (verified.add(u.devEui), true) : false),
      () => active.every((d) => verified.has(d) || this.hasReport(d, Stage.verified)), this.vnow + 120_000);
    const confirmed = new Set<string>();
    for (const d of active) this.down(d, FERRY_LORA_PORT, encodeDown({ type: 'activate', transferId: this.o.transferId }));
    for (let tries = 0; tries < 4 && active.some((d) => !this.settled(d)); tries++) {
      await this.wait(() => false, () => active.every((d) => this.settled(d)), this.vnow + 300_000);
      for (const d of active) if (!this.settled(d) && !this.hasReport(d, Stage.rebooting)) this.down(d, FERRY_LORA_PORT, encodeDown({ type: 'activate', transferId: this.o.transferId }));
    }
    for (const d of active) if (this.hasReport(d, Stage.confirmed)) confirmed.add(d);
    const failed = nodes.filter((d) => !confirmed.has(d)).map((d) => ({ devEui: d, ...(this.reports.get(d)?.at(-1) ?? { stage: 0, reason: 15 }) }));
    return { confirmed: [...confirmed], failed, elapsedMs: this.vnow - t0, rounds: this.rounds, fragmentsSent: this.fragmentsSent, imageFragments: frames };
  }

  private hasReport(d: string, stage: number): boolean {
    return (this.reports.get(d) ?? []).some((r) => r.stage === stage);
  }

  private settled(d: string): boolean {
    return this.hasReport(d, Stage.confirmed) || this.hasReport(d, Stage.rolledBack) || this.hasReport(d, Stage.failed);
  }

  private failedNode(d: string): boolean {
    return this.hasReport(d, Stage.rejected) || this.hasReport(d, Stage.failed);
  }

  /** Unicast, Class A: offer, TS005 group and Class C session; each retried until answered. */
  private async prepare(d: string, blocks: number): Promise<void> {
    const offer = encodeDown({
      type: 'offer', transferId: this.o.transferId, digestPrefix: sha256(this.o.image).subarray(0, 4), version: this.o.version, blocks, size: this.o.image.length,
      blockKiB: this.o.blockKiB ?? 64, encoding: 0, mcAddr: this.mcAddr,
    });
    const steps: [number, Uint8Array, (u: Inbox) => boolean][] = [
      [FERRY_LORA_PORT, offer, (u) => { const m = this.control(u); return m?.type === 'status' || (m?.type === 'report' && m.stage === Stage.rejected); }],
      [TS005_PORT, encodeTs005Requests([{ cmd: 'McGroupSetupReq', mcGroupId: 0, mcAddr: this.mcAddr, mcKeyEncrypted: new Uint8Array(16), minMcFCount: 0, maxMcFCount: 0xffffffff }]), (u) => this.ts005(u).some((a) => a.cmd === 'McGroupSetupAns' && !a.idError)],
    ];
    for (const [fPort, bytes, answered] of steps) {
      let got = false;
      for (let tries = 0; tries < 12 && !got; tries++) {
        this.down(d, fPort, bytes);
        await this.wait((u) => u.devEui === d && answered(u) ? ((got = true), true) : false, () => got, this.vnow + this.classAPatience);
      }
      if (this.failedNode(d)) return;
    }
  }

  /** Sends the node its Class C session; true when it answered that the start had already passed. */
  private async classC(d: string, sessionTime: number, k: number, startMs: number): Promise<boolean> {
    const req = encodeTs005Requests([{ cmd: 'McClassCSessionReq', mcGroupId: 0, sessionTime, sessionTimeOut: k, dlFrequencyHz: this.o.frequencyHz ?? 869_525_000, dr: this.dr }]);
    let answer: Extract<Ts005Answer, { cmd: 'McClassCSessionAns' }> | undefined;
    for (let tries = 0; tries < 12 && !answer && this.vnow < startMs; tries++) {
      this.down(d, TS005_PORT, req);
      await this.wait((u) => {
        const a = u.devEui === d ? this.ts005(u).find((x) => x.cmd === 'McClassCSessionAns') : undefined;
        if (a?.cmd === 'McClassCSessionAns') answer = a;
        return a !== undefined;
      }, () => answer !== undefined, this.vnow + this.classAPatience);
    }
    return !answer || answer.mcGroupUndefined;
  }

  /** One data block as one multicast TS004 session; returns the nodes still in the campaign. */
  private async block(b: number, data: Buffer, fragSize: number, nodes: string[], loss: Map<string, number>): Promise<string[]> {
    const { fragments, padding } = fragmentBlock(data, fragSize);
    const frameGapMs = frameAirtimeMs(EU868, this.dr, fragSize + 3, 'down') / 0.1;
    const m = fragments.length;
    const fragIndex = b % 4;
    const descriptor = (((this.o.transferId & 0xffff) << 16) | b) >>> 0;
    const setup: Ts004Request = { cmd: 'FragSessionSetupReq', fragIndex, mcGroupBitMask: 1, nbFrag: m, fragSize, fragAlgo: 0, blockAckDelay: 1, padding, descriptor };
    const ready = new Set<string>();
    const refused = new Set<string>();
    this.multicast(TS004_PORT, encodeRequests([setup]));
    for (let tries = 0; tries < 12 && ready.size + refused.size < nodes.length; tries++) {
      if (tries > 0) for (const d of nodes) if (!ready.has(d) && !refused.has(d)) this.down(d, TS004_PORT, encodeRequests([setup]));
      await this.wait((u) => {
        const a = this.ts004(u).find((x) => x.cmd === 'FragSessionSetupAns' && x.fragIndex === fragIndex);
        if (!a || a.cmd !== 'FragSessionSetupAns') return false;
        (a.encodingUnsupported || a.notEnoughMemory || a.wrongDescriptor || a.fragIndexUnsupported ? refused : ready).add(u.devEui);
        return true;
      }, () => ready.size + refused.size === nodes.length, tries === 0 ? this.afterMulticast(40_000) : this.vnow + 90_000);
    }
    let active = nodes.filter((d) => ready.has(d));
    for (const d of nodes) if (!ready.has(d)) this.o.log?.(`${d}: block ${b} setup ${refused.has(d) ? 'refused' : 'unanswered'}: left out`);
    if (active.length === 0) return [];
    const meanLoss = () => active.reduce((s, d) => s + (loss.get(d) ?? 0.1), 0) / Math.max(1, active.length);
    let next = 1;
    const send = (count: number, to: string | null) => {
      for (let i = 0; i < count; i++, next++) {
        const payload = next <= m ? fragments[next - 1] : codedFragment(fragments, next);
        const frame = encodeRequests([{ cmd: 'DataFragment', fragIndex, counter: next, payload }]);
        if (to) this.down(to, TS004_PORT, frame);
        else this.multicast(TS004_PORT, frame);
      }
      this.fragmentsSent += count;
    };
    const sentTo = new Map(active.map((d) => [d, 0]));
    const complete = new Set<string>();
    let first = m + chooseRedundancy(m, meanLoss(), this.o.firstRoundTarget ?? 0.3);
    this.o.log?.(`block ${b}: M=${m}, first round ${first} at estimated loss ${(meanLoss() * 100).toFixed(1)} %`);
    let target: string | null = null;
    // Tiny blocks (the manifest): TS004 parity rows over M < 20 fragments are sparse or empty (M = 1: none), so a
    // repair round sets the session up again (the node keeps what it holds) and resends the uncoded fragments.
    const tiny = m < 20;
    let resend = false;
    for (let round = 0; round < 10 && active.length > 0; round++) {
      this.rounds++;
      if (resend) {
        next = 1;
        if (target) this.down(target, TS004_PORT, encodeRequests([setup]));
        else this.multicast(TS004_PORT, encodeRequests([setup]));
      }
      send(first, target);
      for (const d of active) if (target === null || target === d) sentTo.set(d, (sentTo.get(d) ?? 0) + first);
      const statusReq = encodeRequests([{ cmd: 'FragSessionStatusReq', fragIndex, participants: true }]);
      if (target) this.down(target, TS004_PORT, statusReq);
      else this.multicast(TS004_PORT, statusReq);
      const missing = new Map<string, number>();
      const unicastDeadline = this.vnow + (first + 2) * frameGapMs + 60_000;
      const asked = target ? [target] : active.filter((d) => !complete.has(d));
      for (let tries = 0; tries < 12 && asked.some((d) => !missing.has(d)); tries++) {
        if (tries > 0) for (const d of asked) if (!missing.has(d)) this.down(d, TS004_PORT, statusReq);
        await this.wait((u) => {
          const a = this.ts004(u).find((x) => x.cmd === 'FragSessionStatusAns' && x.fragIndex === fragIndex);
          const c = this.control(u);
          if (c?.type === 'status' && c.unknown !== undefined && missing.get(u.devEui) === 255) missing.set(u.devEui, c.unknown);
          if (!a || a.cmd !== 'FragSessionStatusAns') return c?.type === 'status';
          if (!asked.includes(u.devEui)) return true;
          missing.set(u.devEui, a.notEnoughMatrixMemory ? -1 : a.missingFrag);
          const sent = sentTo.get(u.devEui) ?? 0;
          const h = this.history.get(u.devEui) ?? { sent: 0, received: 0 };
          const total = { sent: h.sent + sent, received: h.received + Math.min(sent, a.nbFragReceived) };
          if (a.missingFrag === 0) this.history.set(u.devEui, total);
          const prior = this.o.priorLoss ?? 0.05;
          loss.set(u.devEui, Math.min(0.6, (total.sent - total.received + PRIOR_WEIGHT * prior) / (total.sent + PRIOR_WEIGHT)));
          return true;
        }, () => asked.every((d) => missing.has(d)), tries > 0 ? this.vnow + 90_000 : target ? unicastDeadline : this.afterMulticast(32_000 + 20_000));
      }
      for (const d of asked) if (missing.get(d) === 0) complete.add(d);
      for (const d of asked) if (!missing.has(d)) this.o.log?.(`${d}: block ${b} status unanswered: left out`);
      active = active.filter((d) => complete.has(d) || missing.has(d));
      const need = active.filter((d) => !complete.has(d));
      if (need.length === 0) break;
      target = need.length === 1 ? need[0] : null;
      // A node whose decoder ran out of matrix memory (more losses than its L) gets the session set up again and the
      // uncoded fragments once more: it keeps what it holds, and every uncoded fragment it gains frees a row.
      const memoryError = need.some((d) => missing.get(d) === -1);
      if (memoryError) this.o.log?.(`block ${b}: ${need.filter((d) => missing.get(d) === -1).join(', ')} out of matrix memory: resending the block uncoded`);
      resend = tiny || memoryError;
      first = resend ? m : Math.max(...need.map((d) => repairCount(m, Math.min(m, Math.max(1, missing.get(d) ?? m)), Math.min(0.6, loss.get(d) ?? 0.1), this.o.repairTarget ?? 0.6)));
      this.o.log?.(`block ${b} round ${round + 1}: ${need.length} node(s) missing up to ${Math.max(...need.map((d) => missing.get(d) ?? 0))}; ${tiny ? 'resend' : 'repair'} ${first} ${target ? 'unicast' : 'multicast'}`);
    }
    return nodes.filter((d) => complete.has(d));
  }
}
