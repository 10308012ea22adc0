import type { KeyObject } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { dataRate, EU868, frameAirtimeMs, nextStartMs, recordTransmission, emptyDutyCycle, type DutyCycleState, type Region } from '../../shared/lora/regions.js';
import { seeded } from '../../harness/seeded.js';
import type { BootProfileName } from '../profiles.js';
import { ackEvent, commandTopic, logEvent, parseDown, parseMulticast, txAckEvent, upEvent } from './chirpstack-json.js';
import { LoraNode, type NodeOutput } from './lora-node.js';
import { Gateway, makeLink, type Link, type LossModel } from './radio.js';
import { SimClock, type ClockOptions } from './sim-clock.js';

/**
 * `ferry lns-sim`: a LoRaWAN network server stand-in on a real MQTT broker, speaking ChirpStack v4's MQTT
 * integration (chirpstack-json.ts), with one gateway and N simulated LoRa nodes (lora-node.ts).
 *
 * Radio rules: Class A: a queued unicast downlink leaves only in RX1 (uplink DR, 868.1 MHz sub-band, 1 %) or RX2
 * (869.525 MHz, 10 %, RX2 DR) after an uplink of that node, one per uplink; a node with downlinks waiting uplinks
 * again as soon as its own 1 % duty cycle allows (ChirpStack's FPending). Class C (inside a TS005 window or a
 * unicast Class C period): downlinks leave as soon as the gateway may transmit. Every downlink is checked against
 * the payload limit of the DR it would use; too big → `log` DOWNLINK_PAYLOAD_SIZE and nothing delivered.
 * Each node's link loses downlinks by its seeded loss model; the gateway is half duplex and keeps the EU868 duty
 * cycle per sub-band. All of it runs on the virtual clock (sim-clock.ts).
 */
export interface LnsSimOptions {
  brokerUrl: string;
  username?: string;
  password?: string;
  appId: string;
  nodes: number;
  hw: string;
  version: string;
  trust: readonly KeyObject[];
  profile?: BootProfileName;
  ramBudget?: number;
  /** Uplink DR of every node (EU868). Default 5. */
  dr?: number;
  rx2Dr?: number;
  downLoss: LossModel;
  upLoss?: LossModel;
  seed: number;
  clock: Omit<ClockOptions, 'epochMs'>;
  /** Class A nodes with a transfer in progress uplink at least this often (virtual s). Default 60. */
  keepAliveS?: number;
  /** Nodes whose self-test fails (by index). */
  failSelfTest?: ReadonlySet<number>;
  devEuiPrefix?: string;
  log?: (level: 'info' | 'warn', msg: string) => void;
}

interface QueueItem {
  id: string;
  fPort: number;
  bytes: Uint8Array;
  confirmed: boolean;
}

interface SimDevice {
  node: LoraNode;
  link: Link;
  upLink: Link;
  queue: QueueItem[];
  pendingUp: { fPort: number; bytes: Uint8Array }[];
  fCnt: number;
  fCntDown: number;
  duty: DutyCycleState;
  uplinkAt: number | undefined;
  classCTimer: boolean;
  lastUpMs: number;
  delivered: number;
  lost: number;
}

const UPLINK_HZ = 868_100_000;
const RX2_HZ = 869_525_000;
const MAX_QUEUE = 512;
/** Device events a ChirpStack integration (ferry's agent) consumes: each is handed off on a shared clock. */
const AGENT_EVENTS = new Set(['up', 'txack', 'ack', 'log']);

export class LnsSim {
  readonly clock: SimClock;
  readonly gateway: Gateway;
  readonly devices = new Map<string, SimDevice>();
  private readonly mcQueues = new Map<number, { fPort: number; bytes: Uint8Array }[]>();
  private readonly mcTimers = new Set<number>();
  private client: MqttClient | undefined;
  private readonly region: Region = EU868;
  private downlinkId = 1;
  readonly counters = { commands: 0, refused: 0, oversize: 0, multicastFrames: 0 };
  private readonly log: (level: 'info' | 'warn', msg: string) => void;

