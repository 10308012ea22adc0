/**
 * Abuse: how long a legitimate node's update takes through a real `ferry gateway` process (auth on)
 * alone, and while each attack of issue 10 runs against the same gateway; and the gateway's peak RSS
 * under the pre-authentication flood. All figures come from one run, side by side. Goals (issue 10):
 * every update ≤ 2× the time alone; RSS under the pre-auth flood ≤ +64 MiB.
 *
 *   node dist/scripts/bench/abuse.js [--size BYTES] [--only name,name] [--json]
 *
 * Attacks (each runs for the whole update, on loopback, bounded):
 * - preauth-flood: 64 sockets announcing 200 MB CONNECTs and streaming, reconnecting when closed;
 * - stuck-node: a node that takes its Offer, pauses its socket and acks base 0 every 50 ms, with
 *   its broker socket already backlogged;
 * - wrong-password: 30 parallel CONNECTs with a real name and a wrong secret, from one address;
 * - wrong-password-spread: the same from 100 loopback addresses (defeats per-address back-off);
 * - unknown-users: 30 parallel CONNECTs with unknown names, from one address;
 * - retained-flood: a node trying to retain 16 MiB messages, reconnecting each time it is closed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { IdentityStore, type Credentials } from '../../broker/index.js';
import { demoImage } from '../../cli/demo.js';
import { SimNode } from '../../device/node.js';
import { publishRelease } from '../../operator/publish.js';
import { generateOperatorKey } from '../../shared/manifest.js';
import { startFerry, type FerryProcess } from '../../test/helpers/ferry-process.js';
import { announceAndStream, publishPacket, rawConnect, remainingLength } from '../../test/helpers/raw-mqtt.js';
import { startStuckNode } from '../../test/helpers/stuck-node.js';

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const arg = (name: string) => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : undefined);
const SIZE = Number(arg('size') ?? 256 * 1024);
const ONLY = arg('only')?.split(',');
const UPDATE_TIMEOUT_MS = 180_000;
const HW = 'bench-hw';
const MiB = 1024 * 1024;

interface Abuse {
  name: string;
  what: string;
  /** Starts the attack; resolves once it is in effect; the returned function stops it. */
  start(g: FerryProcess): Promise<() => Promise<void>>;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-abuse-'));
const store = IdentityStore.open(dir);
const op = await store.add('operator', 'bench-op');
const stuckCred = await store.add('node', 'stuck');
const bigCred = await store.add('node', 'hoarder');
const legit: Credentials[] = [];
for (let i = 0; i < 8; i++) legit.push(await store.add('node', `legit-${i}`));
store.close();
const key = generateOperatorKey();
const trust = path.join(dir, 'operator.pub');
fs.writeFileSync(trust, key.publicKey.export({ format: 'pem', type: 'spki' }));

const log = (s: string) => !json && process.stderr.write(`${s}\n`);

/** Runs `body` in a loop until stopped; each iteration is bounded by the socket closing. */
function loop(workers: number, body: (worker: number) => Promise<unknown>): () => Promise<void> {
  let running = true;
  const all = Promise.all(Array.from({ length: workers }, async (_, w) => {
    while (running) await body(w).catch(() => {});
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
      return loop(64, () => announceAndStream(g.port, header, 200_000_000));
    },
  },
  {
    name: 'stuck-node',
    what: 'a node that stops reading while acking base 0',
    async start(g) {
      const stuck = await startStuckNode({ url: g.url, id: 'stuck', hw: HW, ...stuckCred, alsoSubscribe: 'bulk/#' });
      await stuck.paused;
      // Fill the kernel's buffers for the paused socket, so the broker's next writes to it would wait.
      const filler = await mqtt.connectAsync(g.url, { protocolVersion: 4, ...op, clientId: 'bench-op/filler' });
      for (let i = 0; i < 1000; i++) await filler.publishAsync('bulk/x', Buffer.alloc(16 * 1024), { qos: 1 });
      await filler.endAsync();
      return () => stuck.stop();
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
        const c = await mqtt.connectAsync(g.url, { protocolVersion: 4, ...bigCred, clientId: 'hoarder', reconnectPeriod: 0 });
        const closed = new Promise<void>((r) => c.stream.once('close', () => r()));
        c.publish(`hoard/${Date.now()}`, Buffer.alloc(16 * MiB), { qos: 1, retain: true });
        await closed;
        c.end(true);
        void publishPacket; // the raw form of the same packet is in test/attack-retained.test.ts
      });
    },
  },
];

