import fs from 'node:fs';
import type { KeyObject } from 'node:crypto';
import type { Options } from 'yargs';
import { loadPrivateKey, loadPublicKey } from '../shared/manifest.js';

/** Options most commands share, defined once so their names and help never drift apart. */
export const brokerOption = { type: 'string', describe: 'MQTT broker URL, e.g. mqtt://127.0.0.1:1883', demandOption: true } satisfies Options;
export const prefixOption = { type: 'string', default: 'ferry', describe: 'topic prefix' } satisfies Options;
export const usernameOption = { type: 'string', describe: 'MQTT username' } satisfies Options;
export const passwordOption = { type: 'string', describe: 'MQTT password (or FERRY_PASSWORD)' } satisfies Options;
export const jsonOption = { type: 'boolean', default: false, describe: 'machine-readable JSON output' } satisfies Options;

/** A bad flag or argument: the CLI prints it with a usage hint and exits 2 (runtime failures exit 1). */
export class UsageError extends Error {}

export function password(argv: { password?: string }): string | undefined {
  return argv.password ?? process.env.FERRY_PASSWORD;
}

export function readFileOrFail(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

export function readPrivateKey(file: string): KeyObject {
  try {
    return loadPrivateKey(readFileOrFail(file, 'operator key'));
  } catch (err) {
    throw new Error(`operator key ${file}: ${(err as Error).message}`);
  }
}

export function readPublicKeys(files: string | string[] | undefined): KeyObject[] {
  const list = files === undefined ? [] : Array.isArray(files) ? files : [files];
  return list.map((f) => {
    try {
      return loadPublicKey(readFileOrFail(f, 'trust key'));
    } catch (err) {
      throw new Error(`trust key ${f}: ${(err as Error).message}`);
    }
  });
}

/** Log lines for long-running commands: timestamped text, or one JSON object per line. */
export function makeLogger(json: boolean): (level: 'info' | 'warn' | 'error', msg: string) => void {
  return (level, msg) => {
    if (json) process.stdout.write(`${JSON.stringify({ at: new Date().toISOString(), level, msg })}\n`);
    else process.stderr.write(`${new Date().toISOString().slice(11, 23)} ${level.padEnd(5)} ${msg}\n`);
  };
}

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
