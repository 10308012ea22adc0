import { createRequire } from 'node:module';
import type Pino from 'pino';
import type PinoPretty from 'pino-pretty';
import type { Options } from 'yargs';
import type { LogFields, LogFn, LogLevel } from '../shared/log.js';
import { UsageError } from './common.js';

export type LogFormat = 'json' | 'pretty';
const THRESHOLDS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogThreshold = (typeof THRESHOLDS)[number];

/** `--log-format` and `--log-level` for every long-running command. */
export const logOptions = {
  'log-format': { choices: ['json', 'pretty'] as const, describe: 'log lines on stderr: JSON (one object per line) or readable text; default: pretty on a terminal, JSON otherwise' },
  'log-level': { choices: THRESHOLDS, default: 'info' as const, describe: 'least severe level logged' },
} satisfies Record<string, Options>;

export interface LogArgs {
  'log-format'?: LogFormat;
  'log-level'?: LogThreshold;
  /** The older `--json` of agent/broker/gateway: JSON log lines. */
  json?: boolean;
}

/**
 * The format a command logs in: what the flag says, else JSON when stderr (where logs go) is not a
 * terminal (journald, files, pipes: something will parse it) and readable text when a person watches.
 */
export function logFormat(args: LogArgs, stream: { isTTY?: boolean } = process.stderr): LogFormat {
  if (args['log-format']) return args['log-format'];
  if (args.json) return 'json';
  return stream.isTTY ? 'pretty' : 'json';
}

/**
 * A pino logger on stderr behind the LogFn callback. stderr, not stdout: stdout carries a command's
 * own output (tables, --json results), and the process helpers of tests and benches read logs there.
 * Writes are synchronous so the line before an exit is never lost.
 */
export function makeLogger(args: LogArgs = {}, fd = 2): LogFn {
  const format = logFormat(args, fd === 2 ? process.stderr : process.stdout);
  const level = args['log-level'] ?? 'info';
  if (!THRESHOLDS.includes(level)) throw new UsageError(`--log-level must be one of ${THRESHOLDS.join(', ')}, not ${level}`);
  // Loaded on first use: every ferry command imports this module, few of them log (start-up time).
  const require = createRequire(import.meta.url);
  const pino = require('pino') as typeof Pino;
  let logger: Pino.Logger;
  if (format === 'pretty') {
    const pretty = require('pino-pretty') as typeof PinoPretty;
    const stream = pretty({ destination: fd, sync: true, colorize: Boolean(process.stderr.isTTY), translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true });
    logger = pino({ level, base: undefined }, stream);
  } else {
    logger = pino(
      { level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
      pino.destination({ fd, sync: true }),
    );
  }
  return (lvl: LogLevel, msg: string, fields?: LogFields) => {
    if (fields) logger[lvl](fields, msg);
    else logger[lvl](msg);
  };
}
