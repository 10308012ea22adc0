import { Redis } from 'ioredis';
import { redisOptions } from '../broker/redis.js';
import { UsageError } from './common.js';
import { netProblem } from './startup.js';

/**
 * `ferry broker --redis`: the URL checked, Redis reached once before the broker starts, and a Redis
 * lost later logged rather than ending the process with an unhandled 'error' event.
 */

/** Parses --redis, naming the flag when it is not a Redis URL. */
export function redisUrl(value: string): URL {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new UsageError(`--redis "${value}" is not a URL like redis://127.0.0.1:6379`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new UsageError(`--redis "${value}" must use redis:// or rediss://`);
  if (!u.hostname) throw new UsageError(`--redis "${value}" names no host`);
  return u;
}

/**
 * Connects to Redis once and PINGs it, so a broker that cannot share through it refuses to start
 * instead of serving clients it cannot route (the Redis clients of the backends retry forever).
 */
export async function checkRedis(value: string, timeoutMs = 5000): Promise<void> {
  const u = redisUrl(value);
  let lastError: Error | undefined;
  const conn = new Redis({
    ...redisOptions(u),
    lazyConnect: true,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  conn.on('error', (err: Error) => {
    lastError = err;
  });
  const where = `Redis at ${u.protocol}//${u.host}${u.pathname.length > 1 ? u.pathname : ''}`;
  try {
    await conn.connect();
    await conn.ping();
  } catch (err) {
    const e = lastError ?? (err as Error);
    throw new Error(/NOAUTH|WRONGPASS|denied/i.test(e.message) ? `${where} refused: ${e.message}` : `cannot reach ${where}: ${netProblem(e)}`);
  } finally {
    conn.disconnect();
  }
}

/**
 * Once running, a lost Redis is logged once per outage (its clients reconnect by themselves) instead
 * of ending the process with an unhandled 'error' event from mqemitter-redis.
 */
export function watchRedis(aedes: unknown, value: string, log: (level: 'info' | 'warn', msg: string) => void): void {
  const state = (aedes as { mq?: { state?: NodeJS.EventEmitter } }).mq?.state;
  if (!state) return;
  const u = redisUrl(value);
  const where = `Redis at ${u.protocol}//${u.host}`;
  let down = false;
  state.on('error', (err: Error) => {
    if (down) return;
    down = true;
    log('warn', `lost ${where} (${netProblem(err)}); messages between brokers wait until it is back`);
  });
  const up = () => {
    if (!down) return;
    down = false;
    log('info', `${where} is back`);
  };
  state.on('pubConnect', up);
  state.on('subConnect', up);
}
