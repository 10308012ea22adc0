/**
 * Throughput: one node, a 1 MiB image through aedes on loopback, side by side in one run with a raw
 * baseline: the same bytes as back-to-back QoS 1 publishes of the same chunk size through the same
 * broker. Both receiving ends run in their own process (sink-process.ts) and do the same sink work:
 * the ferry node writes chunks to emulated flash and hashes the image read back; the raw subscriber
 * writes every message through the node's own Download (same erases, writes, NVS saves) and hashes
 * the slot the same way. The agent and the raw publisher run in this process, next to the broker.
 * Prints ferry goodput / raw goodput and MQTT wire bytes / image bytes for each, where wire bytes
 * are everything on the receiving end's own link (both directions: chunks, acks, PUBACKs).
 *
 * With --nagle, also runs the agent with TCP_NODELAY off (the MQTT.js default).
 *
 *   node dist/scripts/bench/throughput.js [--size BYTES] [--runs N] [--max-message B,B] [--window W] [--nagle] [--json]
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Aedes } from 'aedes';
import mqtt from 'mqtt';
import { Agent } from '../../agent/agent.js';
import { generateOperatorKey, sha256 } from '../../shared/manifest.js';
import type { SinkCommand, SinkReport } from './sink-process.js';
import { negotiateChunkSize } from '../../shared/messages.js';
import { publishRelease } from '../../operator/publish.js';
import { demoImage } from '../../harness/images.js';
import { benchArg, median } from './bench-args.js';

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

/** The node's receive window (--window; it acks every min(window/2, 8) chunks). */
let WINDOW = 128;

type Row = Record<string, number | string> & { maxMessage: number };

/** Goodput is the image over the data phase: first chunk sent to the image verified at the receiver. */
interface Result {
  seconds: number;
  goodputMiBps: number;
  wireRatio: number;
}

interface FerryResult extends Result {
  retransmits: number;
  /** Including the Offer round trip and the verified Report's way back to the agent. */
  endToEndMiBps: number;
}

const SINK = fileURLToPath(new URL('./sink-process.js', import.meta.url));

/** A long-lived receiver process (sink-process.ts): one receiver at a time, begun and ended over IPC. */
class SinkHost {
  private readonly child: ChildProcess;
  private waiters: { type: SinkReport['type']; resolve: () => void; reject: (e: Error) => void }[] = [];

