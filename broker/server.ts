import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Aedes, type AedesOptions } from 'aedes';

/**
 * A running ferry broker: aedes behind a TCP listener. Sockets get TCP_NODELAY because ferry's traffic
 * is many small control messages (acks, hellos) interleaved with chunks; Nagle would hold each ack
 * back for up to one RTT and stall the transfer window.
 */
export interface RunningBroker {
  aedes: Aedes;
  server: net.Server;
  port: number;
  url: string;
  close(): Promise<void>;
}

export interface BrokerOptions {
  port?: number;
  host?: string;
  /** Extra aedes options (persistence, mq, ...); ferry's plugin installs its hooks on the instance. */
  aedes?: AedesOptions;
  /** Called with the aedes instance before the listener opens: where plugins attach. */
  setup?: (aedes: Aedes) => void | Promise<void>;
}

export async function startBroker(opts: BrokerOptions = {}): Promise<RunningBroker> {
  const aedes = await Aedes.createBroker(opts.aedes ?? {});
  if (opts.setup) await opts.setup(aedes);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    aedes.handle(socket);
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    aedes,
    server,
    port,
    url: `mqtt://${host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host}:${port}`,
    async close() {
      // Stop accepting, drop live clients, then close aedes: server.close alone waits for every client.
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
    },
  };
}
