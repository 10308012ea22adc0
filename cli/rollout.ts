import { randomBytes } from 'node:crypto';
import type { CommandModule } from 'yargs';
import { describeAmount, parseAmount, parseWaves, parseWindow, ROLLOUT_ID, RolloutError, type RolloutCommand, type RolloutSpec } from '../shared/rollout.js';
import { isDeviceId } from '../shared/topics.js';
import { planFor, targets } from '../agent/rollout-fsm.js';
import { findRelease, publishRollout, readFleet, readRollouts, revertPermitFor, withCommand, type RolloutListing } from '../operator/rollouts.js';
import { UsageError } from './common.js';
import { readOperatorKey } from './key-files.js';
import { operatorAccess, operatorOptions, type OperatorArgs } from './operator-access.js';
import { reachingBroker } from './startup.js';

interface StartArgs extends OperatorArgs {
  release: string;
  key: string;
  id?: string;
  group?: string[];
  devices?: string;
  canary?: string;
  waves?: string;
  'max-failures'?: string;
  window?: string;
  'min-battery'?: number;
  'auto-revert': boolean;
  auto: boolean;
}

interface OneArgs extends OperatorArgs {
  id?: string;
  key: string;
}

/** Rollout flag errors are usage errors: the CLI names the flag and exits 2. */
function usage<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof RolloutError) throw new UsageError(err.message);
    throw err;
  }
}

/** Turns the start flags into a rollout document (without its permit); throws UsageError naming the flag. */
export function specFromFlags(argv: Omit<StartArgs, keyof OperatorArgs | 'key'>, digest: string, now = Date.now()): RolloutSpec {
  const m = /^([A-Za-z0-9][A-Za-z0-9_.-]{0,31})\/([0-9A-Za-z.+-]{1,32})$/.exec(argv.release);
  if (!m) throw new UsageError(`--release "${argv.release}" must be HW/VERSION (e.g. esp32-c3/1.2.0)`);
  const [, hw, version] = m;
  if (argv.auto && (argv.canary !== undefined || argv.waves !== undefined || argv['max-failures'] !== undefined || argv['auto-revert'])) {
    throw new UsageError('--auto offers every node at once: it takes no --canary, --waves, --max-failures or --auto-revert');
  }
  const id = argv.id ?? `${hw}-${version.replace(/\+/g, '.')}-${randomBytes(3).toString('hex')}`.slice(0, 64);
  if (!ROLLOUT_ID.test(id)) throw new UsageError(`--id "${id}" must be 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)`);
  const devices = argv.devices ? argv.devices.split(',').map((s) => s.trim()).filter(Boolean) : [];
  for (const d of devices) if (!isDeviceId(d)) throw new UsageError(`--devices: "${d}" is not a device id`);
  const groups = argv.group ?? [];
  for (const g of groups) if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/.test(g)) throw new UsageError(`--group "${g}" is not a group name`);
  const minBattery = argv['min-battery'];
  if (minBattery !== undefined && !(minBattery >= 0 && minBattery <= 100)) throw new UsageError(`--min-battery ${minBattery} must be a percentage 0..100`);
  return usage(() => ({
    v: 1 as const, id, hw, version, digest, groups, devices,
    canary: argv.auto ? { n: 0 } : argv.canary !== undefined ? parseAmount(argv.canary, '--canary') : { n: 1 },
    waves: argv.auto || argv.waves === undefined ? [100] : parseWaves(argv.waves),
    maxFailures: argv['max-failures'] !== undefined ? parseAmount(argv['max-failures'], '--max-failures') : { n: 0 },
    window: argv.window !== undefined ? parseWindow(argv.window) : null,
    minBattery: minBattery ?? null,
    autoRevert: argv['auto-revert'], auto: argv.auto, plan: null, revertPermit: null, command: 'run' as const, seq: 1, created: Math.floor(now / 1000),
  }));
}

