import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn } from 'node:child_process';
import t, { type Test } from 'tap';
import { IdentityStore, startBroker } from '../broker/index.js';
import { freePort, tmpDir } from './helpers/broker-support.js';
import { ferryBin, ferrySync, runFerry, startFerry, type FerryResult } from './helpers/ferry-process.js';

/**
 * Issue 10 items 9, 12 and 13 through the real binary: a command that cannot do its job exits at
 * once, non-zero, with one line naming what was wrong (never a live process doing nothing, never a
 * stack trace); passwords come from a flag, a file or the environment; a broker given as host:port
 * works; key files of the wrong kind are named as such; a closed stdout ends the command quietly.
 */
const dir = tmpDir('cli-startup');
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

const keys = path.join(dir, 'keys');
const keygen = ferrySync(['keygen', '--out', keys]);
if (keygen.code !== 0) throw new Error(keygen.err);
const pub = path.join(keys, 'operator.pub');
const priv = path.join(keys, 'operator.key');
const image = path.join(dir, 'image.bin');
fs.writeFileSync(image, Buffer.alloc(4096, 7));

/**
 * Exit `code` (not killed: it ended by itself) and one line on stderr matching `line`: the only line,
 * or with `afterLog` the last one, after what a long-running command logged while it tried.
 */
function failsWith(t: Test, r: FerryResult, code: number, line: RegExp, what: string, afterLog = false): void {
  t.equal(r.code, code, `${what}: exits ${code} by itself`);
  let lines = r.err.trimEnd().split('\n');
  if (code === 2) lines = lines.slice(0, -1); // the "(run ferry --help for usage)" hint
  // Log lines (JSON objects: stderr is a pipe here) come before the failure line; the failure line is plain text.
  if (afterLog) lines = lines.filter((l) => !l.startsWith('{"level":'));
  t.equal(lines.length, 1, `${what}: one line`);
  t.match(lines[0], line, `${what}: ${lines[0]}`);
  t.notMatch(r.err, /\n\s+at .+:\d+:\d+/, `${what}: no stack trace`);
}

/** A TCP listener on 127.0.0.1 holding a port. */
async function occupy(): Promise<{ port: number; close(): Promise<void> }> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return { port: (s.address() as net.AddressInfo).port, close: () => new Promise((r) => s.close(() => r())) };
}

t.test('startup failures: exit non-zero at once with one line', async (t) => {
  const busy = await occupy();
  t.teardown(busy.close);
  const closedPort = await freePort();
  const missing = path.join(dir, 'no-such', 'op.pub');

  // Independent runs, side by side: each is a separate process.
  const cases: [string[], number, RegExp, string][] = [
    [['gateway', '--host', '127.0.0.1', '--port', String(busy.port), '--data-dir', path.join(dir, 'gw-busy')], 1, new RegExp(`^ferry gateway: port ${busy.port} is in use on 127\\.0\\.0\\.1$`), 'gateway, port in use'],
    [['broker', '--host', '127.0.0.1', '--port', String(busy.port), '--data-dir', path.join(dir, 'br-busy')], 1, new RegExp(`^ferry broker: port ${busy.port} is in use on 127\\.0\\.0\\.1$`), 'broker, port in use'],
    [['broker', '--host', '127.0.0.1', '--port', '0', '--data-dir', path.join(dir, 'br-redis'), '--redis', `redis://127.0.0.1:${closedPort}`], 1, new RegExp(`^ferry broker: cannot reach Redis at redis://127\\.0\\.0\\.1:${closedPort}: connection refused$`), 'broker, Redis down'],
    [['agent', '--broker', `mqtt://127.0.0.1:${closedPort}`, '--data-dir', path.join(dir, 'ag-trust'), '--trust', missing], 1, new RegExp(`^ferry agent: --trust ${missing}: no such file$`), 'agent, missing --trust'],
    [['gateway', '--host', '127.0.0.1', '--port', '0', '--data-dir', path.join(dir, 'gw-trust'), '--trust', missing], 1, /^ferry gateway: --trust .*: no such file$/, 'gateway, missing --trust'],
    [['sim', '--broker', `127.0.0.1:${closedPort}`, '--hw', 'h', '--version', '1.0.0', '--trust', missing], 1, /^ferry sim: --trust .*: no such file$/, 'sim, missing --trust'],
    [['release', 'publish', '--broker', `127.0.0.1:${closedPort}`, '--image', image, '--version', '1.0.0', '--hw', 'h', '--key', priv], 1, new RegExp(`^ferry release publish: cannot reach the broker at mqtt://127\\.0\\.0\\.1:${closedPort}: connection refused$`), 'release publish, no broker'],
    [['status', '--broker', `127.0.0.1:${closedPort}`], 1, new RegExp(`^ferry status: cannot reach the broker at mqtt://127\\.0\\.0\\.1:${closedPort}: connection refused$`), 'status, no broker'],
    [['agent', '--broker', 'http://127.0.0.1:1883', '--data-dir', path.join(dir, 'ag-url')], 2, /^ferry agent: --broker "http:\/\/127\.0\.0\.1:1883": scheme http is not one of mqtt/, 'agent, a bad URL'],
    [['gateway', '--port', '0', '--data-dir', path.join(dir, 'gw-url'), '--upstream', 'mqtt://'], 2, /^ferry gateway: --upstream "mqtt:\/\/"/, 'gateway, a bad upstream URL'],
  ];
  const results = await Promise.all(cases.map(([args]) => runFerry(args)));
  for (const [i, [, code, line, what]] of cases.entries()) failsWith(t, results[i], code, line, what);
});

