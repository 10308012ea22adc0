import { identityCommand } from './identities.js';

/** `ferry operators add|list|revoke`: operators publish releases and read status. */
export const operatorsCommand = identityCommand('operator', 'operators', 'operator');
