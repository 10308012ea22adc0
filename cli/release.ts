import type { CommandModule } from 'yargs';
import { ManifestFlag } from '../shared/manifest.js';
import { describeVerdict } from '../shared/release-status.js';
import { DEFAULT_WAIT_TIMEOUT_MS, PublishError, publishRelease } from '../operator/publish.js';
import { readReleases, setWithdrawn, type ReleaseView } from '../operator/releases.js';
import { UsageError } from './common.js';
import { readFileOrFail, readOperatorKey } from './key-files.js';
import { operatorAccess, operatorOptions, type OperatorArgs } from './operator-access.js';
import { reachingBroker } from './startup.js';
import { formatBytes, progressBar } from './progress.js';
import { terminalWidth, wrapWords } from './text-fit.js';

interface PublishArgs extends OperatorArgs {
  image: string;
  version: string;
  hw: string;
  key: string;
  'security-version': number;
  'allow-no-rollback': boolean;
  wait: boolean;
  'wait-timeout': number;
}

/** Hardware class and version become topic levels: the broker's ACL takes only these (broker/acl.ts). */
function checkRelease(hw: string | undefined, version?: string): void {
  if (hw !== undefined && !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/.test(hw)) throw new UsageError(`--hw "${hw}" must be 1-32 of A-Z a-z 0-9 _ . - (starting with a letter or digit)`);
  if (version !== undefined && !/^[0-9A-Za-z.+-]{1,32}$/.test(version)) throw new UsageError(`--version "${version}" must be 1-32 of A-Z a-z 0-9 . + -`);
}

const publish: CommandModule<object, PublishArgs> = {
  command: 'publish',
  describe: 'sign a firmware image, publish it as a release and wait for the agents to accept it',
  builder: (y) =>
    operatorOptions(y)
      .option('image', { type: 'string', demandOption: true, describe: 'firmware image file' })
      .option('version', { type: 'string', demandOption: true, describe: 'release version (semver); a published version is immutable' })
      .option('hw', { type: 'string', demandOption: true, describe: 'hardware class the image is built for' })
      .option('key', { type: 'string', demandOption: true, describe: 'operator private key (from ferry keygen)' })
      .option('security-version', { type: 'number', default: 0, describe: 'anti-rollback counter; nodes refuse releases below the value they hold' })
      .option('allow-no-rollback', { type: 'boolean', default: false, describe: 'also update nodes whose bootloader cannot roll back' })
      .option('wait', { type: 'boolean', default: true, describe: 'wait for the agents\' verdicts (--no-wait: fire-and-forget)' })
      .option('wait-timeout', { type: 'number', default: DEFAULT_WAIT_TIMEOUT_MS / 1000, describe: 'seconds to wait for a first agent verdict' }) as never,
  handler: async (argv) => {
    checkRelease(argv.hw, argv.version);
    if (!(argv['wait-timeout'] > 0)) throw new UsageError(`--wait-timeout must be a positive number of seconds, not ${argv['wait-timeout']}`);
    const a = operatorAccess(argv);
    const image = readFileOrFail(argv.image, '--image');
    const key = readOperatorKey(argv.key);
    const bar = progressBar(`publishing ${argv.hw} ${argv.version}`, { quiet: argv.json });
    const summary = (digest: string, parts: number) => ({ hw: argv.hw, version: argv.version, securityVersion: argv['security-version'], size: image.length, digest, parts });
    try {
      const result = await reachingBroker(a.brokerUrl, publishRelease({
        ...a,
        image,
        hw: argv.hw,
        version: argv.version,
        key,
        securityVersion: argv['security-version'],
        flags: argv['allow-no-rollback'] ? ManifestFlag.allowNoRollback : 0,
        onProgress: (done, total) => bar.update(done, total),
        onWaiting: (ms) => {
          bar.done(`${formatBytes(image.length)} published`);
          if (!argv.json) process.stderr.write(`waiting for agents (up to ${Math.round(ms / 1000)} s)\n`);
        },
        waitForAgents: argv.wait,
        refuseConflict: true,
        waitTimeoutMs: Math.round(argv['wait-timeout'] * 1000),
      }));
      if (!argv.wait) bar.done(`${formatBytes(image.length)} in ${result.parts} part(s), not waiting for agents`);
      const s = { ...summary(result.manifest.digest.toString('hex'), result.parts), result: argv.wait ? 'accepted' : 'published', agents: result.verdicts };
      if (argv.json) process.stdout.write(`${JSON.stringify(s)}\n`);
      else {
        for (const v of result.verdicts) process.stdout.write(`  ${v.agent}: ${describeVerdict(v)}\n`);
        // On a narrow terminal the line is broken here (the digest in pieces, not cut), not by the terminal.
        process.stdout.write(`${wrapWords(`${argv.wait ? 'accepted' : 'published'} ${s.hw} ${s.version} sha256 ${s.digest}`, terminalWidth(process.stdout)).join('\n')}\n`);
      }
    } catch (err) {
      if (argv.json && err instanceof PublishError) {
        process.stdout.write(`${JSON.stringify({ hw: argv.hw, version: argv.version, result: 'failed', reason: err.reason, error: err.message, agents: err.verdicts })}\n`);
      } else if (err instanceof PublishError) {
        for (const v of err.verdicts) process.stderr.write(`  ${v.agent}: ${describeVerdict(v)}\n`);
      }
      throw err;
    }
  },
};

