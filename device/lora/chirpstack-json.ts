import { randomUUID } from 'node:crypto';
import type { DataRate } from '../../shared/lora/regions.js';

/**
 * ChirpStack v4 MQTT integration, JSON marshaler (reference lora.md §3.1; chirpstack `src/integration/mqtt.rs`,
 * `api/proto/integration/integration.proto`, protobuf-JSON camelCase). Topics:
 *   application/{appId}/device/{devEui}/event/{up|txack|ack|log}      published by the LNS
 *   application/{appId}/device/{devEui}/command/down                  consumed: {devEui, confirmed, fPort, data, id?}
 *   application/{appId}/multicast-group/{McAddr hex}/command/down     ferry's stand-in (ChirpStack: gRPC only)
 * Parsing is hostile-input territory: every refusal is a one-line reason, never a throw.
 */
export const MAX_COMMAND_BYTES = 4096;

export interface DeviceInfo {
  tenantId: string;
  tenantName: string;
  applicationId: string;
  applicationName: string;
  deviceProfileId: string;
  deviceProfileName: string;
  deviceName: string;
  devEui: string;
}

export function deviceInfo(appId: string, devEui: string): DeviceInfo {
  return {
    tenantId: '52f14cd4-c6f1-4fbd-8f87-4025e1d49242', tenantName: 'ferry-sim', applicationId: appId, applicationName: 'ferry',
    deviceProfileId: 'f3b5a2c1-0000-4000-8000-00000000fe01', deviceProfileName: 'ferry-lora-node', deviceName: devEui, devEui,
  };
}

function txInfo(frequencyHz: number, d: DataRate) {
  return { frequency: frequencyHz, modulation: { lora: { bandwidth: d.modulation.bw, spreadingFactor: d.modulation.sf, codeRate: 'CR_4_5' } } };
}

export function upEvent(o: {
  appId: string; devEui: string; timeMs: number; fCnt: number; fPort: number; bytes: Uint8Array; dr: DataRate; frequencyHz: number; rssi: number; snr: number;
}) {
  return {
    deduplicationId: randomUUID(), time: new Date(o.timeMs).toISOString(), deviceInfo: deviceInfo(o.appId, o.devEui), devAddr: o.devEui.slice(8),
    adr: false, dr: o.dr.dr, fCnt: o.fCnt, fPort: o.fPort, confirmed: false, data: Buffer.from(o.bytes).toString('base64'),
    rxInfo: [{ gatewayId: '0016c001ff10f3e5', uplinkId: Math.floor(o.timeMs) % 65536, rssi: o.rssi, snr: o.snr, channel: 0, context: 'AAAAAA==', crcStatus: 'CRC_OK' }],
    txInfo: txInfo(o.frequencyHz, o.dr), regionConfigId: 'eu868',
  };
}

export function txAckEvent(o: { appId: string; devEui: string; timeMs: number; queueItemId: string; fCntDown: number; frequencyHz: number; dr: DataRate; downlinkId: number }) {
  return {
    downlinkId: o.downlinkId, time: new Date(o.timeMs).toISOString(), deviceInfo: deviceInfo(o.appId, o.devEui), queueItemId: o.queueItemId,
    fCntDown: o.fCntDown, gatewayId: '0016c001ff10f3e5', txInfo: txInfo(o.frequencyHz, o.dr),
  };
}

export function ackEvent(o: { appId: string; devEui: string; timeMs: number; queueItemId: string; acknowledged: boolean; fCntDown: number }) {
  return { deduplicationId: randomUUID(), time: new Date(o.timeMs).toISOString(), deviceInfo: deviceInfo(o.appId, o.devEui), queueItemId: o.queueItemId, acknowledged: o.acknowledged, fCntDown: o.fCntDown };
}

export function logEvent(o: { appId: string; devEui: string; timeMs: number; code: string; description: string; queueItemId?: string }) {
  return {
    time: new Date(o.timeMs).toISOString(), deviceInfo: deviceInfo(o.appId, o.devEui), level: 'ERROR', code: o.code, description: o.description,
    context: o.queueItemId ? { queue_item_id: o.queueItemId } : {},
  };
}

