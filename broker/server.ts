import net from 'node:net';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { Aedes, type AedesOptions } from 'aedes';
import './packet-numbers.js';
import { guardFrames } from './frame-guard.js';
import { TokenBucket } from '../shared/token-bucket.js';
import { throttled } from './throttled-log.js';
import { installFerryPlugin, type FerryPlugin, type FerryPluginOptions, type LogFn } from './plugin.js';
import { redisBackends, type RedisBackends } from './redis.js';
import { retainedStore, type RetainedStore } from './retained-store.js';

/**
 * A running ferry broker: aedes behind a TCP listener. Sockets get TCP_NODELAY because ferry's traffic
 * is many small control messages (acks, hellos) interleaved with chunks; Nagle would hold each ack
 * back for up to one RTT and stall the transfer window.
 *
 * Without `ferry` options this is a plain aedes (anonymous, no ACL): what unit tests of other parts
 * use. With `ferry` the plugin of broker/plugin.ts is installed (identities, ACL, limits, presence),
 * and every accepted socket gets the frame guard (packet size caps from the fixed header, see
 * broker/frame-guard.ts) and counts against the caps on connections not yet authenticated.
 */
export interface RunningBroker {
  aedes: Aedes;
  server: net.Server;
  port: number;
  url: string;
  /** The ferry plugin, when `ferry` options were given. */
  plugin?: FerryPlugin;
  /** The TLS listener's port and URL, when `tls` options were given. */
  tlsPort?: number;
  tlsUrl?: string;
  close(): Promise<void>;
}

export interface TlsListenerOptions {
  port?: number;
  key: string | Buffer;
  cert: string | Buffer;
  /** CA that signs client certificates. With it, a verified client certificate's CN is the identity. */
  ca?: string | Buffer;
  /** Refuse TLS clients without a valid certificate (default false: they may use a password instead). */
  requireClientCert?: boolean;
}

export interface BrokerOptions {
  port?: number;
  host?: string;
  /** Extra aedes options (persistence, mq, ...); ferry's plugin installs its hooks on the instance. */
  aedes?: AedesOptions;
  /** Called with the aedes instance before the listener opens: where plugins attach. */
  setup?: (aedes: Aedes) => void | Promise<void>;
  /** Install the ferry plugin with these options. */
  ferry?: FerryPluginOptions;
  /** Share clients with other brokers through this Redis (redis://host:port[/db]). */
  redis?: string;
  /** Also listen for MQTT over TLS. */
  tls?: TlsListenerOptions;
  /**
   * Keep retained messages in SQLite in this data dir (`retained.sqlite`) so they survive a restart.
   * Ignored with `redis`, which persists them itself.
   */
  retainedDir?: string;
}