  constructor(readonly opts: LnsSimOptions) {
    this.log = opts.log ?? (() => {});
    this.clock = new SimClock({ ...opts.clock, epochMs: Date.now() });
    this.gateway = new Gateway(this.region);
    const rand = seeded(opts.seed);
    const prefix = opts.devEuiPrefix ?? '70b3d57ed0';
    for (let i = 0; i < opts.nodes; i++) {
      const devEui = (prefix + i.toString(16).padStart(16 - prefix.length, '0')).slice(0, 16);
      const node = new LoraNode({
        devEui, hw: opts.hw, version: opts.version, trust: opts.trust, profile: opts.profile, ramBudget: opts.ramBudget,
        failSelfTest: opts.failSelfTest?.has(i), dr: opts.dr, random: seeded(opts.seed * 7919 + i + 1), log: this.log,
      });
      this.devices.set(devEui, {
        node, link: makeLink(opts.downLoss, seeded(Math.floor(rand() * 2 ** 31))), upLink: makeLink(opts.upLoss ?? { kind: 'iid', p: 0 }, seeded(Math.floor(rand() * 2 ** 31))),
        queue: [], pendingUp: [], fCnt: 0, fCntDown: 0, duty: emptyDutyCycle, uplinkAt: undefined, classCTimer: false, lastUpMs: -Infinity, delivered: 0, lost: 0,
      });
    }
  }

  get upDr(): number {
    return this.opts.dr ?? 5;
  }

  async start(): Promise<void> {
    this.client = await mqtt.connectAsync(this.opts.brokerUrl, {
      protocolVersion: 4, username: this.opts.username, password: this.opts.password, reconnectPeriod: 1000, clientId: `ferry-lns-sim-${process.pid}-${Math.floor(Math.random() * 1e6)}`,
    });
    this.client.on('message', (topic, payload) => this.onCommand(topic, payload));
    await this.client.subscribeAsync([`application/${this.opts.appId}/device/+/command/+`, `application/${this.opts.appId}/multicast-group/+/command/+`], { qos: 0 });
    for (const d of this.devices.values()) this.handle(d, d.node.boot('powerOn', this.clock.unixMs()));
  }

  async stop(): Promise<void> {
    this.clock.stop();
    await this.client?.endAsync();
  }

  /** Power-cycles a node (its RAM is lost; flash and NVS survive). */
  reset(devEui: string): void {
    const d = this.devices.get(devEui);
    if (!d) throw new RangeError(`no simulated node ${devEui}`);
    this.handle(d, d.node.boot('powerOn', this.clock.unixMs()));
  }

  private publish(devEui: string, event: string, body: unknown): void {
    // Whatever is published gets settleMs of real time to be answered before the clock may jump; an agent sharing
    // the clock also holds it until it has handled the event.
    this.clock.touch();
    if (AGENT_EVENTS.has(event)) this.clock.handoff();
    this.client?.publish(`application/${this.opts.appId}/device/${devEui}/event/${event}`, JSON.stringify(body), { qos: 0 });
  }

  private onCommand(topic: string, payload: Buffer): void {
    this.clock.arrived();
    this.counters.commands++;
    const t = commandTopic(this.opts.appId, topic);
    const refuse = (why: string) => {
      this.counters.refused++;
      this.log('warn', `lns-sim: ${topic}: ${why}; dropped`);
    };
    if (t.kind === 'other') return refuse(t.why);
    if (t.kind === 'multicast') {
      const m = parseMulticast(payload);
      if (typeof m === 'string') return refuse(m);
      const q = this.mcQueues.get(t.mcAddr) ?? [];
      if (q.length >= MAX_QUEUE) return refuse(`multicast queue of ${MAX_QUEUE} frames is full`);
      q.push(m);
      this.mcQueues.set(t.mcAddr, q);
      this.pumpMulticast(t.mcAddr);
      return;
    }
    const d = this.devices.get(t.devEui);
    if (!d) return refuse(`unknown devEui ${t.devEui}`);
    const c = parseDown(t.devEui, payload);
    if (typeof c === 'string') {
      this.publish(t.devEui, 'log', logEvent({ appId: this.opts.appId, devEui: t.devEui, timeMs: this.clock.unixMs(), code: 'DOWNLINK_COMMAND', description: c }));
      return refuse(c);
    }
    const cc = d.node.classC(this.clock.unixMs());
    const dr = cc ? cc.dr : this.upDr;
    if (c.bytes.length > dataRate(this.region, dr, 'down').maxAppPayload) {
      this.counters.oversize++;
      this.publish(t.devEui, 'log', logEvent({
        appId: this.opts.appId, devEui: t.devEui, timeMs: this.clock.unixMs(), code: 'DOWNLINK_PAYLOAD_SIZE', queueItemId: c.id,
        description: `Device queue-item discarded because it exceeds the max payload size (${c.bytes.length} > ${dataRate(this.region, dr, 'down').maxAppPayload} at DR${dr})`,
      }));
      return refuse(`${c.bytes.length} B exceeds DR${dr}'s ${dataRate(this.region, dr, 'down').maxAppPayload} B`);
    }
    if (d.queue.length >= MAX_QUEUE) return refuse(`device queue of ${MAX_QUEUE} frames is full`);
    d.queue.push({ id: c.id, fPort: c.fPort, bytes: c.bytes, confirmed: c.confirmed });
    this.pumpDevice(d);
  }

