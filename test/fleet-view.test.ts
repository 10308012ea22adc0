import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import t from 'tap';
import type { NodeStatus } from '../agent/status.js';
import { demoImage } from '../harness/images.js';
import { ferryBin, runFerry, startFerry } from './helpers/ferry-process.js';
import { startFerryServer } from './helpers/ferry-server.js';
import { ferryInPty, hasScript } from './helpers/pty.js';
import { VtScreen } from './helpers/vt-screen.js';

/**
 * Seeing the fleet through real processes: `ferry gateway`, `ferry sim` (three nodes, one failing its
 * self-test), `ferry release publish`, then `ferry status` (table, --json, --rollout, --watch on a pipe
 * and on a pseudo-terminal at 80 and 50 columns), `ferry events` (history, --device, --json, --follow),
 * and the gateway's JSON log lines with their fields.
 */
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-fleet-view-'));
const data = path.join(dir, 'gw');
const pub = path.join(dir, 'keys', 'operator.pub');
const key = path.join(dir, 'keys', 'operator.key');

async function added(role: 'operators' | 'devices', name: string): Promise<string> {
  const r = await runFerry([role, 'add', name, '--data-dir', data, '--json']);
  if (r.code !== 0) throw new Error(r.err);
  return (JSON.parse(r.out) as { password: string }).password;
}

/** A long-running ferry whose stdout is collected (startFerry reads only stderr). */
function collect(args: string[], env: NodeJS.ProcessEnv = {}) {
  const child = spawn(process.execPath, [ferryBin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  const waiters = new Set<() => void>();
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    for (const w of [...waiters]) w();
  });
  child.stderr.resume();
  const exit = new Promise<number | string>((resolve) => child.once('exit', (code, sig) => resolve(code ?? sig ?? -1)));
  return {
    out: () => out,
    until: (re: RegExp) =>
      new Promise<void>((resolve) => {
        const check = () => re.test(out) && (waiters.delete(check), resolve());
        waiters.add(check);
        check();
      }),
    stop: () => (child.kill('SIGINT'), exit),
  };
}

