import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import mqtt from 'mqtt';
import { Outbox } from '../agent/outbox.js';
import { Backoff } from '../agent/reconnect.js';
import { startBroker } from '../broker/server.js';
import { SimNode } from '../device/node.js';
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { publishRelease } from '../operator/publish.js';
import { demoImage } from '../harness/images.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { makeWorld } from './helpers/world.js';
import { runSeed, seeded } from '../harness/seeded.js';
import { agentListening, startAgentProcess } from './helpers/agent-process.js';

/**
 * Faults on the agent's side: killed with SIGKILL at seeded random moments of an update (a real
 * child process), its broker link refused (reconnect backoff with jitter), and stalled (bounded
 * QoS 1 backlog; the message handler never waits for the network).
 */
const HW = 'esp32-agentfault';
const seed = runSeed(7031);
t.comment(`seed ${seed} (FERRY_SEED=${seed} repeats this run)`);

/** Resolves with the node's retained status once pred holds. */
function statusUntil(brokerUrl: string, id: string, pred: (s: { state: string; runningVersion: string }) => boolean): Promise<{ state: string; runningVersion: string }> {
  return new Promise((resolve) => {
    const watcher = mqtt.connect(brokerUrl, { protocolVersion: 4 });
    watcher.subscribe(`ferry/d/${id}/status`);
    watcher.on('message', (_topic, payload) => {
      const s = JSON.parse(payload.toString());
      if (pred(s)) {
        watcher.end();
        resolve(s);
      }
    });
  });
}

/**
 * A moment in a node's update, from a number in [0, 1): most of the range falls during the download
 * (by chunks received), the rest on the node's later steps.
 */
function moment(n: SimNode, r: number): { what: string; reached: Promise<void> } {
  if (r < 0.8) {
    const f = 0.02 + (r / 0.8) * 0.96;
    return {
      what: `${Math.round(f * 100)}% of chunks stored`,
      reached: new Promise((resolve) => {
        const on = (received: number, total: number) => {
          if (received >= Math.max(1, Math.floor(total * f))) {
            n.off('chunk', on);
            resolve();
          }
        };
        n.on('chunk', on);
      }),
    };
  }
  const stages = ['verified', 'rebooting', 'booted', 'confirmed'];
  const target = stages[Math.min(stages.length - 1, Math.floor(((r - 0.8) / 0.2) * stages.length))];
  return {
    what: `node stage "${target}"`,
    reached: new Promise((resolve) => {
      // 'booted' also happens at power-on: only the boot after the download counts.
      let downloaded = false;
      const on = (name: string) => {
        if (name === 'verified') downloaded = true;
        if (downloaded && name === target) {
          n.off('stage', on);
          resolve();
        }
      };
      n.on('stage', on);
    }),
  };
}

t.test('agent killed with SIGKILL at 3 seeded random moments: each time restarted, the update finishes', async (t) => {
  const broker = await startBroker();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-kill3-'));
  const key = generateOperatorKey();
  const pub = path.join(dir, 'operator.pub');
  fs.writeFileSync(pub, key.publicKey.export({ format: 'pem', type: 'spki' }));
  const dataDir = path.join(dir, 'agent');
  let listening = agentListening(broker);
  let agent = startAgentProcess(broker.url, dataDir, pub);
  const nodes: SimNode[] = [];
  t.teardown(async () => {
    agent.kill('SIGKILL');
    for (const n of nodes) await n.stop();
    await broker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const image = demoImage(HW, '1.1.0', 160 * 1024);
  await publishRelease({ brokerUrl: broker.url, image, hw: HW, version: '1.1.0', key: key.privateKey });
  const random = seeded(seed);
  for (let run = 0; run < 3; run++) {
    const id = `kill-${run}`;
    const n = new SimNode({ brokerUrl: broker.url, deviceId: id, hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 1024 });
    nodes.push(n);
    const at = moment(n, random());
    const confirmed = statusUntil(broker.url, id, (s) => s.state === 'confirmed');
    // A node the agent has never heard of is found by its Hello (a plain broker has no presence), so
    // it starts once the agent listens. After the kill the restarted agent finds it in its store.
    await listening;
    await n.start();
    await at.reached;
    agent.kill('SIGKILL');
    await new Promise((r) => agent.once('exit', r));
    listening = agentListening(broker);
    agent = startAgentProcess(broker.url, dataDir, pub);
    const s = await confirmed;
    t.equal(s.runningVersion, '1.1.0', `run ${run + 1}: killed at ${at.what}; restarted; node confirmed`);
    t.ok(n.runningDigest.equals(sha256(image)), `run ${run + 1}: the node runs the verified image`);
  }
});

t.test('Backoff: exponential ceilings, capped, each delay jittered within [ceiling/2, ceiling]', async (t) => {
  const lows = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0);
  t.same([1, 2, 3, 4, 5, 6].map(() => lows.next()), [50, 100, 200, 400, 500, 500], 'lowest draws');
  const highs = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0.999999);
  t.same([1, 2, 3, 4, 5, 6].map(() => highs.next()), [100, 200, 400, 800, 1000, 1000], 'highest draws');
  highs.reset();
  t.equal(highs.next(), 100, 'reset after a successful connect starts over');
});

