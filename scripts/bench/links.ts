/**
 * Long and slow links: a 1 MiB image to one node whose link to the gateway's broker is shaped (rate,
 * one-way delay, jitter; test/helpers/shaping-proxy.ts), with the agent's upstream link (releases in,
 * statuses out) shaped the same way. Per profile it prints, side by side from one run:
 *
 *   - the proxy's self-check: measured rate and one-way delay against what was asked;
 *   - ferry's goodput over the node link / link rate, data phase (first chunk at the node to the
 *     last) and end to end (Offer to verified);
 *   - a stop-and-wait baseline over the same link: one 4 KiB block per request, the next requested
 *     when the last arrived (how AWS IoT OTA streams by default), timed over --saw-blocks blocks;
 *   - the agent's release fetch over its shaped upstream: image bytes / (publish start → the agent
 *     holds the verified release), over link rate.
 *
 * Profile vsat-fade adds a 3 s stall of the node's link (both directions) once a third has arrived.
 *
 *   node dist/scripts/bench/links.js [--profiles wifi,cellular,vsat,vsat-fade] [--runs N] [--window W] [--saw-blocks N] [--size B] [--json]
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { Aedes } from 'aedes';
import mqtt from 'mqtt';
import { Agent } from '../../agent/agent.js';
import { SimNode } from '../../device/node.js';
import { generateOperatorKey } from '../../shared/manifest.js';
import { publishRelease } from '../../operator/publish.js';
import { demoImage } from '../../harness/images.js';
import { measureLink, startShapingProxy, type LinkProfile } from '../../test/helpers/shaping-proxy.js';
import { benchArg, median } from './bench-args.js';

interface NamedProfile extends LinkProfile {
  name: string;
  /** A fade: the link stalls this long once a third of the transfer has arrived. */
  stallMs?: number;
}

/** Rates and delays from the issue; jitter is ours (a few per cent of the delay), never reordering. */
const PROFILES: Record<string, NamedProfile> = {
  wifi: { name: 'Wi-Fi', rateBps: 20_000_000, delayMs: 5, jitterMs: 1 },
  cellular: { name: 'cellular', rateBps: 1_000_000, delayMs: 80, jitterMs: 8 },
  vsat: { name: 'VSAT', rateBps: 2_000_000, delayMs: 300, jitterMs: 10 },
  'vsat-fade': { name: 'VSAT, 3 s fade', rateBps: 2_000_000, delayMs: 300, jitterMs: 10, stallMs: 3000 },
};

interface Broker {
  port: number;
  close(): Promise<void>;
}

async function plainBroker(): Promise<Broker> {
  const aedes = await Aedes.createBroker();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    aedes.handle(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      await new Promise<void>((r) => aedes.close(() => r()));
    },
  };
}

interface FerryRun {
  /** Bits per second of image bytes during the data phase (first chunk at the node to the last). */
  dataBps: number;
  /** Offer to verified, seconds. */
  endToEndSeconds: number;
  endToEndBps: number;
  /** Release fetch over the shaped upstream, bits per second of image bytes. */
  fetchBps: number;
  retransmits: number;
}