  constructor(mode: 'node' | 'raw', brokerUrl: string) {
    this.child = fork(SINK, [mode, brokerUrl], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    this.child.on('message', (m: SinkReport) => {
      if (m.type === 'error') {
        for (const w of this.waiters.splice(0)) w.reject(new Error(m.message));
        return;
      }
      const k = this.waiters.findIndex((w) => w.type === m.type);
      if (k >= 0) this.waiters.splice(k, 1)[0].resolve();
    });
    this.child.on('exit', (code) => {
      for (const w of this.waiters.splice(0)) w.reject(new Error(`sink process exited (${code})`));
    });
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  /** Resolves on the next report of this type. */
  next(type: SinkReport['type']): Promise<void> {
    return new Promise((resolve, reject) => this.waiters.push({ type, resolve, reject }));
  }

  async begin(c: SinkCommand): Promise<void> {
    const ready = this.next('ready');
    this.child.send(c);
    await ready;
  }

  async end(): Promise<void> {
    const ended = this.next('ended');
    this.child.send({ type: 'end' });
    await ended;
  }

  close(): void {
    this.child.disconnect();
  }
}

let rawRuns = 0;

async function rawBaseline(broker: CountingBroker, sink: SinkHost, image: Buffer, chunk: number): Promise<Result> {
  const topic = 'ferry/d/raw-node/dn';
  const sinkId = `raw-sink-${++rawRuns}`;
  await sink.begin({ type: 'begin', clientId: sinkId, topic, size: image.length, chunk, digestHex: sha256(image).toString('hex') });
  const done = sink.next('done');
  const pub = await mqtt.connectAsync(broker.url, { protocolVersion: 4, clientId: 'raw-pub' });
  const count = Math.ceil(image.length / chunk);
  const w0 = broker.wire(sinkId);
  const t0 = process.hrtime.bigint();
  // Back to back: every publish is handed to the client at once; MQTT.js and the socket pace them.
  const acks: Promise<unknown>[] = [];
  for (let i = 0; i < count; i++) acks.push(pub.publishAsync(topic, image.subarray(i * chunk, Math.min(image.length, (i + 1) * chunk)), { qos: 1 }));
  await Promise.all(acks);
  await done;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const wire = broker.wire(sinkId) - w0;
  await pub.endAsync();
  await sink.end();
  return { seconds, goodputMiBps: image.length / seconds / 1048576, wireRatio: wire / image.length };
}

async function ferryRun(broker: CountingBroker, nodes: SinkHost, image: Buffer, maxMessage: number, run: string, tcpNoDelay: boolean): Promise<FerryResult> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-'));
  const { privateKey, publicKey } = generateOperatorKey();
  const agent = new Agent({ brokerUrl: broker.url, dataDir, trust: [publicKey], tcpNoDelay });
  await agent.start();
  const id = `bench-${run}-${maxMessage}`;
  await nodes.begin({ type: 'begin', id, maxMessage, window: WINDOW, trustPem: publicKey.export({ type: 'spki', format: 'pem' }).toString() });
  await waitStatus(agent, id, (s) => s.state === 'idle' || s.state === 'confirmed');
  let offered = 0n;
  let t0 = 0n;
  let w0 = 0;
  let endToEnd = 0;
  let wire = 0;
  const verified = nodes.next('done');
  const finished = new Promise<void>((resolve, reject) => {
    agent.on('status', (s) => {
      if (s.id !== id) return;
      if (s.state === 'offered' && offered === 0n) {
        offered = process.hrtime.bigint();
        w0 = broker.wire(id);
      }
      // The node answered the Offer: the first chunks go out right after this status.
      if (s.state === 'downloading' && t0 === 0n) t0 = process.hrtime.bigint();
      // The node's verified Report reached the agent.
      if ((s.state === 'activating' || s.state === 'confirming') && endToEnd === 0 && offered !== 0n) {
        endToEnd = Number(process.hrtime.bigint() - offered) / 1e9;
        wire = broker.wire(id) - w0;
        resolve();
      }
      if (s.state === 'rejected' || s.state === 'timedOut') reject(new Error(`bench node ${s.state}: ${s.reason} ${s.detail}`));
    });
  });
  await publishRelease({ brokerUrl: broker.url, image, hw: 'bench', version: '1.1.0', key: privateKey });
  await verified;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await finished;
  await waitStatus(agent, id, (s) => s.state === 'confirmed');
  const retransmits = agent.status(id)?.retransmits ?? 0;
  await nodes.end();
  await agent.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
  return { seconds, goodputMiBps: image.length / seconds / 1048576, wireRatio: wire / image.length, retransmits, endToEndMiBps: image.length / endToEnd / 1048576 };
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


async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, dflt: string) => benchArg(args, name, dflt);
  const size = Number(arg('size', String(1024 * 1024)));
  const runs = Number(arg('runs', '15'));
  const maxMessages = arg('max-message', '4096,16500').split(',').map(Number);
  const json = args.includes('--json');
  const withNagle = args.includes('--nagle');
  WINDOW = Number(arg('window', '128'));
  if (!Number.isInteger(size) || size < 1024 || !Number.isInteger(runs) || runs < 1 || maxMessages.some((m) => !Number.isInteger(m) || m < 256) || !Number.isInteger(WINDOW) || WINDOW < 1 || WINDOW > 1024) {
    throw new Error('usage: throughput [--size BYTES>=1024] [--runs N>=1] [--max-message B[,B...]] [--window 1..1024] [--nagle] [--json]');
  }
  const image = demoImage('bench', '1.1.0', size);
  const rows: Row[] = [];
  if (maxMessages.length > 1) {
    // Each chunk size in a fresh benchmark process: a configuration measured after another one in
    // the same process came out consistently slower (by about a tenth), whichever went first.
    for (const m of maxMessages) {
      const argv = [...args.filter((a, i) => a !== '--json' && a !== '--max-message' && args[i - 1] !== '--max-message'), '--max-message', String(m), '--json'];
      const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), ...argv], { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 });
      rows.push(...(JSON.parse(out.toString()) as Row[]));
    }
  }
  for (const maxMessage of maxMessages.length > 1 ? [] : maxMessages) {
    const broker = await countingBroker();
    const chunk = negotiateChunkSize(maxMessage, `ferry/d/bench-0-${maxMessage}/dn`, 16 * 1024);
    const ferry: FerryResult[] = [];
    const nagle: FerryResult[] = [];
    const raw: Result[] = [];
    // Warm-ups (the JIT needs a few transfers before the timings settle), then interleaved runs:
    // all variants see the same machine noise.
    const nodes = new SinkHost('node', broker.url);
    const sink = new SinkHost('raw', broker.url);
    for (let w = 0; w < 3; w++) {
      await rawBaseline(broker, sink, image, chunk);
      await ferryRun(broker, nodes, image, maxMessage, `warm-${w}`, true);
      if (withNagle) await ferryRun(broker, nodes, image, maxMessage, `warm-nagle-${w}`, false);
    }
    for (let r = 0; r < runs; r++) {
      raw.push(await rawBaseline(broker, sink, image, chunk));
      ferry.push(await ferryRun(broker, nodes, image, maxMessage, `${r}`, true));
      if (withNagle) nagle.push(await ferryRun(broker, nodes, image, maxMessage, `nagle-${r}`, false));
      if (!json) process.stderr.write(`\rthroughput: max message ${maxMessage}, run ${r + 1}/${runs}`);
    }
    nodes.close();
    sink.close();
    await broker.close();
    const f = median(ferry.map((x) => x.goodputMiBps));
    const g = withNagle ? median(nagle.map((x) => x.goodputMiBps)) : NaN;
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
      ...(withNagle ? { nagleMiBps: Number(g.toFixed(2)), nagleRatio: Number(median(nagle.map((x, i) => x.goodputMiBps / raw[i].goodputMiBps)).toFixed(3)) } : {}),
      ferryWireRatio: Number(median(ferry.map((x) => x.wireRatio)).toFixed(4)),
      rawWireRatio: Number(median(raw.map((x) => x.wireRatio)).toFixed(4)),
      ferryRetransmits: median(ferry.map((x) => x.retransmits)),
      ferryEndToEndMiBps: Number(median(ferry.map((x) => x.endToEndMiBps)).toFixed(2)),
      endToEndRatio: Number(median(ferry.map((x, i) => x.endToEndMiBps / raw[i].goodputMiBps)).toFixed(3)),
      runs,
    });
  }
  if (json) {
    process.stdout.write(`${JSON.stringify(rows)}\n`);
    return;
  }
  if (runs > 0) process.stderr.write('\n');
  process.stdout.write(
    `# throughput: ${size} B image, aedes on loopback, node window ${WINDOW}, median of ${runs} interleaved runs; receivers in their own processes doing the same flash writes and SHA-256; ` +
      `${os.cpus().length}-core machine shared with other work\n`,
  );
  process.stdout.write(
    `| node max message | chunk | ferry MiB/s | raw QoS1 + same sink work MiB/s | ferry/raw goodput (IQR) | ferry wire/image | raw wire/image | ferry retransmits | ferry Offer→verified report MiB/s (/raw) |${withNagle ? ' agent without TCP_NODELAY: MiB/s (/raw) |' : ''}\n` +
      `|---:|---:|---:|---:|---:|---:|---:|---:|---:|${withNagle ? '---:|' : ''}\n`,
  );
  for (const r of rows) {
    const nagleCell = withNagle ? ` ${r.nagleMiBps} (${r.nagleRatio}) |` : '';
    process.stdout.write(`| ${r.maxMessage} | ${r.chunk} | ${r.ferryMiBps} | ${r.rawMiBps} | ${r.goodputRatio} (${r.goodputRatioRange}) | ${r.ferryWireRatio} | ${r.rawWireRatio} | ${r.ferryRetransmits} | ${r.ferryEndToEndMiBps} (${r.endToEndRatio}) |${nagleCell}\n`);
  }
}

main().catch((err) => {
  process.stderr.write(`throughput: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
