import { randomUUID } from 'node:crypto';
import { base64, BadLnsMessage, devEui, int, isObj, obj, optNum, optObj, optStr, parseObject } from './json.js';
import { LnsMqttLink, type LnsLinkOptions } from './mqtt-base.js';
import type { LnsAdapter, SendOptions } from './types.js';

/**
 * ChirpStack v4 MQTT integration (JSON marshaler; lora.md reference §3.1): events on
 * `application/{appId}/device/{devEui}/event/{up|txack|ack|log}`, downlinks enqueued on
 * `…/device/{devEui}/command/down`. Multicast goes over gRPC in ChirpStack; this adapter publishes the
 * simulator's MQTT stand-in (`application/{appId}/multicast-group/{groupId}/command/down`).
 */
export interface ChirpStackOptions extends LnsLinkOptions {
  applicationId: string;
}

const EVENTS = ['up', 'txack', 'ack', 'log'] as const;
const APP_ID = /^[A-Za-z0-9-]{1,64}$/;

export class ChirpStackAdapter extends LnsMqttLink implements LnsAdapter {
  readonly kind = 'chirpstack';
  readonly unicastFuota = true;
  private readonly prefix: string;

  constructor(private readonly opts: ChirpStackOptions) {
    super(opts);
    if (!APP_ID.test(opts.applicationId)) throw new Error(`ChirpStack application id "${opts.applicationId}" is not a UUID-like id (letters, digits, dashes)`);
    this.prefix = `application/${opts.applicationId}`;
  }

  protected describe(): string {
    return `ChirpStack application ${this.opts.applicationId}`;
  }

  protected filters(): string[] {
    return EVENTS.map((e) => `${this.prefix}/device/+/event/${e}`);
  }

  protected onMessage(topic: string, payload: Buffer): void {
    const levels = topic.split('/');
    if (levels.length !== 6 || `${levels[0]}/${levels[1]}` !== this.prefix || levels[2] !== 'device' || levels[4] !== 'event') return;
    const dev = devEui(levels[3], 'topic');
    const what = `chirpstack ${levels[5]}`;
    const body = parseObject(payload, what);
    switch (levels[5]) {
      case 'up': {
        const info = obj(body, 'deviceInfo', what);
        if (devEui(info.devEui, `${what}.deviceInfo`) !== dev) throw new BadLnsMessage(`${what}: deviceInfo.devEui does not match the topic's ${dev}`);
        if (body.fPort === undefined || body.fPort === 0) return; // MAC commands only: nothing for ferry
        const rx = Array.isArray(body.rxInfo) && isObj(body.rxInfo[0]) ? body.rxInfo[0] : {};
        const tx = optObj(body, 'txInfo');
        this.emit('up', {
          devEui: dev,
          fPort: int(body, 'fPort', what, 1, 255),
          bytes: base64(body, 'data', what, true),
          fCnt: int(body, 'fCnt', what, 0, 0xffff_ffff),
          dr: int(body, 'dr', what, 0, 15),
          rssi: optNum(rx, 'rssi'),
          snr: optNum(rx, 'snr'),
          frequencyHz: tx ? optNum(tx, 'frequency') : undefined,
        });
        return;
      }
      case 'txack':
        this.emit('txAck', { devEui: dev, id: optStr(body, 'queueItemId', 64) ?? '' });
        return;
      case 'ack':
        this.emit('ack', { devEui: dev, id: optStr(body, 'queueItemId', 64) ?? '', acknowledged: body.acknowledged === true });
        return;
      case 'log': {
        const code = optStr(body, 'code', 64);
        if (!code) throw new BadLnsMessage(`${what}: no code`);
        const ctx = optObj(body, 'context') ?? {};
        const id = optStr(ctx, 'queue_item_id', 64) ?? optStr(ctx, 'queueItemId', 64) ?? '';
        this.emit('error', { devEui: dev, id, code, description: optStr(body, 'description', 512) });
        return;
      }
    }
  }

  async sendDown(dev: string, fPort: number, bytes: Uint8Array, options: SendOptions = {}): Promise<string> {
    checkDown(dev, fPort, bytes);
    const id = options.id ?? randomUUID();
    await this.publish(`${this.prefix}/device/${dev}/command/down`, { devEui: dev, confirmed: options.confirmed ?? false, fPort, data: Buffer.from(bytes).toString('base64'), id });
    return id;
  }

  async sendMulticast(groupId: string, fPort: number, bytes: Uint8Array): Promise<void> {
    if (!/^[0-9a-f]{8}$/.test(groupId)) throw new Error(`multicast group id "${groupId}" is not 8 lowercase hex digits (the McAddr)`);
    checkDown('0'.repeat(16), fPort, bytes);
    await this.publish(`${this.prefix}/multicast-group/${groupId}/command/down`, { fPort, data: Buffer.from(bytes).toString('base64') });
  }
}

export function checkDown(dev: string, fPort: number, bytes: Uint8Array): void {
  if (!/^[0-9a-f]{16}$/.test(dev)) throw new Error(`devEui "${dev}" is not 16 lowercase hex digits`);
  if (!Number.isInteger(fPort) || fPort < 1 || fPort > 223) throw new Error(`fPort ${fPort} is not 1..223`);
  if (bytes.length > 242) throw new Error(`downlink of ${bytes.length} B exceeds the largest LoRaWAN FRMPayload (242 B)`);
}
