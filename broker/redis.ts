import { Redis } from 'ioredis';
import MQEmitterRedis from 'mqemitter-redis';
import aedesPersistenceRedis from 'aedes-persistence-redis';
import type { AedesOptions } from 'aedes';

/**
 * Scale-out backends: every broker process that points at the same Redis shares message routing
 * (mqemitter-redis pub/sub) and state (aedes-persistence-redis: retained messages, sessions, wills).
 * A client on broker A then receives what is published on broker B, and retained presence, status
 * and releases are the same everywhere.
 */
export interface RedisBackends {
  aedes: Pick<AedesOptions, 'mq' | 'persistence'>;
  /** aedes.close() closes the mq but leaves the persistence connections open; this closes them. */
  close(): Promise<void>;
}

export function redisBackends(url: string): RedisBackends {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`--redis must be a URL like redis://127.0.0.1:6379, got "${url}"`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') throw new Error(`--redis must use redis:// or rediss://, got "${url}"`);
  const mq = MQEmitterRedis({ connectionString: url });
  // Our own connection, so close() can QUIT it gracefully: the persistence's destroy() disconnects at
  // once and fails the commands still queued (a last retained presence write) as unhandled rejections.
  const conn = new Redis(redisOptions(parsed));
  // ioredis reconnects by itself; without a listener its 'error' event would end the process.
  conn.on('error', () => {});
  const persistence = aedesPersistenceRedis({ conn });
  return {
    aedes: { mq, persistence },
    async close() {
      await conn.quit().catch(() => {});
      await persistence.destroy();
    },
  };
}

/** ioredis connection options from a redis:// or rediss:// URL (user, password, db, TLS). */
export function redisOptions(u: URL) {
  return {
    host: u.hostname,
    port: u.port ? Number(u.port) : 6379,
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    db: u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
    tls: u.protocol === 'rediss:' ? {} : undefined,
  };
}