async function ferryRun(profile: NamedProfile, image: Buffer, window: number, run: number): Promise<FerryRun> {
  const local = await plainBroker();
  const upstream = await plainBroker();
  const nodeLink = await startShapingProxy({ port: local.port }, profile);
  const upLink = await startShapingProxy({ port: upstream.port }, profile);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-links-'));
  const { privateKey, publicKey } = generateOperatorKey();
  const agent = new Agent({ brokerUrl: `mqtt://127.0.0.1:${local.port}`, upstreamUrl: upLink.url, dataDir, trust: [publicKey] });
  const id = `links-${run}`;
  const node = new SimNode({ brokerUrl: nodeLink.url, deviceId: id, hw: 'bench', version: '1.0.0', trust: [publicKey], maxMessage: 4096, window });
  try {
    await agent.start();
    await node.start();
    await until(agent, () => agent.status(id)?.state === 'idle');
    let firstChunk = 0;
    let lastChunk = 0;
    node.on('chunk', (received: number, total: number) => {
      const now = performance.now();
      if (profile.stallMs && received === Math.floor(total / 3)) nodeLink.stall(profile.stallMs);
      if (received === 1) firstChunk = now;
      if (received === total) lastChunk = now;
    });
    let offered = 0;
    let verified = 0;
    agent.on('status', (s) => {
      if (s.id !== id) return;
      if (s.state === 'offered' && offered === 0) offered = performance.now();
      if ((s.state === 'activating' || s.state === 'confirming') && verified === 0) verified = performance.now();
    });
    const fetched = new Promise<number>((resolve) => agent.once('release', () => resolve(performance.now())));
    const t0 = performance.now();
    await publishRelease({ brokerUrl: `mqtt://127.0.0.1:${upstream.port}`, image, hw: 'bench', version: '1.1.0', key: privateKey });
    const fetchedAt = await fetched;
    await until(agent, () => {
      const s = agent.status(id);
      if (s && ['rejected', 'timedOut', 'failed'].includes(s.state)) throw new Error(`bench node ${s.state}: ${s.reason ?? ''} ${s.detail ?? ''}`);
      return verified > 0 && lastChunk > 0;
    });
    const bits = image.length * 8;
    const total = agent.status(id)?.total ?? 1;
    return {
      // The first chunk's own serialization is not in the interval: (total − 1) chunks crossed in it.
      dataBps: (bits * (total - 1)) / total / ((lastChunk - firstChunk) / 1000),
      endToEndSeconds: (verified - offered) / 1000,
      endToEndBps: bits / ((verified - offered) / 1000),
      fetchBps: bits / ((fetchedAt - t0) / 1000),
      retransmits: agent.status(id)?.retransmits ?? 0,
    };
  } finally {
    await node.stop();
    await agent.stop();
    await nodeLink.close();
    await upLink.close();
    await local.close();
    await upstream.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

/**
 * Stop and wait: the device asks for block i and asks for i + 1 only when i has arrived, one 4 KiB
 * block per request, over the same shaped link; a server next to the broker answers each request.
 */
async function stopAndWait(profile: NamedProfile, image: Buffer, blocks: number): Promise<number> {
  const BLOCK = 4096;
  const local = await plainBroker();
  const link = await startShapingProxy({ port: local.port }, profile);
  const server = await mqtt.connectAsync(`mqtt://127.0.0.1:${local.port}`, { protocolVersion: 4, clientId: 'saw-server' });
  const device = await mqtt.connectAsync(link.url, { protocolVersion: 4, clientId: 'saw-device' });
  try {
    await server.subscribeAsync('saw/req', { qos: 1 });
    await device.subscribeAsync('saw/blk', { qos: 1 });
    server.on('message', (_t, payload) => {
      const i = payload.readUInt32BE(0);
      const block = Buffer.alloc(4 + BLOCK);
      block.writeUInt32BE(i, 0);
      image.copy(block, 4, (i * BLOCK) % image.length, Math.min(image.length, ((i * BLOCK) % image.length) + BLOCK));
      server.publish('saw/blk', block, { qos: 1 });
    });
    const ask = (i: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(i, 0);
      device.publish('saw/req', b, { qos: 1 });
    };
    let first = 0;
    const done = new Promise<number>((resolve) => {
      device.on('message', (_t, payload) => {
        const i = payload.readUInt32BE(0);
        if (i === 0) first = performance.now();
        if (profile.stallMs && i === Math.floor(blocks / 3)) link.stall(profile.stallMs);
        if (i + 1 === blocks) resolve(performance.now());
        else ask(i + 1);
      });
    });
    ask(0);
    const last = await done;
    return ((blocks - 1) * BLOCK * 8) / ((last - first) / 1000);
  } finally {
    await device.endAsync(true);
    await server.endAsync(true);
    await link.close();
    await local.close();
  }
}

function until(agent: Agent, pred: () => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      try {
        if (!pred()) return;
      } catch (err) {
        reject(err as Error);
      }
      agent.off('status', check);
      clearInterval(timer);
      resolve();
    };
    const timer = setInterval(check, 50);
    agent.on('status', check);
    check();
  });
}