  /** Node output: uplinks (each after its delay) and a reboot. */
  private handle(d: SimDevice, out: NodeOutput): void {
    for (const u of out.uplinks) {
      if (u.delayMs > 0) this.clock.after(u.delayMs, () => this.queueUp(d, u));
      else this.queueUp(d, u);
    }
    if (out.rebootAfterMs !== undefined) this.clock.after(out.rebootAfterMs, () => this.handle(d, d.node.boot('software', this.clock.unixMs())));
  }

  private queueUp(d: SimDevice, u: { fPort: number; bytes: Uint8Array }): void {
    d.pendingUp.push({ fPort: u.fPort, bytes: u.bytes });
    this.pumpDevice(d);
  }

  /** Schedules what a device needs next: an uplink (its answers, or to open RX windows), or a Class C downlink. */
  private pumpDevice(d: SimDevice): void {
    const now = this.clock.now();
    const cc = d.node.classC(this.clock.unixMs());
    if (cc && d.queue.length > 0 && !d.classCTimer) {
      d.classCTimer = true;
      this.clock.at(this.gateway.earliest(cc.frequencyHz, now), () => {
        d.classCTimer = false;
        this.classCDown(d);
      });
    }
    const wantsUp = d.pendingUp.length > 0 || (!cc && d.queue.length > 0);
    // Keep-alive uplinks are for Class A nodes with a transfer (docs/lora.md §7.6); in Class C downlinks flow anyway.
    if (!wantsUp && (!d.node.busy || cc)) return;
    const keepAlive = wantsUp ? 0 : Math.max(0, d.lastUpMs + (this.opts.keepAliveS ?? 60) * 1000 - now);
    const at = nextStartMs(d.duty, UPLINK_HZ, now + keepAlive);
    if (d.uplinkAt !== undefined && d.uplinkAt <= at) return;
    d.uplinkAt = at;
    this.clock.at(at, () => {
      if (d.uplinkAt !== at) return; // superseded by a sooner uplink
      d.uplinkAt = undefined;
      this.uplink(d);
    });
  }

  private uplink(d: SimDevice): void {
    const now = this.clock.now();
    const cc = d.node.classC(this.clock.unixMs());
    if (d.pendingUp.length === 0 && (cc || d.queue.length === 0) && (!d.node.busy || cc)) return;
    const u = d.pendingUp.shift() ?? d.node.keepAlive();
    const bytes = u?.bytes.length ?? 0;
    const airtime = frameAirtimeMs(this.region, this.upDr, bytes, 'up');
    d.duty = recordTransmission(d.duty, { frequencyHz: UPLINK_HZ, startMs: now, airtimeMs: airtime });
    d.lastUpMs = now;
    d.fCnt++;
    const end = now + airtime;
    const heard = !d.upLink.lost();
    if (heard && u) {
      const fCnt = d.fCnt;
      this.clock.at(end, () => this.publish(d.node.devEui, 'up', upEvent({
        appId: this.opts.appId, devEui: d.node.devEui, timeMs: this.clock.opts.epochMs + end, fCnt, fPort: u.fPort, bytes: u.bytes,
        dr: dataRate(this.region, this.upDr, 'up'), frequencyHz: UPLINK_HZ, rssi: -80, snr: 7.5,
      })));
    }
    // ChirpStack waits for the integration's answer to an uplink before RX1 closes: RX1 opens 1 s after the uplink.
    if (heard && !cc) this.clock.at(end + 1000, () => this.classAWindow(d, end));
    this.clock.at(end, () => this.pumpDevice(d));
  }

