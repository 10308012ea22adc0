import type { CommandModule } from 'yargs';
import type { CutMode } from '../device/flash.js';
import { BOOT_PROFILES, bootProfile, type BootProfileName } from '../device/profiles.js';
import { MAX_SWEEP_IMAGE, sweepUpdate, type SweepResult } from '../harness/sweep.js';
import { allPoints, runAgentLoop, samplePoints, type LoopPoint, type LoopResult } from '../harness/sweep-loop.js';
import { jsonOption, UsageError } from './common.js';

/**
 * `ferry sim sweep`: the power-cut sweep of issue 4 for one boot profile. Two scenarios — an update
 * whose self-test passes (download, install, reboot, self-test, confirm) and one whose self-test
 * fails (revert) — each cut at every flash erase and write in turn, before, after and torn:
 *   firmware    harness/sweep.ts: the node's firmware alone, every cut followed by as many power-ons
 *               as it takes; checks bootable, counters, truthful outcome;
 *   with agent  harness/sweep-loop.ts: a real broker and agent and one simulated node per cut;
 *               checks that the agent's record converges to what the node really runs.
 * All cut points unless there are more than --sample (then a seeded random subset, --seed).
 */
interface SweepArgs {
  boot: BootProfileName;
  'image-size': number;
  scenario: 'both' | 'update' | 'revert';
  sample?: number;
  seed: number;
  agent: boolean;
  concurrency: number;
  json: boolean;
}

/** Above this many cut points per scenario a sweep samples unless --sample says otherwise. */
const DEFAULT_LIMIT = 1200;
const DEFAULT_SAMPLE = 300;
const CHUNK = 960; // what a 1024-byte node buffer negotiates on the sweep's topics (same as the loop)

export function checkSweepArgs(a: SweepArgs): string | undefined {
  if (!Number.isInteger(a['image-size']) || a['image-size'] < 1 || a['image-size'] > MAX_SWEEP_IMAGE) return `--image-size must be an integer 1..${MAX_SWEEP_IMAGE}, got ${a['image-size']}`;
  if (a.sample !== undefined && (!Number.isInteger(a.sample) || a.sample < 1)) return `--sample must be a positive integer, got ${a.sample}`;
  if (!Number.isInteger(a.seed) || a.seed < 0 || a.seed > 0xffffffff) return `--seed must be an integer 0..4294967295, got ${a.seed}`;
  if (!Number.isInteger(a.concurrency) || a.concurrency < 1 || a.concurrency > 64) return `--concurrency must be 1..64, got ${a.concurrency}`;
  return undefined;
}

interface ScenarioReport {
  scenario: 'update' | 'revert';
  sampled: boolean;
  firmware: Omit<SweepResult, 'failures'> & { failures: string[]; ms: number };
  agent?: LoopResult;
}

