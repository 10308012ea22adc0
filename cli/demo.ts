import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { CommandModule } from 'yargs';
import { Agent } from '../agent/agent.js';
import type { NodeStatus } from '../agent/status.js';
import { IdentityStore } from '../broker/identity-store.js';
import { poolKdf } from '../broker/kdf.js';
import { provision } from '../broker/provision.js';
import { startBroker } from '../broker/server.js';
import { fleetIds, startFleet } from '../device/fleet.js';
import { demoImage } from '../harness/images.js';
import { startMicroPythonFleet } from '../device/micropython-fleet.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { publishRelease } from '../operator/publish.js';
import { makeLogger, UsageError } from './common.js';
import { lockAgentState } from './agent.js';
import { lockBrokerState } from './broker.js';
import { formatBytes, progressBar } from './progress.js';

interface Args {
  devices: number;
  'fail-selftest': number;
  'image-size': number;
  hw: string;
  timeout: number;
  'data-dir'?: string;
  verbose: boolean;
  json: boolean;
  node: 'sim' | 'micropython';
}

const FINAL = new Set(['confirmed', 'rolledBack', 'rejected', 'timedOut', 'failed']);

function progressLine(s: NodeStatus): string {
  const pct = s.total ? Math.floor((100 * s.received) / s.total) : s.state === 'confirmed' ? 100 : 0;
  const bar = '#'.repeat(Math.round(pct / 5)).padEnd(20, '.');
  const why = s.reason ? ` (${s.reason})` : '';
  return `${s.id.padEnd(8)} [${bar}] ${String(pct).padStart(3)}%  ${s.state}${why}  running ${s.runningVersion}`;
}