export async function startBroker(opts: BrokerOptions = {}): Promise<RunningBroker> {
  let backends: RedisBackends | undefined;
  if (opts.redis) backends = redisBackends(opts.redis);
  const retained: RetainedStore | undefined = !opts.redis && opts.retainedDir ? retainedStore(opts.retainedDir) : undefined;
  const persistence = retained ? { persistence: retained.persistence } : {};
  const aedes = await Aedes.createBroker({ ...opts.aedes, ...persistence, ...backends?.aedes });
  const plugin = opts.ferry ? installFerryPlugin(aedes, opts.ferry) : undefined;
  if (opts.setup) await opts.setup(aedes);
  const sockets = new Set<net.Socket>();
  const admission = plugin ? pendingAdmission(plugin, throttled(opts.ferry?.log)) : undefined;
  const accept = (socket: net.Socket) => {
    socket.setNoDelay(true);
    if (admission && !admission(socket)) return;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    aedes.handle(socket);
  };
  const server = net.createServer(accept);
  const host = opts.host ?? '127.0.0.1';
  const urlHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  const port = await listen(server, opts.port ?? 0, host);
  let tlsServer: tls.Server | undefined;
  let tlsPort: number | undefined;
  if (opts.tls) {
    tlsServer = tls.createServer(
      {
        key: opts.tls.key,
        cert: opts.tls.cert,
        ca: opts.tls.ca,
        requestCert: opts.tls.ca !== undefined,
        rejectUnauthorized: opts.tls.requireClientCert ?? false,
      },
      accept,
    );
    // A failed handshake is the client's problem; it must not reach the process as an error.
    tlsServer.on('tlsClientError', (err) => plugin && opts.ferry?.log?.('warn', `TLS handshake refused: ${err.message}`));
    tlsPort = await listen(tlsServer, opts.tls.port ?? 0, host);
  }
  return {
    aedes,
    server,
    port,
    url: `mqtt://${urlHost}:${port}`,
    plugin,
    tlsPort,
    tlsUrl: tlsPort === undefined ? undefined : `mqtts://${urlHost}:${tlsPort}`,
    async close() {
      // Stop accepting, drop live clients, then close aedes: server.close alone waits for every client.
      await Promise.all(
        [server, tlsServer].filter((s): s is net.Server => s !== undefined).map(
          (s) => new Promise<void>((resolve) => s.close(() => resolve())),
        ).concat([Promise.resolve().then(() => sockets.forEach((s) => s.destroy()))]),
      );
      // Let aedes finish the disconnects (each may still publish a retained `offline`) before its
      // backends go away; bounded, so a stuck client cannot hold the shutdown.
      await untilNoClients(aedes, 2000);
      plugin?.close();
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await backends?.close();
      retained?.close();
    },
  };
}

/**
 * Admission of a new socket: refused when its address opens connections faster than its rate, or
 * when too many connections are still unauthenticated (in total or from its address); otherwise put
 * behind the frame guard and counted until it authenticates or closes. Returns false for a refused
 * (destroyed) socket. Refusing at accept costs far less than letting aedes parse and answer.
 */
function pendingAdmission(plugin: FerryPlugin, log: LogFn): (socket: net.Socket) => boolean {
  const { frames, pending, connections } = plugin.limits;
  const perAddress = new Map<string, number>();
  const rates = new Map<string, TokenBucket>();
  let total = 0;
  return (socket) => {
    const addr = socket.remoteAddress ?? 'unknown';
    let bucket = rates.get(addr);
    if (!bucket) {
      bucket = new TokenBucket({ rate: connections.perAddressRate, burst: connections.perAddressBurst }, performance.now());
      rates.set(addr, bucket);
      // Forgetting an address only hands it a full bucket again: the table may be bounded freely.
      while (rates.size > connections.maxAddresses) rates.delete(rates.keys().next().value as string);
    }
    if (!bucket.take(performance.now())) {
      log('warn', `connection from ${addr} refused: more than ${connections.perAddressRate} new connections/s from this address`);
      plugin.refusedConnection('rate');
      socket.destroy();
      return false;
    }
    const mine = perAddress.get(addr) ?? 0;
    if (total >= pending.total || mine >= pending.perAddress) {
      log('warn', `connection from ${addr} refused: ${total >= pending.total ? `${total} connections` : `${mine} connections from this address`} not yet authenticated`);
      plugin.refusedConnection('pending');
      socket.destroy();
      return false;
    }
    total++;
    perAddress.set(addr, mine + 1);
    let counted = true;
    const uncount = () => {
      if (!counted) return;
      counted = false;
      total--;
      const left = (perAddress.get(addr) ?? 1) - 1;
      if (left > 0) perAddress.set(addr, left);
      else perAddress.delete(addr);
    };
    socket.on('close', uncount);
    guardFrames(socket, frames, {
      refused: (reason) => {
        plugin.refusedConnection('frame');
        log('warn', `connection from ${addr} closed: ${reason}`);
      },
      authenticated: uncount,
    });
    return true;
  };
}

function untilNoClients(aedes: Aedes, ms: number): Promise<void> {
  if (aedes.connectedClients === 0) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      aedes.off('clientDisconnect', check);
      setImmediate(resolve);
    };
    const check = () => aedes.connectedClients === 0 && done();
    const timer = setTimeout(done, ms);
    aedes.on('clientDisconnect', check);
  });
}

function listen(server: net.Server, port: number, host: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}
