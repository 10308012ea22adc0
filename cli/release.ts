import type { CommandModule } from 'yargs';
import { ManifestFlag } from '../shared/manifest.js';
import { publishRelease } from '../operator/publish.js';
import { brokerOption, jsonOption, prefixOption, usernameOption } from './common.js';
import { readFileOrFail, readOperatorKey } from './key-files.js';
import { PASSWORD, passwordOptions, readSecret } from './secrets.js';
import { reachingBroker } from './startup.js';
import { brokerUrl } from './validate.js';
import { formatBytes, progressBar } from './progress.js';

interface PublishArgs {
  broker: string;
  image: string;
  version: string;
  hw: string;
  key: string;
  'security-version': number;
  'allow-no-rollback': boolean;
  prefix: string;
  username?: string;
  password?: string;
  'password-file'?: string;
  json: boolean;
}

const publish: CommandModule<object, PublishArgs> = {
  command: 'publish',
  describe: 'sign a firmware image and publish it as a release',
  builder: (y) =>
    y
      .option('broker', brokerOption)
      .option('image', { type: 'string', demandOption: true, describe: 'firmware image file' })
      .option('version', { type: 'string', demandOption: true, describe: 'release version (semver)' })
      .option('hw', { type: 'string', demandOption: true, describe: 'hardware class the image is built for' })
      .option('key', { type: 'string', demandOption: true, describe: 'operator private key (from ferry keygen)' })
      .option('security-version', { type: 'number', default: 0, describe: 'anti-rollback counter; nodes refuse releases below the value they hold' })
      .option('allow-no-rollback', { type: 'boolean', default: false, describe: 'also update nodes whose bootloader cannot roll back' })
      .option('prefix', prefixOption)
      .option('username', usernameOption)
      .options(passwordOptions)
      .option('json', jsonOption) as never,
  handler: async (argv) => {
    const url = brokerUrl(argv.broker);
    const secret = readSecret(argv as never, PASSWORD, argv.username);
    const image = readFileOrFail(argv.image, '--image');
    const key = readOperatorKey(argv.key);
    const bar = progressBar(`publishing ${argv.hw} ${argv.version}`, { quiet: argv.json });
    const result = await reachingBroker(url, publishRelease({
      brokerUrl: url,
      image,
      hw: argv.hw,
      version: argv.version,
      key,
      securityVersion: argv['security-version'],
      flags: argv['allow-no-rollback'] ? ManifestFlag.allowNoRollback : 0,
      prefix: argv.prefix,
      username: argv.username,
      password: secret,
      onProgress: (done, total) => bar.update(done, total),
    }));
    bar.done(`${formatBytes(image.length)} in ${result.parts} part(s)`);
    const summary = {
      hw: result.manifest.hw,
      version: result.manifest.version,
      securityVersion: result.manifest.securityVersion,
      size: result.manifest.size,
      digest: result.manifest.digest.toString('hex'),
      parts: result.parts,
    };
    if (argv.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    else process.stdout.write(`published ${summary.hw} ${summary.version} sha256 ${summary.digest}\n`);
  },
};

/** `ferry release publish ...`: operator-side release commands. */
export const releaseCommand: CommandModule = {
  command: 'release',
  describe: 'operator release commands (publish)',
  builder: (y) => y.command(publish as CommandModule).demandCommand(1),
  handler: () => {},
};
