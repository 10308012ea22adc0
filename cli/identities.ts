import type { CommandModule } from 'yargs';
import type { Role } from '../broker/acl.js';
import { IdentityStore } from '../broker/identity-store.js';
import { DEFAULT_DATA_DIR } from './broker.js';
import { UsageError } from './common.js';

interface Args {
  action: 'add' | 'list' | 'revoke';
  name?: string;
  'data-dir': string;
  group?: string[];
  serves?: string[];
  json: boolean;
}

/**
 * `ferry devices|agents|operators add|list|revoke`: one command per role, built here so the three
 * never drift apart. `add` prints the secret once; only its scrypt hash is stored.
 */
export function identityCommand(role: Role, command: string, noun: string): CommandModule<object, Args> {
  return {
    command: `${command} <action> [name]`,
    describe: `provision, list or revoke ${noun}s (add prints the credentials once)`,
    builder: (y) =>
      y
        .positional('action', { choices: ['add', 'list', 'revoke'] as const, describe: 'what to do' })
        .positional('name', { type: 'string', describe: role === 'node' ? 'device id' : `${noun} name (the MQTT username)` })
        .options({
          'data-dir': { type: 'string', default: DEFAULT_DATA_DIR, describe: 'the broker data directory (identities.sqlite)' },
          json: { type: 'boolean', default: false, describe: 'machine-readable JSON output' },
          ...(role === 'node' ? { group: { type: 'string', array: true, describe: 'group(s) the node belongs to (repeatable)' } } : {}),
          ...(role === 'agent' ? { serves: { type: 'string', array: true, describe: 'nodes served: * (default), device-id globs, group:NAME (repeatable)' } } : {}),
        }) as never,
    handler: async (argv) => {
      if (argv.action !== 'list' && !argv.name) throw new UsageError(`ferry ${command} ${argv.action} needs a ${noun} name`);
      const store = IdentityStore.open(argv['data-dir']);
      try {
        if (argv.action === 'add') {
          const cred = await store.add(role, argv.name!, { groups: argv.group, serves: argv.serves });
          if (argv.json) process.stdout.write(`${JSON.stringify({ role, ...cred })}\n`);
          else process.stdout.write(`${noun} ${cred.username} added. Its secret is shown only now:\n  username: ${cred.username}\n  password: ${cred.password}\n`);
        } else if (argv.action === 'revoke') {
          if (!store.revoke(argv.name!)) throw new Error(`no live ${noun} named "${argv.name}"`);
          process.stdout.write(`${noun} ${argv.name} revoked (a running broker disconnects it within a second)\n`);
        } else {
          const list = store.list(role);
          if (argv.json) process.stdout.write(`${JSON.stringify(list)}\n`);
          else if (list.length === 0) process.stdout.write(`no ${noun}s in ${store.file}\n`);
          else
            for (const i of list) {
              const extra = role === 'node' ? (i.groups.length ? ` groups=${i.groups.join(',')}` : '') : role === 'agent' ? ` serves=${i.serves.join(',')}` : '';
              process.stdout.write(`${i.username}${extra}${i.revokedAt ? ` (revoked ${i.revokedAt})` : ''}\n`);
            }
        }
      } finally {
        store.close();
      }
    },
  };
}
