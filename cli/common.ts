import type { Options } from 'yargs';

/** Options most commands share, defined once so their names and help never drift apart. */
export const brokerOption = { type: 'string', describe: 'MQTT broker URL: mqtt://HOST:PORT, mqtts://, ws://, wss://; a bare HOST:PORT means mqtt://HOST:PORT', demandOption: true } satisfies Options;
export const prefixOption = { type: 'string', default: 'ferry', describe: 'topic prefix' } satisfies Options;
export const usernameOption = { type: 'string', describe: 'MQTT username' } satisfies Options;
export const jsonOption = { type: 'boolean', default: false, describe: 'machine-readable JSON output' } satisfies Options;

/** A bad flag or argument: the CLI prints it with a usage hint and exits 2 (runtime failures exit 1). */
export class UsageError extends Error {}

/** Resolves when the process is asked to stop (SIGINT/SIGTERM). */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

/**
 * Runs until SIGINT/SIGTERM, the signal also counting while `starting` is still under way (an agent
 * waiting for a broker that is not up yet must stop when asked, not be killed). Rejects if
 * `starting` fails before a signal. Pass `signal` (an untilSignal() taken before the first log line)
 * when a reader may act on that line: the signal then never arrives before the handler.
 */
export async function untilSignalOnceStarted(starting: Promise<void>, signal = untilSignal()): Promise<void> {
  let signalled = false;
  starting.catch(() => {}); // a failure after the signal no longer matters
  await Promise.race([starting, signal.then(() => void (signalled = true))]);
  if (!signalled) await signal;
}
