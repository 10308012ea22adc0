import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ferrySync, type FerryResult } from './helpers/ferry-process.js';

/**
 * The ferry command line as a user meets it: a real child process per invocation. Bad flags exit 2
 * with a message naming the flag; runtime failures (a missing file, a key that is not a key) exit 1
 * naming the file; nothing ever ends in a stack trace.
 */
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-cli-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function ferry(...args: string[]): FerryResult {
  return ferrySync(args, {}, 60_000);
}

function noStack(t: Test, text: string): void {
  t.notMatch(text, /\n\s+at .+:\d+:\d+/, 'no stack trace');
}

t.test('bad flags exit 2 and name the flag', async (t) => {
  const cases: [string[], RegExp][] = [
    [['no-such-command'], /Unknown argument|name a command/],
    [['demo', '--bogus'], /Unknown argument: bogus/],
    [['keygen'], /Missing required argument: out/],
    [['demo', '--devices', '0'], /--devices must be/],
    [['demo', '--fail-selftest', '9'], /--fail-selftest must be/],
    [['agent', '--broker', 'mqtt://127.0.0.1:1', '--data-dir', dir, '--max-concurrent', '0'], /--max-concurrent must be/],
    [['agent', '--broker', 'mqtt://127.0.0.1:1', '--data-dir', dir, '--delta-margin', '1.5'], /--delta-margin must be at least 0 and below 1/],
    [['gateway', '--port', '70000', '--data-dir', dir], /--port must be 0\.\.65535/],
    [['broker', '--tls-port', '8883'], /--tls-port needs --tls-key and --tls-cert/],
    [['diff', 'a', 'b', '-o', 'c', '--window-bits', '99'], /--window-bits must be an integer/],
    [['sim', '--broker', 'mqtt://127.0.0.1:1', '--devices', '0', '--hw', 'h', '--version', '1.0.0', '--trust', 'x'], /--devices must be/],
    [['devices', 'add'], /needs a device name/],
  ];
  for (const [args, message] of cases) {
    const r = ferry(...args);
    t.equal(r.code, 2, `ferry ${args.join(' ')} exits 2`);
    t.match(r.err, message, `ferry ${args.join(' ')} says what was wrong`);
    noStack(t, r.err);
  }
});

t.test('runtime failures exit 1 and name the file', async (t) => {
  const missing = path.join(dir, 'missing.bin');
  let r = ferry('diff', missing, missing, '-o', path.join(dir, 'p'));
  t.equal(r.code, 1);
  t.match(r.err, /^ferry diff: old image .*missing\.bin: no such file\n$/);
  noStack(t, r.err);

  const notAKey = path.join(dir, 'not-a-key.pem');
  fs.writeFileSync(notAKey, 'hello');
  const image = path.join(dir, 'image.bin');
  fs.writeFileSync(image, Buffer.alloc(1024, 1));
  r = ferry('release', 'publish', '--broker', 'mqtt://127.0.0.1:1', '--image', image, '--version', '1.0.0', '--hw', 'h', '--key', notAKey);
  t.equal(r.code, 1);
  t.match(r.err, /^ferry release publish: --key .*not-a-key\.pem is not a PEM private key/);
  noStack(t, r.err);
});

t.test('keygen writes a key pair and refuses to overwrite a signing key', async (t) => {
  const out = path.join(dir, 'keys');
  let r = ferry('keygen', '--out', out);
  t.equal(r.code, 0, r.err);
  const before = fs.readFileSync(path.join(out, 'operator.key'));
  t.ok(fs.existsSync(path.join(out, 'operator.pub')));
  r = ferry('keygen', '--out', out);
  t.equal(r.code, 1);
  t.match(r.err, /refusing to overwrite/);
  t.same(fs.readFileSync(path.join(out, 'operator.key')), before, 'the existing key is untouched');
});
