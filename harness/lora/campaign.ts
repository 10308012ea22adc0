import type { KeyObject } from 'node:crypto';
import { generateOperatorKey, sha256, signManifest } from '../../shared/manifest.js';
import { LnsSim, type LnsSimOptions } from '../../device/lora/lns-sim.js';
import type { LossModel } from '../../device/lora/radio.js';
import { FuotaDriver, type DriverResult } from './fuota-driver.js';
import { startPlainBroker } from './plain-broker.js';

/**
 * One simulated campaign end to end on a real (plain aedes) broker: `ferry lns-sim` internals with N nodes, and
 * the FUOTA driver pushing a signed image to all of them. Used by the tests and scripts/bench/lora.
 */
export interface CampaignOptions {
  nodes: number;
  image: Buffer;
  loss: LossModel;
  seed: number;
  version?: string;
  failSelfTest?: ReadonlySet<number>;
  /** Power-cycle this node index once when it has received this many downlinks (resume test). */
  resetAfter?: { node: number; delivered: number };
  signer?: { privateKey: KeyObject; publicKey: KeyObject };
  warp?: number;
  settleMs?: number;
  /** RX2 data rate of the network (ChirpStack's EU868 default is DR0; TTN uses DR3). Default 3. */
  rx2Dr?: number;
  log?: (msg: string) => void;
  sim?: Partial<LnsSimOptions>;
}

export interface CampaignResult {
  driver: DriverResult;
  sim: ReturnType<LnsSim['stats']>;
  versions: string[];
  resets: number;
}

export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const broker = await startPlainBroker();
  const signer = o.signer ?? generateOperatorKey();
  const version = o.version ?? '2.0.0';
  const manifest = signManifest({ hw: 'lora-dev', version, securityVersion: 0, size: o.image.length, digest: sha256(o.image), created: 1_700_000_000, flags: 0 }, signer.privateKey);
  const sim = new LnsSim({
    brokerUrl: broker.url, appId: 'a3d1e7c2-0000-4000-8000-00000000f001', nodes: o.nodes, hw: 'lora-dev', version: '1.0.0', trust: [signer.publicKey],
    downLoss: o.loss, seed: o.seed, rx2Dr: o.rx2Dr ?? 3, clock: { warp: o.warp ?? 1, jump: true, settleMs: o.settleMs ?? 10 }, failSelfTest: o.failSelfTest,
    log: (l, m) => (l === 'warn' ? o.log?.(m) : undefined), ...o.sim,
  });
  const driver = new FuotaDriver({
    brokerUrl: broker.url, appId: sim.opts.appId, devEuis: [...sim.devices.keys()], image: o.image, manifest, version, transferId: 0x1234abcd, log: o.log,
  });
  let resets = 0;
  try {
    await driver.connect();
    if (o.resetAfter) {
      const target = [...sim.devices.values()][o.resetAfter.node];
      const watch = setInterval(() => {
        if (target.delivered >= o.resetAfter!.delivered && resets === 0) {
          resets++;
          sim.reset(target.node.devEui);
          clearInterval(watch);
        }
      }, 5);
    }
    await sim.start();
    const result = await driver.run();
    return { driver: result, sim: sim.stats(), versions: [...sim.devices.values()].map((d) => d.node.runningVersion), resets };
  } finally {
    await driver.close();
    await sim.stop();
    await broker.close();
  }
}