t.test('reconnect backoff with jitter after a lost broker link; the agent queries its nodes and serves them', async (t) => {
  const world = await makeWorld();
  const proxy = await startFaultProxy({ port: world.broker.port });
  // The agent reaches the broker through the proxy; the node connects directly.
  await world.restartAgent({ brokerUrl: proxy.url, reconnect: { initialMs: 100, maxMs: 1600 } });
  const n = new SimNode({ brokerUrl: world.broker.url, deviceId: 'patient', hw: HW, version: '1.0.0', trust: [world.key.publicKey], maxMessage: 1024 });
  t.teardown(async () => {
    await n.stop();
    await proxy.close();
    await world.close();
  });
  await n.start();
  await world.until('patient', () => true, 'hello');

  const delays: number[] = [];
  const refusedAt: number[] = [];
  proxy.events.on('refused', () => refusedAt.push(performance.now()));
  const sixTries = new Promise<void>((resolve) => {
    world.agent.on('reconnect', (e) => {
      delays.push(e.delayMs);
      if (delays.length === 6) resolve();
    });
  });
  proxy.refuse(true);
  await sixTries;
  // Each delay lies in [0.5, 1] x min(1600, 100 * 2^k): exponential, capped, jittered.
  for (const [k, d] of delays.entries()) {
    const ceiling = Math.min(1600, 100 * 2 ** k);
    t.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${k + 1}: waited ${d} ms, within [${ceiling / 2}, ${ceiling}]`);
  }
  t.ok(new Set(delays.slice(0, 5)).size > 1, 'jitter: the delays are not a fixed ladder');
  // And the attempts really were that far apart (a lower bound only: a busy machine adds, never subtracts).
  for (let k = 1; k < refusedAt.length && k < delays.length; k++) {
    t.ok(refusedAt[k] - refusedAt[k - 1] >= delays[k] - 5, `attempt ${k + 1} came at least ${delays[k]} ms after the previous one`);
  }

  const linkUp = new Promise<void>((resolve) => world.agent.once('linkUp', () => resolve()));
  const helloAgain = new Promise<void>((resolve) => n.once('hello', () => resolve()));
  proxy.refuse(false);
  await linkUp;
  await helloAgain; // the agent asked (Query): the node never lost its own connection
  const image = demoImage(HW, '1.1.0', 64 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  const s = await world.until('patient', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(s.runningVersion, '1.1.0');
  t.ok(n.runningDigest.equals(sha256(image)));
});

t.test('QoS 1 backlog is bounded on a stalled link, and drains when it moves again', async (t) => {
  const broker = await startBroker();
  const proxy = await startFaultProxy({ port: broker.port });
  const client = await mqtt.connectAsync(proxy.url, { protocolVersion: 4, reconnectPeriod: 0, queueQoSZero: false });
  t.teardown(async () => {
    await client.endAsync(true);
    await proxy.close();
    await broker.close();
  });
  const refused: string[] = [];
  let settled = 0;
  const box = new Outbox(client, 8, (what) => refused.push(what), () => settled++);
  proxy.stall('up'); // the socket stays open and "connected"; nothing reaches the broker
  let accepted = 0;
  for (let i = 0; i < 50; i++) if (box.publish('x/y', `m${i}`, { qos: 1 }, `message ${i}`)) accepted++;
  t.equal(accepted, 8, 'only 8 QoS 1 messages were handed to MQTT.js');
  t.equal(box.pending, 8);
  t.same(refused, ['message 8'], 'the overflow was reported once, naming the first message refused');
  t.ok(box.publish('x/chunk', 'qos0', { qos: 0 }, 'chunk'), 'QoS 0 is not counted (the transfer window paces it)');
  const drained = new Promise<void>((resolve) => {
    const check = () => (box.pending === 0 ? resolve() : setImmediate(check));
    check();
  });
  proxy.resume();
  await drained;
  t.equal(settled, 8, 'every accepted message was acknowledged after the stall');
  t.ok(box.publish('x/y', 'after', { qos: 1 }, 'after'), 'accepting again');
});

t.test('the agent keeps handling node messages while its own QoS 1 publishes hang', async (t) => {
  const world = await makeWorld();
  const proxy = await startFaultProxy({ port: world.broker.port });
  await world.restartAgent({ brokerUrl: proxy.url, maxInflight: 4 });
  const n = new SimNode({ brokerUrl: world.broker.url, deviceId: 'talker', hw: HW, version: '1.0.0', trust: [world.key.publicKey], maxMessage: 1024 });
  t.teardown(async () => {
    await n.stop();
    await proxy.close();
    await world.close();
  });
  // Agent → broker is stalled: its status and Query publishes get no PUBACK. Broker → agent flows.
  proxy.stall('up');
  await n.start();
  const first = await world.until('talker', () => true, 'hello while the agent cannot publish');
  t.equal(first.runningVersion, '1.0.0', 'the handler recorded the Hello without waiting for its own publishes');
  await n.powerCut();
  await world.until('talker', (s) => s.lastSeen !== first.lastSeen, 'second hello, still stalled');
  t.pass('a second Hello was handled too');
  proxy.resume();
  const image = demoImage(HW, '1.1.0', 48 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  const s = await world.until('talker', (s) => s.state === 'confirmed', 'confirmed after the stall');
  t.equal(s.runningVersion, '1.1.0');
});
