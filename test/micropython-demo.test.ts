import t from 'tap';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** `ferry demo --node micropython`: the demo's nodes run the MicroPython client, updated to confirmed. */
const bin = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'ferry.js');

t.test('ferry demo --node micropython updates MicroPython nodes, one rolls back', async (t) => {
  const child = spawn(process.execPath, [bin, 'demo', '--node', 'micropython', '--devices', '2', '--fail-selftest', '1', '--image-size', '65536', '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  t.equal(code, 0, `exit 0 ${err.slice(-500)}`);
  const summary = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { ok: boolean; confirmed: number; rolledBack: number; rollbackReasons: string[] };
  t.match(summary, { ok: true, confirmed: 1, rolledBack: 1, rollbackReasons: ['selfTestFailed'] });
});
