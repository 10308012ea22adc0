import net from 'node:net';
import type { AddressInfo } from 'node:net';

/**
 * A TCP proxy between MQTT clients and the broker that injects link faults: drop every
 * connection, stall (hold bytes without closing), cut a connection after N bytes, add latency.
 * Real sockets on loopback: the clients under test see exactly what a flaky Wi-Fi link shows them.
 */
export interface FaultProxy {
  port: number;
  url: string;
  /** Bytes moved in each direction since start (client→broker, broker→client). */
  bytes: { up: number; down: number };
  /** Destroys every open connection now (a link drop). */
  dropAll(): void;
  /** Holds traffic in both directions until resume() (a stalled link). */
  stall(): void;
  resume(): void;
  /** The next connection(s) are cut after this many broker→client bytes. */
  cutAfter(bytes: number): void;
  /** Adds this many ms of one-way delay to every piece of data. */
  setDelay(ms: number): void;
  /** Refuse new connections (link down) until allowed again. */
  refuse(on: boolean): void;
  connections(): number;
  close(): Promise<void>;
}

export async function startFaultProxy(target: { host?: string; port: number }): Promise<FaultProxy> {
  const pairs = new Set<{ a: net.Socket; b: net.Socket }>();
  const bytes = { up: 0, down: 0 };
  let stalled = false;
  let delay = 0;
  let cutBudget: number | undefined;
  let refusing = false;
  const held: (() => void)[] = [];

  const forward = (from: net.Socket, to: net.Socket, dir: 'up' | 'down', budget: { left?: number }) => {
    from.on('data', (chunk: Buffer) => {
      const send = () => {
        if (to.destroyed) return;
        let piece = chunk;
        if (dir === 'down' && budget.left !== undefined) {
          if (piece.length >= budget.left) {
            piece = piece.subarray(0, budget.left);
            budget.left = 0;
            bytes[dir] += piece.length;
            to.write(piece, () => {
              to.destroy();
              from.destroy();
            });
            return;
          }
          budget.left -= piece.length;
        }
        bytes[dir] += piece.length;
        to.write(piece);
      };
      const go = () => (delay > 0 ? setTimeout(send, delay) : send());
      if (stalled) held.push(go);
      else go();
    });
  };

  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    client.setNoDelay(true);
    const upstream = net.connect({ host: target.host ?? '127.0.0.1', port: target.port });
    upstream.setNoDelay(true);
    const pair = { a: client, b: upstream };
    pairs.add(pair);
    const budget = { left: cutBudget };
    cutBudget = undefined;
    forward(client, upstream, 'up', {});
    forward(upstream, client, 'down', budget);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
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
    bytes,
    dropAll,
    stall() {
      stalled = true;
    },
    resume() {
      stalled = false;
      for (const f of held.splice(0)) f();
    },
    cutAfter(n) {
      cutBudget = n;
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