const start: CommandModule<object, StartArgs> = {
  command: 'start',
  describe: 'start offering a published release through a rollout: canary, waves, brakes',
  builder: (y) =>
    operatorOptions(y)
      .option('release', { type: 'string', demandOption: true, describe: 'HW/VERSION of a published release' })
      .option('key', { type: 'string', demandOption: true, describe: 'operator private key: the rollout is signed like a manifest' })
      .option('id', { type: 'string', describe: 'rollout id (default HW-VERSION-random)' })
      .option('group', { type: 'string', array: true, describe: 'only nodes in this broker group (repeatable)' })
      .option('devices', { type: 'string', describe: 'only these nodes: id,id,...' })
      .option('canary', { type: 'string', describe: 'canary wave: N nodes or P% (default 1)' })
      .option('waves', { type: 'string', describe: 'cumulative share after the canary, e.g. 10%,50%,100% (default 100%)' })
      .option('max-failures', { type: 'string', describe: 'halt once failures exceed N or P% (default 0: the first failure halts)' })
      .option('window', { type: 'string', describe: 'offer only between HH:MM-HH:MM, gateway-local time' })
      .option('min-battery', { type: 'number', describe: 'skip nodes reporting a battery below this percentage' })
      .option('auto-revert', { type: 'boolean', default: false, describe: 'on a halt, offer nodes that confirmed their previous release' })
      .option('auto', { type: 'boolean', default: false, describe: 'every node of the class at once, no canary, no halt' }) as never,
  handler: async (argv) => {
    specFromFlags(argv, '0'.repeat(64)); // flag errors before touching the network
    const key = readOperatorKey(argv.key);
    const a = operatorAccess(argv);
    const [hw, version] = argv.release.split('/');
    const release = await reachingBroker(a.brokerUrl, findRelease(a, hw, version));
    if (!release) throw new Error(`unknown release ${hw}/${version}: the broker holds no manifest for it (ferry release publish first)`);
    const spec = specFromFlags(argv, release.digest);
    // Waves fixed now from the fleet the broker knows, so agents serving parts of it agree at once.
    const fleet = await reachingBroker(a.brokerUrl, readFleet(a));
    const members = [...fleet].filter(([id, f]) => targets(spec, { id, hw: f.hw, groups: f.groups })).map(([id]) => id);
    if (members.length > 0) spec.plan = planFor(spec, members);
    if (spec.autoRevert) spec.revertPermit = revertPermitFor(spec, key);
    await reachingBroker(a.brokerUrl, publishRollout(a, spec, key));
    if (argv.json) process.stdout.write(`${JSON.stringify({ result: 'started', ...spec, revertPermit: undefined })}\n`);
    else {
      const plan = spec.auto ? 'every node at once (--auto)' : `canary ${describeAmount(spec.canary)}, waves ${spec.waves.map((w) => `${w}%`).join(',')}, halt above ${describeAmount(spec.maxFailures)} failure(s)`;
      const seen = spec.plan ? `; ${members.length} node(s) known now: ${spec.plan.counts.map((c, i) => `${i === 0 ? 'canary' : `wave ${i}`} ${c}`).join(', ')}` : '';
      process.stdout.write(`started rollout ${spec.id}: ${hw} ${version}, ${plan}${seen}\n`);
    }
  },
};

/** Picks the rollout an id-less command means: the only one not finished, else the newest. */
function pick(all: RolloutListing[], id: string | undefined, command: string): RolloutListing {
  if (id) {
    const r = all.find((x) => x.spec.id === id);
    if (!r) throw new Error(`no rollout ${id} on the broker`);
    return r;
  }
  if (all.length === 0) throw new Error('no rollouts on the broker');
  const live = all.filter((r) => r.view.state !== 'done' && r.view.state !== 'aborted');
  if (live.length > 1 && command !== 'status') throw new Error(`${live.length} rollouts are under way (${live.map((r) => r.spec.id).join(', ')}): name one`);
  return live[0] ?? all[0];
}

export function describeRollout(r: RolloutListing): string[] {
  const v = r.view;
  if (r.problem) return [`rollout ${v.id}: unreadable document: ${r.problem}`, ...r.agents.map((a) => `  agent ${a.agent}: ${a.refused ? `refused: ${a.refused}` : a.state}`)];
  const lines = [`rollout ${v.id}: ${v.hw} ${v.version}  ${v.state.toUpperCase()}${v.state === 'running' ? ` (wave ${v.currentWave}${v.currentWave === 0 ? ', canary' : ''})` : ''}`];
  if (v.reason) lines.push(`  why: ${v.reason}`);
  for (const w of v.waves) {
    const name = w.index === 0 ? 'canary' : `wave ${w.index}`;
    lines.push(`  ${name.padEnd(8)} ${String(w.nodes).padStart(4)} node(s): ${w.confirmed} confirmed, ${w.failed} failed, ${w.inProgress} in progress  [${w.state}]`);
  }
  if (v.failures.length > 0) {
    lines.push('  failures:');
    for (const f of v.failures) lines.push(`    ${f.device} ${f.outcome}${f.reason ? ` (${f.reason})` : ''}${f.detail ? `: ${f.detail}` : ''}`);
  }
  if (r.agents.length === 0) lines.push('  no agent has reported on it yet');
  for (const a of r.agents) lines.push(`  agent ${a.agent}: ${a.refused ? `refused: ${a.refused}` : `${a.state}, wave ${a.wave}, ${a.nodes} node(s)`}`);
  return lines;
}