function verdictLines(r: ReleaseView): string[] {
  if (r.statuses.length === 0) return ['    (no agent has reported on it)'];
  return r.statuses.map((s) => `    ${s.agent}: ${s.digest === r.digest ? describeVerdict(s) : `${describeVerdict(s)} [about ${s.digest.slice(0, 12)}]`}`);
}

interface ListArgs extends OperatorArgs {
  hw?: string;
}

const list: CommandModule<object, ListArgs> = {
  command: 'list',
  describe: 'the releases retained on the broker, with each agent\'s verdict',
  builder: (y) => operatorOptions(y).option('hw', { type: 'string', describe: 'only this hardware class' }) as never,
  handler: async (argv) => {
    checkRelease(argv.hw);
    const a = operatorAccess(argv);
    const releases = await reachingBroker(a.brokerUrl, readReleases(a, { hw: argv.hw }));
    if (argv.json) {
      process.stdout.write(`${JSON.stringify(releases)}\n`);
      return;
    }
    if (releases.length === 0) {
      process.stdout.write('no releases on the broker\n');
      return;
    }
    for (const r of releases) {
      const accepted = r.statuses.filter((s) => s.state === 'accepted' && s.digest === r.digest).length;
      process.stdout.write(`${r.hw} ${r.version}  ${r.digest.slice(0, 12)}  ${formatBytes(r.size)}  ${accepted}/${r.statuses.length} agent(s) accepted${r.withdrawn ? '  WITHDRAWN' : ''}\n`);
      for (const l of verdictLines(r)) process.stdout.write(`${l}\n`);
    }
  },
};

interface OneArgs extends OperatorArgs {
  hw: string;
  version: string;
  restore: boolean;
}

const show: CommandModule<object, OneArgs> = {
  command: 'show',
  describe: 'one release: its manifest fields, withdraw marker and agents\' verdicts',
  builder: (y) => operatorOptions(y).option('hw', { type: 'string', demandOption: true }).option('version', { type: 'string', demandOption: true }) as never,
  handler: async (argv) => {
    checkRelease(argv.hw, argv.version);
    const a = operatorAccess(argv);
    const [r] = await reachingBroker(a.brokerUrl, readReleases(a, { hw: argv.hw, version: argv.version }));
    if (!r) throw new Error(`no release ${argv.hw} ${argv.version} on the broker`);
    if (argv.json) {
      process.stdout.write(`${JSON.stringify(r)}\n`);
      return;
    }
    const lines = [
      `release ${r.hw} ${r.version}${r.withdrawn ? ' (WITHDRAWN: not offered)' : ''}`,
      `  sha256            ${r.digest}`,
      `  size              ${r.size} bytes (${formatBytes(r.size)})`,
      `  security version  ${r.securityVersion}`,
      `  flags             ${r.flags}${r.flags & ManifestFlag.allowNoRollback ? ' (allow-no-rollback)' : ''}`,
      `  signed            ${new Date(r.created * 1000).toISOString()}`,
      '  agents:',
      ...verdictLines(r),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  },
};

const withdraw: CommandModule<object, OneArgs> = {
  command: 'withdraw',
  describe: 'stop agents offering a release (nodes running it are untouched); --restore undoes it',
  builder: (y) =>
    operatorOptions(y)
      .option('hw', { type: 'string', demandOption: true })
      .option('version', { type: 'string', demandOption: true })
      .option('restore', { type: 'boolean', default: false, describe: 'clear the withdraw marker: offer the release again' }) as never,
  handler: async (argv) => {
    checkRelease(argv.hw, argv.version);
    const a = operatorAccess(argv);
    await reachingBroker(a.brokerUrl, setWithdrawn(a, argv.hw, argv.version, argv.restore));
    const what = argv.restore ? 'restored' : 'withdrawn';
    if (argv.json) process.stdout.write(`${JSON.stringify({ hw: argv.hw, version: argv.version, result: what })}\n`);
    else process.stdout.write(`${what} ${argv.hw} ${argv.version}\n`);
  },
};

/** `ferry release publish|list|show|withdraw ...`: operator-side release commands. */
export const releaseCommand: CommandModule = {
  command: 'release',
  describe: 'operator release commands (publish, list, show, withdraw)',
  builder: (y) => y.command(publish as CommandModule).command(list as CommandModule).command(show as CommandModule).command(withdraw as CommandModule).demandCommand(1),
  handler: () => {},
};
