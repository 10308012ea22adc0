/**
 * Abuse: how long a legitimate node's update takes through a real `ferry gateway` process (auth on)
 * alone, and while each attack of issue 10 runs against the same gateway; and the gateway's peak RSS
 * under the pre-authentication flood. All figures come from one run, side by side. Goals (issue 10):
 * every update ≤ 2× the time alone; RSS under the pre-auth flood ≤ +64 MiB.
 *
 *   node dist/scripts/bench/abuse.js [--size BYTES] [--rounds N] [--warmup MS] [--only name,name] [--json]
 *
 * Each attack runs N rounds (default 3): an update alone, then one under the attack, each by a fresh
 * node, the attack having run for --warmup ms (default 2000) before the update starts; the ratio
 * printed is the median of the per-round ratios (side by side, so that the load of a shared machine
 * drifting between rounds cancels out). "attack/s" is what the attacker managed per second.
 *
 * The attacks run in a separate process at nice 10, from loopback addresses other than the
 * legitimate node's (127.0.0.1): on this 2-core machine they stand in for attackers on other hosts,
 * whose own CPU would not be the gateway's. Attacks (each runs for the whole update, bounded):
 * - preauth-flood: 64 sockets announcing 200 MB CONNECTs and streaming, reconnecting when closed;
 * - stuck-node: a node that takes its Offer, pauses its socket and acks base 0 every 50 ms, with
 *   its broker socket already backlogged;
 * - wrong-password: 30 parallel CONNECTs with a real name and a wrong secret, from one address;
 * - wrong-password-spread: the same from 100 loopback addresses (defeats per-address back-off);
 * - unknown-users: 30 parallel CONNECTs with unknown names, from one address;
 * - retained-flood: a node trying to retain 16 MiB messages, reconnecting each time it is closed.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import mqtt from 'mqtt';
import { IdentityStore, type Credentials } from '../../broker/index.js';
import { demoImage } from '../../harness/images.js';
import { SimNode } from '../../device/node.js';
import { publishRelease } from '../../operator/publish.js';
import { generateOperatorKey } from '../../shared/manifest.js';
import { startFerryServer } from '../../test/helpers/ferry-server.js';
import { announceAndStream, rawConnect, remainingLength } from '../../test/helpers/raw-mqtt.js';
import { startStuckNode } from '../../test/helpers/stuck-node.js';

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const arg = (name: string) => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : undefined);
const SIZE = Number(arg('size') ?? 256 * 1024);
const ONLY = arg('only')?.split(',');
const ROUNDS = Number(arg('rounds') ?? 3);
/** How long each attack runs before the attacked update starts, so the gateway is in its attacked steady state. */
const WARMUP_MS = Number(arg('warmup') ?? 2000);
const UPDATE_TIMEOUT_MS = 180_000;
const HW = 'bench-hw';
const MiB = 1024 * 1024;

/** Where an attacker process finds the gateway and the credentials it abuses. */
interface Target {
  url: string;
  port: number;
  op: Credentials;
  stuck: Credentials;
  hoarder: Credentials;
}

interface Abuse {
  name: string;
  what: string;
  /** Starts the attack; resolves once it is in effect; the returned function stops it. */
  start(g: Target): Promise<() => Promise<void>>;
}

const log = (s: string) => !json && process.stderr.write(`${s}\n`);

/** Attack iterations (connections, publishes) made by this attacker process. */
let attempts = 0;

/** Runs `body` in a loop until stopped; each iteration is bounded by the socket closing. */
function loop(workers: number, body: (worker: number) => Promise<unknown>): () => Promise<void> {
  let running = true;
  const all = Promise.all(Array.from({ length: workers }, async (_, w) => {
    while (running) {
      attempts++;
      await body(w).catch(() => {});
    }
  }));
  return async () => {
    running = false;
    await all;
  };
}

