import fs from 'node:fs';
import path from 'node:path';
import type { CommandModule } from 'yargs';
import { generateOperatorKey, keyId } from '../shared/manifest.js';
import { jsonOption } from './common.js';

interface Args {
  out: string;
  force: boolean;
  json: boolean;
}

/** `ferry keygen --out DIR`: a fresh Ed25519 operator key pair (operator.key private, operator.pub public). */
export const keygenCommand: CommandModule<object, Args> = {
  command: 'keygen',
  describe: 'create an operator signing key pair (DIR/operator.key, DIR/operator.pub)',
  builder: (y) =>
    y
      .option('out', { type: 'string', demandOption: true, describe: 'directory for the key files' })
      .option('force', { type: 'boolean', default: false, describe: 'overwrite existing key files' })
      .option('json', jsonOption) as never,
  handler: (argv) => {
    const keyFile = path.join(argv.out, 'operator.key');
    const pubFile = path.join(argv.out, 'operator.pub');
    if (!argv.force && fs.existsSync(keyFile)) throw new Error(`${keyFile} exists: refusing to overwrite a signing key (use --force)`);
    fs.mkdirSync(argv.out, { recursive: true });
    const { privateKey, publicKey } = generateOperatorKey();
    fs.writeFileSync(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    fs.writeFileSync(pubFile, publicKey.export({ format: 'pem', type: 'spki' }));
    const kid = keyId(publicKey).toString('hex');
    if (argv.json) process.stdout.write(`${JSON.stringify({ key: keyFile, pub: pubFile, kid })}\n`);
    else process.stdout.write(`operator key ${keyFile} (keep it secret)\npublic key   ${pubFile} (provision it on nodes)\nkey id       ${kid}\n`);
  },
};
