import { spawn, type ChildProcess } from 'node:child_process';
import { ferryBin } from './ferry-process.js';

/**
 * `ferry broker` or `ferry gateway` as a child process on port 0, for restart tests and the abuse
 * bench (whose RSS must be the broker's own). Runs with --json and reads the port from its first
 * "... on HOST:PORT" log line.
 */
export interface FerryServer {
  child: ChildProcess;
  port: number;
  url: string;
  /** Log messages so far. */
  logs: string[];
  /** SIGTERM, then resolves with the exit code. */
  stop(): Promise<number | null>;
}

export function startFerryServer(command: 'broker' | 'gateway', args: string[], timeoutMs = 20_000): Promise<FerryServer> {
  const child = spawn(process.execPath, [ferryBin, command, '--port', '0', '--host', '127.0.0.1', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ferry ${command} did not report its port in ${timeoutMs} ms: ${stderr}`));
    }, timeoutMs);
    let buf = '';
    let found = false;
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let msg = line;
        try {
          msg = (JSON.parse(line) as { msg: string }).msg;
        } catch {
          // not a log line
        }
        logs.push(msg);
        const m = /broker on [^ ,]+:(\d+)/.exec(msg);
        if (m && !found) {
          found = true;
          clearTimeout(timer);
          const port = Number(m[1]);
          resolve({
            child, port, url: `mqtt://127.0.0.1:${port}`, logs,
            stop() {
              if (child.exitCode === null) child.kill('SIGTERM');
              return exited;
            },
          });
        }
      }
    });
    void exited.then((code) => {
      if (found) return;
      clearTimeout(timer);
      reject(new Error(`ferry ${command} exited with ${code}: ${stderr}`));
    });
  });
}
