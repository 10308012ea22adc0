import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Agent } from '../agent/agent.js';
import type { NodeStatus } from '../agent/status.js';
import { startBroker, type RunningBroker } from '../broker/server.js';
import { publishRelease } from '../operator/publish.js';
import { reasonName } from '../shared/errors.js';
import { generateOperatorKey, ManifestFlag } from '../shared/manifest.js';
import { Stage } from '../shared/messages.js';
import { factoryImage } from '../device/firmware.js';
import type { CutMode } from '../device/flash.js';
import { SimNode } from '../device/node.js';
import { seeded } from './seeded.js';
import { bootProfile, type BootProfileName } from '../device/profiles.js';
import { MAX_SWEEP_IMAGE, slotSizeFor } from './sweep.js';

/**
 * The power-cut sweep with the agent in the loop: a real aedes broker (broker/server.ts), a real
 * Agent (agent/agent.ts, SQLite store in a temp dir) and one SimNode per cut point. Each node starts
 * on 1.0.0, the agent offers it a signed 1.1.0, and the node's flash is armed to lose power at the
 * Nth erase or write counted from its first Hello (before, after, or torn). The node reboots from
 * flash, reconnects, and the case ends when the agent's record agrees with what the node really
 * runs — "converged":
 *   - the node runs 1.1.0, confirmed                → the agent says confirmed;
 *   - the node runs 1.1.0 that failed, no way back  → the agent says failed, with the node's reason;
 *   - the node is back on 1.0.0                     → the agent says rolledBack, with the node's reason;
 * and the agent's running version is the node's. A case that does not converge within its safety
 * timeout (an eternal "in progress", or a record that disagrees) counts against the sweep.
 */
export interface LoopPoint {
  at: number;
  mode: CutMode;
}

export interface LoopOptions {
  profile: BootProfileName;
  failSelfTest: boolean;
  /** Size of both the factory image and the new one. Default 12,000 bytes. */
  imageSize?: number;
  /** Cut points to try; default: all of them (every operation of the probe run, in every mode). */
  points?: (operations: number) => LoopPoint[];
  /** Cases running at once. Default 6. */
  concurrency?: number;
  /** Safety net per case; a case still unsettled then is "not converged". Default 30 s. */
  caseTimeoutMs?: number;
  onCase?: (c: LoopCase, done: number, total: number) => void;
}

export interface LoopCase {
  at: number;
  mode: CutMode;
  /** The cut happened (a point past the end of a run is not a cut). */
  fired: boolean;
  bricked: boolean;
  converged: boolean;
  /** What the node runs and last reported, and what the agent recorded. */
  node: string;
  agent: string;
  /** For a case that did not converge: the agent's event log for the node, oldest first. */
  trail?: string[];
  ms: number;
}

export interface LoopResult {
  profile: BootProfileName;
  failSelfTest: boolean;
  /** Flash operations of the uncut update, counted from the node's first Hello. */
  operations: number;
  tried: number;
  bootable: number;
  bricked: number;
  converged: number;
  failures: string[];
  ms: number;
}

const HW = 'sweep-hw';

export const ALL_MODES: CutMode[] = ['before', 'torn', 'after'];

export function allPoints(operations: number, modes: CutMode[] = ALL_MODES): LoopPoint[] {
  return modes.flatMap((mode) => Array.from({ length: operations }, (_, i) => ({ at: i + 1, mode })));
}

/** A seeded random subset of `n` cut points (mulberry32), in a stable order. */
export function samplePoints(operations: number, n: number, seed: number, modes: CutMode[] = ALL_MODES): LoopPoint[] {
  const all = allPoints(operations, modes);
  if (n >= all.length) return all;
  const rand = seeded(seed);
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return all.slice(0, n).sort((a, b) => ALL_MODES.indexOf(a.mode) - ALL_MODES.indexOf(b.mode) || a.at - b.at);
}

const TERMINAL = new Set(['confirmed', 'rolledBack', 'failed', 'rejected', 'timedOut']);

export async function runAgentLoop(opts: LoopOptions): Promise<LoopResult> {
  const t0 = Date.now();
  const profile = bootProfile(opts.profile);
  const imageSize = opts.imageSize ?? 12_000;
  if (!Number.isInteger(imageSize) || imageSize < 1 || imageSize > MAX_SWEEP_IMAGE) throw new RangeError(`image size ${imageSize} must be 1..${MAX_SWEEP_IMAGE} bytes`);
  const key = generateOperatorKey();
  const broker: RunningBroker = await startBroker();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-sweep-'));
  const agent = new Agent({
    brokerUrl: broker.url, dataDir, trust: [key.publicKey], delta: false, maxConcurrent: 64,
    rtt: { initialRto: 200, minRto: 50 },
    deadlines: { download: 60_000, verify: 20_000, install: 20_000, confirm: 20_000 },
  });
  const result: LoopResult = { profile: opts.profile, failSelfTest: opts.failSelfTest, operations: 0, tried: 0, bootable: 0, bricked: 0, converged: 0, failures: [], ms: 0 };
  try {
    await agent.start();
    const released = new Promise<void>((resolve) => agent.once('release', () => resolve()));
    await publishRelease({
      brokerUrl: broker.url, image: factoryImage(HW, '1.1.0', imageSize), hw: HW, version: '1.1.0', key: key.privateKey, securityVersion: 1,
      // A node without bootloader rollback is only updated when the release says so (capability gating).
      flags: profile.rollback ? 0 : ManifestFlag.allowNoRollback,
    });
    await released;
    // Ids of equal length: the chunk size a node gets depends on its topic, so every case must get
    // the probe's, or the cut points would not line up with the probe's operations.
    const idOf = (n: number) => `c${String(n).padStart(6, '0')}`;
    const run = (id: string, plan?: LoopPoint) => runCase({ agent, broker, key: key.publicKey, id, plan, opts, imageSize });
    const probe = await run(idOf(0));
    if (!probe.converged) throw new Error(`the uncut update did not converge: node ${probe.node}; agent ${probe.agent}`);
    result.operations = probe.operations;
    const points = opts.points ? opts.points(probe.operations) : allPoints(probe.operations);
    let done = 0;
    let next = 0;
    const worker = async () => {
      while (next < points.length) {
        const k = next++;
        const p = points[k];
        const c = await run(idOf(k + 1), p);
        done++;
        if (c.fired) {
          result.tried++;
          if (c.bricked) {
            result.bricked++;
            result.failures.push(`${p.mode}@${p.at}: bricked`);
          } else {
            result.bootable++;
            if (c.converged) result.converged++;
            else result.failures.push(`${p.mode}@${p.at}: not converged: node ${c.node}; agent ${c.agent}`);
          }
        }
        opts.onCase?.(c, done, points.length);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.concurrency ?? 6, points.length)) }, worker));
  } finally {
    await agent.stop().catch(() => {});
    await broker.close().catch(() => {});
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  result.ms = Date.now() - t0;
  return result;
}