export interface DownCommand {
  devEui: string;
  confirmed: boolean;
  fPort: number;
  bytes: Uint8Array;
  id: string;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function parseJson(payload: Buffer): Record<string, unknown> | string {
  if (payload.length > MAX_COMMAND_BYTES) return `command of ${payload.length} B exceeds ${MAX_COMMAND_BYTES} B`;
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch (e) {
    return `command is not JSON (${(e as Error).message.split('\n')[0]})`;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'command is not a JSON object';
  return v as Record<string, unknown>;
}

function parseData(o: Record<string, unknown>): Uint8Array | string {
  if ('object' in o && !('data' in o)) return 'command carries "object": the simulator has no codec, send "data"';
  if (typeof o.data !== 'string' || !BASE64.test(o.data)) return '"data" is not base64';
  const bytes = Buffer.from(o.data, 'base64');
  if (bytes.length === 0) return '"data" is empty';
  return bytes;
}

function parseFPort(o: Record<string, unknown>): number | string {
  return Number.isInteger(o.fPort) && (o.fPort as number) > 0 && (o.fPort as number) <= 223 ? (o.fPort as number) : `"fPort" ${JSON.stringify(o.fPort)} is not 1..223`;
}

/** A device downlink command, or why it is refused. */
export function parseDown(topicDevEui: string, payload: Buffer): DownCommand | string {
  const o = parseJson(payload);
  if (typeof o === 'string') return o;
  if (typeof o.devEui !== 'string' || o.devEui.toLowerCase() !== topicDevEui) return `"devEui" ${JSON.stringify(o.devEui)} does not match the topic's ${topicDevEui}`;
  const fPort = parseFPort(o);
  if (typeof fPort === 'string') return fPort;
  if (o.confirmed !== undefined && typeof o.confirmed !== 'boolean') return '"confirmed" is not a boolean';
  if (o.id !== undefined && (typeof o.id !== 'string' || o.id.length > 64)) return '"id" is not a string of at most 64 characters';
  const bytes = parseData(o);
  if (typeof bytes === 'string') return bytes;
  return { devEui: topicDevEui, confirmed: o.confirmed === true, fPort, bytes, id: (o.id as string | undefined) ?? randomUUID() };
}

export function parseMulticast(payload: Buffer): { fPort: number; bytes: Uint8Array } | string {
  const o = parseJson(payload);
  if (typeof o === 'string') return o;
  const fPort = parseFPort(o);
  if (typeof fPort === 'string') return fPort;
  const bytes = parseData(o);
  if (typeof bytes === 'string') return bytes;
  return { fPort, bytes };
}

export type CommandTopic = { kind: 'device'; devEui: string } | { kind: 'multicast'; mcAddr: number } | { kind: 'other'; why: string };

/** Splits `application/{app}/(device|multicast-group)/{id}/command/down`. */
export function commandTopic(appId: string, topic: string): CommandTopic {
  const p = topic.split('/');
  if (p.length !== 6 || p[0] !== 'application' || p[1] !== appId || p[4] !== 'command') return { kind: 'other', why: `topic ${topic} is not a command` };
  if (p[5] !== 'down') return { kind: 'other', why: `unknown command type "${p[5]}"` };
  if (p[2] === 'device') {
    if (!/^[0-9a-f]{16}$/.test(p[3])) return { kind: 'other', why: `devEui "${p[3]}" is not 16 lowercase hex digits` };
    return { kind: 'device', devEui: p[3] };
  }
  if (p[2] === 'multicast-group') {
    if (!/^[0-9a-f]{8}$/.test(p[3])) return { kind: 'other', why: `multicast group "${p[3]}" is not 8 lowercase hex digits (McAddr)` };
    return { kind: 'multicast', mcAddr: parseInt(p[3], 16) };
  }
  return { kind: 'other', why: `topic ${topic} is neither a device nor a multicast-group command` };
}
