import path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The real `ferry` binary, as a user runs it: one child process per invocation. */
export const ferryBin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/ferry.js');

export interface FerryResult {
  /** null when the process had to be killed: it did not exit by itself. */
  code: number | null;
  out: string;
  err: string;
}

/** Runs ferry to completion; a process still alive after `timeoutMs` is killed and reports code null. */
export function ferrySync(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 30_000): FerryResult {
  const r = spawnSync(process.execPath, [ferryBin, ...args], { encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, CI: 'true', ...env } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/**
 * Runs ferry to completion without blocking this process (a broker the test runs in-process must
 * keep answering); a process still alive after `timeoutMs` is killed and reports code null.
 */
export function runFerry(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 30_000): Promise<FerryResult> {
  const child = spawn(process.execPath, [ferryBin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CI: 'true', ...env } });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) =>
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: signal ? null : code, out, err });
    }),
  );
}

/** A long-running ferry process whose stderr is read as it comes (an unread pipe would block its logs). */
export interface FerryProcess {
  child: ChildProcess;
  stderr(): string;
  /** Resolves with the match once stderr matches `re`; rejects if the process exits first. */
  waitFor(re: RegExp): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or the signal's name). */
  exited(): Promise<number | string>;
  stop(): Promise<number | string>;
}

export function startFerry(args: string[], env: NodeJS.ProcessEnv = {}): FerryProcess {
  const child = spawn(process.execPath, [ferryBin, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, CI: 'true', ...env } });
  let text = '';
  const waiters = new Set<() => void>();
  child.stderr!.on('data', (d: Buffer) => {
    text += d.toString();
    for (const w of [...waiters]) w();
  });
  const exit = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return {
    child,
    stderr: () => text,
    waitFor(re) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = re.exec(text);
          if (!m) return;
          waiters.delete(check);
          resolve(m);
        };
        waiters.add(check);
        check();
        void exit.then((code) => {
          if (!waiters.has(check)) return;
          waiters.delete(check);
          reject(new Error(`ferry ${args[0]} exited (${code}) before its stderr matched ${re}:\n${text}`));
        });
      });
    },
    exited: () => exit,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exit;
    },
  };
}
