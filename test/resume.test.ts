import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import mqtt from 'mqtt';
import { SimNode } from '../device/node.js';
import { sha256 } from '../shared/manifest.js';
import { startBroker } from '../broker/server.js';
import { publishRelease } from '../operator/publish.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { demoImage } from '../harness/images.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { makeWorld } from './helpers/world.js';
import { onChunkFraction, startAgentProcess } from './helpers/agent-process.js';

const HW = 'esp32-resume';

t.test('three link drops mid-transfer: the node still ends updated', async (t) => {
  const world = await makeWorld();
  const proxy = await startFaultProxy({ port: world.broker.port });
  const n = new SimNode({ brokerUrl: proxy.url, deviceId: 'flaky', hw: HW, version: '1.0.0', trust: [world.key.publicKey], maxMessage: 1024 });
  t.teardown(async () => {
    await n.stop();
    await proxy.close();
    await world.close();
  });
  await n.start();
  await world.until('flaky', () => true, 'hello');
  const image = demoImage(HW, '1.1.0', 300 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  for (const f of [0.2, 0.45, 0.7]) {
    await onChunkFraction(n, f);
    proxy.dropAll();
  }
  const s = await world.until('flaky', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(s.runningVersion, '1.1.0');
  t.ok(n.runningDigest.equals(sha256(image)), 'verified image running');
});

t.test('node power cut mid-download resumes from its saved bitmap', async (t) => {
  const world = await makeWorld();
  const n = new SimNode({ brokerUrl: world.broker.url, deviceId: 'cut', hw: HW, version: '1.0.0', trust: [world.key.publicKey], maxMessage: 1024 });
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await n.start();
  await world.until('cut', () => true, 'hello');
  const image = demoImage(HW, '1.1.0', 300 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  await onChunkFraction(n, 0.5);
  await n.powerCut();
  const s = await world.until('cut', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(s.runningVersion, '1.1.0');
  t.ok(n.runningDigest.equals(sha256(image)));
  // Resume, not restart: far fewer chunks travelled twice than the half already stored.
  t.ok(s.retransmits < s.total / 4, `retransmits ${s.retransmits} of ${s.total} chunks`);
});

t.test('broker restart mid-transfer: agent and node reconnect and finish', async (t) => {
  const world = await makeWorld();
  const port = world.broker.port;
  const n = new SimNode({ brokerUrl: world.broker.url, deviceId: 'br', hw: HW, version: '1.0.0', trust: [world.key.publicKey], maxMessage: 1024 });
  let second: Awaited<ReturnType<typeof startBroker>> | undefined;
  t.teardown(async () => {
    await n.stop();
    await world.agent.stop();
    await second?.close();
  });
  await n.start();
  await world.until('br', () => true, 'hello');
  await world.publish({ hw: HW, version: '1.1.0', size: 300 * 1024 });
  await onChunkFraction(n, 0.3);
  await world.broker.close();
  second = await startBroker({ port });
  const s = await world.until('br', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(s.runningVersion, '1.1.0');
});

t.test('agent killed with SIGKILL mid-transfer and restarted: the transfer continues', async (t) => {
  const broker = await startBroker();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-kill-'));
  const key = generateOperatorKey();
  const pub = path.join(dir, 'operator.pub');
  fs.writeFileSync(pub, key.publicKey.export({ format: 'pem', type: 'spki' }));
  const dataDir = path.join(dir, 'agent');
  let agent = startAgentProcess(broker.url, dataDir, pub);
  const n = new SimNode({ brokerUrl: broker.url, deviceId: 'k1', hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 1024 });
  t.teardown(async () => {
    agent.kill('SIGKILL');
    await n.stop();
    await broker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  // The agent subscribes before the node says hello, so wait for its subscription on the broker.
  await new Promise<void>((resolve) => {
    const on = (subs: { topic: string }[]) => {
      if (subs.some((s) => s.topic.endsWith('/up'))) {
        broker.aedes.off('subscribe', on);
        resolve();
      }
    };
    broker.aedes.on('subscribe', on);
  });
  await n.start();
  const image = demoImage(HW, '1.1.0', 400 * 1024);
  await publishRelease({ brokerUrl: broker.url, image, hw: HW, version: '1.1.0', key: key.privateKey });
  await onChunkFraction(n, 0.4);
  agent.kill('SIGKILL');
  await new Promise((r) => agent.once('exit', r));
  agent = startAgentProcess(broker.url, dataDir, pub);
  const status = await new Promise<{ state: string; runningVersion: string }>((resolve) => {
    const watcher = mqtt.connect(broker.url, { protocolVersion: 4 });
    watcher.subscribe('ferry/d/k1/status');
    watcher.on('message', (_topic, payload) => {
      const s = JSON.parse(payload.toString());
      if (s.state === 'confirmed') {
        watcher.end();
        resolve(s);
      }
    });
  });
  t.equal(status.runningVersion, '1.1.0');
  t.ok(n.runningDigest.equals(sha256(image)), 'node runs the verified image');
});
