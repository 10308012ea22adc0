import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { IdentityStore, startBroker } from '../broker/index.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { connect, end, nextMessage, subscribe, tmpDir } from './helpers/broker-support.js';

/**
 * `ferry demo` and `ferry sim` with auth on: the demo's embedded broker refuses anonymous clients and
 * the demo provisions everything it starts; `ferry sim --provision` writes its nodes into a broker's
 * identity store and connects with them. Real processes of the built CLI.
 */
const here = path.dirname(fileURLToPath(import.meta.url));
const ferryBin = path.resolve(here, '../bin/ferry.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function ferry(args: string[], opts: { onStdout?: (text: string) => void } = {}): { done: Promise<Run>; kill(): void } {
  const p = spawn(process.execPath, [ferryBin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    opts.onStdout?.(stdout);
  });
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return {
    done: new Promise((resolve) => p.once('close', (code) => resolve({ code, stdout, stderr }))),
    kill: () => p.kill('SIGTERM'),
  };
}

t.test('ferry demo runs its broker with auth on and still ends as promised', async (t) => {
  const r = await ferry(['demo', '--devices', '3', '--fail-selftest', '1', '--image-size', '32768']).done;
  if (r.code !== 0) t.comment(r.stderr);
  t.equal(r.code, 0, 'exit 0');
  t.match(r.stderr, /broker\s+listening on mqtt:\/\/\S+ \(ferry plugin, anonymous refused\)/, 'the broker refuses anonymous clients');
  t.match(r.stderr, /provisioned demo-operator, demo-agent and 3 node identities/, 'everything the demo starts is provisioned');
  t.match(r.stderr, /summary\s+2 confirmed, 1 rolled back \(self-test failed\)/, 'the usual outcome');
});

t.test('ferry sim --provision writes node identities into a broker store and connects with them', async (t) => {
  const dir = tmpDir('sim-provision');
  const store = IdentityStore.open(dir);
  const logs: string[] = [];
  const broker = await startBroker({ ferry: { store, log: (l, m) => logs.push(`${l} ${m}`) } });
  const pub = path.join(dir, 'operator.pub');
  fs.writeFileSync(pub, generateOperatorKey().publicKey.export({ format: 'pem', type: 'spki' }));
  const op = await store.add('operator', 'op-1');
  const watcher = await connect(broker.url, { ...op, clientId: 'op-1' });
  t.teardown(async () => {
    await end(watcher);
    await broker.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await subscribe(watcher, 'ferry/d/+/presence');
  const online = (id: string) => nextMessage(watcher, (tp, p) => tp === `ferry/d/${id}/presence` && p.toString() === 'online');
  const bothOnline = Promise.all([online('sim-1'), online('sim-2')]);

  const sim = ferry(['sim', '--provision', '--data-dir', dir, '--broker', broker.url, '--devices', '2', '--id-prefix', 'sim', '--hw', 'hwx', '--version', '1.0.0', '--trust', pub, '--json']);
  await bothOnline;
  t.pass('both simulated nodes are online on a broker that refuses anonymous clients');
  t.same(store.list('node').map((i) => i.username), ['sim-1', 'sim-2'], 'their identities are in the store `ferry devices` uses');
  t.equal(broker.plugin!.principalOf('sim-1')?.role, 'node', 'sim-1 is connected as the node sim-1');
  sim.kill();
  const r = await sim.done;
  t.match(r.stderr, /provisioned 2 node identities in .*identities\.sqlite/, 'it says where it provisioned');
  t.same(r.stdout.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { event: string }).event).filter((e) => e === 'started'), ['started'], 'stdout stays JSON lines');
  t.same(logs.filter((l) => /refused/.test(l)), [], 'the broker refused nothing');

  // A name held by another role is not re-keyed: that would lock out a real agent.
  await store.add('agent', 'clash-1');
  const clash = await ferry(['sim', '--provision', '--data-dir', dir, '--broker', broker.url, '--devices', '1', '--id-prefix', 'clash', '--hw', 'hwx', '--version', '1.0.0', '--trust', pub]).done;
  t.equal(clash.code, 1, 'exit 1');
  t.match(clash.stderr, /cannot provision node "clash-1": .* already has an agent of that name/, 'the error names the clash');
  t.equal(store.get('clash-1')?.role, 'agent', 'the agent identity is untouched');

  const both = await ferry(['sim', '--provision', '--credentials', pub, '--broker', broker.url, '--hw', 'hwx', '--version', '1.0.0', '--trust', pub]).done;
  t.equal(both.code, 2, '--provision with --credentials is a usage error');
  t.match(both.stderr, /--provision makes its own credentials/);
});

t.test('--limit: a bad name or value stops ferry broker / ferry gateway with one line and exit 2', async (t) => {
  const dir = tmpDir('limit-flag');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bad = await ferry(['broker', '--port', '0', '--data-dir', dir, '--limit', 'frames.maxpacket=70k']).done;
  t.equal(bad.code, 2);
  t.match(bad.stderr, /--limit frames\.maxpacket=70k: unknown limit "frames\.maxpacket"/);
  const value = await ferry(['gateway', '--port', '0', '--data-dir', dir, '--trust', path.join(dir, 'none.pub'), '--limit', 'retained.node=lots']).done;
  t.equal(value.code, 2);
  t.match(value.stderr, /--limit retained\.node=lots: expected NAME=NUMBER/);
  t.notMatch(bad.stderr + value.stderr, /\n\s+at /, 'no stack trace');
});
