/**
 * The agent's live event feed under a flood: events written through AgentStore.event as fast as the
 * agent can, with the feed on and off, side by side in one run. Prints the store's CPU time per
 * 10,000 events in each case (the feed's cost is the difference), and what reached an operator
 * subscribed to the live topic: messages, bytes, events sent and counted as dropped.
 *
 *   node dist/scripts/bench/events.js [--events N] [--runs R] [--json]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { Agent } from '../../agent/agent.js';
import { startBroker } from '../../broker/server.js';
import { decodeEventsMessage } from '../../shared/events.js';
import { benchArg, median } from './bench-args.js';

const argv = process.argv.slice(2);
const total = Number(benchArg(argv, 'events', '50000'));
const runs = Number(benchArg(argv, 'runs', '3'));
const json = argv.includes('--json');

const broker = await startBroker();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-events-'));
const agent = new Agent({ brokerUrl: broker.url, dataDir: dir });
await agent.start();
agent.events.stop(); // started with the agent; each run below turns it on and off
const op = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
const got = { messages: 0, bytes: 0, events: 0, dropped: 0 };
op.on('message', (_topic, payload) => {
  const m = decodeEventsMessage(payload);
  if (!m) return;
  got.messages++;
  got.bytes += payload.length;
  got.events += m.events.length;
  got.dropped += m.dropped ?? 0;
});
await op.subscribeAsync(`ferry/a/${agent.name}/events`, { qos: 1 });

/** Writes `total` events, 1000 per event-loop turn (as a busy agent would), and returns CPU ms. */
async function flood(): Promise<number> {
  const start = process.cpuUsage();
  for (let i = 0; i < total; i += 1000) {
    for (let j = i; j < Math.min(total, i + 1000); j++) agent.store.event(`node-${j % 100}`, 'flood', `event ${j}`);
    await new Promise((r) => setImmediate(r));
  }
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}

const on: number[] = [];
const off: number[] = [];
let live = { ...got };
for (let r = 0; r < runs; r++) {
  agent.events.start();
  const before = { ...got };
  on.push(await flood());
  agent.events.flush();
  await new Promise((r) => setTimeout(r, 500)); // the last batch's way to the subscriber
  live = { messages: got.messages - before.messages, bytes: got.bytes - before.bytes, events: got.events - before.events, dropped: got.dropped - before.dropped };
  agent.events.stop();
  off.push(await flood());
}
const per10k = (ms: number[]) => Number(((median(ms) / total) * 10_000).toFixed(1));
const result = { events: total, runs, cpuMsPer10kFeedOn: per10k(on), cpuMsPer10kFeedOff: per10k(off), ratio: Number((median(on) / median(off)).toFixed(3)), live };
if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
else {
  process.stdout.write(`events per run ${total}, runs ${runs} (median)\n`);
  process.stdout.write(`store CPU ms per 10k events: feed on ${result.cpuMsPer10kFeedOn}, feed off ${result.cpuMsPer10kFeedOff} (on/off ${result.ratio})\n`);
  process.stdout.write(`live feed, last run: ${live.messages} messages, ${live.bytes} bytes, ${live.events} events sent, ${live.dropped} counted as dropped\n`);
}
await op.endAsync();
await agent.stop();
await broker.close();
fs.rmSync(dir, { recursive: true, force: true });
