import type { CommandModule } from 'yargs';
import { IdentityStore } from '../broker/identity-store.js';
import { newSecret } from '../broker/secret.js';
import { startBroker } from '../broker/server.js';
import { agentOptions, createAgent, lockAgentState, planAgent, type AgentArgs } from './agent.js';
import { limitOption, limitsFromFlags, lockBrokerState } from './broker.js';
import { untilSignal, untilSignalOnceStarted } from './common.js';
import { checkHttpArgs, httpOptions, maybeStartHttp, type HttpArgs } from './http.js';
import { isListenError, listenProblem } from './startup.js';
import { listenPort } from './validate.js';
import { startStatsFile } from './stats-file.js';

interface GatewayArgs extends AgentArgs, HttpArgs {
  port: number;
  host: string;
  'allow-anonymous': boolean;
  'stats-file'?: string;
  limit: string[];
}

/** The in-process agent's own identity on the gateway's broker: re-keyed at every start, never printed. */
const GATEWAY_AGENT = 'gateway-agent';

/**
 * `ferry gateway`: broker (with the ferry plugin: identities, ACL, limits, presence) and agent in
 * one process, the embedded default on a Raspberry Pi. Nodes and operators are provisioned with
 * `ferry devices add` / `ferry operators add --data-dir D` against the same data dir.
 */
export const gatewayCommand: CommandModule<object, GatewayArgs> = {
  command: 'gateway',
  describe: 'run broker + agent in one process (the embedded default)',
  builder: (y) =>
    y.options({
      port: { type: 'number', default: 1883, describe: 'MQTT listen port' },
      host: { type: 'string', default: '0.0.0.0', describe: 'listen address' },
      'allow-anonymous': { type: 'boolean', default: false, describe: 'admit clients without a username (never to ferry topics)' },
      'stats-file': { type: 'string', describe: 'write CPU, memory and store-write counters here as JSON at start, on SIGUSR2 and at exit (for benchmarks)' },
      limit: limitOption,
      ...httpOptions,
      ...agentOptions,
    }) as never,
  handler: async (argv) => {
    listenPort(argv.port, 'port');
    checkHttpArgs(argv);
    const limits = limitsFromFlags(argv.limit);
    const plan = planAgent(argv);
    const log = plan.log!;
    const signal = untilSignal();
    const locks = [lockBrokerState(argv['data-dir'], 'gateway'), lockAgentState(argv['data-dir'], 'gateway')];
    for (const lock of locks) if (lock.tookOverFrom !== undefined) log('warn', `took over the lock of pid ${lock.tookOverFrom}, which is gone (${lock.file})`);
    const store = IdentityStore.open(argv['data-dir']);
    const password = newSecret();
    await store.add('agent', GATEWAY_AGENT, { serves: ['*'], password, replace: true });
    const broker = await startBroker({
      port: argv.port,
      host: argv.host,
      retainedDir: argv['data-dir'],
      ferry: { store, prefix: argv.prefix, allowAnonymous: argv['allow-anonymous'], log, limits },
    }).catch((err: unknown) => {
      throw isListenError(err) ? new Error(listenProblem(err, argv.host)) : err;
    });
    log('info', `ferry gateway: broker on ${argv.host}:${broker.port}, agent state and identities in ${argv['data-dir']}`);
    const agent = createAgent(plan, broker.url, { username: GATEWAY_AGENT, password });
    const plugin = broker.plugin;
    const http = await maybeStartHttp(argv, { agent, broker: plugin && (() => plugin.stats()) }, log).catch(async (err: unknown) => {
      await agent.stop();
      await broker.close();
      throw err;
    });
    const stopStats = argv['stats-file'] ? startStatsFile(argv['stats-file'], agent) : undefined;
    try {
      await untilSignalOnceStarted(agent.start(), signal);
    } finally {
      stopStats?.();
    }
    await http?.close();
    await agent.stop();
    await broker.close();
    store.close();
    for (const lock of locks) lock.release();
  },
};
