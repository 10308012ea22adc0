import { randomBytes } from 'node:crypto';
import mqtt from 'mqtt';
import type { CommandModule } from 'yargs';
import { decodeEventsMessage, EVENT_LIMITS, type EventDoc } from '../shared/events.js';
import { isDeviceId, topics } from '../shared/topics.js';
import { jsonOption, untilSignal, UsageError } from './common.js';
import { reachingBroker } from './startup.js';
import { localTime, zoneName } from './status-table.js';
import { fitLine, terminalWidth } from './text-fit.js';
import { operatorAccess, operatorOptions, type OperatorArgs } from './operator-access.js';

interface Args extends OperatorArgs {
  device?: string;
  limit: number;
  follow: boolean;
  wait: number;
}

type AgentEvent = EventDoc & { agent: string };

/** One line per event: local time, agent, device, kind, detail (cut to the terminal when there is one). */
export function eventLine(e: AgentEvent, now: Date, width?: number): string {
  return fitLine(`${localTime(new Date(e.at), now)}  ${e.agent}  ${e.device ?? '-'}  ${e.kind}  ${e.detail}`.trimEnd(), width);
}

function jsonLine(e: AgentEvent): string {
  return JSON.stringify({ at: new Date(e.at).toISOString(), agent: e.agent, seq: e.seq, device: e.device, kind: e.kind, detail: e.detail });
}

export const eventsCommand: CommandModule<object, Args> = {
  command: 'events',
  describe: "the agents' event logs: history, and with --follow what happens next (operator identity)",
  builder: (y) =>
    operatorOptions(y).options({
      device: { type: 'string', describe: 'only the events of this device' },
      limit: { type: 'number', default: EVENT_LIMITS.defaultHistory, describe: `past events per agent (at most ${EVENT_LIMITS.maxHistory}; 0: none, only --follow)` },
      follow: { type: 'boolean', default: false, describe: 'keep printing events as they happen (Ctrl-C stops)' },
      json: { ...jsonOption, describe: 'one JSON object per event and line' },
      wait: { type: 'number', default: 2000, describe: 'ms to wait for the agents to answer' },
    }) as never,
  handler: async (argv) => {
    if (argv.device !== undefined && !isDeviceId(argv.device)) throw new UsageError(`--device "${argv.device}" is not a device id`);
    if (!Number.isInteger(argv.limit) || argv.limit < 0 || argv.limit > EVENT_LIMITS.maxHistory) throw new UsageError(`--limit must be 0..${EVENT_LIMITS.maxHistory}, not ${argv.limit}`);
    if (!(argv.wait > 0)) throw new UsageError(`--wait must be a positive number of ms, not ${argv.wait}`);
    const { brokerUrl: url, password: secret } = operatorAccess(argv);
    const t = topics(argv.prefix);
    // Answers come back on a topic named after the requester: the broker lets only that operator read it.
    const me = argv.username ?? `anon-${randomBytes(4).toString('hex')}`;
    if (!isDeviceId(me)) throw new UsageError(`--username "${me}" cannot name a topic level`);
    const signal = argv.follow ? untilSignal() : undefined;
    const client = await reachingBroker(url, mqtt.connectAsync(url, { protocolVersion: 4, username: argv.username, password: secret, reconnectPeriod: 0, connectTimeout: 10_000 }));
    client.on('error', () => {});
    const width = terminalWidth(process.stdout);
    const print = (e: AgentEvent) => process.stdout.write(`${argv.json ? jsonLine(e) : eventLine(e, new Date(), width)}\n`);
    const wanted = (e: EventDoc) => argv.device === undefined || e.device === argv.device;

    const id = randomBytes(6).toString('hex');
    const history: AgentEvent[] = [];
    const answered = new Set<string>();
    const live: AgentEvent[] = [];
    let historyDone = argv.limit === 0;
    const newestSeen = new Map<string, number>();
    let quiet: NodeJS.Timeout | undefined;
    let settle = () => {};
    const settled = new Promise<void>((resolve) => (settle = resolve));
    const arm = (ms: number) => {
      clearTimeout(quiet);
      quiet = setTimeout(settle, ms);
    };
    let errors = 0;
    client.on('message', (topic, payload) => {
      const m = decodeEventsMessage(payload);
      if (!m) return;
      const events = m.events.filter(wanted).map((e) => ({ ...e, agent: m.agent }));
      if (topic.endsWith(`/events/res/${me}`)) {
        if (m.id !== id || historyDone) return;
        if (m.error) {
          errors++;
          process.stderr.write(`ferry events: ${m.agent} refused the request: ${m.error}\n`);
        }
        answered.add(m.agent);
        history.push(...events);
        // Once one agent has answered, others get a short while more; then the history is complete.
        arm(Math.min(500, argv.wait));
      } else if (historyDone) {
        if (m.dropped) process.stderr.write(`ferry events: ${m.agent} left out ${m.dropped} event(s) of its live feed (rate limit); ferry events --limit N lists them\n`);
        for (const e of events) if (e.seq > (newestSeen.get(e.agent) ?? -1)) print(e);
      } else live.push(...events);
    });
    const subs = [...(argv.limit > 0 ? [t.eventsResponseWildcard(me)] : []), ...(argv.follow ? [t.agentEventsWildcard] : [])];
    await client.subscribeAsync(subs, { qos: 1 });

    if (argv.limit > 0) {
      const request = { v: 1, id, limit: argv.limit, ...(argv.device !== undefined ? { device: argv.device } : {}) };
      await client.publishAsync(t.eventsRequest(me), JSON.stringify(request), { qos: 1 });
      arm(argv.wait);
      await settled;
      historyDone = true;
      // Each agent's events in its own order; agents interleaved by time.
      history.sort((a, b) => a.at - b.at || a.agent.localeCompare(b.agent) || a.seq - b.seq);
      for (const e of history) {
        newestSeen.set(e.agent, Math.max(newestSeen.get(e.agent) ?? -1, e.seq));
        print(e);
      }
      if (answered.size === 0) {
        process.stderr.write(`ferry events: no agent answered within ${argv.wait} ms (is one connected to ${url}, and may ${argv.username ?? 'this client'} ask? operators only)\n`);
        if (!argv.follow) process.exitCode = 1;
      } else if (!argv.json && !argv.follow) process.stderr.write(`${history.length} event(s) from ${[...answered].sort().join(', ')}; times in ${zoneName(new Date())}\n`);
      if (errors) process.exitCode = 1;
    }
    if (argv.follow && signal) {
      historyDone = true;
      for (const e of live) if (e.seq > (newestSeen.get(e.agent) ?? -1)) print(e);
      await signal;
    }
    await client.endAsync();
  },
};