/** `ferry demo`: the whole system in one process, from a signed release to confirmed boots. */
export const demoCommand: CommandModule<object, Args> = {
  command: 'demo',
  describe: 'broker + agent + simulated nodes + a signed release, live to confirmed boot',
  builder: (y) =>
    y.options({
      devices: { type: 'number', default: 5, describe: 'simulated nodes' },
      'fail-selftest': { type: 'number', default: 1, describe: 'how many of them fail their self-test and must roll back' },
      'image-size': { type: 'number', default: 256 * 1024, describe: 'release image size in bytes' },
      hw: { type: 'string', default: 'esp32-devkitc', describe: 'hardware class' },
      timeout: { type: 'number', default: 120, describe: 'give up after this many seconds' },
      'data-dir': { type: 'string', describe: 'agent state directory (default: a fresh temp dir)' },
      verbose: { type: 'boolean', default: false, describe: 'also print agent log lines' },
      node: { choices: ['sim', 'micropython'], default: 'sim', describe: 'node client: the TypeScript simulator, or the MicroPython client (node/micropython) in real MicroPython' },
      json: { type: 'boolean', default: false, describe: 'print the summary as JSON' },
    }) as never,
  handler: async (argv) => {
    const n = argv.devices;
    const k = argv['fail-selftest'];
    if (!Number.isInteger(n) || n < 1 || n > 200) throw new UsageError(`--devices must be 1..200, got ${n}`);
    if (!Number.isInteger(k) || k < 0 || k > n) throw new UsageError(`--fail-selftest must be 0..${n}, got ${k}`);
    if (!Number.isInteger(argv['image-size']) || argv['image-size'] < 1024 || argv['image-size'] > 8 * 1024 * 1024) {
      throw new UsageError(`--image-size must be 1024..8388608 bytes, got ${argv['image-size']}`);
    }
    const out = process.stderr;
    const dataDir = argv['data-dir'] ?? fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-demo-'));
    const locks = [lockBrokerState(dataDir, 'demo'), lockAgentState(dataDir, 'demo')];
    const say = (line: string) => {
      if (!argv.json) out.write(`${line}\n`);
    };

    const { privateKey, publicKey } = generateOperatorKey();
    const logger = makeLogger(false);
    const log = argv.verbose ? logger : (lvl: 'info' | 'warn' | 'error', msg: string) => lvl === 'error' && logger(lvl, msg);
    // The broker runs as `ferry gateway` does: ferry plugin on, anonymous clients refused. The demo
    // provisions every client it starts in the store beside the agent state, as an operator would
    // with `ferry devices|agents|operators add`.
    // Every identity is made at once: hashed side by side on the thread pool (broker/kdf.ts).
    const store = IdentityStore.open(dataDir, { kdf: poolKdf });
    const ids = fleetIds(n);
    const [operator] = (await provision(store, 'operator', ['demo-operator'])).values();
    const [agentCred] = (await provision(store, 'agent', ['demo-agent'], { serves: ['*'] })).values();
    const nodeCreds = await provision(store, 'node', ids);
    const broker = await startBroker({ ferry: { store, allowAnonymous: false, log } });
    say(`broker   listening on ${broker.url} (ferry plugin, anonymous refused)`);
    say(`auth     provisioned demo-operator, demo-agent and ${n} node identities in ${store.file}`);
    const agent = new Agent({ brokerUrl: broker.url, ...agentCred, dataDir, trust: [publicKey], log });
    await agent.start();
    say(`agent    state in ${dataDir}`);

    const perNode = Object.fromEntries(ids.map((id) => [id, { ...nodeCreds.get(id)! }]));
    const fleet =
      argv.node === 'micropython'
        ? await startMicroPythonFleet({
            brokerUrl: broker.url, count: n, hw: argv.hw, version: '1.0.0', trust: [publicKey], image: demoImage(argv.hw, '1.0.0', Math.min(argv['image-size'], 64 * 1024)),
            maxImage: argv['image-size'], failSelfTest: k, failVersion: '1.1.0', perNode,
          })
        : await startFleet({ brokerUrl: broker.url, count: n, hw: argv.hw, version: '1.0.0', trust: [publicKey], failSelfTest: k, perNode });
    say(`nodes    ${n} ${argv.node === 'micropython' ? 'MicroPython (real interpreter, node/micropython)' : 'simulated'} ${argv.hw} nodes on 1.0.0 (${k} with a failing self-test)`);
    await waitFor(() => agent.statuses().length >= n, 15_000, 'every node to say hello');

    const image = demoImage(argv.hw, '1.1.0', argv['image-size']);
    const bar = progressBar('release  publishing 1.1.0', { quiet: argv.json });
    await publishRelease({ brokerUrl: broker.url, ...operator, image, hw: argv.hw, version: '1.1.0', key: privateKey, onProgress: (d, t) => bar.update(d, t) });
    bar.done(`${formatBytes(image.length)} signed and published`);

    const tty = Boolean(out.isTTY) && !argv.json;
    const started = Date.now();
    const lastState = new Map<string, string>();
    let drawn = 0;
    const draw = () => {
      const rows = agent.statuses().sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
      if (tty) {
        if (drawn) out.write(`\x1b[${drawn}A`);
        for (const s of rows) out.write(`\x1b[2K${progressLine(s)}\n`);
        drawn = rows.length;
      } else if (!argv.json) {
        for (const s of rows) {
          const key = `${s.state}/${s.runningVersion}`;
          if (lastState.get(s.id) !== key) {
            lastState.set(s.id, key);
            out.write(`${progressLine(s)}\n`);
          }
        }
      }
    };
    const timer = setInterval(draw, tty ? 150 : 100);
    let finished = false;
    try {
      await waitFor(
        () => {
          const rows = agent.statuses();
          return rows.length >= n && rows.every((s) => FINAL.has(s.state) && (s.state !== 'confirmed' || s.runningVersion === '1.1.0'));
        },
        argv.timeout * 1000,
        'every node to finish',
      );
      finished = true;
    } catch (err) {
      say(`demo: ${(err as Error).message}`);
    } finally {
      clearInterval(timer);
      draw();
    }

    const rows = agent.statuses();
    const count = (state: string) => rows.filter((s) => s.state === state).length;
    const confirmed = count('confirmed');
    const rolledBack = rows.filter((s) => s.state === 'rolledBack');
    const reasons = [...new Set(rolledBack.map((s) => s.reason ?? 'unknown'))];
    const summary = {
      seconds: Number(((Date.now() - started) / 1000).toFixed(1)),
      nodes: n,
      confirmed,
      rolledBack: rolledBack.length,
      rollbackReasons: reasons,
      other: rows.filter((s) => s.state !== 'confirmed' && s.state !== 'rolledBack').map((s) => ({ id: s.id, state: s.state, reason: s.reason })),
      nodesStatus: rows,
    };
    const ok = finished && confirmed === n - k && rolledBack.length === k && rolledBack.every((s) => s.reason === 'selfTestFailed');
    if (argv.json) process.stdout.write(`${JSON.stringify({ ok, ...summary })}\n`);
    else {
      const why = reasons.map((r) => (r === 'selfTestFailed' ? 'self-test failed' : r)).join(', ');
      say(`\nsummary  ${confirmed} confirmed, ${rolledBack.length} rolled back${rolledBack.length ? ` (${why})` : ''}` +
        `${summary.other.length ? `, ${summary.other.length} other: ${summary.other.map((o) => `${o.id} ${o.state}`).join(', ')}` : ''} in ${summary.seconds}s`);
    }
    await fleet.stop();
    await agent.stop();
    await broker.close();
    store.close();
    for (const lock of locks) lock.release();
    if (!argv['data-dir']) fs.rmSync(dataDir, { recursive: true, force: true });
    process.exitCode = ok ? 0 : 1;
  },
};

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${Math.round(ms / 1000)}s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