t.test('a broker the agent cannot reach at start is not a startup failure: it keeps trying', async (t) => {
  const port = await freePort();
  const agent = startFerry(['agent', '--broker', `127.0.0.1:${port}`, '--data-dir', path.join(dir, 'ag-wait'), '--trust', pub]);
  await agent.waitFor(/ECONNREFUSED[^]*ECONNREFUSED/);
  t.equal(agent.child.exitCode, null, 'still running after two refused attempts');
  t.equal(await agent.stop(), 0, 'and stops cleanly on SIGTERM');
});

t.test('the agent exits when the broker refuses its credentials: no retry fixes that', async (t) => {
  const store = IdentityStore.open(path.join(dir, 'refusing'));
  const broker = await startBroker({ ferry: { store } });
  t.teardown(async () => {
    await broker.close();
    store.close();
  });
  const r = await runFerry(['agent', '--broker', broker.url, '--username', 'nobody', '--data-dir', path.join(dir, 'ag-refused')], { FERRY_PASSWORD: 'wrong-secret-0123456789' });
  failsWith(t, r, 1, new RegExp(`^ferry agent: the broker at ${broker.url.replace(/\./g, '\\.')} refused the connection: Bad username or password$`), 'agent, bad credentials', true);
});

t.test('key files of the wrong kind are named as such (item 13)', async (t) => {
  const closed = await freePort();
  failsWith(t, await runFerry(['agent', '--broker', `127.0.0.1:${closed}`, '--data-dir', path.join(dir, 'ag-priv'), '--trust', priv]), 1,
    new RegExp(`^ferry agent: --trust ${priv} is a private key; give the operator's public key \\(operator\\.pub\\)$`), 'private key as --trust');
  failsWith(t, await runFerry(['sim', '--broker', `127.0.0.1:${closed}`, '--hw', 'h', '--version', '1.0.0', '--trust', priv]), 1,
    /^ferry sim: --trust .* is a private key/, 'sim: private key as --trust');
  failsWith(t, await runFerry(['release', 'publish', '--broker', `127.0.0.1:${closed}`, '--image', image, '--version', '1.0.0', '--hw', 'h', '--key', pub]), 1,
    new RegExp(`^ferry release publish: --key ${pub} is a public key; give the operator's private key`), 'public key as --key');
  failsWith(t, await runFerry(['agent', '--broker', `127.0.0.1:${closed}`, '--data-dir', path.join(dir, 'ag-img'), '--trust', image]), 1,
    /^ferry agent: --trust .*image\.bin is not a PEM public key/, 'an image as --trust');
});

t.test('host:port without a scheme means mqtt://host:port (item 13)', async (t) => {
  const store = IdentityStore.open(path.join(dir, 'hostport'));
  const op = await store.add('operator', 'op-hp');
  const broker = await startBroker({ ferry: { store } });
  t.teardown(async () => {
    await broker.close();
    store.close();
  });
  const r = await runFerry(['status', '--broker', `127.0.0.1:${broker.port}`, '--username', op.username], { FERRY_PASSWORD: op.password });
  t.equal(r.code, 0, r.err);
  t.match(r.out, /no nodes have reported yet/, 'status talks to the broker');
  const l = await runFerry(['release', 'publish', '--broker', `localhost:${broker.port}`, '--username', op.username, '--image', image, '--version', '1.0.0', '--hw', 'h', '--key', priv, '--no-wait', '--json'], { FERRY_PASSWORD: op.password });
  t.equal(l.code, 0, l.err);
  t.match(l.out, /"version":"1\.0\.0"/, 'release publish too');
});

