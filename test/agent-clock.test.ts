import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/agent.js';
import type { Clock } from '../agent/updates.js';
import { startBroker } from '../broker/server.js';
import { demoImage } from '../harness/images.js';
import { publishRelease } from '../operator/publish.js';
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { Capability, decodeDown, encodeMessage, ImageState, MsgType, PROTOCOL_VERSION } from '../shared/messages.js';
import { connect, end, publish, subscribe } from './helpers/broker-support.js';
import { untilStatus } from './helpers/world.js';

/**
 * The runtime reads time and sets its per-node timers through an injected clock: a stage deadline
 * of 30 minutes passes in a test without waiting for it (the broker, the agent and the node are real).
 */
class ManualClock implements Clock {
  private t = 1_000_000;
  private readonly timers = new Map<NodeJS.Timeout, { at: number; fn: () => void }>();
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): NodeJS.Timeout {
    // A real (never firing) handle serves as the key, so the runtime can unref and clear it.
    const handle = setTimeout(() => {}, 0x7fffffff);
    clearTimeout(handle);
    this.timers.set(handle, { at: this.t + ms, fn });
    return handle;
  }
  clearTimeout(h: NodeJS.Timeout): void {
    this.timers.delete(h);
  }
  advance(ms: number): void {
    this.t += ms;
    for (const [h, e] of [...this.timers].sort((a, b) => a[1].at - b[1].at)) {
      if (e.at > this.t || !this.timers.has(h)) continue;
      this.timers.delete(h);
      e.fn();
    }
  }
}

t.test('a silent node times out at its download deadline, on the injected clock', async (t) => {
  const broker = await startBroker();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-clock-'));
  const key = generateOperatorKey();
  const clock = new ManualClock();
  const agent = new Agent({ brokerUrl: broker.url, dataDir: dir, trust: [key.publicKey] }, clock);
  await agent.start();
  const id = 'quiet';
  const c = await connect(broker.url, { clientId: id });
  t.teardown(async () => {
    await end(c);
    await agent.stop();
    await broker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await subscribe(c, `ferry/d/${id}/dn`);
  const offered = new Promise<void>((resolve) => c.on('message', (_tp, p) => decodeDown(p).type === MsgType.offer && resolve()));
  await publish(c, `ferry/d/${id}/up`, encodeMessage({
    type: MsgType.hello, proto: PROTOCOL_VERSION, deviceId: id, hw: 'hw-clock', version: '1.0.0', digest: sha256(Buffer.from('factory')),
    securityVersion: 0, slot: 0, imageState: ImageState.valid, maxMessage: 1024, caps: Capability.rollback, window: 4,
  }));
  await publishRelease({ brokerUrl: broker.url, image: demoImage('hw-clock', '1.1.0', 16 * 1024), hw: 'hw-clock', version: '1.1.0', key: key.privateKey });
  await offered;
  t.equal(agent.status(id)?.state, 'offered', 'offered; the node never answers');
  clock.advance(29 * 60_000);
  t.equal(agent.status(id)?.state, 'offered', 'still offered after 29 minutes (Offer resends only)');
  const timedOut = untilStatus(agent, id, (s) => s.state === 'timedOut', 'timed out', 10_000);
  clock.advance(2 * 60_000);
  const s = await timedOut;
  t.equal(s.reason, 'timeout');
  t.match(s.detail, /download deadline passed in state offered/);
});