t.test('status, events, watch and logs against a real gateway, sim and release', async (t) => {
  t.equal((await runFerry(['keygen', '--out', path.join(dir, 'keys')])).code, 0, 'keygen');
  const opPassword = await added('operators', 'op1');
  const spyPassword = await added('devices', 'spy');
  const op = { FERRY_PASSWORD: opPassword };
  const gateway = await startFerryServer('gateway', ['--data-dir', data, '--trust', pub, '--auto-offer']);
  const sim = startFerry(['sim', '--provision', '--data-dir', data, '--broker', gateway.url, '--devices', '3', '--hw', 'hwv', '--version', '1.0.0', '--trust', pub, '--fail-selftest', '1']);
  const watcher = await mqtt.connectAsync(gateway.url, { protocolVersion: 4, username: 'op1', password: opPassword, reconnectPeriod: 0 });
  t.teardown(async () => {
    await watcher.endAsync();
    await sim.stop();
    await gateway.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const fleet = new Map<string, NodeStatus>();
  let onStatus = () => {};
  watcher.on('message', (topic, payload) => {
    if (payload.length) fleet.set(topic.split('/')[2], JSON.parse(payload.toString()) as NodeStatus);
    onStatus();
  });
  const fleetUntil = (cond: () => boolean) => new Promise<void>((resolve) => ((onStatus = () => cond() && resolve()), onStatus()));
  await watcher.subscribeAsync('ferry/d/+/status', { qos: 1 });
  await fleetUntil(() => fleet.size === 3);

  const piped = collect(['status', '--broker', gateway.url, '--username', 'op1', '--watch', '--interval', '0.2'], op);
  const follow = collect(['events', '--broker', gateway.url, '--username', 'op1', '--follow', '--json', '--limit', '0'], op);
  await piped.until(/3 nodes/);
  const image = demoImage('hwv', '1.1.0', 70_000);
  fs.writeFileSync(path.join(dir, 'img-1.1.0.bin'), image);
  const publish = await runFerry(['release', 'publish', '--broker', gateway.url, '--username', 'op1', '--image', path.join(dir, 'img-1.1.0.bin'), '--hw', 'hwv', '--version', '1.1.0', '--key', key], op);
  t.equal(publish.code, 0, `publish: ${publish.err.trim().split('\n').pop()}`);
  const final = new Set(['confirmed', 'rolledBack']);
  await fleetUntil(() => [...fleet.values()].every((s) => s.targetVersion === '1.1.0' && final.has(s.state)));
  const digest = createHash('sha256').update(image).digest('hex').slice(0, 8);

  await t.test('ferry status: ONLINE, AGENT, DIGEST, totals; --json; --rollout; local time zone', async (t) => {
    const r = await runFerry(['status', '--broker', gateway.url, '--username', 'op1'], { ...op, TZ: 'Asia/Kolkata' });
    t.equal(r.code, 0, r.err);
    const lines = r.out.trimEnd().split('\n');
    t.match(lines[0], /^NODE\s+ON\s+AGENT\s+HW\s+STATE\s+RUNNING\s+TARGET\s+DIGEST\s+PROGRESS\s+ATT\s+RETX\s+REASON\s+SEEN (GMT\+5:30|IST)$/, 'every column (a pipe is unbounded), times in the local zone');
    t.match(r.out, new RegExp(`node-3\\s+yes\\s+gateway-agent\\s+hwv\\s+rolledBack\\s+1\\.0\\.0\\s+1\\.1\\.0\\s+${digest}\\s+100% \\d+/\\d+\\s+1\\s+\\d+\\s+selfTestFailed\\s+\\d\\d:\\d\\d:\\d\\d`), 'the failing node: online, its agent, the target digest, the reason');
    t.equal(lines[lines.length - 1], '3 nodes (3 online): 2 confirmed, 1 rolledBack', 'totals per state');
    const j = await runFerry(['status', '--broker', gateway.url, '--username', 'op1', '--json'], op);
    const rows = JSON.parse(j.out) as NodeStatus[];
    t.same(rows.map((s) => [s.id, s.agent, s.digest]), [['node-1', 'gateway-agent', digest], ['node-2', 'gateway-agent', digest], ['node-3', 'gateway-agent', digest]], '--json carries agent and digest');
    const none = await runFerry(['status', '--broker', gateway.url, '--username', 'op1', '--rollout', 'r-1'], op);
    t.equal(none.out, 'no node reports rollout r-1\n', '--rollout filters on the status rollout field');
  });

  await t.test('ferry status --watch: plain snapshots on a pipe; in place on a terminal at 80 and 50 columns', async (t) => {
    await piped.until(/2 confirmed, 1 rolledBack/);
    t.equal(await piped.stop(), 0, 'Ctrl-C ends the watch with exit 0');
    const snapshots = piped.out().split(/^ferry status /m).filter(Boolean);
    t.ok(snapshots.length >= 2, `${snapshots.length} snapshots as the update went on`);
    t.notMatch(piped.out(), /\x1b/, 'no escape sequences on a pipe');
    if (!hasScript) {
      t.comment('util-linux script is not installed: no pseudo-terminal, no terminal checks');
      return;
    }
    for (const [cols, rows] of [[80, 24], [50, 20]]) {
      const run = await ferryInPty(['status', '--broker', gateway.url, '--username', 'op1', '--watch'], { cols, rows, env: op, interruptOn: /1 rolledBack[^]*rolledBack/ });
      t.equal(run.code, 0, `${cols} columns: exit 0 after Ctrl-C`);
      const screen = new VtScreen(rows, cols);
      screen.write(run.out);
      const text = screen.text();
      t.equal(screen.wraps, 0, `${cols} columns: no line wrapped`);
      t.equal(screen.scrolled, 0, `${cols} columns: nothing scrolled away`);
      t.match(text[0], /^ferry status mqtt:\/\/127\.0\.0\.1:\d+/, `${cols} columns: the title on the first line`);
      t.equal(text[1], '3 nodes (3 online): 2 confirmed, 1 rolledBack', `${cols} columns: totals`);
      t.match(text[3], /^NODE\s+ON\s+.*STATE/, `${cols} columns: the header`);
      t.same(text.slice(4, 7).map((l) => l.split(/\s+/)[0]), ['node-1', 'node-2', 'node-3'], `${cols} columns: one line per node, no stale copies`);
      t.ok(text.slice(8).every((l) => l === ''), `${cols} columns: nothing below the frame`);
    }
  });

  await t.test('ferry events: history, --device, --json, --follow; operators only', async (t) => {
    await follow.until(/"device":"node-3","kind":"state","detail":"confirming -> rolledBack"/);
    t.equal(await follow.stop(), 0, '--follow printed the live state change; Ctrl-C ends it with exit 0');
    const lines = follow.out().trim().split('\n').map((l) => JSON.parse(l) as { agent: string; seq: number; at: string });
    t.ok(lines.every((e) => e.agent === 'gateway-agent' && /Z$/.test(e.at)), 'JSON lines: agent, ISO time');
    t.ok(lines.every((e, i) => i === 0 || lines[i - 1].seq < e.seq), 'in order, no duplicates');

    const h = await runFerry(['events', '--broker', gateway.url, '--username', 'op1', '--limit', '500'], op);
    t.equal(h.code, 0, h.err);
    t.match(h.out, /^\d\d:\d\d:\d\d {2}gateway-agent {2}node-3 {2}state {2}confirming -> rolledBack$/m, 'history: time, agent, device, kind, detail');
    t.match(h.out, /gateway-agent {2}- {2}release {2}hwv 1\.1\.0/, 'agent-wide events too');
    t.match(h.err, /event\(s\) from gateway-agent/, 'a summary on stderr');
    const d = await runFerry(['events', '--broker', gateway.url, '--username', 'op1', '--device', 'node-1', '--limit', '5', '--json'], op);
    const rows = d.out.trim().split('\n').map((l) => JSON.parse(l) as { device: string });
    t.ok(rows.length === 5 && rows.every((e) => e.device === 'node-1'), '--device --limit 5 --json: five events of node-1');

    const spy = await runFerry(['events', '--broker', gateway.url, '--username', 'spy', '--wait', '1000'], { FERRY_PASSWORD: spyPassword });
    t.equal(spy.code, 1, 'a node identity gets no history');
    t.match(spy.err, /no agent answered|refused the connection/, spy.err.trim());
    const bad = await runFerry(['events', '--broker', gateway.url, '--username', 'op1', '--device', 'a/b'], op);
    t.equal(bad.code, 2, 'a bad device id is a usage error');
  });

  await t.test('the gateway logs JSON lines with device, release, session and reason fields', async (t) => {
    const denied = await mqtt.connectAsync(gateway.url, { protocolVersion: 4, username: 'op1', password: 'wrong-password-wrong', reconnectPeriod: 0 }).catch((e: Error) => e);
    t.ok(denied instanceof Error, 'a wrong password is refused');
    await gateway.waitFor(/"auth":"refused"/);
    const logs = gateway.stderr().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    t.ok(logs.every((l) => typeof l.msg === 'string' && typeof l.time === 'string' && ['info', 'warn', 'error'].includes(l.level as string)), `${logs.length} lines, each a JSON object with level, time, msg`);
    const rolled = logs.find((l) => l.outcome === 'rolledBack');
    t.match(rolled, { level: 'warn', device: 'node-3', release: 'hwv/1.1.0', reason: 'selfTestFailed' }, 'the rollback: device, release, reason');
    t.ok(logs.some((l) => l.device === 'node-1' && l.state === 'downloading' && typeof l.session === 'number'), 'a state change carries the session');
    t.ok(logs.some((l) => l.verdict === 'accepted' && l.release === 'hwv/1.1.0' && l.digest === digest), 'the release verdict');
    t.match(logs.find((l) => l.auth === 'refused'), { level: 'warn', client: String, reason: String }, 'the auth failure');
  });

  await t.test('release publish on a terminal at 50 columns: the progress bar never wraps', { skip: hasScript ? false : 'no util-linux script' }, async (t) => {
    const img = path.join(dir, 'img-1.2.0.bin');
    fs.writeFileSync(img, demoImage('hwv', '1.2.0', 600_000));
    const run = await ferryInPty(['release', 'publish', '--broker', gateway.url, '--username', 'op1', '--image', img, '--hw', 'hwv', '--version', '1.2.0', '--key', key], { cols: 50, rows: 20, env: op });
    t.equal(run.code, 0, 'published');
    const screen = new VtScreen(20, 50);
    screen.write(run.out);
    t.match(run.out, /\r[^\r\n]*\[#+\.*\]/, 'a bar was drawn');
    t.equal(screen.wraps, 0, 'no line wrapped');
    t.notMatch(screen.text().join('\n'), /\[[#.]+\]/, 'and the bar is cleared when done');
  });
});

t.test('ferry --version prints the version in package.json; --log-format pretty reads as text', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.resolve(path.dirname(ferryBin), '../../package.json'), 'utf8')) as { version: string };
  const v = await runFerry(['--version']);
  t.equal(v.out, `ferry ${pkg.version}\n`, v.out);
  t.equal(v.code, 0);
  const pretty = await startFerryServer('broker', ['--data-dir', path.join(dir, 'pretty'), '--log-format', 'pretty']);
  await pretty.stop();
  t.match(pretty.stderr(), /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: ferry broker on/m, 'pretty: time, level, message');
  t.notMatch(pretty.stderr(), /^\{/m, 'no JSON');
});
