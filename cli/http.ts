import type { Options } from 'yargs';
import { startStatusServer, type StatusServer } from '../agent/http/server.js';
import type { StatusSources } from '../agent/http/snapshot.js';
import { UsageError } from './common.js';
import { isListenError, listenProblem } from './startup.js';
import { listenPort } from './validate.js';

/** `--http PORT` and `--http-host`, shared by `ferry gateway` and `ferry agent`. */
export const httpOptions = {
  http: { type: 'number', describe: 'serve the read-only status page (/) and Prometheus metrics (/metrics) on this port (0: any free port)' },
  'http-host': { type: 'string', default: '127.0.0.1', describe: 'listen address of --http (the page shows the fleet: keep it on loopback unless something in front restricts it)' },
} satisfies Record<string, Options>;

export interface HttpArgs {
  http?: number;
  'http-host': string;
}

export function checkHttpArgs(argv: HttpArgs): void {
  if (argv.http === undefined) return;
  listenPort(argv.http, 'http');
  if (argv['http-host'].trim() === '') throw new UsageError('--http-host must name an address, e.g. 127.0.0.1');
}

/** Starts the status server when `--http` was given; a listen failure comes back in words. */
export async function maybeStartHttp(argv: HttpArgs, sources: Omit<StatusSources, 'startedAt'>, log: (level: 'info' | 'warn' | 'error', msg: string) => void): Promise<StatusServer | undefined> {
  if (argv.http === undefined) return undefined;
  const host = argv['http-host'];
  const server = await startStatusServer({ ...sources, startedAt: performance.timeOrigin, port: argv.http, host, log }).catch((err: unknown) => {
    throw isListenError(err) ? new Error(`--http: ${listenProblem(err, host).replace('--host', '--http-host')}`) : err;
  });
  log('info', `status page on ${server.url}/ (metrics: ${server.url}/metrics)`);
  return server;
}
