import { Redis } from 'ioredis';
import { UsageError } from './common.js';

/**
 * Startup checks of the long-running commands, and the words for what the operating system says
 * when they fail: "port 1883 is in use", not "listen EADDRINUSE: address already in use 0.0.0.0:1883".
 */

const NET_ERRORS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host name lookup failed (no DNS yet?)',
  ETIMEDOUT: 'timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
};

/** "connection refused", "host not found", … or the error's own message. */
export function netProblem(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return (e.code && NET_ERRORS[e.code]) ?? e.message;
}

/** Why a listener could not open on host:port, in words (err from net.Server 'error'). */
export function listenProblem(err: unknown, host: string): string {
  const e = err as NodeJS.ErrnoException & { port?: number };
  const port = e.port ?? '?';
  switch (e.code) {
    case 'EADDRINUSE':
      return `port ${port} is in use${host === '0.0.0.0' || host === '::' ? '' : ` on ${host}`}`;
    case 'EACCES':
    case 'EPERM':
      return `port ${port} needs privileges (below 1024: root or CAP_NET_BIND_SERVICE)`;
    case 'EADDRNOTAVAIL':
      return `--host ${host} is not an address of this machine`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `--host ${host}: no such host`;
    default:
      return e.message;
  }
}

/** A listener error (it has a syscall 'listen' or a bind code) rather than something else failing. */
export function isListenError(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException;
  return e?.syscall === 'listen' || e?.syscall === 'bind' || e?.code === 'EADDRINUSE' || e?.code === 'EADDRNOTAVAIL';
}

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
    host: u.hostname,
    port: u.port ? Number(u.port) : 6379,
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    db: u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
    tls: u.protocol === 'rediss:' ? {} : undefined,
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

/**
 * A one-shot client's work against a broker (publish a release, read statuses), its connection
 * failure put in words: "cannot reach the broker at mqtt://…: connection refused".
 */
export async function reachingBroker<T>(url: string, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.syscall === 'connect' || e.syscall === 'getaddrinfo' || (e.code && NET_ERRORS[e.code])) throw new Error(`cannot reach the broker at ${url}: ${netProblem(e)}`);
    if (/^Connection refused: /.test(e.message)) throw new Error(`the broker at ${url} refused the connection: ${e.message.slice('Connection refused: '.length)}`);
    throw err;
  }
}
