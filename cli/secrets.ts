import type { Options } from 'yargs';
import { readFileOrFail } from './key-files.js';
import { UsageError } from './common.js';

/**
 * Where a command takes a password from: the flag, a file, or the environment, in that order. A
 * secret on the command line is visible in `ps` to every user of the machine and cannot begin with
 * `-` (it would read as a flag); a file or the environment has neither problem.
 */
export interface SecretSource {
  /** The flag without dashes: password, upstream-password. */
  flag: string;
  /** The environment variable read when neither flag is given. */
  env: string;
}

export const PASSWORD: SecretSource = { flag: 'password', env: 'FERRY_PASSWORD' };
export const UPSTREAM_PASSWORD: SecretSource = { flag: 'upstream-password', env: 'FERRY_UPSTREAM_PASSWORD' };

/** The two flags of a source, e.g. --password and --password-file, with their help. */
export function secretOptions(source: SecretSource, what: string): Record<string, Options> {
  return {
    [source.flag]: { type: 'string', describe: `${what} (or --${source.flag}-file, or ${source.env}; a command line shows in ps)` },
    [`${source.flag}-file`]: { type: 'string', describe: `file whose first line is the ${what}` },
  };
}

export const passwordOptions = secretOptions(PASSWORD, 'MQTT password');
export const upstreamPasswordOptions = secretOptions(UPSTREAM_PASSWORD, 'password on the upstream broker');

/**
 * The secret from --FLAG, --FLAG-file or $ENV (undefined when none is given). `username` is the
 * user name it goes with: MQTT has no password without a user name (MQTT.js would hang on one), so
 * a flag without it is refused, and the environment is only read with one.
 */
export function readSecret(argv: Record<string, unknown>, source: SecretSource, username: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const given = argv[source.flag] as string | undefined;
  const file = argv[`${source.flag}-file`] as string | undefined;
  const userFlag = source.flag.replace(/password$/, 'username');
  if (given !== undefined && file !== undefined) throw new UsageError(`--${source.flag} and --${source.flag}-file are exclusive: give one`);
  if ((given !== undefined || file !== undefined) && !username) throw new UsageError(`--${source.flag}${file !== undefined ? '-file' : ''} needs --${userFlag}`);
  if (given === '') throw new UsageError(`--${source.flag} is empty (a secret beginning with "-": --${source.flag}=SECRET, --${source.flag}-file or ${source.env})`);
  if (file !== undefined) {
    // The first line: editors and `echo` end files with a newline that is no part of the secret.
    const secret = readFileOrFail(file, `--${source.flag}-file`).toString('utf8').split(/\r?\n/)[0];
    if (!secret) throw new Error(`--${source.flag}-file ${file}: the first line is empty`);
    return secret;
  }
  return given ?? (username ? env[source.env] || undefined : undefined);
}

/**
 * `--password -x…` reads as the flags -x…: yargs would then complain about unknown arguments that
 * the user never typed. Say what happened instead.
 */
export function checkDashSecrets(args: readonly string[]): void {
  for (const source of [PASSWORD, UPSTREAM_PASSWORD]) {
    const i = args.indexOf(`--${source.flag}`);
    if (i >= 0 && i + 1 < args.length && args[i + 1].startsWith('-') && args[i + 1].length > 1 && !/^--[a-z]/.test(args[i + 1])) {
      throw new UsageError(`--${source.flag}: a secret beginning with "-" reads as a flag; give --${source.flag}=SECRET, --${source.flag}-file FILE or ${source.env}`);
    }
  }
}

/** Whether any source of the secret is given on the command line (not the environment). */
export function secretFlagGiven(argv: Record<string, unknown>, source: SecretSource): boolean {
  return argv[source.flag] !== undefined || argv[`${source.flag}-file`] !== undefined;
}
