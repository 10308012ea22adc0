import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';

/** `ferry sim sweep` as a user runs it: a real child process, progress on stderr, JSON on stdout. */
const bin = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'ferry.js');

function run(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bin, ...args], { env: { ...process.env, CI: 'true' } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

t.test('ferry sim sweep --json: every cut point of a small image, with the agent in the loop', async (t) => {
  const r = await run(['sim', 'sweep', '--boot', 'mcuboot-overwrite', '--scenario', 'update', '--image-size', '6000', '--json']);
  t.equal(r.code, 0, r.err);
  const doc = JSON.parse(r.out) as { ok: boolean; bricked: number; scenarios: { firmware: { cutPoints: number; operations: number }; agent: { tried: number; converged: number; bricked: number } }[] };
  t.equal(doc.ok, true);
  t.equal(doc.bricked, 0);
  const s = doc.scenarios[0];
  t.equal(s.firmware.cutPoints, s.firmware.operations * 3, 'every operation in every mode');
  t.equal(s.agent.tried, s.firmware.cutPoints, 'the agent loop tried them all too');
  t.equal(s.agent.converged, s.agent.tried);
  t.match(r.err, /with agent {2}update: \d+\/\d+ cut points/, 'progress on stderr');
});

t.test('ferry sim sweep: a seeded sample, and text output naming every count', async (t) => {
  const r = await run(['sim', 'sweep', '--boot', 'esp-idf', '--scenario', 'revert', '--sample', '12', '--seed', '3', '--image-size', '40000']);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /revert \(self-test fails\): \d+ flash operations, a seeded sample of 12 \(seed 3\) of the \d+ cut points/);
  t.match(r.out, /firmware {4}12 cut points tried, 12 bootable after cut, 0 bricked, 12 truthful/);
  t.match(r.out, /with agent {2}12 cut points tried, 12 bootable after cut, 0 bricked, 12 converged/);
  t.match(r.out, /^ok: 0 bricked, 0 invariant failures, 0 not converged$/m);
});

t.test('ferry sim sweep: bad flags exit 2 naming the flag', async (t) => {
  for (const [args, message] of [
    [['--image-size', '0'], /--image-size must be an integer 1\.\.4194304, got 0/],
    [['--boot', 'uboot'], /Invalid values:[\s\S]*boot/],
    [['--sample', '-3'], /--sample must be a positive integer, got -3/],
    [['--concurrency', '0'], /--concurrency must be 1\.\.64/],
  ] as [string[], RegExp][]) {
    const r = spawnSync(process.execPath, [bin, 'sim', 'sweep', ...args], { encoding: 'utf8' });
    t.equal(r.status, 2, args.join(' '));
    t.match(r.stderr, message);
  }
});
