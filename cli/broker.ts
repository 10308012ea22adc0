import type { CommandModule } from 'yargs';
import { IdentityStore } from '../broker/identity-store.js';
import { parseLimitFlags, type LimitsInput } from '../broker/limits.js';
import { startBroker, type TlsListenerOptions } from '../broker/server.js';
import { prefixOption, untilSignal, UsageError } from './common.js';
import { logOptions, makeLogger, type LogArgs } from './logger.js';
import { lockDataDir, type DataDirLock } from './data-dir-lock.js';
import { readFileOrFail } from './key-files.js';
import { checkRedis, redisUrl, watchRedis } from './redis-check.js';
import { isListenError, listenProblem } from './startup.js';
import { listenPort } from './validate.js';

export const DEFAULT_DATA_DIR = './ferry-data';

/** Takes the data dir's broker lock: one broker (or gateway) per broker state. */
export function lockBrokerState(dataDir: string, command: string): DataDirLock {
  return lockDataDir(dataDir, 'broker', command);
}

interface Args extends LogArgs {
  port: number;
  host: string;
  'data-dir': string;
  'allow-anonymous': boolean;
  prefix: string;
  redis?: string;
  'tls-port'?: number;
  'tls-key'?: string;
  'tls-cert'?: string;
  'tls-ca'?: string;
  'require-client-cert': boolean;
  limit: string[];
  json: boolean;
}

/** `--limit NAME=VALUE`, shared by `ferry broker` and `ferry gateway` (docs/broker.md lists every name). */
export const limitOption = {
  type: 'string',
  array: true,
  default: [] as string[],
  describe: 'override a broker limit, e.g. --limit frames.maxPacket=70k --limit retained.node=64k (repeatable; see docs/broker.md)',
} as const;

export function limitsFromFlags(flags: readonly string[] | undefined): LimitsInput {
  try {
    return parseLimitFlags(flags ?? []);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** `ferry broker`: aedes with the ferry plugin (identities, ACL, limits, presence). */
export const brokerCommand: CommandModule<object, Args> = {
  command: 'broker',
  describe: 'run the MQTT broker with ferry identities, permissions, limits and presence',
  builder: (y) =>
    y.options({
      port: { type: 'number', default: 1883, describe: 'MQTT listen port' },
      host: { type: 'string', default: '0.0.0.0', describe: 'listen address' },
      'data-dir': { type: 'string', default: DEFAULT_DATA_DIR, describe: 'directory holding identities.sqlite (see ferry devices/agents/operators); one broker at a time unless --redis (locked)' },
      'allow-anonymous': { type: 'boolean', default: false, describe: 'admit clients without a username (never to ferry topics)' },
      prefix: prefixOption,
      redis: { type: 'string', describe: 'share clients with other brokers through this Redis, e.g. redis://127.0.0.1:6379' },
      'tls-port': { type: 'number', describe: 'also listen for MQTT over TLS on this port' },
      'tls-key': { type: 'string', describe: 'TLS server key (PEM)' },
      'tls-cert': { type: 'string', describe: 'TLS server certificate (PEM)' },
      'tls-ca': { type: 'string', describe: 'CA for client certificates: a verified certificate CN is the identity' },
      'require-client-cert': { type: 'boolean', default: false, describe: 'refuse TLS clients without a valid certificate' },
      limit: limitOption,
      json: { type: 'boolean', default: false, describe: 'log JSON lines (the same as --log-format json)' },
      ...logOptions,
    }) as never,
  handler: async (argv) => {
    listenPort(argv.port, 'port');
    listenPort(argv['tls-port'], 'tls-port');
    if (argv.redis !== undefined) redisUrl(argv.redis);
    let tls: TlsListenerOptions | undefined;
    if (argv['tls-port'] !== undefined) {
      if (!argv['tls-key'] || !argv['tls-cert']) throw new UsageError('--tls-port needs --tls-key and --tls-cert');
      tls = {
        port: argv['tls-port'],
        key: readFileOrFail(argv['tls-key'], '--tls-key'),
        cert: readFileOrFail(argv['tls-cert'], '--tls-cert'),
        ca: argv['tls-ca'] ? readFileOrFail(argv['tls-ca'], '--tls-ca') : undefined,
        requireClientCert: argv['require-client-cert'],
      };
    }
    const limits = limitsFromFlags(argv.limit);
    const log = makeLogger(argv);
    // Listening before the first log line: a reader that acts on a line may signal at once.
    const signal = untilSignal();
    // With --redis the broker's state is in Redis and brokers that share it may share a data dir
    // (docs/broker.md, scale-out); without, the state is this process's alone.
    const lock = argv.redis === undefined ? lockBrokerState(argv['data-dir'], 'broker') : undefined;
    if (lock?.tookOverFrom !== undefined) log('warn', `took over the lock of pid ${lock.tookOverFrom}, which is gone (${lock.file})`);
    if (argv.redis !== undefined) await checkRedis(argv.redis);
    const store = IdentityStore.open(argv['data-dir']);
    const broker = await startBroker({
      port: argv.port,
      host: argv.host,
      redis: argv.redis,
      // Without Redis, retained releases and statuses are kept in <data-dir>/retained.sqlite.
      retainedDir: argv['data-dir'],
      tls,
      ferry: { store, prefix: argv.prefix, allowAnonymous: argv['allow-anonymous'], log, limits },
    }).catch((err: unknown) => {
      throw isListenError(err) ? new Error(listenProblem(err, argv.host)) : err;
    });
    if (argv.redis !== undefined) watchRedis(broker.aedes, argv.redis, log);
    const counts = ['node', 'agent', 'operator'].map((r) => `${store.list(r as 'node').filter((i) => !i.revokedAt).length} ${r}s`).join(', ');
    log('info', `ferry broker on ${argv.host}:${broker.port}${broker.tlsPort !== undefined ? `, TLS on ${broker.tlsPort}` : ''}; identities in ${store.file} (${counts}); anonymous ${argv['allow-anonymous'] ? 'allowed' : 'refused'}${argv.redis ? `; sharing through ${argv.redis}` : ''}`);
    await signal;
    await broker.close();
    store.close();
    lock?.release();
  },
};
