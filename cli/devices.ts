import { identityCommand } from './identities.js';

/** `ferry devices add|list|revoke`: node identities (device id = MQTT username = client id). */
export const devicesCommand = identityCommand('node', 'devices', 'device');
