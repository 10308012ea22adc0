/**
 * Resume: interruptions at random points of each kind (link drop, node power cut, agent kill -9),
 * each on a fresh transfer. Counts, at the broker, every Chunk published to the node, and prints the
 * median and max of what was sent beyond the image: in chunks, in bytes, and as a fraction of the
 * node's window. Goal: nothing re-sent that the node already had, except chunks in flight at the cut.
 *
 *   node dist/scripts/bench/resume.js [--trials N] [--size BYTES] [--kinds link,reboot,kill] [--seed S] [--json]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import { startBroker, type RunningBroker } from '../../broker/server.js';
import { SimNode } from '../../device/node.js';
import { decodeDown, MsgType } from '../../shared/messages.js';
import { generateOperatorKey } from '../../shared/manifest.js';
import { publishRelease } from '../../operator/publish.js';
import { demoImage } from '../../cli/demo.js';
import { startFaultProxy, type FaultProxy } from '../../test/helpers/fault-proxy.js';

type Kind = 'link' | 'reboot' | 'kill';
const here = path.dirname(fileURLToPath(import.meta.url));
const ferryBin = path.resolve(here, '../../bin/ferry.js');
const WINDOW = 16;
const MAX_MESSAGE = 1024;

/** Small deterministic PRNG so a run can be repeated with --seed. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface ChunkTally {
  sent: Map<number, number>;
  bytes: number;
  dupBytes: number;
}

function tallyChunks(broker: RunningBroker): Map<string, ChunkTally> {
  const tallies = new Map<string, ChunkTally>();
  broker.aedes.on('publish', (packet) => {
    const m = /\/d\/([^/]+)\/dn$/.exec(packet.topic);
    if (!m) return;
    let msg;
    try {
      msg = decodeDown(packet.payload as Buffer);
    } catch {
      return;
    }
    if (msg.type !== MsgType.chunk) return;
    let t = tallies.get(m[1]);
    if (!t) tallies.set(m[1], (t = { sent: new Map(), bytes: 0, dupBytes: 0 }));
    const n = (t.sent.get(msg.index) ?? 0) + 1;
    t.sent.set(msg.index, n);
    t.bytes += msg.data.length;
    if (n > 1) t.dupBytes += msg.data.length;
  });
  return tallies;
}

function startAgent(brokerUrl: string, dataDir: string, trust: string): ChildProcess {
  return spawn(process.execPath, [ferryBin, 'agent', '--broker', brokerUrl, '--data-dir', dataDir, '--trust', trust], { stdio: 'ignore' });
}

function waitStatus(brokerUrl: string, id: string, state: string): Promise<void> {
  return new Promise((resolve) => {
    const c = mqtt.connect(brokerUrl, { protocolVersion: 4 });
    c.subscribe(`ferry/d/${id}/status`);
    c.on('message', (_t, p) => {
      if (JSON.parse(p.toString()).state === state) {
        c.end();
        resolve();
      }
    });
  });
}

function onFraction(n: SimNode, f: number): Promise<void> {
  return new Promise((resolve) => {
    const on = (received: number, total: number) => {
      if (received >= Math.max(1, Math.floor(total * f))) {
        n.off('chunk', on);
        resolve();
      }
    };
    n.on('chunk', on);
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, dflt: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && args[i + 1] ? args[i + 1] : dflt;
  };
  const trials = Number(arg('trials', '100'));
  const size = Number(arg('size', String(48 * 1024)));
  const kinds = arg('kinds', 'link,reboot,kill').split(',') as Kind[];
  const random = mulberry32(Number(arg('seed', '1')));
  const json = args.includes('--json');
  if (!Number.isInteger(trials) || trials < 1 || kinds.some((k) => !['link', 'reboot', 'kill'].includes(k))) {
    throw new Error('usage: resume [--trials N] [--size BYTES] [--kinds link,reboot,kill] [--seed S] [--json]');
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-resume-'));
  const broker = await startBroker();
  const tallies = tallyChunks(broker);
  const proxy: FaultProxy = await startFaultProxy({ port: broker.port });
  const key = generateOperatorKey();
  const pub = path.join(dir, 'operator.pub');
  fs.writeFileSync(pub, key.publicKey.export({ format: 'pem', type: 'spki' }));
  let agent = startAgent(broker.url, path.join(dir, 'agent'), pub);
  await new Promise((r) => setTimeout(r, 1500));
  await publishRelease({ brokerUrl: broker.url, image: demoImage('bench', '1.1.0', size), hw: 'bench', version: '1.1.0', key: key.privateKey });

  const results: { kind: Kind; resentChunks: number; resentBytes: number; total: number }[] = [];
  for (const kind of kinds) {
    for (let i = 0; i < trials; i++) {
      const id = `${kind}-${i}`;
      const node = new SimNode({ brokerUrl: kind === 'link' ? proxy.url : broker.url, deviceId: id, hw: 'bench', version: '1.0.0', trust: [key.publicKey], maxMessage: MAX_MESSAGE, window: WINDOW });
      const done = waitStatus(broker.url, id, 'confirmed');
      await node.start();
      await onFraction(node, 0.05 + 0.9 * random());
      if (kind === 'link') proxy.dropAll();
      else if (kind === 'reboot') await node.powerCut();
      else {
        agent.kill('SIGKILL');
        await new Promise((r) => agent.once('exit', r));
        agent = startAgent(broker.url, path.join(dir, 'agent'), pub);
      }
      await done;
      await node.stop();
      const t = tallies.get(id)!;
      results.push({ kind, resentChunks: [...t.sent.values()].reduce((a, n) => a + n - 1, 0), resentBytes: t.dupBytes, total: t.sent.size });
      if (!json) process.stderr.write(`\r${kind} ${i + 1}/${trials}`);
    }
    if (!json) process.stderr.write('\n');
  }
  agent.kill('SIGKILL');
  await proxy.close();
  await broker.close();
  fs.rmSync(dir, { recursive: true, force: true });

  const rows = kinds.map((kind) => {
    const r = results.filter((x) => x.kind === kind);
    const chunks = r.map((x) => x.resentChunks).sort((a, b) => a - b);
    const bytes = r.map((x) => x.resentBytes).sort((a, b) => a - b);
    const med = (xs: number[]) => xs[Math.floor(xs.length / 2)];
    return {
      kind,
      trials: r.length,
      chunksPerImage: r[0]?.total ?? 0,
      medianResentChunks: med(chunks),
      maxResentChunks: chunks[chunks.length - 1],
      medianResentBytes: med(bytes),
      maxResentBytes: bytes[bytes.length - 1],
      medianFractionOfWindow: Number((med(chunks) / WINDOW).toFixed(2)),
      maxFractionOfWindow: Number((chunks[chunks.length - 1] / WINDOW).toFixed(2)),
    };
  });
  if (json) {
    process.stdout.write(`${JSON.stringify(rows)}\n`);
    return;
  }
  process.stdout.write(`# resume: ${size} B image, node max message ${MAX_MESSAGE} B, window ${WINDOW} chunks, one interruption per transfer at a random point\n`);
  process.stdout.write('| interruption | trials | chunks/image | median re-sent (chunks) | max re-sent (chunks) | median re-sent (B) | max re-sent (B) | median / window | max / window |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n');
  for (const r of rows) {
    process.stdout.write(`| ${r.kind} | ${r.trials} | ${r.chunksPerImage} | ${r.medianResentChunks} | ${r.maxResentChunks} | ${r.medianResentBytes} | ${r.maxResentBytes} | ${r.medianFractionOfWindow} | ${r.maxFractionOfWindow} |\n`);
  }
}

main().catch((err) => {
  process.stderr.write(`resume: ${(err as Error).stack ?? err}\n`);
  process.exitCode = 1;
});
