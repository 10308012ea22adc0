import type { CommandModule } from 'yargs';

/** Every ferry subcommand, in the order --help lists them. Add a command here and nowhere else. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<any, any>[] = [];
