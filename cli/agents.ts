import { identityCommand } from './identities.js';

/** `ferry agents add|list|revoke`: agent identities and the nodes they serve. */
export const agentsCommand = identityCommand('agent', 'agents', 'agent');