async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, dflt: string) => benchArg(args, name, dflt);
  const names = arg('profiles', 'wifi,cellular,vsat,vsat-fade').split(',');
  const runs = Number(arg('runs', '3'));
  const window = Number(arg('window', '128'));
  const sawBlocks = Number(arg('saw-blocks', '32'));
  const size = Number(arg('size', String(1024 * 1024)));
  const json = args.includes('--json');
  const unknown = names.filter((n) => !PROFILES[n]);
  if (unknown.length > 0 || !Number.isInteger(runs) || runs < 1 || !Number.isInteger(window) || window < 1 || window > 1024 || !Number.isInteger(sawBlocks) || sawBlocks < 2 || !Number.isInteger(size) || size < 65536) {
    throw new Error(`usage: links [--profiles ${Object.keys(PROFILES).join(',')}] [--runs N>=1] [--window 1..1024] [--saw-blocks N>=2] [--size BYTES>=65536] [--json]${unknown.length ? ` (unknown profile ${unknown.join(', ')})` : ''}`);
  }
  const image = demoImage('bench', '1.1.0', size);
  const rows = [];
  for (const name of names) {
    const p = PROFILES[name];
    // About a second of bulk at the link rate, for the self-check.
    const check = await measureLink(p, Math.max(64 * 1024, Math.round(p.rateBps / 8)));
    const ferry: FerryRun[] = [];
    const saw: number[] = [];
    for (let r = 0; r < runs; r++) {
      if (!json) process.stderr.write(`links: ${p.name} run ${r + 1}/${runs}\n`);
      ferry.push(await ferryRun(p, image, window, r));
      saw.push(await stopAndWait(p, image, sawBlocks));
    }
    const data = median(ferry.map((f) => f.dataBps));
    rows.push({
      profile: p.name,
      rateBps: p.rateBps,
      delayMs: p.delayMs,
      jitterMs: p.jitterMs ?? 0,
      proxyRateBps: Math.round(check.rateBps),
      proxyDelayMs: Number(check.delayMs.toFixed(1)),
      ferryDataRatio: Number((data / p.rateBps).toFixed(3)),
      // With a fade, the best any sender can do is the image at link rate plus the fade.
      idealDataRatio: p.stallMs ? Number(((size * 8) / p.rateBps / ((size * 8) / p.rateBps + p.stallMs / 1000)).toFixed(3)) : 1,
      ferryDataRatios: ferry.map((f) => Number((f.dataBps / p.rateBps).toFixed(3))),
      ferryEndToEndRatio: Number((median(ferry.map((f) => f.endToEndBps)) / p.rateBps).toFixed(3)),
      ferryEndToEndSeconds: Number(median(ferry.map((f) => f.endToEndSeconds)).toFixed(2)),
      stopAndWaitRatio: Number((median(saw) / p.rateBps).toFixed(3)),
      ferryOverStopAndWait: Number((data / median(saw)).toFixed(1)),
      upstreamFetchRatio: Number((median(ferry.map((f) => f.fetchBps)) / p.rateBps).toFixed(3)),
      retransmits: median(ferry.map((f) => f.retransmits)),
      runs,
      window,
      sawBlocks,
      imageBytes: size,
    });
  }
  if (json) {
    process.stdout.write(`${JSON.stringify(rows)}\n`);
    return;
  }
  process.stdout.write(
    `# links: ${size} B image in 4,032 B chunks, node window ${window}, median of ${runs} run(s); stop-and-wait timed over ${sawBlocks} blocks of 4 KiB; ` +
      `${os.cpus().length}-core machine shared with other work\n`,
  );
  process.stdout.write(
    '| profile | asked: rate, one-way delay ± jitter | proxy measured | ferry goodput / link (data phase; per run) | best possible | ferry Offer→verified (/ link) | stop-and-wait / link | ferry / stop-and-wait | agent upstream fetch / link | retransmits |\n' +
      '|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n',
  );
  for (const r of rows) {
    process.stdout.write(
      `| ${r.profile} | ${r.rateBps / 1e6} Mbit/s, ${r.delayMs} ms ± ${r.jitterMs} | ${(r.proxyRateBps / 1e6).toFixed(2)} Mbit/s, ${r.proxyDelayMs} ms | ` +
        `${r.ferryDataRatio} (${r.ferryDataRatios.join(', ')}) | ${r.idealDataRatio} | ${r.ferryEndToEndSeconds} s (${r.ferryEndToEndRatio}) | ${r.stopAndWaitRatio} | ${r.ferryOverStopAndWait}× | ${r.upstreamFetchRatio} | ${r.retransmits} |\n`,
    );
  }
}

main().catch((err) => {
  process.stderr.write(`links: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
