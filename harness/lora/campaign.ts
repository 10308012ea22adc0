import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { Agent } from '../../agent/agent.js';
import type { NodeStatus } from '../../agent/status.js';
import type { LoraOptions } from '../../agent/lora/runtime.js';
import { startBroker } from '../../broker/server.js';
import { generateOperatorKey } from '../../shared/manifest.js';
import { topics } from '../../shared/topics.js';
import { publishRelease } from '../../operator/publish.js';
import { LnsSim, type LnsSimOptions } from '../../device/lora/lns-sim.js';
import type { LossModel } from '../../device/lora/radio.js';
import { startPlainBroker } from './plain-broker.js';

/**
 * One LoRa campaign end to end: a ferry broker (aedes) with the real agent (`Agent` with its `lora` option, the
 * ChirpStack adapter) and a plain broker standing in for the LNS's, where `ferry lns-sim` runs N simulated nodes.
 * A signed release is published as an operator does; the outcome is read from the agent's retained statuses.
 * The agent's LoRa runtime shares the simulator's virtual clock (time warp and jumps): airtime, duty-cycle waits,
 * Class C windows and timeouts are all in the radio's time. Used by the LoRa tests and scripts/bench/lora.
 */
export interface CampaignOptions {
  nodes: number;
  image: Buffer;
  loss: LossModel;
  seed: number;
  version?: string;
  failSelfTest?: ReadonlySet<number>;
  /** Sees every downlink command; returning a devEui power-cycles that node once (resume tests). */
  resetWhen?: (frame: Downlink) => string | undefined;
  warp?: number;
  settleMs?: number;
  /** RX2 data rate of the network (ChirpStack's EU868 default is DR0; TTN uses DR3). Default 3. */
  rx2Dr?: number;
  lora?: Partial<LoraOptions>;
  /** Give up (real ms). */
  timeoutMs?: number;
  log?: (msg: string) => void;
  /** Also the agent's info lines. */
  verbose?: boolean;
  sim?: Partial<LnsSimOptions>;
}

/** A downlink command as the LNS received it: to one node, or to a multicast group. */
export interface Downlink {
  to: string;
  multicast: boolean;
  fPort: number;
  bytes: Buffer;
  /** Virtual ms since the simulation started. */
  atMs: number;
}

export interface CampaignResult {
  /** The agent's retained status of every node, by devEui. */
  statuses: Map<string, NodeStatus>;
  confirmed: string[];
  failed: NodeStatus[];
  sim: ReturnType<LnsSim['stats']>;
  versions: string[];
  downlinks: Downlink[];
  reset: { devEui: string; index: number } | undefined;
  /** Virtual ms from the release's arrival at the agent to the last node's final state. */
  elapsedMs: number;
}

const FINAL = new Set(['confirmed', 'rolledBack', 'rejected', 'failed', 'timedOut']);

