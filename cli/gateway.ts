import { randomBytes } from 'node:crypto';
import type { CommandModule } from 'yargs';
import { IdentityStore } from '../broker/identity-store.js';
import { startBroker } from '../broker/server.js';
import { agentOptions, createAgent, type AgentArgs } from './agent.js';
import { limitOption, limitsFromFlags } from './broker.js';
import { makeLogger, untilSignal, UsageError } from './common.js';

interface GatewayArgs extends AgentArgs {
  port: number;
  host: string;
  'allow-anonymous': boolean;
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
      limit: limitOption,
      ...agentOptions,
    }) as never,
  handler: async (argv) => {
    if (!Number.isInteger(argv.port) || argv.port < 0 || argv.port > 65535) throw new UsageError(`--port must be 0..65535, got ${argv.port}`);
    const limits = limitsFromFlags(argv.limit);
    const log = makeLogger(argv.json);
    const store = IdentityStore.open(argv['data-dir']);
    const password = randomBytes(24).toString('base64url');
    await store.add('agent', GATEWAY_AGENT, { serves: ['*'], password, replace: true });
    const broker = await startBroker({
      port: argv.port,
      host: argv.host,
      retainedDir: argv['data-dir'],
      ferry: { store, prefix: argv.prefix, allowAnonymous: argv['allow-anonymous'], log, limits },
    });
    const agent = createAgent(broker.url, argv, { username: GATEWAY_AGENT, password });
    await agent.start();
    log('info', `ferry gateway: broker on ${argv.host}:${broker.port}, agent state and identities in ${argv['data-dir']}`);
    await untilSignal();
    await agent.stop();
    await broker.close();
    store.close();
  },
};