export const simSweepCommand: CommandModule<object, SweepArgs> = {
  command: 'sweep',
  describe: 'power-cut sweep of a full update and of a revert, at every flash write, for one boot profile; with the agent in the loop',
  builder: (y) =>
    y
      .options({
        boot: { choices: BOOT_PROFILES, default: 'esp-idf' as BootProfileName, describe: 'boot profile of the simulated node' },
        'image-size': { type: 'number', default: 12_000, describe: 'bytes of the factory image and of the update' },
        scenario: { choices: ['both', 'update', 'revert'] as const, default: 'both' as const, describe: 'update: the self-test passes; revert: it fails' },
        sample: { type: 'number', describe: `cut points per scenario (seeded random subset); default all, or ${DEFAULT_SAMPLE} above ${DEFAULT_LIMIT}` },
        seed: { type: 'number', default: 1, describe: 'seed of the random subset' },
        agent: { type: 'boolean', default: true, describe: 'run the agent-in-the-loop check too (--no-agent: firmware only)' },
        concurrency: { type: 'number', default: 6, describe: 'agent-loop cases at once' },
        json: jsonOption,
      })
      .check((argv) => {
        const problem = checkSweepArgs(argv as unknown as SweepArgs);
        if (problem) throw new UsageError(problem);
        return true;
      }) as never,
  handler: async (argv) => {
    const out = process.stdout;
    const progress = (line: string) => process.stderr.write(`${line}\n`);
    const scenarios = argv.scenario === 'both' ? (['update', 'revert'] as const) : [argv.scenario];
    if (!argv.json) out.write(`ferry sim sweep: ${argv.boot}, ${argv['image-size']}-byte images, power cut before, torn and after every flash erase and write\n`);
    const reports: ScenarioReport[] = [];
    for (const scenario of scenarios) {
      const failSelfTest = scenario === 'revert';
      const base = { profile: argv.boot, imageSize: argv['image-size'], chunkSize: CHUNK, failSelfTest };
      const t0 = Date.now();
      const operations = sweepUpdate({ ...base, points: [] }).operations;
      const points = choosePoints(operations, argv.sample, argv.seed);
      const sampled = points.length < operations * 3;
      const label = scenario === 'update' ? 'update (self-test passes)' : bootProfile(argv.boot).canRevert ? 'revert (self-test fails)' : 'failing image (self-test fails, no way back)';
      if (!argv.json) out.write(`${label}: ${operations} flash operations, ${sampled ? `a seeded sample of ${points.length} (seed ${argv.seed}) of the ${operations * 3}` : `all ${points.length}`} cut points\n`);
      const firmware = mergeFirmware((mode, at) => sweepUpdate({ ...base, modes: [mode], points: at }), points);
      const fw = { ...firmware, ms: Date.now() - t0 };
      if (!argv.json) {
        const ends = Object.entries(fw.outcomes).map(([k, v]) => `${v} ${k}`).join(', ');
        out.write(`  firmware    ${fw.cutPoints} cut points tried, ${fw.bootable} bootable after cut, ${fw.bricked} bricked, ${fw.truthful} truthful (${ends}) in ${secs(fw.ms)}\n`);
        for (const f of fw.failures.slice(0, 10)) out.write(`    ${f}\n`);
      }
      const report: ScenarioReport = { scenario, sampled, firmware: fw };
      if (argv.agent) {
        let lastTenth = -1;
        report.agent = await runAgentLoop({
          profile: argv.boot, failSelfTest, imageSize: argv['image-size'], concurrency: argv.concurrency, points: () => points,
          onCase: (c, done, total) => {
            const tenth = Math.floor((10 * done) / total);
            if (tenth !== lastTenth) {
              lastTenth = tenth;
              progress(`  with agent  ${scenario}: ${done}/${total} cut points`);
            }
            if (!c.converged && c.fired) progress(`  with agent  ${c.mode}@${c.at}: not converged: node ${c.node}; agent ${c.agent}`);
          },
        });
        const a = report.agent;
        if (!argv.json) {
          out.write(`  with agent  ${a.tried} cut points tried, ${a.bootable} bootable after cut, ${a.bricked} bricked, ${a.converged} converged in ${secs(a.ms)}\n`);
          for (const f of a.failures.slice(0, 10)) out.write(`    ${f}\n`);
        }
      }
      reports.push(report);
    }
    const bricked = reports.reduce((n, r) => n + r.firmware.bricked + (r.agent?.bricked ?? 0), 0);
    const untruthful = reports.reduce((n, r) => n + (r.firmware.cutPoints - r.firmware.truthful) + r.firmware.failures.length, 0);
    const unconverged = reports.reduce((n, r) => n + (r.agent ? r.agent.bootable - r.agent.converged : 0), 0);
    const ok = bricked === 0 && untruthful === 0 && unconverged === 0;
    if (argv.json) {
      out.write(`${JSON.stringify({ profile: argv.boot, imageSize: argv['image-size'], seed: argv.seed, ok, bricked, untruthful, unconverged, scenarios: reports }, null, 2)}\n`);
    } else {
      out.write(`${ok ? 'ok' : 'FAILED'}: ${bricked} bricked, ${untruthful} invariant failures, ${unconverged} not converged\n`);
    }
    if (!ok) process.exitCode = 1;
  },
};

function choosePoints(operations: number, sample: number | undefined, seed: number): LoopPoint[] {
  const total = operations * 3;
  const n = sample ?? (total > DEFAULT_LIMIT ? DEFAULT_SAMPLE : total);
  return n >= total ? allPoints(operations) : samplePoints(operations, n, seed);
}

/** Runs the firmware sweep once per mode over that mode's points and adds the results up. */
function mergeFirmware(run: (mode: CutMode, at: number[]) => SweepResult, points: LoopPoint[]): SweepResult {
  const byMode = new Map<CutMode, number[]>();
  for (const p of points) byMode.set(p.mode, [...(byMode.get(p.mode) ?? []), p.at]);
  let total: SweepResult | undefined;
  for (const [mode, at] of byMode) {
    const r = run(mode, at);
    if (!total) total = r;
    else {
      total.cutPoints += r.cutPoints;
      total.bootable += r.bootable;
      total.bricked += r.bricked;
      total.truthful += r.truthful;
      total.rolledBackByCut += r.rolledBackByCut;
      for (const [k, v] of Object.entries(r.outcomes)) total.outcomes[k] = (total.outcomes[k] ?? 0) + v;
      total.failures.push(...r.failures);
    }
  }
  return total ?? run('before', []);
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
