import type { CommandModule } from 'yargs';
import { untilSignal, UsageError } from './common.js';
import { FleetFeed, readFleet } from './fleet-feed.js';
import { reachingBroker } from './startup.js';
import { statusTable, totalsLines } from './status-table.js';
import { watchFleet } from './status-watch.js';
import { terminalWidth } from './text-fit.js';
import { operatorAccess, operatorOptions, type OperatorArgs } from './operator-access.js';

interface Args extends OperatorArgs {
  wait: number;
  watch: boolean;
  interval: number;
  rollout?: string;
}

export { statusTable } from './status-table.js';

export const statusCommand: CommandModule<object, Args> = {
  command: 'status',
  describe: 'show every node the agents report on (operator identity)',
  builder: (y) =>
    operatorOptions(y).options({
      wait: { type: 'number', default: 300, describe: 'ms of quiet after which the retained statuses are complete' },
      watch: { type: 'boolean', default: false, describe: 'keep watching: redraw in place on a terminal, a snapshot per change otherwise (Ctrl-C stops)' },
      interval: { type: 'number', default: 2, describe: 'with --watch and no terminal: seconds between snapshots, at most' },
      rollout: { type: 'string', describe: 'only the nodes whose current or last update belongs to this rollout id' },
    }) as never,
  handler: async (argv) => {
    if (!(argv.interval > 0)) throw new UsageError(`--interval must be a positive number of seconds, not ${argv.interval}`);
    if (argv.watch && argv.json) throw new UsageError('--watch draws for people; for scripts, run ferry status --json repeatedly');
    const feedOptions = operatorAccess(argv);
    const url = feedOptions.brokerUrl;
    if (argv.watch) {
      const signal = untilSignal();
      const feed = new FleetFeed(feedOptions);
      await reachingBroker(url, feed.start(true));
      const title = `ferry status ${url}${argv.rollout !== undefined ? ` rollout ${argv.rollout}` : ''}`;
      const stop = watchFleet(feed, { out: process.stdout, title, rollout: argv.rollout, intervalMs: argv.interval * 1000 });
      await signal;
      stop();
      await feed.stop();
      return;
    }
    const feed = await reachingBroker(url, readFleet({ ...feedOptions, quietMs: argv.wait }));
    const rows = feed.rows(argv.rollout);
    if (argv.json) {
      process.stdout.write(`${JSON.stringify(rows)}\n`);
      return;
    }
    if (rows.length === 0) {
      process.stdout.write(argv.rollout !== undefined ? `no node reports rollout ${argv.rollout}\n` : 'no nodes have reported yet\n');
      return;
    }
    const width = terminalWidth(process.stdout);
    const lines = statusTable(rows, { width, now: new Date(), rollout: argv.rollout !== undefined });
    process.stdout.write(`${[...lines, '', ...totalsLines(rows, width)].join('\n')}\n`);
  },
};
