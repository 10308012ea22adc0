import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import { Agent, type AgentOptions } from '../../agent/agent.js';
import type { NodeStatus } from '../../agent/status.js';
import { startBroker, type BrokerOptions, type RunningBroker } from '../../broker/server.js';
import { generateOperatorKey } from '../../shared/manifest.js';
import { publishRelease, type PublishOptions } from '../../operator/publish.js';
import { demoImage } from '../../harness/images.js';
import { SimNode, type SimNodeOptions } from '../../device/node.js';

/**
 * A small world for end-to-end tests: a real aedes broker on port 0, a real agent with its SQLite
 * state in a temp dir, and an operator key. Tests add nodes and publish releases, then wait on
 * agent status events (never on sleeps).
 */
export interface World {
  broker: RunningBroker;
  agent: Agent;
  dataDir: string;
  key: { privateKey: KeyObject; publicKey: KeyObject };
  publish(opts: Partial<PublishOptions> & { hw: string; version: string; size?: number }): ReturnType<typeof publishRelease>;
  /** Resolves with the node's status once pred holds (checked now and on every status event). */
  until(id: string, pred: (s: NodeStatus) => boolean, what?: string, ms?: number): Promise<NodeStatus>;
  restartAgent(extra?: Partial<AgentOptions>): Promise<Agent>;
  close(): Promise<void>;
}

export async function makeWorld(opts: { agent?: Partial<AgentOptions>; broker?: BrokerOptions; brokerUrl?: (b: RunningBroker) => string } = {}): Promise<World> {
  const broker = await startBroker(opts.broker);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-test-'));
  const key = generateOperatorKey();
  const url = opts.brokerUrl ? opts.brokerUrl(broker) : broker.url;
  const agentOpts: AgentOptions = { brokerUrl: url, dataDir, trust: [key.publicKey], rtt: { initialRto: 300, minRto: 100 }, ...opts.agent };
  const world: World = {
    broker,
    agent: new Agent(agentOpts),
    dataDir,
    key,
    publish(p) {
      const image = p.image ?? demoImage(p.hw, p.version, p.size ?? 64 * 1024);
      return publishRelease({ brokerUrl: broker.url, key: key.privateKey, image, ...p });
    },
    until(id, pred, what = 'condition', ms = 60_000) {
      return untilStatus(world.agent, id, pred, what, ms);
    },
    async restartAgent(extra) {
      await world.agent.stop();
      world.agent = new Agent({ ...agentOpts, ...extra });
      await world.agent.start();
      return world.agent;
    },
    async close() {
      await world.agent.stop().catch(() => {});
      await broker.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
  await world.agent.start();
  return world;
}

/**
 * A SimNode on the world's broker with quick timers (self-test, reboot, reconnect) and a small slot,
 * started and heard by the agent before it is returned.
 */
export async function quickNode(world: World, hw: string, id: string, extra: Partial<SimNodeOptions> = {}): Promise<SimNode> {
  const n = new SimNode({
    brokerUrl: world.broker.url, deviceId: id, hw, version: '1.0.0', trust: [world.key.publicKey],
    maxMessage: 2048, selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100, slotSize: 128 * 1024, ...extra,
  });
  await n.start();
  await world.until(id, () => true, 'hello');
  return n;
}

/** Resolves with the agent's status of `id` once pred holds (checked now and on every status event). */
export function untilStatus(agent: Agent, id: string, pred: (s: NodeStatus) => boolean, what = 'condition', ms = 60_000): Promise<NodeStatus> {
  return new Promise((resolve, reject) => {
    const check = (s: NodeStatus | undefined) => {
      if (s?.id !== id || !pred(s)) return;
      cleanup();
      resolve(s);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out waiting for ${id}: ${what}; last status ${JSON.stringify(agent.status(id))}`));
    }, ms);
    const cleanup = () => {
      clearTimeout(timer);
      agent.off('status', check);
    };
    agent.on('status', check);
    check(agent.status(id));
  });
}
