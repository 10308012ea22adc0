import type { Aedes, AedesPublishPacket, Client } from 'aedes';
import type { LogFn } from './plugin.js';

/**
 * Node presence: retained `online`/`offline` on `P/d/<id>/presence`, QoS 1, published by the broker
 * itself. Agents subscribe to it and resume a node's transfer the moment it comes back, no polling.
 *
 * The one subtlety is takeover: when a node reconnects before its old connection is gone, the old
 * connection's disconnect must not overwrite the new `online`. On one broker aedes has already
 * registered the new client under the same id; across brokers sharing an mqemitter (Redis), aedes
 * announces new clients on `$SYS/<broker>/new/clients` and closes its own copy, so we note those ids.
 */
export class PresencePublisher {
  private readonly movedAway = new Set<string>();
  private readonly onNewClient: (packet: AedesPublishPacket, cb: () => void) => void;

  constructor(
    private readonly aedes: Aedes,
    private readonly prefix: string,
    private readonly log: LogFn,
  ) {
    this.onNewClient = (packet, cb) => {
      const brokerId = packet.topic.split('/')[1];
      if (brokerId !== aedes.id) this.movedAway.add(packet.payload.toString());
      cb();
    };
    (aedes as unknown as { mq: { on(t: string, f: unknown): void } }).mq.on('$SYS/+/new/clients', this.onNewClient);
  }

  connected(_client: Client, id: string): void {
    this.movedAway.delete(id);
    this.publish(id, 'online');
  }

  disconnected(client: Client, id: string): void {
    // Deferred one turn: a takeover's new registration and the remote notice both land by then.
    setImmediate(() => {
      if (this.aedes.closed) return;
      if (this.movedAway.delete(id)) return;
      const current = (this.aedes as unknown as { clients: Record<string, Client | undefined> }).clients[id];
      if (current && current !== client && !current.closed) return;
      this.publish(id, 'offline');
    });
  }

  close(): void {
    (this.aedes as unknown as { mq: { removeListener(t: string, f: unknown): void } }).mq.removeListener('$SYS/+/new/clients', this.onNewClient);
  }

  private publish(id: string, state: 'online' | 'offline'): void {
    const topic = `${this.prefix}/d/${id}/presence`;
    this.aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(state), qos: 1, retain: true, dup: false }, (err) => {
      if (err) this.log('warn', `presence ${state} for ${id} not published: ${err.message}`);
    });
  }
}
