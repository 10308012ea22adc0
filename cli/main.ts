import yargs from 'yargs';
import type { CommandModule } from 'yargs';
import { commands } from './commands.js';
import { UsageError } from './common.js';
import { failureLine } from './failure.js';
import { checkDashSecrets } from './secrets.js';
import { ferryVersion } from './version.js';

/**
 * The ferry command line. Each command lives in its own module under cli/ and is listed in
 * cli/commands.ts; this file only wires yargs. Bad flags exit 2 with a message naming the flag.
 */
export async function runCli(argv: string[]): Promise<void> {
  // `ferry --version` (before any command) is ferry's own version; after a command, --version is
  // the firmware version a release command takes, so yargs' built-in flag stays off.
  if (argv[0] === '--version' || argv[0] === '-V') {
    process.stdout.write(`ferry ${ferryVersion()}\n`);
    return;
  }
  try {
    checkDashSecrets(argv);
  } catch (err) {
    usageExit((err as Error).message);
  }
  let parser = yargs(argv)
    .scriptName('ferry')
    .strict()
    .demandCommand(1, 'name a command: ferry --help lists them')
    .recommendCommands()
    .version(false)
    .help()
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      // yargs' own messages (unknown flag, missing argument) come without err; a check() or a
      // handler that throws UsageError is also a usage mistake. Anything else is a runtime failure.
      if (err && !(err instanceof UsageError)) throw err;
      usageExit(msg ?? err?.message);
    });
  for (const command of commands) parser = parser.command(command as CommandModule);
  try {
    await parser.parseAsync();
  } catch (err) {
    if (err instanceof UsageError) usageExit(err.message);
    throw err;
  }
}

function usageExit(msg: string): never {
  process.stderr.write(`${failureLine(msg)}\n(run ferry --help for usage)\n`);
  process.exit(2);
}