const abuses: Abuse[] = [
  {
    name: 'preauth-flood',
    what: '64 sockets announcing 200 MB CONNECTs',
    async start(g) {
      const header = Buffer.concat([Buffer.from([0x10]), remainingLength(200_000_000)]);
      return loop(64, () => announceAndStream(g.port, header, 200_000_000, 64 * 1024, '127.0.0.4'));
    },
  },
  {
    name: 'stuck-node',
    what: 'a node that stops reading while acking base 0',
    async start(g) {
      const stuck = await startStuckNode({ url: g.url, id: 'stuck', hw: HW, ...g.stuck, alsoSubscribe: 'bulk/#' });
      await stuck.paused;
      // Fill the kernel's buffers for the paused socket, so the broker's next writes to it would wait.
      const filler = await mqtt.connectAsync(g.url, { protocolVersion: 4, ...g.op, clientId: 'bench-op/filler' });
      for (let i = 0; i < 1000; i++) await filler.publishAsync('bulk/x', Buffer.alloc(16 * 1024), { qos: 1 });
      await filler.endAsync();
      // A new Hello: the agent's answer (an Offer) goes into the stuck socket.
      stuck.helloAgain();
      const acksBefore = stuck.acks();
      return () => {
        attempts = stuck.acks() - acksBefore;
        return stuck.stop();
      };
    },
  },
  {
    name: 'wrong-password',
    what: '30 parallel wrong-secret CONNECTs, one address',
    async start(g) {
      return loop(30, () => rawConnect(g.port, { clientId: 'legit-0', username: 'legit-0', password: 'not-the-secret-at-all', localAddress: '127.0.0.2' }));
    },
  },
  {
    name: 'wrong-password-spread',
    what: '30 parallel wrong-secret CONNECTs from 100 addresses',
    async start(g) {
      let n = 0;
      return loop(30, () => rawConnect(g.port, { clientId: 'legit-0', username: 'legit-0', password: 'not-the-secret-at-all', localAddress: `127.0.1.${(n++ % 100) + 1}` }));
    },
  },
  {
    name: 'unknown-users',
    what: '30 parallel CONNECTs with unknown names',
    async start(g) {
      let n = 0;
      return loop(30, () => rawConnect(g.port, { clientId: `ghost-${n}`, username: `ghost-${n++}`, password: 'whatever-whatever', localAddress: '127.0.0.3' }));
    },
  },
  {
    name: 'retained-flood',
    what: 'a node retaining 16 MiB messages, reconnecting',
    async start(g) {
      return loop(1, async () => {
        const c = await mqtt.connectAsync(g.url, { protocolVersion: 4, ...g.hoarder, clientId: 'hoarder', reconnectPeriod: 0 });
        const closed = new Promise<void>((r) => c.stream.once('close', () => r()));
        c.publish(`hoard/${Date.now()}`, Buffer.alloc(16 * MiB), { qos: 1, retain: true });
        await closed;
        c.end(true);
      });
    },
  },
];

// ---- attacker process: `--attack NAME` runs one attack until SIGTERM, saying "ready" once in effect.
const attackName = arg('attack');
if (attackName) {
  const target = JSON.parse(process.env.FERRY_BENCH_TARGET ?? '{}') as Target;
  const abuse = abuses.find((a) => a.name === attackName)!;
  const stop = await abuse.start(target);
  process.stdout.write('ready\n');
  const started = performance.now();
  await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  const seconds = (performance.now() - started) / 1000;
  await Promise.race([stop(), new Promise((r) => setTimeout(r, 5000))]);
  const perSecond = attempts / seconds;
  // exit only once the line is out: stdout to a pipe is asynchronous.
  process.stdout.write(`attempts ${perSecond.toFixed(1)}\n`, () => process.exit(0));
  await new Promise(() => {});
}

/** Starts an attack in its own low-priority process; resolves once it is in effect. Stopping it gives its attempts/s. */
function startAttacker(name: string, target: Target): Promise<() => Promise<number>> {
  const child = spawn('nice', ['-n', '10', process.execPath, fileURLToPath(import.meta.url), '--attack', name], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, FERRY_BENCH_TARGET: JSON.stringify(target) },
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let out = '';
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (d.toString().includes('ready')) resolve(async () => {
        child.kill('SIGTERM');
        await exited;
        return Number(/attempts ([0-9.]+)/.exec(out)?.[1] ?? NaN);
      });
    });
    void exited.then(() => reject(new Error(`attacker ${name} exited before it was ready`)));
  });
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-abuse-'));
const store = IdentityStore.open(dir);
const op = await store.add('operator', 'bench-op');
const stuckCred = await store.add('node', 'stuck');
const bigCred = await store.add('node', 'hoarder');
const legit: Credentials[] = [];
for (let i = 0; i < 2 * ROUNDS * abuses.length + 1; i++) legit.push(await store.add('node', `legit-${i}`));
store.close();
const key = generateOperatorKey();
const trust = path.join(dir, 'operator.pub');
fs.writeFileSync(trust, key.publicKey.export({ format: 'pem', type: 'spki' }));

/** Time for one fresh node to go from start to a confirmed 2.0.0. */
async function update(url: string, i: number): Promise<number> {
  const node = new SimNode({
    brokerUrl: url, deviceId: `legit-${i}`, ...legit[i], hw: HW, version: '1.0.0', trust: [key.publicKey],
    maxMessage: 16 * 1024, selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100, slotSize: 4 * MiB,
  });
  const start = performance.now();
  const done = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timeout')), UPDATE_TIMEOUT_MS);
    node.on('stage', (name: string, detail: string) => {
      if (name === 'confirmed') {
        clearTimeout(timer);
        resolve(performance.now() - start);
      } else if (name === 'rejected' || name === 'failed' || name === 'rolledBack') {
        clearTimeout(timer);
        reject(new Error(`${name}: ${detail}`));
      }
    });
  });
  await node.start();
  try {
    return await done;
  } finally {
    await node.stop();
  }
}

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