const status: CommandModule<object, OneArgs> = {
  command: 'status [id]',
  describe: 'a rollout merged from every agent: waves, failures and why it halted',
  builder: (y) => operatorOptions(y).positional('id', { type: 'string', describe: 'rollout id (default: the one under way, else the newest)' }) as never,
  handler: async (argv) => {
    const a = operatorAccess(argv);
    const r = pick(await reachingBroker(a.brokerUrl, readRollouts(a, argv.id)), argv.id, 'status');
    if (argv.json) process.stdout.write(`${JSON.stringify({ ...r.view, agents: r.agents, ...(r.problem ? { problem: r.problem } : {}) })}\n`);
    else process.stdout.write(`${describeRollout(r).join('\n')}\n`);
  },
};

const list: CommandModule<object, OperatorArgs> = {
  command: 'list',
  describe: 'every rollout on the broker, newest first',
  builder: (y) => operatorOptions(y) as never,
  handler: async (argv) => {
    const a = operatorAccess(argv);
    const all = await reachingBroker(a.brokerUrl, readRollouts(a));
    if (argv.json) process.stdout.write(`${JSON.stringify(all.map((r) => ({ ...r.view, agents: r.agents })))}\n`);
    else if (all.length === 0) process.stdout.write('no rollouts on the broker\n');
    else for (const r of all) process.stdout.write(`${r.spec.id}  ${r.spec.hw} ${r.spec.version}  ${r.view.state}  wave ${r.view.currentWave}/${r.spec.waves.length}  ${r.view.failures.length} failure(s)\n`);
  },
};

function commandOf(verb: 'pause' | 'resume' | 'abort'): CommandModule<object, OneArgs> {
  const command: RolloutCommand = verb === 'resume' ? 'run' : verb;
  const help = { pause: 'stop new offers (updates under way finish)', resume: 'continue a paused or halted rollout', abort: 'end a rollout for good: no further offers' };
  return {
    command: `${verb} [id]`,
    describe: help[verb],
    builder: (y) =>
      operatorOptions(y)
        .positional('id', { type: 'string', describe: 'rollout id (default: the one under way)' })
        .option('key', { type: 'string', demandOption: true, describe: 'operator private key: commands are signed' }) as never,
    handler: async (argv) => {
      const key = readOperatorKey(argv.key);
      const a = operatorAccess(argv);
      const r = pick(await reachingBroker(a.brokerUrl, readRollouts(a, argv.id)), argv.id, verb);
      if (r.spec.command === 'abort') throw new Error(`rollout ${r.spec.id} was aborted: start a new rollout instead`);
      await reachingBroker(a.brokerUrl, publishRollout(a, withCommand(r.spec, command), key));
      const done = { pause: 'paused', resume: 'resumed', abort: 'aborted' }[verb];
      if (argv.json) process.stdout.write(`${JSON.stringify({ id: r.spec.id, result: done })}\n`);
      else process.stdout.write(`${done} rollout ${r.spec.id}\n`);
    },
  };
}

/** `ferry rollout start|status|list|pause|resume|abort`: operator campaign commands. */
export const rolloutCommand: CommandModule = {
  command: 'rollout',
  describe: 'offer a release through a rollout (canary, waves, auto-halt) and steer it',
  builder: (y) =>
    y
      .command(start as CommandModule)
      .command(status as CommandModule)
      .command(list as CommandModule)
      .command(commandOf('pause') as CommandModule)
      .command(commandOf('resume') as CommandModule)
      .command(commandOf('abort') as CommandModule)
      .demandCommand(1),
  handler: () => {},
};
