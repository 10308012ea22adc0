import { startFerry, type FerryProcess } from './ferry-process.js';

/**
 * `ferry broker` or `ferry gateway` as a child process on port 0, for restart tests and the abuse
 * bench (whose RSS must be the broker's own): resolves once its log line names the port.
 */
export interface FerryServer extends FerryProcess {
  port: number;
  url: string;
}

export async function startFerryServer(command: 'broker' | 'gateway', args: string[], timeoutMs = 20_000): Promise<FerryServer> {
  const p = startFerry([command, '--port', '0', '--host', '127.0.0.1', ...args]);
  const listening = p.waitFor(/broker on [^ ,]+:(\d+)/);
  listening.catch(() => {}); // after a timeout, the kill below also rejects it: nobody is waiting then
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      p.child.kill('SIGKILL');
      reject(new Error(`ferry ${command} did not report its port in ${timeoutMs} ms: ${p.stderr()}`));
    }, timeoutMs);
  });
  try {
    const port = Number((await Promise.race([listening, timeout]))[1]);
    return { ...p, port, url: `mqtt://127.0.0.1:${port}` };
  } finally {
    clearTimeout(timer);
  }
}
