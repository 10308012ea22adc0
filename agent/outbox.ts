import type { MqttClient } from 'mqtt';

/**
 * Fire-and-forget publishing with a bounded backlog. Nothing is ever awaited: a publish either goes
 * to MQTT.js now or is refused, and the caller's timers or dirty flags send it again later. MQTT.js
 * keeps every QoS 1 message until its PUBACK (and across reconnects); while the link is stalled that
 * store would grow without limit, so QoS 1 publishes stop at `maxInflight` unacknowledged ones.
 * QoS 0 (chunks) is never queued offline (queueQoSZero: false) and is paced by the transfer window.
 */
export class Outbox {
  private inflight = 0;
  private refusing = false;
  private onEmpty: (() => void) | undefined;

  constructor(
    private readonly client: MqttClient,
    private readonly maxInflight: number,
    private readonly onRefused: (what: string) => void,
    /** Called whenever a QoS 1 publish settles: room for more. */
    private readonly onSettled?: () => void,
  ) {}

  get pending(): number {
    return this.inflight;
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /** True when the message was handed to the client; false when the link is down or the backlog is full. */
  publish(topic: string, payload: Buffer | string, opts: { qos: 0 | 1; retain?: boolean }, what: string, onError?: (err: Error) => void): boolean {
    if (!this.client.connected) return false;
    if (opts.qos === 1) {
      if (this.inflight >= this.maxInflight) {
        // Logged once per burst, not per message: a stalled broker must not also flood the log.
        if (!this.refusing) this.onRefused(what);
        this.refusing = true;
        return false;
      }
      this.inflight++;
      this.refusing = false;
    }
    this.client.publish(topic, payload, { qos: opts.qos, retain: opts.retain ?? false }, (err) => {
      if (err) onError?.(err);
      if (opts.qos === 1) {
        this.inflight--;
        this.onSettled?.();
        if (this.inflight === 0) this.onEmpty?.();
      }
    });
    return true;
  }

  /**
   * Disconnects: politely (DISCONNECT after the QoS 1 backlog is acknowledged, waiting at most
   * graceMs), else by closing the socket. MQTT.js's own end() would wait for that backlog forever
   * when the link is down or stalled.
   */
  async end(graceMs: number): Promise<void> {
    if (this.client.connected && this.inflight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        this.onEmpty = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.onEmpty = undefined;
    }
    const polite = this.client.connected && this.inflight === 0;
    await this.client.endAsync(!polite);
  }
}
