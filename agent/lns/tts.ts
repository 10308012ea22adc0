import { randomUUID } from 'node:crypto';
import { EU868, US915, type Region } from '../../shared/lora/regions.js';
import { base64, BadLnsMessage, devEui, int, isObj, obj, optNum, optObj, optStr, parseObject, type Obj } from './json.js';
import { LnsMqttLink, type LnsLinkOptions } from './mqtt-base.js';
import { checkDown } from './chirpstack.js';
import type { LnsAdapter, SendOptions } from './types.js';

/**
 * The Things Stack v3 MQTT API (lora.md reference §3.2): `v3/{app}@{tenant}/devices/{id}/up`, downlinks pushed on
 * `…/down/push` as `{"downlinks":[{f_port, frm_payload, priority, correlation_ids}]}`, outcomes on
 * `down/sent|ack|nack|failed`. QoS 0 only. TTS names devices by its own id, so the adapter learns each devEui's
 * device id from its uplinks. TTN's fair use (10 downlinks a day) leaves no room for unicast FUOTA, and TTS has no
 * multicast over MQTT: `unicastFuota` is false and the runtime refuses to plan transfers here.
 */
export interface TtsOptions extends LnsLinkOptions {
  /** `{application id}@{tenant id}`; a bare application id means the `ttn` tenant. */
  application: string;
  region: Region['name'];
}

const OUTCOMES = ['sent', 'ack', 'nack', 'failed'] as const;
const DEVICE_ID = /^[a-z0-9](?:[-]?[a-z0-9]){1,35}$/;

export class TtsAdapter extends LnsMqttLink implements LnsAdapter {
  readonly kind = 'tts';
  readonly unicastFuota = false;
  private readonly app: string;
  private readonly deviceIds = new Map<string, string>();

  constructor(private readonly opts: TtsOptions) {
    super({ ...opts, username: opts.username ?? (opts.application.includes('@') ? opts.application : `${opts.application}@ttn`) });
    this.app = opts.application.includes('@') ? opts.application : `${opts.application}@ttn`;
    if (!/^[a-z0-9-]{2,36}@[a-z0-9-]{2,36}$/.test(this.app)) throw new Error(`TTS application "${opts.application}" is not {application id}@{tenant id}`);
  }

  protected describe(): string {
    return `The Things Stack application ${this.app}`;
  }

  protected filters(): string[] {
    return [`v3/${this.app}/devices/+/up`, ...OUTCOMES.map((o) => `v3/${this.app}/devices/+/down/${o}`)];
  }

  protected onMessage(topic: string, payload: Buffer): void {
    const levels = topic.split('/');
    if (levels[0] !== 'v3' || levels[1] !== this.app || levels[2] !== 'devices' || !DEVICE_ID.test(levels[3] ?? '')) return;
    const deviceId = levels[3];
    const kind = levels.slice(4).join('/');
    const what = `tts ${kind}`;
    const body = parseObject(payload, what);
    const ids = obj(body, 'end_device_ids', what);
    if (ids.device_id !== deviceId) throw new BadLnsMessage(`${what}: end_device_ids.device_id does not match the topic's ${deviceId}`);
    const dev = devEui(ids.dev_eui, `${what}.end_device_ids.dev_eui`);
    if (kind === 'up') {
      const up = obj(body, 'uplink_message', what);
      if (up.f_port === undefined || up.f_port === 0) return;
      if (!this.deviceIds.has(dev) && this.deviceIds.size >= 100_000) throw new BadLnsMessage(`${what}: too many devices`);
      this.deviceIds.set(dev, deviceId);
      const rx = Array.isArray(up.rx_metadata) && isObj(up.rx_metadata[0]) ? up.rx_metadata[0] : {};
      const settings = optObj(up, 'settings') ?? {};
      const freq = Number(optStr(settings, 'frequency', 16));
      this.emit('up', {
        devEui: dev,
        fPort: int(up, 'f_port', what, 1, 255),
        bytes: base64(up, 'frm_payload', what, true),
        fCnt: typeof up.f_cnt === 'number' ? int(up, 'f_cnt', what, 0, 0xffff_ffff) : 0,
        dr: dataRateIndex(settings, this.opts.region, what),
        rssi: optNum(rx, 'rssi'),
        snr: optNum(rx, 'snr'),
        frequencyHz: Number.isFinite(freq) && freq > 0 ? freq : undefined,
      });
      return;
    }
    const id = ferryCorrelation(body);
    if (kind === 'down/sent') this.emit('txAck', { devEui: dev, id });
    else if (kind === 'down/ack') this.emit('ack', { devEui: dev, id, acknowledged: true });
    else if (kind === 'down/nack') this.emit('ack', { devEui: dev, id, acknowledged: false });
    else if (kind === 'down/failed') {
      const err = optObj(body, 'downlink_failed');
      const e = err ? optObj(err, 'error') : undefined;
      this.emit('error', { devEui: dev, id, code: (e && optStr(e, 'name', 64)) ?? 'failed', description: e ? optStr(e, 'message_format', 256) : undefined });
    }
  }

  async sendDown(dev: string, fPort: number, bytes: Uint8Array, options: SendOptions = {}): Promise<string> {
    checkDown(dev, fPort, bytes);
    const deviceId = this.deviceIds.get(dev);
    if (!deviceId) throw new Error(`no uplink from ${dev} yet: TTS needs its device id for a downlink`);
    const id = options.id ?? randomUUID();
    await this.publish(`v3/${this.app}/devices/${deviceId}/down/push`, {
      downlinks: [{ f_port: fPort, frm_payload: Buffer.from(bytes).toString('base64'), priority: 'NORMAL', confirmed: options.confirmed ?? false, correlation_ids: [`ferry:${id}`] }],
    });
    return id;
  }

  async sendMulticast(): Promise<void> {
    throw new Error('The Things Stack offers no multicast downlinks over MQTT: no multicast FUOTA there');
  }
}

/** The uplink's DR: `data_rate_index` when present, else the LoRa SF/BW matched against the region's table. */
function dataRateIndex(settings: Obj, region: Region['name'], what: string): number {
  if (typeof settings.data_rate_index === 'number') return int(settings, 'data_rate_index', what, 0, 15);
  const lora = optObj(optObj(settings, 'data_rate') ?? {}, 'lora');
  const sf = lora && optNum(lora, 'spreading_factor');
  const bw = lora && optNum(lora, 'bandwidth');
  const table = region === 'US915' ? US915 : EU868;
  const found = table.dataRates.find((d) => d.direction !== 'down' && d.modulation.sf === sf && d.modulation.bw === bw);
  if (!found) throw new BadLnsMessage(`${what}: uplink_message.settings has no data rate ${region} knows`);
  return found.dr;
}

function ferryCorrelation(body: Obj): string {
  const lists: unknown[] = [body.correlation_ids];
  for (const v of Object.values(body)) if (isObj(v)) lists.push(v.correlation_ids);
  for (const l of lists) {
    if (!Array.isArray(l)) continue;
    for (const c of l.slice(0, 64)) if (typeof c === 'string' && c.startsWith('ferry:') && c.length <= 64) return c.slice(6);
  }
  return '';
}
