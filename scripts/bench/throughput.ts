/**
 * Throughput: one node, a 1 MiB image through aedes on loopback, side by side in one run with a raw
 * baseline: the same bytes as back-to-back QoS 1 publishes of the same chunk size through the same
 * broker. Prints ferry goodput / raw goodput and MQTT wire bytes / image bytes for each, where wire
 * bytes are everything on the receiving node's own link (both directions: chunks, acks, PUBACKs).
 *
 * Also runs the agent with TCP_NODELAY off (the MQTT.js default), to show what setting it buys.
 *
 *   node dist/scripts/bench/throughput.js [--size BYTES] [--runs N] [--max-message B,B] [--json]
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
import { negotiateChunkSize } from '../../shared/messages.js';
import { publishRelease } from '../../operator/publish.js';
import { demoImage } from '../../harness/images.js';

interface CountingBroker {
  url: string;
  /** Bytes both ways on the link of one client id: the node's airtime, not the agent's. */
  wire(clientId: string): number;
  close(): Promise<void>;
}

/** aedes behind a TCP listener that counts every byte in both directions, per client link. */
async function countingBroker(): Promise<CountingBroker> {
  const aedes = await Aedes.createBroker();
  const counters = new WeakMap<object, { bytes: number }>();
  const byClient = new Map<string, { bytes: number }>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    sockets.add(s);
    const c = { bytes: 0 };
    counters.set(s, c);
    s.on('data', (d: Buffer) => (c.bytes += d.length));
    const write = s.write.bind(s);
    s.write = ((chunk: Buffer | string, ...rest: unknown[]) => {
      c.bytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
      return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
    }) as typeof s.write;
    s.on('close', () => sockets.delete(s));
    aedes.handle(s);
  });
  aedes.on('client', (client) => {
    const c = counters.get((client as unknown as { conn: object }).conn);
    if (c) byClient.set(client.id, c);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`,
    wire: (id) => byClient.get(id)?.bytes ?? 0,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      await new Promise<void>((r) => aedes.close(() => r()));
    },
  };
}

interface Result {
  seconds: number;
  goodputMiBps: number;
  wireRatio: number;
}

async function rawBaseline(broker: CountingBroker, image: Buffer, chunk: number): Promise<Result> {
  const sub = await mqtt.connectAsync(broker.url, { protocolVersion: 4, clientId: 'raw-sub' });
  const pub = await mqtt.connectAsync(broker.url, { protocolVersion: 4, clientId: 'raw-pub' });
  const topic = 'ferry/d/raw-node/dn';
  await sub.subscribeAsync(topic, { qos: 1 });
  const count = Math.ceil(image.length / chunk);
  let got = 0;
  const done = new Promise<void>((resolve) => sub.on('message', () => ++got === count && resolve()));
  const w0 = broker.wire('raw-sub');
  const t0 = process.hrtime.bigint();
  // Back to back: every publish is handed to the client at once; MQTT.js and the socket pace them.
  const acks: Promise<unknown>[] = [];
  for (let i = 0; i < count; i++) acks.push(pub.publishAsync(topic, image.subarray(i * chunk, Math.min(image.length, (i + 1) * chunk)), { qos: 1 }));
  await Promise.all(acks);
  await done;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const wire = broker.wire('raw-sub') - w0;
  await sub.endAsync();
  await pub.endAsync();
  return { seconds, goodputMiBps: image.length / seconds / 1048576, wireRatio: wire / image.length };
}

async function ferryRun(broker: CountingBroker, image: Buffer, maxMessage: number, run: string, tcpNoDelay: boolean): Promise<Result & { retransmits: number }> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-'));
  const { privateKey, publicKey } = generateOperatorKey();
  const agent = new Agent({ brokerUrl: broker.url, dataDir, trust: [publicKey], tcpNoDelay });
  await agent.start();
  const id = `bench-${run}-${maxMessage}`;
  const node = new SimNode({ brokerUrl: broker.url, deviceId: id, hw: 'bench', version: '1.0.0', trust: [publicKey], maxMessage, window: 32 });
  await node.start();
  await waitStatus(agent, id, (s) => s.state === 'idle' || s.state === 'confirmed');
  let t0 = 0n;
  let w0 = 0;
  let seconds = 0;
  let wire = 0;
  const finished = new Promise<void>((resolve, reject) => {
    agent.on('status', (s) => {
      if (s.id !== id) return;
      if (s.state === 'offered' && t0 === 0n) {
        t0 = process.hrtime.bigint();
        w0 = broker.wire(id);
      }
      // Transfer done = every chunk stored and the image verified by the node (before reboot).
      if ((s.state === 'activating' || s.state === 'confirming') && seconds === 0 && t0 !== 0n) {
        seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        wire = broker.wire(id) - w0;
        resolve();
      }
      if (s.state === 'rejected' || s.state === 'timedOut') reject(new Error(`bench node ${s.state}: ${s.reason} ${s.detail}`));
    });
  });
  await publishRelease({ brokerUrl: broker.url, image, hw: 'bench', version: '1.1.0', key: privateKey });
  await finished;
  await waitStatus(agent, id, (s) => s.state === 'confirmed');
  const retransmits = agent.status(id)?.retransmits ?? 0;
  await node.stop();
  await agent.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
  return { seconds, goodputMiBps: image.length / seconds / 1048576, wireRatio: wire / image.length, retransmits };
}

function waitStatus(agent: Agent, id: string, pred: (s: ReturnType<Agent['statuses']>[number]) => boolean): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      const s = agent.status(id);
      if (s && pred(s)) {
        agent.off('status', check);
        resolve();
      }
    };
    agent.on('status', check);
    check();
  });
}

/** First and third quartile, as text: how much the runs disagreed. */
function spread(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  const q = (f: number) => s[Math.min(s.length - 1, Math.floor(f * s.length))];
  return `${q(0.25).toFixed(2)}–${q(0.75).toFixed(2)}`;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, dflt: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && args[i + 1] ? args[i + 1] : dflt;
  };
  const size = Number(arg('size', String(1024 * 1024)));
  const runs = Number(arg('runs', '15'));
  const maxMessages = arg('max-message', '4096,16500').split(',').map(Number);
  const json = args.includes('--json');
  if (!Number.isInteger(size) || size < 1024 || !Number.isInteger(runs) || runs < 1 || maxMessages.some((m) => !Number.isInteger(m) || m < 256)) {
    throw new Error('usage: throughput [--size BYTES>=1024] [--runs N>=1] [--max-message B[,B...]] [--json]');
  }
  const image = demoImage('bench', '1.1.0', size);
  const rows = [];
  for (const maxMessage of maxMessages) {
    const broker = await countingBroker();
    const chunk = negotiateChunkSize(maxMessage, `ferry/d/bench-0-${maxMessage}/dn`, 16 * 1024);
    const ferry: (Result & { retransmits: number })[] = [];
    const nagle: (Result & { retransmits: number })[] = [];
    const raw: Result[] = [];
    // Warm-ups (the JIT needs a few transfers before the timings settle), then interleaved runs:
    // all variants see the same machine noise.
    for (let w = 0; w < 3; w++) {
      await rawBaseline(broker, image, chunk);
      await ferryRun(broker, image, maxMessage, `warm-${w}`, true);
      await ferryRun(broker, image, maxMessage, `warm-nagle-${w}`, false);
    }
    for (let r = 0; r < runs; r++) {
      raw.push(await rawBaseline(broker, image, chunk));
      ferry.push(await ferryRun(broker, image, maxMessage, `${r}`, true));
      nagle.push(await ferryRun(broker, image, maxMessage, `nagle-${r}`, false));
    }
    await broker.close();
    const f = median(ferry.map((x) => x.goodputMiBps));
    const g = median(nagle.map((x) => x.goodputMiBps));
    const b = median(raw.map((x) => x.goodputMiBps));
    rows.push({
      maxMessage,
      chunk,
      imageBytes: size,
      ferryMiBps: Number(f.toFixed(2)),
      rawMiBps: Number(b.toFixed(2)),
      // Ratios are taken per run (each ferry run against the raw run just before it), then the
      // median: a neighbour's burst of load then hits both sides of a ratio alike.
      goodputRatio: Number(median(ferry.map((x, i) => x.goodputMiBps / raw[i].goodputMiBps)).toFixed(3)),
      goodputRatioRange: spread(ferry.map((x, i) => x.goodputMiBps / raw[i].goodputMiBps)),
      nagleMiBps: Number(g.toFixed(2)),
      nagleRatio: Number(median(nagle.map((x, i) => x.goodputMiBps / raw[i].goodputMiBps)).toFixed(3)),
      ferryWireRatio: Number(median(ferry.map((x) => x.wireRatio)).toFixed(4)),
      rawWireRatio: Number(median(raw.map((x) => x.wireRatio)).toFixed(4)),
      ferryRetransmits: median(ferry.map((x) => x.retransmits)),
      runs,
    });
  }
  if (json) {
    process.stdout.write(`${JSON.stringify(rows)}\n`);
    return;
  }
  process.stdout.write(`# throughput: ${size} B image, aedes on loopback, median of ${runs} interleaved runs, ${os.cpus().length} cores\n`);
  process.stdout.write('| node max message | chunk | ferry MiB/s | raw QoS1 MiB/s | ferry/raw goodput (IQR) | ferry wire/image | raw wire/image | ferry retransmits | agent without TCP_NODELAY: MiB/s (/raw) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n');
  for (const r of rows) {
    process.stdout.write(`| ${r.maxMessage} | ${r.chunk} | ${r.ferryMiBps} | ${r.rawMiBps} | ${r.goodputRatio} (${r.goodputRatioRange}) | ${r.ferryWireRatio} | ${r.rawWireRatio} | ${r.ferryRetransmits} | ${r.nagleMiBps} (${r.nagleRatio}) |\n`);
  }
}

main().catch((err) => {
  process.stderr.write(`throughput: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
