import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { IdentityStore } from '../../broker/identity-store.js';
import { startBroker, type BrokerOptions } from '../../broker/server.js';
import { encodeMessage, MsgType } from '../../shared/messages.js';

/**
 * Broker throughput with the ferry plugin vs plain aedes, same run: N QoS 1 publishes of ~1 KiB
 * (a valid Ack, so the plugin's CBOR check runs) on an up topic from an authenticated node to a
 * subscribing agent. Prints messages/s for each and the ratio; --json for machine output.
 */
const N = Number(process.argv.find((a) => a.startsWith('--n='))?.slice(4) ?? 20000);
const json = process.argv.includes('--json');
const payload = encodeMessage({ type: MsgType.ack, session: 1, base: 0, bitmap: Buffer.alloc(1010) });

async function run(opts: BrokerOptions, node: { username?: string; password?: string }, agent: { username?: string; password?: string }): Promise<number> {
  const broker = await startBroker(opts);
  const sub = await mqtt.connectAsync(broker.url, { protocolVersion: 4, clientId: 'bench-agent', ...agent });
  await sub.subscribeAsync('ferry/d/+/up', { qos: 1 });
  const pub = await mqtt.connectAsync(broker.url, { protocolVersion: 4, clientId: 'node-1', ...node });
  let got = 0;
  const done = new Promise<void>((resolve) => sub.on('message', () => ++got === N && resolve()));
  const start = performance.now();
  for (let i = 0; i < N; i++) pub.publish('ferry/d/node-1/up', payload, { qos: 1 });
  await done;
  const rate = N / ((performance.now() - start) / 1000);
  await pub.endAsync();
  await sub.endAsync();
  await broker.close();
  return rate;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-'));
const store = IdentityStore.open(dir);
const node = await store.add('node', 'node-1');
const agent = await store.add('agent', 'bench-agent-id');
const plain = await run({}, {}, {});
// The bench node publishes far above a real node's rate: lift its bucket so we measure the hooks.
const ferry = await run({ ferry: { store, limits: { rate: { node: { rate: 1e9, burst: 1e9 } } } } }, node, agent);
store.close();
fs.rmSync(dir, { recursive: true, force: true });
const result = { n: N, payloadBytes: payload.length, plainMsgsPerSec: Math.round(plain), ferryMsgsPerSec: Math.round(ferry), ratio: Number((ferry / plain).toFixed(3)) };
if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
else process.stdout.write(`plain aedes: ${result.plainMsgsPerSec} msg/s\nwith ferry plugin: ${result.ferryMsgsPerSec} msg/s\nratio: ${result.ratio}\n`);
