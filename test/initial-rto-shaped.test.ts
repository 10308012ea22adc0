import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/agent.js';
import { startBroker } from '../broker/server.js';
import { SimNode } from '../device/node.js';
import { demoImage } from '../harness/images.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { publishRelease } from '../operator/publish.js';
import { startShapingProxy } from './helpers/shaping-proxy.js';
import { untilStatus } from './helpers/world.js';

/**
 * Issue 14: big chunks on a slow link, for real (aedes, the agent with its default timers, a
 * simulated node behind a shaping proxy at 1 Mbit/s and 80 ms one way). The node takes 16 KiB
 * messages and acks every 8 chunks, so its first ack comes over a second after the first chunk went:
 * the agent's first retransmission timer must wait for it instead of resending chunks on their way.
 */
t.test('16 KiB chunks over a 1 Mbit/s link: the retransmission timer never fires, nothing goes twice', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-initial-rto-'));
  const broker = await startBroker();
  const link = await startShapingProxy({ port: broker.port }, { rateBps: 1_000_000, delayMs: 80 });
  const { privateKey, publicKey } = generateOperatorKey();
  const agent = new Agent({ brokerUrl: broker.url, dataDir: dir, trust: [publicKey] });
  const node = new SimNode({ brokerUrl: link.url, deviceId: 'slow-1', hw: 'slow', version: '1.0.0', trust: [publicKey], maxMessage: 16 * 1024, window: 16, selfTestMs: 5, rebootMs: 5 });
  t.teardown(async () => {
    await node.stop();
    await agent.stop();
    await link.close();
    await broker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const timeouts: unknown[] = [];
  agent.on('windowTimeout', (e) => timeouts.push(e));
  await agent.start();
  await node.start();
  await untilStatus(agent, 'slow-1', (s) => s.state === 'idle', 'hello');
  await publishRelease({ brokerUrl: broker.url, image: demoImage('slow', '1.1.0', 20 * 16 * 1024), hw: 'slow', version: '1.1.0', key: privateKey });
  const done = await untilStatus(agent, 'slow-1', (s) => ['activating', 'confirming', 'confirmed', 'failed', 'rejected', 'timedOut'].includes(s.state), 'the download', 120_000);
  t.ok(['activating', 'confirming', 'confirmed'].includes(done.state), `downloaded and verified (${done.state})`);
  t.ok((done.total ?? 0) >= 16, `${done.total} chunks: more than one ack batch in the first flight`);
  t.same(timeouts, [], 'the retransmission timer never fired');
  t.equal(done.retransmits, 0, 'no chunk was sent twice');
});
