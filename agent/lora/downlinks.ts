import { commitDownlink, emptyAirtime, planDownlink, type AirtimeState, type PlannedDownlink } from '../../shared/lora/duty.js';
import type { Region } from '../../shared/lora/regions.js';
import type { LnsAdapter } from '../lns/types.js';
import { cancel, realClock, type LoraClock, type LoraTimer } from './clock.js';

/**
 * The one queue every LoRa downlink goes through: before handing a frame to the LNS it asks the airtime
 * scheduler when it may go (duty cycle per sub-band, one frame at a time on the radio) and waits until then.
 * Bounded: a full queue refuses, and the caller's timers try again.
 */
export interface Downlink {
  to: { kind: 'node'; devEui: string } | { kind: 'group'; groupId: string };
  fPort: number;
  bytes: Uint8Array;
  dr: number;
  frequencyHz: number;
  /**
   * A Class A frame: the LNS holds it until the node's next uplink and the gateway picks RX1 or RX2 within its
   * own duty cycle, so it is handed over at once rather than paced here (pacing 50 offers on RX1's 1 % would hold
   * the last one back ~8 minutes before the LNS even sees it).
   */
  classA?: boolean;
  /** Handed to the LNS (the scheduler let it go); `id` is the LNS correlation id of a unicast frame. */
  onSent?: (id: string) => void;
  /**
   * On the air: the LNS's txack for a unicast frame (a Class A frame waits in the LNS for the node's next uplink);
   * a multicast frame counts as on the air once handed over (ChirpStack reports no txack for a group over MQTT).
   * Answer timeouts count from here.
   */
  onAir?: () => void;
  /** Not sent: too big for the DR, the LNS link refused, or the queue was stopped. */
  onError?: (reason: string) => void;
}

export const MAX_QUEUED_DOWNLINKS = 20_000;
/** Frames handed to the LNS whose txack is still awaited; the oldest are forgotten past this. */
const MAX_AWAITING_AIR = 4096;

export class DownlinkQueue {
  private readonly queue: Downlink[] = [];
  private state: AirtimeState;
  private timer: LoraTimer | undefined;
  private stopped = false;
  private readonly awaitingAir = new Map<string, () => void>();
  sent = 0;

  constructor(
    private readonly lns: LnsAdapter,
    region: Region['name'],
    private readonly log: (level: 'info' | 'warn' | 'error', msg: string) => void,
    private readonly clock: LoraClock = realClock,
  ) {
    this.state = emptyAirtime(region);
  }

  /** Downlink airtime handed to the LNS so far (ms). */
  get airtimeMs(): number {
    return this.state.airtimeMs;
  }

  get length(): number {
    return this.queue.length;
  }

  push(d: Downlink): boolean {
    if (this.stopped || this.queue.length >= MAX_QUEUED_DOWNLINKS) {
      d.onError?.(this.stopped ? 'stopped' : `downlink queue full (${MAX_QUEUED_DOWNLINKS})`);
      return false;
    }
    if (d.classA) {
      if (!this.plan(d, this.clock.now())) return false;
      this.sent++;
      this.handOver(d);
      return true;
    }
    this.queue.push(d);
    if (!this.timer) this.timer = this.clock.after(0, () => this.pump());
    return true;
  }

  /** Whether the same frame for the same node already waits (a control resend while the band is busy). */
  hasQueued(devEui: string, fPort: number, bytes: Uint8Array): boolean {
    return this.queue.some((d) => d.to.kind === 'node' && d.to.devEui === devEui && d.fPort === fPort && Buffer.compare(Buffer.from(d.bytes), Buffer.from(bytes)) === 0);
  }

  /** Drops every queued frame of one node (its transfer ended). */
  dropFor(devEui: string): void {
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const d = this.queue[i];
      if (d.to.kind === 'node' && d.to.devEui === devEui) this.queue.splice(i, 1);
    }
  }

  /** The LNS transmitted the unicast frame with this correlation id. */
  txAck(id: string): void {
    const f = this.awaitingAir.get(id);
    if (!f) return;
    this.awaitingAir.delete(id);
    f();
  }

  stop(): void {
    this.stopped = true;
    this.awaitingAir.clear();
    cancel(this.timer);
    this.queue.length = 0;
  }

  private awaitAir(id: string, f: () => void): void {
    if (this.awaitingAir.size >= MAX_AWAITING_AIR) this.awaitingAir.delete(this.awaitingAir.keys().next().value!);
    this.awaitingAir.set(id, f);
  }

  /** When the frame may go and its airtime, or undefined (and onError) when it does not fit its DR. */
  private plan(d: Downlink, now: number): PlannedDownlink | undefined {
    try {
      return planDownlink(this.state, { frequencyHz: d.frequencyHz, dr: d.dr, appBytes: d.bytes.length }, now);
    } catch (err) {
      d.onError?.((err as Error).message);
      return undefined;
    }
  }

  private pump(): void {
    this.timer = undefined;
    while (!this.stopped && this.queue.length > 0) {
      const d = this.queue[0];
      const now = this.clock.now();
      const plan = this.plan(d, now);
      if (!plan) {
        this.queue.shift();
        continue;
      }
      if (plan.startMs > now) {
        this.timer = this.clock.after(Math.ceil(plan.startMs - now), () => this.pump());
        return;
      }
      this.queue.shift();
      this.state = commitDownlink(this.state, plan);
      this.sent++;
      this.handOver(d);
    }
  }

  private handOver(d: Downlink): void {
    this.clock.handoff?.();
    const send = d.to.kind === 'node' ? this.lns.sendDown(d.to.devEui, d.fPort, d.bytes) : this.lns.sendMulticast(d.to.groupId, d.fPort, d.bytes).then(() => '');
    const multicast = d.to.kind === 'group';
    send.then(
      (id) => {
        if (d.onAir && !multicast) this.awaitAir(id, d.onAir);
        d.onSent?.(id);
        if (multicast) d.onAir?.();
      },
      (err: Error) => {
        this.log('warn', `downlink to ${d.to.kind === 'node' ? d.to.devEui : `group ${d.to.groupId}`} not sent: ${err.message}`);
        d.onError?.(err.message);
      },
    );
  }
}
