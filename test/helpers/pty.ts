import { spawn, spawnSync } from 'node:child_process';
import { ferryBin } from './ferry-process.js';

/** util-linux `script` gives a command a real pseudo-terminal; absent, pty tests are skipped. */
export const hasScript = spawnSync('script', ['--version'], { encoding: 'utf8' }).status === 0;

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export interface PtyRun {
  /** Everything the command wrote to its terminal, escape sequences included. */
  out: string;
  code: number | null;
}

/**
 * Runs `ferry ARGS` on a pseudo-terminal of `cols` × `rows`. With `interruptOn`, types Ctrl-C (the
 * terminal turns it into SIGINT) once the output matches; otherwise waits for the command to end.
 */
export function ferryInPty(args: string[], o: { cols: number; rows: number; env?: NodeJS.ProcessEnv; interruptOn?: RegExp }): Promise<PtyRun> {
  // -echoctl: the typed Ctrl-C is not echoed as "^C" into the screen under test.
  const cmd = `stty cols ${o.cols} rows ${o.rows} -echoctl; exec ${quote(process.execPath)} ${quote(ferryBin)} ${args.map(quote).join(' ')}`;
  const child = spawn('script', ['-qfec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...o.env } });
  let out = '';
  let interrupted = false;
  // Decoded as a stream: a chunk boundary inside a multi-byte character (…) must not split it.
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    out += d;
    if (o.interruptOn && !interrupted && o.interruptOn.test(out)) {
      interrupted = true;
      child.stdin.write('\x03');
    }
  });
  child.stderr.resume();
  return new Promise((resolve) => child.once('close', (code) => resolve({ out, code })));
}
