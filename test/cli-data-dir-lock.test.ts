import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { isStale, systemProbe, type LockHolder, type ProcessProbe } from '../cli/data-dir-lock.js';
import { tmpDir } from './helpers/broker-support.js';
import { runFerry, startFerry } from './helpers/ferry-process.js';

/**
 * Issue 10 item 10: one gateway (or agent, or broker) per data dir. The lock holds the pid; the
 * second process exits 1 naming it; a lock whose process is gone (kill -9, power cut, reboot) is
 * taken over.
 */
const dir = tmpDir('lock');
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

t.test('staleness rule', async (t) => {
  const probe = (boot: string, alive: Record<number, string>): ProcessProbe => ({ bootId: () => boot, startTime: (pid) => alive[pid] });
  const cases: [string, LockHolder, ProcessProbe, boolean][] = [
    ['live pid, same boot, same start time', { pid: 42, boot: 'b1', start: '100' }, probe('b1', { 42: '100' }), false],
    ['pid gone', { pid: 42, boot: 'b1', start: '100' }, probe('b1', {}), true],
    ['pid reused by a later process', { pid: 42, boot: 'b1', start: '100' }, probe('b1', { 42: '900' }), true],
    ['written before a reboot (pids repeat)', { pid: 42, boot: 'b0', start: '100' }, probe('b1', { 42: '100' }), true],
    ['bare pid, alive', { pid: 42 }, probe('b1', { 42: '5' }), false],
    ['bare pid, gone', { pid: 42 }, probe('b1', {}), true],
    ['no start time known (not Linux): alive by kill -0', { pid: 42, boot: 'b1', start: '100' }, probe('b1', { 42: '' }), false],
    ['garbage', { pid: NaN }, probe('b1', {}), true],
  ];
  for (const [what, holder, p, stale] of cases) t.equal(isStale(holder, p), stale, what);
  t.not(systemProbe.startTime(process.pid), undefined, 'this process is alive to the system probe');
});

function lockLine(d: string, pid: number, cmd = 'gateway'): RegExp {
  return new RegExp(`^ferry \\S+: data dir ${d.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by pid ${pid} \\(ferry ${cmd}\\)\\n$`);
}

t.test('a second gateway, agent, broker or demo on the same data dir exits 1 naming the pid; kill -9 leaves a lock that is taken over', async (t) => {
  const d = path.join(dir, 'gw');
  const first = startFerry(['gateway', '--port', '0', '--host', '127.0.0.1', '--data-dir', d]);
  t.teardown(() => first.stop());
  await first.waitFor(/agent connected/);
  const pid = first.child.pid!;

  for (const args of [
    ['gateway', '--port', '0', '--host', '127.0.0.1', '--data-dir', d],
    ['agent', '--broker', 'mqtt://127.0.0.1:1', '--data-dir', d],
    ['broker', '--port', '0', '--host', '127.0.0.1', '--data-dir', d],
    ['demo', '--data-dir', d, '--devices', '1'],
  ]) {
    const r = await runFerry(args);
    t.equal(r.code, 1, `ferry ${args[0]}: exits 1`);
    t.match(r.err, lockLine(d, pid), `ferry ${args[0]}: ${r.err.trim()}`);
  }
  const list = await runFerry(['devices', 'list', '--data-dir', d]);
  t.equal(list.code, 0, 'identity commands still work beside the running gateway (they take no lock)');

  first.child.kill('SIGKILL');
  await first.exited();
  t.ok(fs.existsSync(path.join(d, 'agent.lock')), 'kill -9 leaves its lock behind');
  const next = startFerry(['gateway', '--port', '0', '--host', '127.0.0.1', '--data-dir', d]);
  t.teardown(() => next.stop());
  await next.waitFor(new RegExp(`took over the lock of pid ${pid}, which is gone`));
  await next.waitFor(/agent connected/);
  t.pass('the next gateway takes the stale lock over and starts');
  t.equal(await next.stop(), 0, 'SIGTERM: exit 0');
  t.notOk(fs.existsSync(path.join(d, 'agent.lock')) || fs.existsSync(path.join(d, 'broker.lock')), 'and its locks are gone');
});

t.test('ferry sim --state-dir: one sim per state dir', async (t) => {
  const d = path.join(dir, 'sim-state');
  const keys = path.join(dir, 'sim-keys');
  t.equal((await runFerry(['keygen', '--out', keys])).code, 0);
  const args = ['sim', '--broker', 'mqtt://127.0.0.1:1', '--hw', 'h', '--version', '1.0.0', '--trust', path.join(keys, 'operator.pub'), '--state-dir', d];
  const first = startFerry(args);
  t.teardown(() => first.stop());
  // It logs to stdout; the lock file itself says it holds the dir.
  while (!fs.existsSync(path.join(d, 'sim.lock'))) {
    if (first.child.exitCode !== null) throw new Error(`ferry sim exited: ${first.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const second = await runFerry(args);
  t.equal(second.code, 1, 'the second sim exits 1');
  t.match(second.err, lockLine(d, first.child.pid!, 'sim'), second.err.trim());
});

t.test('two gateways started at the same moment: exactly one runs', async (t) => {
  const d = path.join(dir, 'race');
  const a = startFerry(['gateway', '--port', '0', '--host', '127.0.0.1', '--data-dir', d]);
  const b = startFerry(['gateway', '--port', '0', '--host', '127.0.0.1', '--data-dir', d]);
  t.teardown(async () => {
    await a.stop();
    await b.stop();
  });
  const loser = await Promise.race([a.exited().then(() => a), b.exited().then(() => b)]);
  const winner = loser === a ? b : a;
  t.equal(await loser.exited(), 1, 'one exits 1');
  t.match(loser.stderr(), lockLine(d, winner.child.pid!), 'naming the other');
  await winner.waitFor(/agent connected/);
  t.equal(winner.child.exitCode, null, 'the other runs');
});

t.test('a lock from before a reboot, or of a pid now used by another process, is stale; a live one is not', async (t) => {
  const boot = systemProbe.bootId();
  const start = systemProbe.startTime(process.pid);
  t.ok(boot && start, 'Linux /proc gives a boot id and start times', { skip: !boot || !start });
  if (!boot || !start) return;
  // This test process stands in for "some process with that pid": alive, but not the lock's writer.
  const cases: [string, LockHolder, boolean][] = [
    ['previous boot', { pid: process.pid, command: 'gateway', boot: 'f'.repeat(36), start }, true],
    ['pid reused', { pid: process.pid, command: 'gateway', boot, start: String(Number(start) + 1) }, true],
    ['live holder', { pid: process.pid, command: 'gateway', boot, start }, false],
  ];
  for (const [what, holder, stale] of cases) {
    const d = path.join(dir, what.replace(/\W+/g, '-'));
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'agent.lock'), JSON.stringify(holder));
    const agent = startFerry(['agent', '--broker', 'mqtt://127.0.0.1:1', '--data-dir', d]);
    if (stale) {
      await agent.waitFor(new RegExp(`took over the lock of pid ${process.pid}`));
      t.equal(await agent.stop(), 0, `${what}: taken over`);
    } else {
      t.equal(await agent.exited(), 1, `${what}: refused`);
      t.match(agent.stderr(), lockLine(d, process.pid), `${what}: names the pid`);
    }
  }
});