  private classAWindow(d: SimDevice, upEnd: number): void {
    const item = d.queue[0];
    if (!item) return;
    const rx1 = upEnd + 1000;
    const rx2 = upEnd + 2000;
    let where: { at: number; hz: number; dr: number } | undefined;
    if (this.gateway.earliest(UPLINK_HZ, rx1) <= rx1) where = { at: rx1, hz: UPLINK_HZ, dr: this.upDr };
    else if (this.gateway.fits(this.opts.rx2Dr ?? 0, item.bytes.length) && this.gateway.earliest(RX2_HZ, rx2) <= rx2) where = { at: rx2, hz: RX2_HZ, dr: this.opts.rx2Dr ?? 0 };
    if (!where) return; // stays queued: the node uplinks again (pumpDevice)
    const w = where;
    this.clock.at(w.at, () => this.transmitUnicast(d, w.hz, w.dr, w.at));
  }

  private classCDown(d: SimDevice): void {
    const cc = d.node.classC(this.clock.unixMs());
    if (!cc || d.queue.length === 0) return this.pumpDevice(d);
    const now = this.clock.now();
    const at = this.gateway.earliest(cc.frequencyHz, now);
    if (at > now) {
      d.classCTimer = true;
      this.clock.at(at, () => {
        d.classCTimer = false;
        this.classCDown(d);
      });
      return;
    }
    this.transmitUnicast(d, cc.frequencyHz, cc.dr, now);
    this.pumpDevice(d);
  }

  private transmitUnicast(d: SimDevice, hz: number, dr: number, at: number): void {
    const item = d.queue.shift();
    if (!item) return;
    if (this.gateway.earliest(hz, at) > at) {
      d.queue.unshift(item); // another frame took the window: wait for the next one
      return this.pumpDevice(d);
    }
    if (!this.gateway.fits(dr, item.bytes.length)) {
      this.counters.oversize++;
      this.publish(d.node.devEui, 'log', logEvent({
        appId: this.opts.appId, devEui: d.node.devEui, timeMs: this.clock.unixMs(), code: 'DOWNLINK_PAYLOAD_SIZE', queueItemId: item.id,
        description: `Device queue-item discarded because it exceeds the max payload size (${item.bytes.length} B at DR${dr})`,
      }));
      return;
    }
    const tx = this.gateway.transmit({ startMs: at, frequencyHz: hz, dr, bytes: item.bytes.length, kind: 'unicast' }, at);
    const end = at + tx.airtimeMs;
    const fCntDown = d.fCntDown++;
    const lost = d.link.lost();
    this.clock.at(end, () => {
      const timeMs = this.clock.opts.epochMs + end;
      this.publish(d.node.devEui, 'txack', txAckEvent({ appId: this.opts.appId, devEui: d.node.devEui, timeMs, queueItemId: item.id, fCntDown, frequencyHz: hz, dr: dataRate(this.region, dr, 'down'), downlinkId: this.downlinkId++ }));
      if (item.confirmed) this.publish(d.node.devEui, 'ack', ackEvent({ appId: this.opts.appId, devEui: d.node.devEui, timeMs, queueItemId: item.id, acknowledged: !lost, fCntDown }));
      if (lost) d.lost++;
      else {
        d.delivered++;
        this.handle(d, d.node.receive(item.fPort, item.bytes, null, this.clock.unixMs()));
      }
      this.pumpDevice(d);
    });
  }

