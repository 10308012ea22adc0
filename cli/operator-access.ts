import type { Argv } from 'yargs';
import { brokerOption, jsonOption, prefixOption, usernameOption } from './common.js';
import { PASSWORD, passwordOptions, readSecret } from './secrets.js';
import { brokerUrl } from './validate.js';

/** The flags every operator command shares: which broker, under which identity. */
export interface OperatorArgs {
  broker: string;
  prefix: string;
  username?: string;
  password?: string;
  'password-file'?: string;
  json: boolean;
}

export function operatorOptions<T>(y: Argv<T>): Argv<T> {
  return y.option('broker', brokerOption).option('prefix', prefixOption).option('username', usernameOption).options(passwordOptions).option('json', jsonOption) as never;
}

/** The broker URL and credentials the operator library functions take. */
export function operatorAccess(argv: OperatorArgs) {
  return { brokerUrl: brokerUrl(argv.broker), prefix: argv.prefix, username: argv.username, password: readSecret(argv as never, PASSWORD, argv.username) };
}
