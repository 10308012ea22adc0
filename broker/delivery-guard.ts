import type { Client } from 'aedes';

/**
 * Per-subscriber isolation: a client that stops reading costs only itself.
 *
 * What blocks in aedes 1.2: `lib/write.js` writes each outgoing packet to the client's socket and,
 * when `write()` returns false (the socket's buffer is above its high-water mark), waits for that
 * socket's `drain` before calling back (`client.waitForDrain`). That callback is the subscriber's
 * delivery callback in mqemitter, and the publisher's handler (`lib/handlers/publish.js` →
 * `broker.publish` → `mq.emit`) only completes when every matching delivery has called back; the
 * publisher's connection reads its next packet only then. So one subscriber whose socket never drains
 * stops the publishing connection (the agent, which talks to every node) until aedes' drainTimeout
 * (60 s) destroys the stuck socket, and its `concurrency` slots fill meanwhile.
 *
 * The guard replaces `waitForDrain` on each client: the write is already buffered in the socket, so
 * the delivery is reported done at once and nobody else waits. The backlog of a non-reading client
 * is bounded instead: QoS 0 deliveries are dropped while its socket holds more than
 * `dropQos0Above` bytes (the plugin's authorizeForward checks {@link backlogOf} and counts what it
 * forwards with {@link noteForwarded}); above
 * `maxBacklog` bytes, or when its socket has not drained for `drainTimeoutMs`, it is disconnected.
 */
export interface DeliveryLimits {
  /** Socket backlog (bytes) above which QoS 0 deliveries to the client are dropped. */
  dropQos0Above: number;
  /** Socket backlog (bytes) above which the client is disconnected (QoS 1 and 2 are never dropped). */
  maxBacklog: number;
  /** A client whose socket stays over its high-water mark this long is disconnected. */
  drainTimeoutMs: number;
}

interface Conn {
  writableLength: number;
  destroyed: boolean;
  write(...args: unknown[]): boolean;
  once(ev: 'drain', f: () => void): unknown;
  removeListener(ev: 'drain', f: () => void): unknown;
  destroy(err?: Error): void;
}

/** Bytes forwarded to a client but not yet handed to its socket (aedes writes on the next turn). */
const unwritten = new WeakMap<Client, { bytes: number }>();

/**
 * What a client has not read yet, in bytes: its socket's backlog plus deliveries already forwarded
 * but not yet written. The second part matters: aedes decides a whole burst of deliveries before
 * it writes any, so the socket alone would show nothing until the burst has been queued.
 */
export function backlogOf(client: Client): number {
  return (client.conn as unknown as Conn).writableLength + Math.max(0, unwritten.get(client)?.bytes ?? 0);
}

/**
 * Counts a delivery that authorizeForward let through, at its exact size on the wire (fixed header,
 * topic, packet id, payload), so that the writes that follow cancel it out byte for byte.
 */
export function noteForwarded(client: Client, packet: { topic: string; payload: Buffer | string; qos: number }): void {
  const u = unwritten.get(client);
  if (!u) return;
  // aedes downgrades to the QoS of an exact-topic subscription (lib/client.js deliverQoS), as here.
  const sub = packet.qos > 0 ? (client as unknown as { subscriptions: Record<string, { qos?: number } | undefined> }).subscriptions[packet.topic] : undefined;
  const qos = sub && (sub.qos ?? 0) < packet.qos ? (sub.qos ?? 0) : packet.qos;
  const remaining = 2 + Buffer.byteLength(packet.topic) + (qos > 0 ? 2 : 0) + Buffer.byteLength(packet.payload);
  u.bytes += 1 + (remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4) + remaining;
}

/**
 * Installs the guard on one client. `onDisconnect` is told why before the socket is destroyed
 * (for the log); aedes then cleans the client up through its normal close path, reporting the
 * error (marked `logged`) as a clientError.
 */
export function guardDeliveries(client: Client, limits: () => DeliveryLimits, onDisconnect: (why: string) => void): void {
  const conn = client.conn as unknown as Conn;
  const pending = { bytes: 0 };
  unwritten.set(client, pending);
  const write = conn.write.bind(conn);
  conn.write = (...args: unknown[]) => {
    const chunk = args[0] as { length?: number } | undefined;
    pending.bytes = Math.max(0, pending.bytes - (chunk?.length ?? 0));
    return write(...args);
  };
  let timer: NodeJS.Timeout | undefined;
  const drained = () => {
    if (timer) clearTimeout(timer);
    timer = undefined;
  };
  const kill = (why: string) => {
    drained();
    conn.removeListener('drain', drained);
    if (conn.destroyed) return;
    onDisconnect(why);
    conn.destroy(Object.assign(new Error(why), { logged: true }));
  };
  (client as unknown as { waitForDrain(cb: (err: Error | null, c: Client) => void): void }).waitForDrain = (cb) => {
    setImmediate(cb, null, client);
    const l = limits();
    const backlog = conn.writableLength;
    if (backlog > l.maxBacklog) return kill(`outgoing backlog of ${backlog} bytes exceeds ${l.maxBacklog}`);
    if (timer) return;
    conn.once('drain', drained);
    timer = setTimeout(() => kill(`socket did not drain within ${l.drainTimeoutMs} ms`), l.drainTimeoutMs);
    timer.unref();
  };
}
