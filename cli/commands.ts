import type { CommandModule } from 'yargs';
import { agentCommand } from './agent.js';
import { agentsCommand } from './agents.js';
import { brokerCommand } from './broker.js';
import { devicesCommand } from './devices.js';
import { operatorsCommand } from './operators.js';
import { gatewayCommand } from './gateway.js';
import { keygenCommand } from './keygen.js';
import { releaseCommand } from './release.js';
import { rolloutCommand } from './rollout.js';
import { statusCommand } from './status.js';
import { eventsCommand } from './events.js';
import { diffCommand } from './diff.js';
import { patchCommand } from './patch.js';
import { simCommand } from './sim.js';
import { lnsSimCommand } from './lns-sim.js';
import { demoCommand } from './demo.js';

/** Every ferry subcommand, in the order --help lists them. Add a command here and nowhere else. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<any, any>[] = [
  demoCommand,
  gatewayCommand,
  agentCommand,
  keygenCommand,
  releaseCommand,
  rolloutCommand,
  statusCommand,
  eventsCommand,
  brokerCommand,
  devicesCommand,
  agentsCommand,
  operatorsCommand,
  diffCommand,
  patchCommand,
  simCommand,
  lnsSimCommand,
];
