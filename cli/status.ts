import mqtt from 'mqtt';
import type { CommandModule } from 'yargs';
import { topics } from '../shared/topics.js';
import type { NodeStatus } from '../agent/status.js';
import { brokerOption, jsonOption, prefixOption, usernameOption } from './common.js';
import { PASSWORD, passwordOptions, readSecret } from './secrets.js';
import { reachingBroker } from './startup.js';
import { brokerUrl } from './validate.js';

interface Args {
  broker: string;
  prefix: string;
  username?: string;
  password?: string;
  'password-file'?: string;
  json: boolean;
  wait: number;
}

/** Collects the retained status documents: they arrive right after subscribing, then go quiet. */
export async function readStatuses(opts: { brokerUrl: string; prefix?: string; username?: string; password?: string; quietMs?: number }): Promise<NodeStatus[]> {
  const t = topics(opts.prefix);
  const client = await mqtt.connectAsync(opts.brokerUrl, { protocolVersion: 4, username: opts.username, password: opts.password, reconnectPeriod: 0, connectTimeout: 10_000 });
  const found = new Map<string, NodeStatus>();
  let timer: NodeJS.Timeout | undefined;
  const quiet = new Promise<void>((resolve) => {
    const arm = () => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(resolve, opts.quietMs ?? 300);
    };
    client.on('message', (topic, payload) => {
      const id = t.deviceOf(topic);
      if (id && payload.length > 0) {
        try {
          found.set(id, JSON.parse(payload.toString()) as NodeStatus);
        } catch {
          /* not a ferry status document: skip it */
        }
      }
      arm();
    });
    arm();
  });
  await client.subscribeAsync(t.statusWildcard, { qos: 1 });
  await quiet;
  await client.endAsync();
  return [...found.values()].sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
}

export function statusTable(rows: NodeStatus[]): string {
  const header = ['NODE', 'HW', 'STATE', 'RUNNING', 'TARGET', 'PROGRESS', 'ATT', 'RETX', 'REASON', 'LAST SEEN'];
  const lines = rows.map((s) => [
    s.id,
    s.hw,
    s.state,
    s.runningVersion,
    s.targetVersion ?? '-',
    // A delta session counts patch chunks: say so, so a small total does not read as a small image.
    s.total ? `${Math.floor((100 * s.received) / s.total)}% ${s.received}/${s.total}${s.payload === 'delta' ? ' delta' : ''}` : '-',
    String(s.attempts),
    String(s.retransmits),
    s.reason ?? '-',
    s.lastSeen ? s.lastSeen.slice(0, 19).replace('T', ' ') : '-',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  const warnings = rows.flatMap((s) => s.warnings.map((w) => `warning: ${s.id}: ${w}`));
  return [fmt(header), ...lines.map(fmt), ...warnings].join('\n');
}

export const statusCommand: CommandModule<object, Args> = {
  command: 'status',
  describe: 'show every node the agents report on',
  builder: (y) =>
    y.options({
      broker: brokerOption,
      prefix: prefixOption,
      username: usernameOption,
      ...passwordOptions,
      json: jsonOption,
      wait: { type: 'number', default: 300, describe: 'ms of quiet after which the retained statuses are complete' },
    }) as never,
  handler: async (argv) => {
    const url = brokerUrl(argv.broker);
    const secret = readSecret(argv as never, PASSWORD, argv.username);
    const rows = await reachingBroker(url, readStatuses({ brokerUrl: url, prefix: argv.prefix, username: argv.username, password: secret, quietMs: argv.wait }));
    if (argv.json) process.stdout.write(`${JSON.stringify(rows)}\n`);
    else process.stdout.write(rows.length ? `${statusTable(rows)}\n` : 'no nodes have reported yet\n');
  },
};
