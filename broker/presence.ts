import type { Aedes, AedesPublishPacket, Client, Subscription } from 'aedes';
import { filtersIntersect } from './acl.js';
import type { LogFn } from './plugin.js';

/**
 * Node presence: retained `online`/`offline` on `P/d/<id>/presence`, QoS 1, published by the broker
 * itself. Agents subscribe to it and resume a node's transfer the moment it comes back, no polling.
 *
 * `online` means "a message sent to the node's dn topic now reaches it", not merely "connected": a
 * node with a clean session subscribes after its CONNACK, and an agent woken at CONNACK would send
 * its resume Offer into the void. So `online` is published once the node's connection holds a
 * subscription covering its dn topic: at CONNACK for a restored persistent session, otherwise when
 * that SUBSCRIBE has been registered. Either way before the node can read its SUBACK and send a
 * Hello, so an agent hears `online` first.
 *
 * The other subtlety is takeover: when a node reconnects before its old connection is gone, the old
 * connection's disconnect must not overwrite the new `online`. On one broker aedes has already
 * registered the new client under the same id; across brokers sharing an mqemitter (Redis), aedes
 * announces new clients on `$SYS/<broker>/new/clients` and closes its own copy, so we note those ids.
 */
export class PresencePublisher {
  private readonly movedAway = new Set<string>();
  /** Connections already announced online (one announcement per connection). */
  private readonly announced = new WeakSet<Client>();
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

  /** The node's CONNACK went out (accepted). A restored persistent session may already listen on its dn topic. */
  connected(client: Client, id: string): void {
    this.movedAway.delete(id);
    const subs = (client as unknown as { subscriptions?: Record<string, unknown> }).subscriptions ?? {};
    if (Object.keys(subs).some((f) => this.coversDn(f, id))) this.announce(client, id);
  }

  /** The node's SUBSCRIBE was registered (aedes' `subscribe` event; refused filters carry qos 128). */
  subscribed(client: Client, id: string, subs: Subscription[]): void {
    // Before CONNACK (restored subscriptions) `connected` decides; after it, the first dn filter does.
    if (!(client as unknown as { connackSent?: boolean }).connackSent) return;
    if (subs.some((s) => (s.qos as number) !== 128 && this.coversDn(s.topic, id))) this.announce(client, id);
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

  private coversDn(filter: string, id: string): boolean {
    return filtersIntersect(filter.split('/'), `${this.prefix}/d/${id}/dn`.split('/'));
  }

  private announce(client: Client, id: string): void {
    if (this.announced.has(client)) return;
    this.announced.add(client);
    this.publish(id, 'online');
  }

  private publish(id: string, state: 'online' | 'offline'): void {
    const topic = `${this.prefix}/d/${id}/presence`;
    this.aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(state), qos: 1, retain: true, dup: false }, (err) => {
      if (err) this.log('warn', `presence ${state} for ${id} not published: ${err.message}`);
    });
  }
}
