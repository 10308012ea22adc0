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
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { publishRelease } from '../operator/publish.js';
import { UsageError } from './common.js';
import { makeLogger } from './logger.js';
import { publishRollout } from '../operator/rollouts.js';
import { planFor } from '../agent/rollout-fsm.js';
import type { RolloutView } from '../agent/rollout-view.js';
import type { RolloutSpec } from '../shared/rollout.js';
import { lockAgentState } from './agent.js';
import { lockBrokerState } from './broker.js';
import { formatBytes, progressBar } from './progress.js';
import { fitLine, terminalWidth, wrapWords } from './text-fit.js';

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

/** One node's line, never wider than `width` (the bar narrows first, then the tail is cut). */
export function nodeProgressLine(s: NodeStatus, width?: number): string {
  const pct = s.total ? Math.floor((100 * s.received) / s.total) : s.state === 'confirmed' ? 100 : 0;
  const why = s.reason ? ` (${s.reason})` : '';
  const tail = `] ${String(pct).padStart(3)}%  ${s.state}${why}  running ${s.runningVersion}`;
  const wave = s.wave === null ? '  ' : s.wave === 0 ? 'c ' : `w${s.wave}`;
  const head = `${s.id.padEnd(8)} ${wave} [`;
  const cells = Math.max(5, Math.min(20, (width ?? Infinity) - head.length - tail.length));
  const fill = Math.round((pct / 100) * cells);
  return fitLine(`${head}${'#'.repeat(fill).padEnd(cells, '.')}${tail}`, width);
}

function rolloutLine(v: RolloutView | undefined): string {
  if (!v) return 'rollout  (waiting for the agent)';
  const waves = v.waves.map((w) => `${w.index === 0 ? 'canary' : `wave ${w.index}`} ${w.confirmed + w.failed}/${w.nodes}${w.state === 'running' ? '*' : ''}`).join('  ');
  return `rollout  ${v.id} ${v.state}: ${waves}${v.failures.length ? `  (${v.failures.length} failed)` : ''}`;
}

/** `ferry demo`: the whole system in one process, from a signed release to confirmed boots. */
export const demoCommand: CommandModule<object, Args> = {
  command: 'demo',
  describe: 'broker + agent + simulated nodes + a signed release and its rollout (canary, waves), live to confirmed boot',
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
      // On a terminal, long lines are broken at spaces here rather than wrapped by the terminal.
      if (!argv.json) out.write(`${line.split('\n').flatMap((l) => wrapWords(l, terminalWidth(out))).join('\n')}\n`);
    };

    const { privateKey, publicKey } = generateOperatorKey();
    // The demo is for a person: readable log lines, errors only unless --verbose.
    const log = makeLogger({ 'log-format': 'pretty', 'log-level': argv.verbose ? 'info' : 'error' });
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
    const agent = new Agent({ brokerUrl: broker.url, ...agentCred, dataDir, trust: [publicKey], log, offerPolicy: 'rollout' });
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
    // Offered through a rollout, as `ferry rollout start` does: a canary node first, then half the
    // fleet, then the rest; the demo's failing nodes stay within --max-failures so it runs to the end.
    const spec: RolloutSpec = {
      v: 1, id: 'demo-1.1.0', hw: argv.hw, version: '1.1.0', digest: sha256(image).toString('hex'), groups: [], devices: [], canary: { n: 1 }, waves: [50, 100],
      maxFailures: { n: k }, window: null, minBattery: null, autoRevert: false, auto: false, plan: null, revertPermit: null, command: 'run', seq: 1, created: Math.floor(Date.now() / 1000),
    };
    spec.plan = planFor(spec, ids);
    await publishRollout({ brokerUrl: broker.url, ...operator }, spec, privateKey);
    say(`rollout  ${spec.id}: canary 1 node, then 50%, then 100% of ${n} (halts above ${k} failure(s)); c = canary, wN = wave N`);

    const tty = Boolean(out.isTTY) && !argv.json;
    const started = Date.now();
    const lastState = new Map<string, string>();
    let drawn = 0;
    let lastRollout = '';
    const draw = () => {
      const rows = agent.statuses().sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
      const rollout = rolloutLine(agent.rollouts()[0]);
      if (tty) {
        // Lines that never wrap and a block no taller than the terminal: moving up `drawn` lines
        // then lands on the block's first line, and every line is cleared before it is drawn.
        const width = terminalWidth(out);
        const room = Math.max(2, (out.rows || 24) - 3); // one line is the rollout's
        const lines = rows.length <= room ? rows.map((s) => nodeProgressLine(s, width)) : [
          ...rows.slice(0, room - 1).map((s) => nodeProgressLine(s, width)),
          fitLine(`… ${rows.length - room + 1} more nodes (${rows.filter((s) => FINAL.has(s.state)).length} of ${rows.length} finished)`, width),
        ];
        if (drawn) out.write(`\x1b[${drawn}A`);
        out.write(`\x1b[2K${fitLine(rollout, width)}\n`);
        for (const l of lines) out.write(`\x1b[2K${l}\n`);
        drawn = lines.length + 1;
      } else if (!argv.json) {
        if (rollout !== lastRollout) {
          lastRollout = rollout;
          out.write(`${rollout}\n`);
        }
        for (const s of rows) {
          const key = `${s.state}/${s.runningVersion}`;
          if (lastState.get(s.id) !== key) {
            lastState.set(s.id, key);
            out.write(`${nodeProgressLine(s)}\n`);
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
      rollout: agent.rollouts()[0] ?? null,
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