/** Time for one fresh node to go from start to a confirmed 2.0.0. */
async function update(g: FerryProcess, i: number): Promise<number> {
  const node = new SimNode({
    brokerUrl: g.url, deviceId: `legit-${i}`, ...legit[i], hw: HW, version: '1.0.0', trust: [key.publicKey],
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
  updateMs: number | null;
  ratio: number | null;
  error?: string;
  rssBeforeMiB?: number;
  rssPeakMiB?: number;
}

const g = await startFerry('gateway', ['--data-dir', dir, '--trust', trust]);
const rows: Row[] = [];
try {
  await publishRelease({ brokerUrl: g.url, image: demoImage(HW, '2.0.0', SIZE), hw: HW, version: '2.0.0', key: key.privateKey, ...op });
  log(`gateway pid ${g.child.pid} on ${g.url}; release ${HW} 2.0.0, ${SIZE} bytes`);
  // A first update warms the gateway up (JIT, SQLite caches) and is not counted.
  await update(g, 7);
  const alone = await update(g, 0);
  rows.push({ abuse: 'none', what: 'the update alone', updateMs: alone, ratio: 1 });
  log(`alone: ${alone.toFixed(0)} ms`);
  let i = 1;
  for (const a of abuses) {
    if (ONLY && !ONLY.includes(a.name)) continue;
    const pid = g.child.pid!;
    const rssBefore = rssOf(pid);
    let peak = rssBefore;
    const sampler = setInterval(() => (peak = Math.max(peak, rssOf(pid))), 20);
    const stop = await a.start(g);
    const row: Row = { abuse: a.name, what: a.what, updateMs: null, ratio: null };
    try {
      row.updateMs = await update(g, i++);
      row.ratio = row.updateMs / alone;
    } catch (err) {
      row.error = (err as Error).message;
    }
    await stop();
    clearInterval(sampler);
    if (a.name === 'preauth-flood') {
      row.rssBeforeMiB = rssBefore / MiB;
      row.rssPeakMiB = peak / MiB;
    }
    rows.push(row);
    log(`${a.name}: ${row.updateMs === null ? row.error : `${row.updateMs.toFixed(0)} ms (${row.ratio!.toFixed(2)}×)`}`);
  }
} finally {
  await g.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}

const flood = rows.find((r) => r.abuse === 'preauth-flood');
if (json) {
  process.stdout.write(`${JSON.stringify({ sizeBytes: SIZE, rows, goals: { maxRatio: 2, maxRssGrowthMiB: 64 } }, null, 2)}\n`);
} else {
  const pad = (s: string, n: number) => s.padEnd(n);
  console.log(`\n${pad('abuse', 24)}${pad('update', 12)}${pad('vs alone', 10)}what`);
  for (const r of rows) {
    console.log(`${pad(r.abuse, 24)}${pad(r.updateMs === null ? `FAILED` : `${(r.updateMs / 1000).toFixed(2)} s`, 12)}${pad(r.ratio === null ? '-' : `${r.ratio.toFixed(2)}×`, 10)}${r.what}${r.error ? ` (${r.error})` : ''}`);
  }
  if (flood?.rssPeakMiB !== undefined) {
    console.log(`\npeak RSS under the pre-auth flood: ${flood.rssPeakMiB.toFixed(1)} MiB (before: ${flood.rssBeforeMiB!.toFixed(1)} MiB, +${(flood.rssPeakMiB - flood.rssBeforeMiB!).toFixed(1)} MiB; goal ≤ +64 MiB)`);
  }
  console.log('goal: every update ≤ 2× alone');
}
process.exit(0);