t.test('passwords: --password-file, the environment, and secrets that never begin with "-" (item 12)', async (t) => {
  const store = IdentityStore.open(path.join(dir, 'secrets'));
  // A secret that begins with "-" (set by hand): the file and the environment carry it where a flag cannot.
  const dash = await store.add('operator', 'op-dash', { password: '-starts-with-a-dash-0123' });
  const broker = await startBroker({ ferry: { store } });
  t.teardown(async () => {
    await broker.close();
    store.close();
  });
  const file = path.join(dir, 'op-dash.secret');
  fs.writeFileSync(file, `${dash.password}\n`);
  let r = await runFerry(['status', '--broker', broker.url, '--username', 'op-dash', '--password-file', file]);
  t.equal(r.code, 0, `--password-file: ${r.err}`);
  r = await runFerry(['status', '--broker', broker.url, '--username', 'op-dash'], { FERRY_PASSWORD: dash.password });
  t.equal(r.code, 0, `FERRY_PASSWORD: ${r.err}`);
  r = await runFerry(['status', '--broker', broker.url, '--username', 'op-dash', `--password=${dash.password}`]);
  t.equal(r.code, 0, `--password=SECRET: ${r.err}`);
  failsWith(t, await runFerry(['status', '--broker', broker.url, '--username', 'op-dash', '--password', 'x', '--password-file', file]), 2,
    /^ferry status: --password and --password-file are exclusive/, 'both --password and --password-file');
  failsWith(t, await runFerry(['status', '--broker', broker.url, '--username', 'op-dash', '--password', dash.password]), 2,
    /^ferry status: --password: a secret beginning with "-" reads as a flag; give --password=SECRET, --password-file FILE or FERRY_PASSWORD$/, '--password -SECRET');
  failsWith(t, await runFerry(['status', '--broker', broker.url, '--password-file', file]), 2,
    /^ferry status: --password-file needs --username$/, 'a password without a user name (MQTT.js used to hang, then exit 0)');
  failsWith(t, await runFerry(['agent', '--broker', broker.url, '--data-dir', path.join(dir, 'ag-up'), '--upstream', broker.url, '--upstream-password', 'x']), 2,
    /^ferry agent: --upstream-password needs --upstream-username$/, 'an upstream password without an upstream user name');
  failsWith(t, await runFerry(['status', '--broker', broker.url, '--username', 'op-dash', '--password-file', path.join(dir, 'nope')]), 1,
    /^ferry status: --password-file .*nope: no such file$/, 'a missing --password-file');
  failsWith(t, await runFerry(['status', '--broker', broker.url, '--username', 'op-dash'], { FERRY_PASSWORD: 'wrong-wrong-wrong-wrong' }), 1,
    new RegExp(`^ferry status: the broker at ${broker.url.replace(/\./g, '\\.')} refused the connection: Bad username or password$`), 'a wrong password');

  const helpCommands = [['agent'], ['gateway'], ['status'], ['release', 'publish'], ['sim']];
  const helps = await Promise.all(helpCommands.map((cmd) => runFerry([...cmd, '--help'])));
  for (const [i, cmd] of helpCommands.entries()) {
    const help = helps[i];
    if (cmd[0] !== 'gateway') t.match(help.out, /--password-file/, `ferry ${cmd.join(' ')} --help lists --password-file`);
    if (cmd[0] === 'agent' || cmd[0] === 'gateway') t.match(help.out, /--upstream-password-file/, `ferry ${cmd[0]} --help lists --upstream-password-file`);
  }

  // Generated secrets: through the binary a few times, and the generator itself many times.
  const data = path.join(dir, 'secrets');
  for (let i = 0; i < 3; i++) {
    const add = await runFerry(['devices', 'add', `dev-${i}`, '--data-dir', data, '--json']);
    t.equal(add.code, 0, add.err);
    t.notMatch((JSON.parse(add.out) as { password: string }).password, /^[-_]/, `devices add dev-${i}: the secret does not begin with - or _`);
  }
  const { newSecret } = await import('../broker/secret.js');
  const leading = new Set(Array.from({ length: 5000 }, () => newSecret()[0]));
  t.notOk(leading.has('-') || leading.has('_'), '5000 generated secrets: none begins with - or _ (1 in 32 would without the rule)');
});

t.test('a closed stdout (ferry devices list | head) ends the command quietly, exit 0 (item 13)', async (t) => {
  const data = path.join(dir, 'epipe');
  for (const id of ['e-1', 'e-2', 'e-3']) t.equal((await runFerry(['devices', 'add', id, '--data-dir', data])).code, 0);
  for (const args of [['devices', 'list', '--data-dir', data], ['keygen', '--out', path.join(dir, 'keys-epipe')]]) {
    const child = spawn(process.execPath, [ferryBin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy(); // the reader is gone before the first line is written: that write fails with EPIPE
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => child.once('close', (c) => r(c)));
    t.equal(code, 0, `ferry ${args.slice(0, 2).join(' ')}: exit 0`);
    t.equal(err, '', 'nothing on stderr');
  }
});
