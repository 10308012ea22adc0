import type { CommandModule } from 'yargs';
import { Agent, type AgentOptions } from '../agent/agent.js';
import { brokerOption, prefixOption, untilSignal, untilSignalOnceStarted, usernameOption, UsageError } from './common.js';
import { checkHttpArgs, httpOptions, maybeStartHttp, type HttpArgs } from './http.js';
import { lockDataDir, type DataDirLock } from './data-dir-lock.js';
import { logOptions, makeLogger, type LogArgs } from './logger.js';
import { lnsOptions, planLns, type LnsArgs } from './lns.js';
import { readTrustKeys } from './key-files.js';
import { PASSWORD, passwordOptions, readSecret, UPSTREAM_PASSWORD, upstreamPasswordOptions } from './secrets.js';
import { brokerUrl, optionalBrokerUrl } from './validate.js';

export interface AgentArgs extends LogArgs, LnsArgs {
  username?: string;
  password?: string;
  'password-file'?: string;
  'data-dir': string;
  upstream?: string;
  'upstream-username'?: string;
  'upstream-password'?: string;
  'upstream-password-file'?: string;
  trust?: string | string[];
  prefix: string;
  'max-concurrent': number;
  'max-chunk': number;
  delta: boolean;
  'delta-margin': number;
  'resend-budget': number;
  'release-timeout': number;
  'auto-offer': boolean;
  json: boolean;
}

/** Flags shared by `ferry agent` and `ferry gateway`. */
export const agentOptions = {
  'data-dir': { type: 'string', demandOption: true, describe: 'directory for the agent state (SQLite) and cached images; one agent at a time (locked)' },
  upstream: { type: 'string', describe: 'upstream broker URL for releases and status (nodes stay on the local broker)' },
  'upstream-username': { type: 'string', describe: 'username on the upstream broker' },
  ...upstreamPasswordOptions,
  trust: { type: 'string', describe: 'operator public key file(s) (operator.pub): refuse releases they do not sign (nodes check anyway)' },
  prefix: prefixOption,
  'max-concurrent': { type: 'number', default: 16, describe: 'transfers running at once' },
  'max-chunk': { type: 'number', default: 16384, describe: 'largest chunk in bytes, whatever a node could take' },
  delta: { type: 'boolean', default: true, describe: 'send delta patches to nodes that can apply them (--no-delta: full images only)' },
  'delta-margin': { type: 'number', default: 0.2, describe: 'send a patch only when it is at least this fraction smaller than the image (0 to below 1)' },
  'resend-budget': { type: 'number', default: 4, describe: 'chunk resends per node per second, in node windows (bounds what Hellos and Acks can make the agent resend)' },
  'release-timeout': { type: 'number', default: 300, describe: 'seconds to wait for all parts of a release after its manifest before dropping it' },
  'auto-offer': { type: 'boolean', default: false, describe: 'offer every new release to every node of its class at once, without a rollout (default: releases go out only through `ferry rollout start`)' },
  json: { type: 'boolean', default: false, describe: 'log JSON lines (the same as --log-format json)' },
  ...logOptions,
  ...lnsOptions,
} as const;

export function validateAgentArgs(argv: AgentArgs): void {
  if (!Number.isInteger(argv['max-concurrent']) || argv['max-concurrent'] < 1) throw new UsageError(`--max-concurrent must be a positive integer, got ${argv['max-concurrent']}`);
  if (!Number.isInteger(argv['max-chunk']) || argv['max-chunk'] < 64) throw new UsageError(`--max-chunk must be an integer >= 64, got ${argv['max-chunk']}`);
  const margin = argv['delta-margin'];
  if (!(margin >= 0 && margin < 1)) throw new UsageError(`--delta-margin must be at least 0 and below 1, got ${margin}`);
  if (!(argv['resend-budget'] > 0)) throw new UsageError(`--resend-budget must be a positive number of windows per second, got ${argv['resend-budget']}`);
  if (!(argv['release-timeout'] > 0)) throw new UsageError(`--release-timeout must be a positive number of seconds, got ${argv['release-timeout']}`);
}

/** Everything the agent needs but its own broker link, checked and read before anything starts. */
export type AgentPlan = Omit<AgentOptions, 'brokerUrl' | 'username' | 'password'>;

export function planAgent(argv: AgentArgs): AgentPlan {
  validateAgentArgs(argv);
  const upstreamUrl = optionalBrokerUrl(argv.upstream, '--upstream');
  const upstreamPassword = readSecret(argv as never, UPSTREAM_PASSWORD, argv['upstream-username']);
  if (!upstreamUrl && (argv['upstream-username'] !== undefined || argv['upstream-password'] !== undefined || argv['upstream-password-file'] !== undefined)) {
    throw new UsageError('--upstream-username/--upstream-password only make sense with --upstream');
  }
  return {
    upstreamUrl,
    upstreamUsername: argv['upstream-username'],
    upstreamPassword: upstreamUrl ? upstreamPassword : undefined,
    dataDir: argv['data-dir'],
    trust: readTrustKeys(argv.trust),
    prefix: argv.prefix,
    maxConcurrent: argv['max-concurrent'],
    maxChunk: argv['max-chunk'],
    delta: argv.delta,
    deltaMargin: argv['delta-margin'],
    resendBudget: { windows: argv['resend-budget'], perMs: 1000 },
    releaseAssemblyTimeoutMs: argv['release-timeout'] * 1000,
    offerPolicy: argv['auto-offer'] ? 'auto' : 'rollout',
    log: makeLogger(argv),
    lora: planLns(argv),
  };
}

/** Takes the data dir's agent lock: one agent (or gateway) per agent state. */
export function lockAgentState(dataDir: string, command: string): DataDirLock {
  return lockDataDir(dataDir, 'agent', command);
}

export function createAgent(plan: AgentPlan, brokerUrl: string, credentials: { username?: string; password?: string }): Agent {
  return new Agent({ ...plan, brokerUrl, username: credentials.username, password: credentials.password });
}

export const agentCommand: CommandModule<object, AgentArgs & HttpArgs & { broker: string }> = {
  command: 'agent',
  describe: 'run the relay agent against a broker',
  builder: (y) => y.options({ broker: brokerOption, username: usernameOption, ...passwordOptions, ...httpOptions, ...agentOptions }) as never,
  handler: async (argv) => {
    const url = brokerUrl(argv.broker);
    checkHttpArgs(argv);
    const plan = planAgent(argv);
    const password = readSecret(argv as never, PASSWORD, argv.username);
    const signal = untilSignal();
    const lock = lockAgentState(argv['data-dir'], 'agent');
    if (lock.tookOverFrom !== undefined) plan.log?.('warn', `took over the lock of pid ${lock.tookOverFrom}, which is gone (${lock.file})`);
    const agent = createAgent(plan, url, { username: argv.username, password });
    const http = await maybeStartHttp(argv, { agent }, plan.log ?? (() => {})).catch(async (err: unknown) => {
      await agent.stop();
      lock.release();
      throw err;
    });
    await untilSignalOnceStarted(agent.start(), signal);
    await http?.close();
    await agent.stop();
    lock.release();
  },
};
