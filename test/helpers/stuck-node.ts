import mqtt, { type MqttClient } from 'mqtt';
import type { Socket } from 'node:net';
import { Capability, decodeDown, encodeMessage, ImageState, MsgType } from '../../shared/messages.js';
import { DEFAULT_PREFIX } from '../../shared/topics.js';

/**
 * A node that stops reading (issue 10 item 2): it says Hello, takes the agent's Offer, acks base 0,
 * then pauses its socket (net.Socket.pause) and keeps acking base 0 every `ackEveryMs` without ever
 * reading again: the agent keeps sending it chunks that pile up in the broker's socket to it.
 */
export interface StuckNode {
  client: MqttClient;
  /** Resolves once the socket is paused (after the first Offer). */
  paused: Promise<void>;
  acks(): number;
  /** Says Hello again (it can still write): the agent answers with an Offer it cannot read. */
  helloAgain(): void;
  stop(): Promise<void>;
}

export async function startStuckNode(o: { url: string; id: string; hw: string; username?: string; password?: string; prefix?: string; ackEveryMs?: number; maxMessage?: number; alsoSubscribe?: string }): Promise<StuckNode> {
  const prefix = o.prefix ?? DEFAULT_PREFIX;
  const up = `${prefix}/d/${o.id}/up`;
  const dn = `${prefix}/d/${o.id}/dn`;
  // keepalive 0: a paused socket never reads a PINGRESP, and the point is to stay connected.
  const client = await mqtt.connectAsync(o.url, { protocolVersion: 4, clientId: o.id, username: o.username, password: o.password, keepalive: 0, reconnectPeriod: 0 });
  await client.subscribeAsync(o.alsoSubscribe ? [dn, o.alsoSubscribe] : dn, { qos: 1 });
  let acks = 0;
  let timer: NodeJS.Timeout | undefined;
  const paused = new Promise<void>((resolve) => {
    client.on('message', (_t, payload) => {
      let msg;
      try {
        msg = decodeDown(payload);
      } catch {
        return;
      }
      if (msg.type !== MsgType.offer || timer) return;
      const session = msg.session;
      const ack = () => {
        acks++;
        client.publish(up, encodeMessage({ type: MsgType.ack, session, base: 0 }), { qos: 0 });
      };
      ack();
      const socket = client.stream as Socket;
      socket.unpipe();
      socket.pause();
      timer = setInterval(ack, o.ackEveryMs ?? 50);
      resolve();
    });
  });
  const hello = () => client.publish(up, encodeMessage({
    type: MsgType.hello, proto: 1, deviceId: o.id, hw: o.hw, version: '0.0.1', digest: Buffer.alloc(32),
    securityVersion: 0, slot: 0, imageState: ImageState.valid, maxMessage: o.maxMessage ?? 64 * 1024, caps: Capability.rollback, window: 64,
  }), { qos: 0 });
  hello();
  return {
    client,
    paused,
    acks: () => acks,
    helloAgain: hello,
    async stop() {
      if (timer) clearInterval(timer);
      client.end(true);
    },
  };
}