  /** Multicast frames leave on the group's window frequency/DR once the gateway may transmit and a member listens. */
  private pumpMulticast(mcAddr: number): void {
    if (this.mcTimers.has(mcAddr)) return;
    const q = this.mcQueues.get(mcAddr);
    if (!q || q.length === 0) return;
    const unix = this.clock.unixMs();
    const members = [...this.devices.values()].filter((d) => d.node.ts005.groupOf(mcAddr) !== undefined);
    const open = members.map((d) => d.node.ts005.openWindow(unix)).find((w) => w && w.mcAddr === mcAddr);
    let at: number;
    if (open) at = this.gateway.earliest(open.frequencyHz, this.clock.now());
    else {
      const starts = members.map((d) => d.node.ts005.windowStart(mcAddr, unix)).filter((s): s is number => s !== undefined);
      if (starts.length === 0) {
        const f = q.shift()!;
        this.log('warn', `lns-sim: multicast frame for group ${mcAddr.toString(16).padStart(8, '0')} (fPort ${f.fPort}) dropped: no member has a Class C window`);
        this.multicastEvent(mcAddr, f.fPort, 'NO_CLASS_C_MEMBER');
        return this.pumpMulticast(mcAddr);
      }
      at = Math.min(...starts) - this.clock.opts.epochMs;
    }
    this.mcTimers.add(mcAddr);
    this.clock.at(Math.max(at, this.clock.now()), () => {
      this.mcTimers.delete(mcAddr);
      this.transmitMulticast(mcAddr);
    });
  }

  private transmitMulticast(mcAddr: number): void {
    const q = this.mcQueues.get(mcAddr);
    const unix = this.clock.unixMs();
    const members = [...this.devices.values()].filter((d) => d.node.ts005.groupOf(mcAddr) !== undefined);
    const w = members.map((d) => d.node.ts005.openWindow(unix)).find((x) => x && x.mcAddr === mcAddr);
    if (!q || q.length === 0) return;
    if (!w) return this.pumpMulticast(mcAddr);
    const now = this.clock.now();
    if (this.gateway.earliest(w.frequencyHz, now) > now) return this.pumpMulticast(mcAddr);
    const f = q.shift()!;
    if (!this.gateway.fits(w.dr, f.bytes.length)) {
      this.counters.oversize++;
      this.log('warn', `lns-sim: multicast frame of ${f.bytes.length} B exceeds DR${w.dr}: dropped`);
      this.multicastEvent(mcAddr, f.fPort, 'DOWNLINK_PAYLOAD_SIZE');
      return this.pumpMulticast(mcAddr);
    }
    const tx = this.gateway.transmit({ startMs: now, frequencyHz: w.frequencyHz, dr: w.dr, bytes: f.bytes.length, kind: 'multicast' }, now);
    this.counters.multicastFrames++;
    this.clock.at(now + tx.airtimeMs, () => {
      const at = this.clock.unixMs();
      // Stand-in, like the command topic: ChirpStack reports no multicast txack. Only the last frame of a burst
      // holds the clock for an answer.
      this.multicastEvent(mcAddr, f.fPort);
      for (const d of members) {
        if (!d.node.ts005.listensTo(mcAddr, at)) continue;
        if (d.link.lost()) {
          d.lost++;
          continue;
        }
        d.delivered++;
        this.handle(d, d.node.receive(f.fPort, f.bytes, mcAddr, at));
      }
      this.pumpMulticast(mcAddr);
    });
  }

  /** The multicast stand-in's txack (or, with `dropped`, why a frame was not sent). */
  private multicastEvent(mcAddr: number, fPort: number, dropped?: string): void {
    const left = this.mcQueues.get(mcAddr)?.length ?? 0;
    if (left === 0) this.clock.touch();
    const body = { time: new Date(this.clock.unixMs()).toISOString(), fPort, queued: left, ...(dropped ? { dropped } : {}) };
    this.client?.publish(`application/${this.opts.appId}/multicast-group/${mcAddr.toString(16).padStart(8, '0')}/event/txack`, JSON.stringify(body), { qos: 0 });
  }

  stats() {
    const virtualMs = this.clock.now();
    const realMs = this.clock.realMs();
    return {
      virtualS: virtualMs / 1000, realS: realMs / 1000, speedup: virtualMs / Math.max(1, realMs),
      airtimeS: { unicast: this.gateway.airtimeMs.unicast / 1000, multicast: this.gateway.airtimeMs.multicast / 1000 },
      frames: { ...this.gateway.frames }, dutyWaitS: this.gateway.dutyWaitMs / 1000, ...this.counters,
      nodes: [...this.devices.values()].map((d) => ({ devEui: d.node.devEui, version: d.node.runningVersion, delivered: d.delivered, lost: d.lost })),
    };
  }
}