interface CaseContext {
  agent: Agent;
  broker: RunningBroker;
  key: import('node:crypto').KeyObject;
  id: string;
  plan?: LoopPoint;
  opts: LoopOptions;
  imageSize: number;
}

async function runCase(c: CaseContext): Promise<LoopCase & { operations: number }> {
  const started = Date.now();
  const node = new SimNode({
    brokerUrl: c.broker.url, deviceId: c.id, hw: HW, version: '1.0.0', trust: [c.key], boot: c.opts.profile,
    initialImage: factoryImage(HW, '1.0.0', c.imageSize), failSelfTest: c.opts.failSelfTest,
    maxMessage: 1024, window: 8, slotSize: slotSizeFor(c.imageSize), saveEvery: 4, selfTestMs: 2, rebootMs: 2, reconnectPeriod: 100,
  });
  let base = -1;
  let fired = false;
  node.once('hello', () => {
    base = node.flash.operations;
    if (c.plan) node.flash.armPowerCut({ at: c.plan.at, mode: c.plan.mode, fraction: 0.5 });
  });
  node.on('stage', (name: string) => {
    if (name === 'powerCut') fired = true;
  });
  const describeNode = () => {
    const o = node.lastOutcome;
    return `${node.runningVersion}${node.recovery ? ' (recovery)' : ''}${node.inTrial ? ' (trial)' : ''}${node.connected ? '' : ' (offline)'}, last outcome ${o ? `${o.version} ${stageName(o.stage)} ${reasonName(o.reason)}` : 'none'}`;
  };
  const describeAgent = (s: NodeStatus | undefined) => (s ? `${s.state}${s.reason ? ` (${s.reason})` : ''} running ${s.runningVersion}: ${s.detail}` : 'no record');
  let converged = false;
  let finalNode = '';
  let finalAgent = '';
  let trail: string[] | undefined;
  try {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, c.opts.caseTimeoutMs ?? 30_000);
      function done() {
        clearTimeout(timer);
        c.agent.off('status', onStatus);
        node.off('hello', check);
        node.off('outcome', check);
        node.off('bricked', done);
        resolve();
      }
      function check() {
        if (agrees(node, c.agent.status(c.id))) {
          converged = true;
          done();
        }
      }
      const onStatus = (s: NodeStatus) => {
        if (s.id === c.id) check();
      };
      c.agent.on('status', onStatus);
      node.on('hello', check);
      node.on('outcome', check);
      node.once('bricked', done);
      node.start().then(check, done);
    });
    finalNode = describeNode();
    finalAgent = describeAgent(c.agent.status(c.id));
    if (!converged) trail = c.agent.store.events(c.id, 60).reverse().map((e) => `${e.kind} ${e.detail}`);
  } finally {
    await node.stop();
  }
  return {
    at: c.plan?.at ?? 0, mode: c.plan?.mode ?? 'before', fired: c.plan ? fired : true, bricked: node.isBricked, converged,
    node: finalNode, agent: finalAgent, trail, ms: Date.now() - started, operations: node.flash.operations - base,
  };
}

/** The agent's record says what the node runs and how its update ended. */
function agrees(node: SimNode, s: NodeStatus | undefined): boolean {
  if (!s || node.isBricked || !node.connected || node.inTrial || !TERMINAL.has(s.state)) return false;
  if (s.runningVersion !== node.runningVersion) return false;
  const o = node.lastOutcome;
  if (!o || o.version !== '1.1.0') return false;
  if (node.runningVersion === '1.1.0') {
    if (o.stage === Stage.confirmed) return s.state === 'confirmed';
    if (o.stage === Stage.failed) return node.recovery === 'imageFailed' && s.state === 'failed' && s.reason === reasonName(o.reason);
    return false;
  }
  return o.stage === Stage.rolledBack && s.state === 'rolledBack' && s.reason === reasonName(o.reason);
}

function stageName(stage: number): string {
  return Object.entries(Stage).find(([, v]) => v === stage)?.[0] ?? `stage#${stage}`;
}
