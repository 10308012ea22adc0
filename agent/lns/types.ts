import type { EventEmitter } from 'node:events';

/**
 * The agent's view of a LoRaWAN network server (docs/lora.md §7.1). One adapter per LNS (ChirpStack v4 MQTT,
 * The Things Stack v3 MQTT); everything above it (fragmentation sessions, ferry's fPort 10 messages) is the
 * same for all. Device EUIs are 16 lowercase hex digits. Byte payloads are the LoRaWAN FRMPayload, already
 * decoded from the LNS's base64.
 */

/** An uplink as the LNS reported it. */
export interface LnsUplink {
  devEui: string;
  fPort: number;
  bytes: Uint8Array;
  fCnt: number;
  /** Data rate index of the uplink (region's table); the agent derives the downlink payload limit from it. */
  dr: number;
  rssi?: number;
  snr?: number;
  /** Uplink frequency, when the LNS says: Class A downlinks in RX1 go on it (duty-cycle accounting). */
  frequencyHz?: number;
}

/** The gateway transmitted the downlink with this id. */
export interface LnsTxAck {
  devEui: string;
  id: string;
}

/** A confirmed downlink was (or was not) acknowledged by the device. */
export interface LnsAck {
  devEui: string;
  id: string;
  acknowledged: boolean;
}

/**
 * The LNS refused or dropped a downlink. `code` is the LNS's own: ChirpStack log codes such as
 * `DOWNLINK_PAYLOAD_SIZE` (too big for the device's current data rate), `F_CNT_DOWN`, `EXPIRED`; for TTS
 * `nack` / `failed`. `id` is empty when the LNS did not say which downlink.
 */
export interface LnsError {
  devEui: string;
  id: string;
  code: string;
  description?: string;
}

export interface LnsEvents {
  up: [LnsUplink];
  txAck: [LnsTxAck];
  ack: [LnsAck];
  error: [LnsError];
  /** The adapter's link to the LNS broker came up (true) or went down (false). */
  link: [boolean];
}

export interface SendOptions {
  /** Ask the device to acknowledge (LoRaWAN confirmed downlink). Default false. */
  confirmed?: boolean;
  /** Correlation id, echoed in txAck / ack / error. The adapter makes one when absent and returns it. */
  id?: string;
}

export interface LnsAdapter extends EventEmitter<LnsEvents> {
  /** 'chirpstack' | 'tts'. */
  readonly kind: string;
  /** False when the LNS cannot carry unicast FUOTA (TTN fair use): the runtime refuses to plan transfers there. */
  readonly unicastFuota: boolean;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Enqueues one unicast downlink; resolves with its correlation id once handed to the LNS broker. */
  sendDown(devEui: string, fPort: number, bytes: Uint8Array, options?: SendOptions): Promise<string>;
  /**
   * Enqueues one downlink to a multicast group (ferry: groupId = the TS005 McAddr as 8 lowercase hex digits).
   * ChirpStack takes multicast only over gRPC; over MQTT this is the simulator's stand-in topic
   * `application/{appId}/multicast-group/{groupId}/command/down`. Rejects where the LNS has no multicast.
   */
  sendMulticast(groupId: string, fPort: number, bytes: Uint8Array): Promise<void>;
}

/** fPorts ferry uses (docs/lora.md §7). */
export const FERRY_PORT = 10;
export const TS005_PORT = 200;
export const TS004_PORT = 201;
export const TS003_PORT = 202;
