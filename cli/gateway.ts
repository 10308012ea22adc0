import type { CommandModule } from 'yargs';
import { startBroker } from '../broker/server.js';
import { agentOptions, createAgent, type AgentArgs } from './agent.js';
import { untilSignal } from './common.js';

interface GatewayArgs extends AgentArgs {
  port: number;
  host: string;
}

/** `ferry gateway`: broker and agent in one process, the embedded default on a Raspberry Pi. */
export const gatewayCommand: CommandModule<object, GatewayArgs> = {
  command: 'gateway',
  describe: 'run broker + agent in one process (the embedded default)',
  builder: (y) =>
    y.options({
      port: { type: 'number', default: 1883, describe: 'MQTT listen port' },
      host: { type: 'string', default: '0.0.0.0', describe: 'listen address' },
      ...agentOptions,
    }) as never,
  handler: async (argv) => {
    if (!Number.isInteger(argv.port) || argv.port < 0 || argv.port > 65535) throw new Error(`--port must be 0..65535, got ${argv.port}`);
    const broker = await startBroker({ port: argv.port, host: argv.host });
    const agent = createAgent(broker.url, argv);
    await agent.start();
    process.stderr.write(`ferry gateway: broker on ${argv.host}:${broker.port}, agent state in ${argv['data-dir']}\n`);
    await untilSignal();
    await agent.stop();
    await broker.close();
  },
};
