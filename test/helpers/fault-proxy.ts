import { EventEmitter } from 'node:events';
import net from 'node:net';
import type { AddressInfo } from 'node:net';

/**
 * A TCP proxy between MQTT clients and the broker that injects link faults: drop every
 * connection, stall (hold bytes without closing), cut a connection after N bytes, add latency,
 * refuse connections. Real sockets on loopback: the clients under test see exactly what a flaky
 * Wi-Fi link shows them.
 *
 * Directions: `up` is client → broker, `down` is broker → client.
 */
export type Direction = 'up' | 'down';

export interface FaultProxyEvents {
  /** A client connection was accepted and bridged to the broker. */
  connection: [];
  /** A client connection was refused (refuse(true)). */
  refused: [];
  /** A connection was cut by cutAfter, after this many bytes in the cut direction. */
  cut: [number];
}

export interface FaultProxy {
  port: number;
  url: string;
  events: EventEmitter<FaultProxyEvents>;
  /** Bytes moved in each direction since start. */
  bytes: { up: number; down: number };
  /** Destroys every open connection now (a link drop). */
  dropAll(): void;
  /** Holds traffic (both directions by default) until resume(): a stalled link, nothing closes. */
  stall(dir?: Direction | 'both'): void;
  resume(): void;
  /** The next accepted connection is cut after this many bytes in `dir` (default down). */
  cutAfter(bytes: number, dir?: Direction): void;
  /** Adds this many ms of one-way delay to every piece of data. */
  setDelay(ms: number): void;
  /** Refuse new connections (link down) until allowed again; turning it on drops open ones. */
  refuse(on: boolean): void;
  connections(): number;
  close(): Promise<void>;
}

export async function startFaultProxy(target: { host?: string; port: number }): Promise<FaultProxy> {
  const pairs = new Set<{ a: net.Socket; b: net.Socket }>();
  const bytes = { up: 0, down: 0 };
  const events = new EventEmitter<FaultProxyEvents>();
  const stalled = { up: false, down: false };
  let delay = 0;
  let nextCut: { left: number; total: number; dir: Direction } | undefined;
  let refusing = false;
  const held: { dir: Direction; go: () => void }[] = [];

  const forward = (from: net.Socket, to: net.Socket, dir: Direction, cut: { left: number; total: number; dir: Direction } | undefined) => {
    from.on('data', (chunk: Buffer) => {
      const send = () => {
        if (to.destroyed) return;
        let piece = chunk;
        if (cut && cut.dir === dir) {
          if (piece.length >= cut.left) {
            // Deliver exactly up to the cut, then kill both sides: the peer sees a torn packet.
            piece = piece.subarray(0, cut.left);
            bytes[dir] += piece.length;
            cut.left = 0;
            to.write(piece, () => {
              to.destroy();
              from.destroy();
              events.emit('cut', cut.total);
            });
            return;
          }
          cut.left -= piece.length;
        }
        bytes[dir] += piece.length;
        to.write(piece);
      };
      const go = () => (delay > 0 ? setTimeout(send, delay) : send());
      // Order is kept per direction: while anything is held, later data queues behind it.
      if (stalled[dir] || held.some((h) => h.dir === dir)) held.push({ dir, go });
      else go();
    });
  };

  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      events.emit('refused');
      return;
    }
    client.setNoDelay(true);
    const upstream = net.connect({ host: target.host ?? '127.0.0.1', port: target.port });
    upstream.setNoDelay(true);
    const pair = { a: client, b: upstream };
    pairs.add(pair);
    const cut = nextCut;
    nextCut = undefined;
    forward(client, upstream, 'up', cut);
    forward(upstream, client, 'down', cut);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
    events.emit('connection');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const dropAll = () => {
    for (const p of pairs) {
      p.a.destroy();
      p.b.destroy();
    }
    pairs.clear();
  };
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    events,
    bytes,
    dropAll,
    stall(dir = 'both') {
      if (dir === 'both' || dir === 'up') stalled.up = true;
      if (dir === 'both' || dir === 'down') stalled.down = true;
    },
    resume() {
      stalled.up = false;
      stalled.down = false;
      for (const h of held.splice(0)) h.go();
    },
    cutAfter(n, dir = 'down') {
      nextCut = { left: n, total: n, dir };
    },
    setDelay(ms) {
      delay = ms;
    },
    refuse(on) {
      refusing = on;
      if (on) dropAll();
    },
    connections: () => pairs.size,
    async close() {
      dropAll();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