export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const lnsBroker = await startPlainBroker();
  const ferryBroker = await startBroker();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-lora-'));
  const signer = generateOperatorKey();
  const version = o.version ?? '2.0.0';
  const sim = new LnsSim({
    brokerUrl: lnsBroker.url, appId: 'a3d1e7c2-0000-4000-8000-00000000f001', nodes: o.nodes, hw: 'lora-dev', version: '1.0.0', trust: [signer.publicKey],
    downLoss: o.loss, seed: o.seed, rx2Dr: o.rx2Dr ?? 3, clock: { warp: o.warp ?? 1, jump: true, settleMs: o.settleMs ?? 20 }, failSelfTest: o.failSelfTest,
    log: (l, m) => (l === 'warn' || o.verbose ? o.log?.(`${(sim.clock.now() / 1000).toFixed(1)} sim: ${m}`) : undefined), ...o.sim,
  });
  const agent = new Agent({
    brokerUrl: ferryBroker.url, dataDir, trust: [signer.publicKey],
    lora: { lns: { kind: 'chirpstack', brokerUrl: lnsBroker.url, application: sim.opts.appId, region: 'EU868' }, options: { region: 'EU868', ...o.lora }, clock: sim.clock.asUnixClock() },
    log: (level, msg) => (level !== 'info' || o.verbose ? o.log?.(`${(sim.clock.now() / 1000).toFixed(1)} agent ${level}: ${msg}`) : undefined),
  });
  const watcher = await mqtt.connectAsync(lnsBroker.url, { protocolVersion: 4 });
  const downlinks: Downlink[] = [];
  let reset: CampaignResult['reset'];
  watcher.on('message', (topic, payload) => {
    if (o.verbose && topic.endsWith('/event/up')) {
      const b = JSON.parse(payload.toString()) as { deviceInfo: { devEui: string }; fPort: number; data: string };
      o.log?.(`${(sim.clock.now() / 1000).toFixed(1)} up ${b.deviceInfo.devEui} fPort ${b.fPort} ${Buffer.from(b.data ?? '', 'base64').toString('hex')}`);
    }
    const m = /\/(device|multicast-group)\/([0-9a-f]+)\/command\/down$/.exec(topic);
    if (!m) return;
    let body: { fPort?: number; data?: string };
    try {
      body = JSON.parse(payload.toString());
    } catch {
      return;
    }
    if (typeof body.fPort !== 'number' || typeof body.data !== 'string') return;
    const d: Downlink = { to: m[2], multicast: m[1] === 'multicast-group', fPort: body.fPort, bytes: Buffer.from(body.data, 'base64'), atMs: sim.clock.now() };
    downlinks.push(d);
    const target = reset ? undefined : o.resetWhen?.(d);
    if (target) {
      reset = { devEui: target, index: downlinks.length };
      sim.reset(target);
    }
  });
  await watcher.subscribeAsync([`application/${sim.opts.appId}/+/+/command/down`, ...(o.verbose ? [`application/${sim.opts.appId}/device/+/event/up`] : [])]);
  const statusTopics = topics();
  const statuses = new Map<string, NodeStatus>();
  const observer = await mqtt.connectAsync(ferryBroker.url, { protocolVersion: 4 });
  observer.on('message', (topic, payload) => {
    const id = statusTopics.deviceOf(topic);
    if (!id) return;
    try {
      statuses.set(id, JSON.parse(payload.toString()) as NodeStatus);
    } catch {
      /* not a status */
    }
  });
  await observer.subscribeAsync(statusTopics.statusWildcard);
  const devEuis = [...sim.devices.keys()];
  const until = (pred: () => boolean, what: string) =>
    new Promise<void>((resolve, reject) => {
      const started = Date.now();
      const check = setInterval(() => {
        if (pred()) {
          clearInterval(check);
          resolve();
        } else if (Date.now() - started > (o.timeoutMs ?? 600_000)) {
          clearInterval(check);
          reject(new Error(`LoRa campaign: timed out waiting for ${what}; statuses ${JSON.stringify([...statuses.values()].map((s) => [s.id, s.state, s.detail]))}`));
        }
      }, 20);
    });
  try {
    await agent.start();
    await sim.start();
    await until(() => devEuis.every((id) => agent.status(id)?.hw === 'lora-dev'), 'every node\'s hello');
    let releasedAt = 0;
    agent.once('release', () => (releasedAt = sim.clock.now()));
    await publishRelease({ brokerUrl: ferryBroker.url, key: signer.privateKey, image: o.image, hw: 'lora-dev', version });
    let endedAt = 0;
    await until(() => {
      const done = devEuis.every((id) => FINAL.has(statuses.get(id)?.state ?? '') && FINAL.has(agent.status(id)?.state ?? ''));
      if (done && !endedAt) endedAt = sim.clock.now();
      return done;
    }, 'every node\'s outcome');
    const confirmed = devEuis.filter((id) => statuses.get(id)?.state === 'confirmed');
    return {
      statuses, confirmed, failed: devEuis.filter((id) => !confirmed.includes(id)).map((id) => statuses.get(id)!), sim: sim.stats(),
      versions: [...sim.devices.values()].map((d) => d.node.runningVersion), downlinks, reset, elapsedMs: endedAt - releasedAt,
    };
  } finally {
    await watcher.endAsync();
    await observer.endAsync();
    await agent.stop().catch(() => {});
    await sim.stop();
    await ferryBroker.close();
    await lnsBroker.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}