interface Row {
  abuse: string;
  what: string;
  /** Median of the rounds under the attack. */
  updateMs: number | null;
  samplesMs?: number[];
  /** The update alone, measured just before each attacked one. */
  aloneMs?: number[];
  /** Median of the per-round ratios attacked / alone. */
  ratio: number | null;
  rssGrowthMiB?: number;
  /** Attack iterations per second (connections, publishes, acks), per round. */
  attackRate?: number[];
  error?: string;
  rssBeforeMiB?: number;
  rssPeakMiB?: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const g = await startFerryServer('gateway', ['--data-dir', dir, '--trust', trust]);
const rows: Row[] = [];
try {
  await publishRelease({ brokerUrl: g.url, image: demoImage(HW, '2.0.0', SIZE), hw: HW, version: '2.0.0', key: key.privateKey, ...op });
  log(`gateway pid ${g.child.pid} on ${g.url}; release ${HW} 2.0.0, ${SIZE} bytes`);
  let next = 0;
  // A first update warms the gateway up (JIT, SQLite caches) and is not counted.
  await update(g.url, next++);
  const aloneAll: number[] = [];
  for (const a of abuses) {
    if (ONLY && !ONLY.includes(a.name)) continue;
    const row: Row = { abuse: a.name, what: a.what, updateMs: null, ratio: null, samplesMs: [], aloneMs: [], attackRate: [] };
    const pid = g.child.pid!;
    for (let r = 0; r < ROUNDS && !row.error; r++) {
      // Side by side: an update alone, then one under the attack, so machine load drifts cancel out.
      const alone = await update(g.url, next++);
      row.aloneMs!.push(alone);
      aloneAll.push(alone);
      const rssBefore = rssOf(pid);
      let peak = rssBefore;
      const sampler = setInterval(() => (peak = Math.max(peak, rssOf(pid))), 20);
      const stop = await startAttacker(a.name, { url: g.url, port: g.port, op, stuck: stuckCred, hoarder: bigCred });
      await new Promise((r) => setTimeout(r, WARMUP_MS));
      try {
        row.samplesMs!.push(await update(g.url, next++));
      } catch (err) {
        row.error = (err as Error).message;
      }
      row.attackRate!.push(await stop());
      clearInterval(sampler);
      if (a.name === 'preauth-flood') {
        row.rssBeforeMiB = Math.min(row.rssBeforeMiB ?? Infinity, rssBefore / MiB);
        row.rssPeakMiB = Math.max(row.rssPeakMiB ?? 0, peak / MiB);
        row.rssGrowthMiB = Math.max(row.rssGrowthMiB ?? 0, (peak - rssBefore) / MiB);
      }
    }
    if (!row.error) {
      row.updateMs = median(row.samplesMs!);
      row.ratio = median(row.samplesMs!.map((x, k) => x / row.aloneMs![k]));
    }
    rows.push(row);
    log(`${a.name}: alone ${row.aloneMs!.map((x) => x.toFixed(0)).join(', ')} ms; attacked ${row.error ?? `${row.samplesMs!.map((x) => x.toFixed(0)).join(', ')} ms`} (attack: ${row.attackRate!.map((x) => x.toFixed(0)).join(', ')}/s)`);
  }
  rows.unshift({ abuse: 'none', what: 'the update alone (all rounds)', updateMs: median(aloneAll), samplesMs: aloneAll, ratio: 1 });
} finally {
  await g.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}

const flood = rows.find((r) => r.abuse === 'preauth-flood');
if (json) {
  process.stdout.write(`${JSON.stringify({ sizeBytes: SIZE, rows, goals: { maxRatio: 2, maxRssGrowthMiB: 64 } }, null, 2)}\n`);
} else {
  const pad = (s: string, n: number) => s.padEnd(n);
  console.log(`\n${pad('abuse', 24)}${pad('update', 10)}${pad('vs alone', 10)}${pad('attack/s', 10)}what (medians of ${ROUNDS} rounds)`);
  for (const r of rows) {
    const rate = r.attackRate?.length ? median(r.attackRate).toFixed(0) : '-';
    console.log(`${pad(r.abuse, 24)}${pad(r.updateMs === null ? `FAILED` : `${(r.updateMs / 1000).toFixed(2)} s`, 10)}${pad(r.ratio === null ? '-' : `${r.ratio.toFixed(2)}×`, 10)}${pad(rate, 10)}${r.what}${r.error ? ` (${r.error})` : ''}`);
  }
  if (flood?.rssPeakMiB !== undefined) {
    console.log(`\npeak RSS under the pre-auth flood: ${flood.rssPeakMiB.toFixed(1)} MiB (at most +${flood.rssGrowthMiB!.toFixed(1)} MiB over the RSS just before a round; goal ≤ +64 MiB)`);
  }
  console.log('goal: every update ≤ 2× alone');
}
process.exit(0);
