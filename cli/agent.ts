import type { CommandModule } from 'yargs';
import { Agent } from '../agent/agent.js';
import { brokerOption, jsonOption, makeLogger, password, passwordOption, prefixOption, readPublicKeys, untilSignal, usernameOption, UsageError } from './common.js';

export interface AgentArgs {
  username?: string;
  password?: string;
  'data-dir': string;
  upstream?: string;
  'upstream-username'?: string;
  'upstream-password'?: string;
  trust?: string | string[];
  prefix: string;
  'max-concurrent': number;
  'max-chunk': number;
  delta: boolean;
  'delta-margin': number;
  'resend-budget': number;
  'release-timeout': number;
  json: boolean;
}

/** Flags shared by `ferry agent` and `ferry gateway`. */
export const agentOptions = {
  'data-dir': { type: 'string', demandOption: true, describe: 'directory for the agent state (SQLite) and cached images' },
  upstream: { type: 'string', describe: 'upstream broker URL for releases and status (nodes stay on the local broker)' },
  'upstream-username': { type: 'string', describe: 'username on the upstream broker' },
  'upstream-password': { type: 'string', describe: 'password on the upstream broker (or FERRY_UPSTREAM_PASSWORD)' },
  trust: { type: 'string', describe: 'operator public key file(s): refuse releases they do not sign (nodes check anyway)' },
  prefix: prefixOption,
  'max-concurrent': { type: 'number', default: 16, describe: 'transfers running at once' },
  'max-chunk': { type: 'number', default: 16384, describe: 'largest chunk in bytes, whatever a node could take' },
  delta: { type: 'boolean', default: true, describe: 'send delta patches to nodes that can apply them (--no-delta: full images only)' },
  'delta-margin': { type: 'number', default: 0.2, describe: 'send a patch only when it is at least this fraction smaller than the image (0 to below 1)' },
  'resend-budget': { type: 'number', default: 4, describe: 'chunk resends per node per second, in node windows (bounds what Hellos and Acks can make the agent resend)' },
  'release-timeout': { type: 'number', default: 300, describe: 'seconds to wait for all parts of a release after its manifest before dropping it' },
  json: jsonOption,
} as const;

export function validateAgentArgs(argv: AgentArgs): void {
  if (!Number.isInteger(argv['max-concurrent']) || argv['max-concurrent'] < 1) throw new UsageError(`--max-concurrent must be a positive integer, got ${argv['max-concurrent']}`);
  if (!Number.isInteger(argv['max-chunk']) || argv['max-chunk'] < 64) throw new UsageError(`--max-chunk must be an integer >= 64, got ${argv['max-chunk']}`);
  const margin = argv['delta-margin'];
  if (!(margin >= 0 && margin < 1)) throw new UsageError(`--delta-margin must be at least 0 and below 1, got ${margin}`);
  if (!(argv['resend-budget'] > 0)) throw new UsageError(`--resend-budget must be a positive number of windows per second, got ${argv['resend-budget']}`);
  if (!(argv['release-timeout'] > 0)) throw new UsageError(`--release-timeout must be a positive number of seconds, got ${argv['release-timeout']}`);
}

export function createAgent(brokerUrl: string, argv: AgentArgs, credentials?: { username: string; password: string }): Agent {
  validateAgentArgs(argv);
  return new Agent({
    brokerUrl,
    upstreamUrl: argv.upstream,
    upstreamUsername: argv['upstream-username'],
    upstreamPassword: argv['upstream-password'] ?? process.env.FERRY_UPSTREAM_PASSWORD,
    dataDir: argv['data-dir'],
    trust: readPublicKeys(argv.trust),
    prefix: argv.prefix,
    username: credentials?.username ?? argv.username,
    password: credentials?.password ?? password(argv),
    maxConcurrent: argv['max-concurrent'],
    maxChunk: argv['max-chunk'],
    delta: argv.delta,
    deltaMargin: argv['delta-margin'],
    resendBudget: { windows: argv['resend-budget'], perMs: 1000 },
    releaseAssemblyTimeoutMs: argv['release-timeout'] * 1000,
    log: makeLogger(argv.json),
  });
}

export const agentCommand: CommandModule<object, AgentArgs & { broker: string }> = {
  command: 'agent',
  describe: 'run the relay agent against a broker',
  builder: (y) => y.options({ broker: brokerOption, username: usernameOption, password: passwordOption, ...agentOptions }) as never,
  handler: async (argv) => {
    const agent = createAgent(argv.broker, argv);
    await agent.start();
    await untilSignal();
    await agent.stop();
  },
};
