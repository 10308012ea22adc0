import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { runFerry } from './helpers/ferry-process.js';
import { startFerryServer } from './helpers/ferry-server.js';

// The shipped systemd unit (docs/deploy/ferry-gateway.service): systemd accepts it, it carries the
// settings the Raspberry Pi guide promises, and its ExecStart is a command line ferry accepts.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const unitFile = path.join(root, 'docs/deploy/ferry-gateway.service');

/** The unit's sections as key → values (a key may repeat), continuation lines joined. */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.replace(/\\\n/g, ' ').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1], current);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 1) throw new Error(`not a unit line: ${line}`);
    const k = line.slice(0, eq);
    current.set(k, [...(current.get(k) ?? []), line.slice(eq + 1)]);
  }
  return sections;
}

t.test('the systemd unit: verified by systemd, hardened, restarting, running as its own user', async (t) => {
  const units = parseUnit(fs.readFileSync(unitFile, 'utf8'));
  const service = units.get('Service')!;
  const one = (k: string) => service.get(k)?.[service.get(k)!.length - 1];
  t.ok(units.has('Unit') && units.has('Install'), '[Unit], [Service], [Install]');
  t.equal(one('User'), 'ferry', 'its own user');
  t.equal(one('Restart'), 'on-failure', 'restarts on failure');
  t.equal(one('StateDirectory'), 'ferry', 'data dir /var/lib/ferry, made by systemd');
  for (const [k, v] of [['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'], ['PrivateDevices', 'yes'], ['CapabilityBoundingSet', '']]) {
    t.equal(one(k), v, `${k}=${v}`);
  }
  t.notOk(service.has('MemoryDenyWriteExecute'), 'no MemoryDenyWriteExecute (V8 needs writable executable pages)');
  t.equal(units.get('Install')!.get('WantedBy')?.[0], 'multi-user.target');

  const verify = spawnSync('systemd-analyze', ['verify', unitFile], { encoding: 'utf8' });
  if (verify.error) t.comment('systemd-analyze is not installed: the unit was only parsed');
  else {
    t.equal(verify.status, 0, `systemd-analyze verify: ${verify.stderr.trim() || 'clean'}`);
    t.notMatch(verify.stderr, /Unknown key|Unknown section|Failed to parse|Invalid/, 'no unknown or invalid settings');
  }
});

t.test("the unit's ExecStart is a ferry command line that starts a gateway", async (t) => {
  const exec = parseUnit(fs.readFileSync(unitFile, 'utf8')).get('Service')!.get('ExecStart')![0].split(/\s+/);
  t.equal(exec[0], '/usr/bin/node', 'node by absolute path');
  t.match(exec[1], /\/dist\/bin\/ferry\.js$/, 'the built ferry');
  const args = exec.slice(2);
  t.equal(args[0], 'gateway');
  // The same flags with this machine's paths: a free port, a temp data dir, a real key.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-unit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  t.equal((await runFerry(['keygen', '--out', dir])).code, 0);
  const swap: Record<string, string> = { '--port': '0', '--data-dir': path.join(dir, 'data'), '--trust': path.join(dir, 'operator.pub') };
  const local = args.slice(1).map((a, i, all) => swap[all[i - 1]] ?? a);
  t.same(local.filter((a) => a.startsWith('--')), ['--port', '--data-dir', '--trust', '--log-format'], 'the flags the unit uses');
  // startFerryServer adds --port 0 and --host 127.0.0.1 itself.
  const gw = await startFerryServer('gateway', [...local.filter((_, i) => !(local[i] === '--port' || local[i - 1] === '--port'))]);
  const stopped = await gw.stop();
  t.equal(stopped, 0, 'started with those flags, stopped cleanly on SIGTERM (what systemctl stop sends)');
  t.match(gw.stderr(), /^\{"level":"info"/, 'JSON log lines for the journal');
});
