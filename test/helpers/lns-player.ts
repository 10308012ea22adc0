import mqtt, { type MqttClient } from 'mqtt';
import { decodeRequests, TS004_PORT } from '../../shared/lora/ts004.js';
import type { Frame, TestLoraNode } from './lora-node.js';

/**
 * Plays a ChirpStack v4 network server on a real broker for agent tests (until `ferry lns-sim` exists): takes the
 * agent's `command/down` JSON, hands the frame to a test node (seeded loss on DataFragments only), acknowledges
 * it with `event/txack`, and publishes the node's answers as `event/up`. No airtime or Class A timing here: the
 * agent's scheduler paces the downlinks.
 */
export interface Player {
  client: MqttClient;
  nodes: Map<string, TestLoraNode>;
  /** Every downlink the agent sent: devEui (or `group:<McAddr hex>`), fPort, bytes, in order. */
  downlinks: { devEui: string; fPort: number; bytes: Buffer; at: number }[];
  /** Publishes the node's frames as uplinks. */
  uplink(devEui: string, frames: Frame[]): Promise<void>;
  /** Largest unicast FRMPayload the played LNS transmits; bigger frames are refused with `log` DOWNLINK_PAYLOAD_SIZE. */
  maxPayload: number;
  /** Delivery filter: return false to drop a downlink (loss, a node that is off). */
  deliver: (devEui: string, fPort: number, bytes: Buffer) => boolean;
  close(): Promise<void>;
}

export async function startPlayer(brokerUrl: string, appId: string, dr: number, frequencyHz: number): Promise<Player> {
  const client = await mqtt.connectAsync(brokerUrl, { protocolVersion: 4, reconnectPeriod: 0, clientId: 'lns-player' });
  let fCnt = 0;
  const player: Player = {
    client,
    nodes: new Map(),
    downlinks: [],
    deliver: () => true,
    maxPayload: 242,
    async uplink(devEui, frames) {
      for (const f of frames) {
        const body = {
          deduplicationId: `d${fCnt}`, time: new Date().toISOString(), deviceInfo: { tenantId: 't', applicationId: appId, devEui }, devAddr: '01020304', adr: true,
          dr, fCnt: fCnt++, fPort: f.fPort, confirmed: false, data: Buffer.from(f.bytes).toString('base64'), rxInfo: [{ gatewayId: 'g1', rssi: -80, snr: 7.5 }],
          txInfo: { frequency: frequencyHz, modulation: { lora: { bandwidth: 125000, spreadingFactor: 7, codeRate: 'CR_4_5' } } },
        };
        await client.publishAsync(`application/${appId}/device/${devEui}/event/up`, JSON.stringify(body));
      }
    },
    close: () => client.endAsync(),
  };
  await client.subscribeAsync([`application/${appId}/device/+/command/down`, `application/${appId}/multicast-group/+/command/down`]);
  client.on('message', (topic, payload) => {
    if (topic.split('/')[2] === 'multicast-group') {
      // The multicast stand-in (docs/lora.md §7.1): every node in the group with McAddr = groupId hears it.
      const groupId = topic.split('/')[3];
      const cmd = JSON.parse(payload.toString()) as { fPort: number; data: string };
      const bytes = Buffer.from(cmd.data, 'base64');
      player.downlinks.push({ devEui: `group:${groupId}`, fPort: cmd.fPort, bytes, at: Date.now() });
      for (const [devEui, node] of player.nodes) {
        if (node.mcAddr === null || node.mcAddr.toString(16).padStart(8, '0') !== groupId || !player.deliver(devEui, cmd.fPort, bytes)) continue;
        void player.uplink(devEui, node.onDown(cmd.fPort, bytes));
      }
      return;
    }
    const devEui = topic.split('/')[3];
    const cmd = JSON.parse(payload.toString()) as { devEui: string; fPort: number; data: string; id: string };
    const bytes = Buffer.from(cmd.data, 'base64');
    player.downlinks.push({ devEui, fPort: cmd.fPort, bytes, at: Date.now() });
    if (bytes.length > player.maxPayload) {
      const log = { deviceInfo: { devEui }, level: 'ERROR', code: 'DOWNLINK_PAYLOAD_SIZE', description: `${bytes.length} > ${player.maxPayload}`, context: { queue_item_id: cmd.id } };
      void client.publishAsync(`application/${appId}/device/${devEui}/event/log`, JSON.stringify(log));
      return;
    }
    void client.publishAsync(`application/${appId}/device/${devEui}/event/txack`, JSON.stringify({ deviceInfo: { devEui }, downlinkId: 1, queueItemId: cmd.id, fCntDown: 1 }));
    const node = player.nodes.get(devEui);
    if (!node || !player.deliver(devEui, cmd.fPort, bytes)) return;
    void player.uplink(devEui, node.onDown(cmd.fPort, bytes));
  });
  return player;
}

/** True for a TS004 DataFragment frame. */
export function isFragment(fPort: number, bytes: Uint8Array): boolean {
  if (fPort !== TS004_PORT) return false;
  try {
    return decodeRequests(bytes)[0]?.cmd === 'DataFragment';
  } catch {
    return false;
  }
}
