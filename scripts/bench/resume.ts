/**
 * Resume: interruptions at random points of each kind (link drop, node power cut, agent kill -9),
 * one per transfer, each on a fresh node. The broker sees every message, so it is the referee:
 *
 * - re-sent: every Chunk delivered to the node beyond one copy of each chunk (what the interruption
 *   cost on the node's link), in chunks, bytes, and as a fraction of the node's window; and, for
 *   comparison, what the agent published beyond one copy (including probes into a dead link);
 * - re-sent although held: a Chunk delivered again after the node had said it held it (its latest
 *   Hello bitmap and the Acks since). The goal is zero: only chunks in flight at the cut, or lost from
 *   RAM in a power cut, may travel twice.
 *
 * The broker runs the ferry plugin (identities, ACL, presence) by default, as a gateway does: the
 * agent hears `online` when a node comes back. `--plain` uses a bare aedes (no presence).
 *
 *   node dist/scripts/bench/resume.js [--trials N] [--kill-trials N] [--size BYTES] [--max-message B] [--kinds link,reboot,kill] [--seed S] [--plain] [--json]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { IdentityStore } from '../../broker/identity-store.js';
import { startBroker, type RunningBroker } from '../../broker/server.js';
import { SimNode } from '../../device/node.js';
import { ChunkBitmap } from '../../shared/bitmap.js';
import { decodeDown, decodeUp, MsgType } from '../../shared/messages.js';
import { generateOperatorKey } from '../../shared/manifest.js';
import { publishRelease } from '../../operator/publish.js';
import { demoImage } from '../../harness/images.js';
import { startFaultProxy, type FaultProxy } from '../../test/helpers/fault-proxy.js';
import { seeded } from '../../harness/seeded.js';
import { agentListening, onChunkFraction, startAgentProcess } from '../../test/helpers/agent-process.js';
import { benchArg } from './bench-args.js';

type Kind = 'link' | 'reboot' | 'kill';
const KINDS: readonly Kind[] = ['link', 'reboot', 'kill'];
const WINDOW = 16;
const TRIAL_TIMEOUT_MS = 60_000;

/** What the broker saw for one node: chunks sent (per index), and what the node said it held. */
interface Tally {
  /** Chunk publishes by the agent, per index. */
  sends: Map<number, number>;
  /** Chunk deliveries to the node's connection, per index. */
  deliveries: Map<number, number>;
  chunkSize: number;
  dupBytes: number;
  /** Chunks the node has said it holds, per its latest Hello and the Acks since. */
  held: ChunkBitmap | undefined;
  session: number | undefined;
  resentHeld: number;
  statuses: string[];
  lastUp?: string;
  /** The last few messages both ways, for the diagnosis of a stuck trial. */
  trace: string[];
}

function referee(broker: RunningBroker): Map<string, Tally> {
  const tallies = new Map<string, Tally>();
  const tallyOf = (id: string) => {
    let t = tallies.get(id);
    if (!t) tallies.set(id, (t = { sends: new Map(), deliveries: new Map(), chunkSize: 0, dupBytes: 0, held: undefined, session: undefined, resentHeld: 0, statuses: [], trace: [] }));
    return t;
  };
  // authorizeForward runs once per delivery to each subscriber: chunks on their way down the node's
  // own link, and the node's messages on their way to the agent. Judging both at the same stage of
  // the broker's pipeline keeps their order exactly as the agent and the node see it.
  const forward = broker.aedes.authorizeForward;
  const judged = new WeakSet<object>();
  broker.aedes.authorizeForward = (client, packet) => {
    const up = /\/d\/([^/]+)\/up$/.exec(packet.topic);
    if (up && !judged.has(packet)) {
      judged.add(packet);
      const t = tallyOf(up[1]);
      try {
        const msg = decodeUp(packet.payload as Buffer);
        if (msg.type === MsgType.hello && msg.transfer && t.held) {
          // A Hello is the node's whole truth after a boot: what it lost from RAM is no longer held.
          t.held = new ChunkBitmap(t.held.size, msg.transfer.bitmap);
        } else if (msg.type === MsgType.ack && t.held) {
          t.held.applyAck(msg.base, msg.bitmap);
        }
      } catch {
        // not a message we can judge
      }
    }
    const m = /\/d\/([^/]+)\/dn$/.exec(packet.topic);
    if (m && client?.id === m[1]) {
      try {
        const msg = decodeDown(packet.payload as Buffer);
        if (msg.type === MsgType.chunk) {
          const t = tallyOf(m[1]);
          const n = (t.deliveries.get(msg.index) ?? 0) + 1;
          t.deliveries.set(msg.index, n);
          if (n > 1) {
            t.dupBytes += msg.data.length;
            if (t.held?.has(msg.index)) {
              t.resentHeld++;
              if (process.env.FERRY_BENCH_DEBUG) process.stderr.write(`\n[${m[1]}] chunk ${msg.index} delivered again although held; last up: ${t.lastUp}\n`);
            }
          }
        }
      } catch {
        // not a message we can judge
      }
    }
    return forward ? forward(client, packet) : packet;
  };
  broker.aedes.on('publish', (packet) => {
    const m = /\/d\/([^/]+)\/(dn|up|status)$/.exec(packet.topic);
    if (!m) return;
    const t = tallyOf(m[1]);
    const payload = packet.payload as Buffer;
    try {
      if (m[2] === 'status') {
        const s = JSON.parse(payload.toString());
        if (t.statuses[t.statuses.length - 1] !== s.state) t.statuses.push(s.state);
      } else if (m[2] === 'dn') {
        const msg = decodeDown(payload);
        t.trace.push(msg.type === MsgType.chunk ? `c${msg.index}` : `dn${msg.type}`);
        if (msg.type === MsgType.offer) {
          const count = Math.ceil(msg.payloadSize / msg.chunkSize);
          if (!t.held || t.held.size !== count) t.held = new ChunkBitmap(count);
          t.chunkSize = msg.chunkSize;
        } else if (msg.type === MsgType.chunk) {
          t.sends.set(msg.index, (t.sends.get(msg.index) ?? 0) + 1);
        }
      } else {
        const msg = decodeUp(payload);
        t.trace.push(msg.type === MsgType.ack ? `A${msg.base}` : msg.type === MsgType.hello ? `HELLO(${msg.transfer?.bitmap.toString('hex') ?? '-'})` : `R${msg.stage}`);
        if (t.trace.length > 400) t.trace.splice(0, t.trace.length - 400);
        t.lastUp = msg.type === MsgType.ack ? `ack base ${msg.base} bits ${msg.bitmap?.toString('hex') ?? ''}` : msg.type === MsgType.hello ? `hello ${msg.transfer ? msg.transfer.bitmap.toString('hex') : '-'}` : `report ${msg.stage}`;
      }
    } catch {
      // Not ours to judge here: the agent logs bad messages.
    }
  });
  return tallies;
}

function statusReached(broker: RunningBroker, id: string, state: string): Promise<void> {
  return new Promise((resolve) => {
    const on = (packet: { topic: string; payload: unknown }) => {
      if (packet.topic !== `ferry/d/${id}/status`) return;
      try {
        if (JSON.parse((packet.payload as Buffer).toString()).state !== state) return;
      } catch {
        return;
      }
      broker.aedes.off('publish', on);
      resolve();
    };
    broker.aedes.on('publish', on);
  });
}

function within<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what()}`)), ms);
    }),
  ]);
}

interface TrialResult {
  kind: Kind;
  /** Published by the agent beyond one copy per chunk. */
  agentResent: number;
  /** Delivered to the node beyond one copy per chunk. */
  resentChunks: number;
  resentBytes: number;
  resentHeld: number;
  total: number;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, dflt: string) => benchArg(args, name, dflt);
  const trials = Number(arg('trials', '100'));
  const killTrials = Number(arg('kill-trials', String(trials)));
  const size = Number(arg('size', String(48 * 1024)));
  const kinds = arg('kinds', KINDS.join(',')).split(',') as Kind[];
  const seed = Number(arg('seed', '1'));
  const maxMessage = Number(arg('max-message', '1024'));
  const plain = args.includes('--plain');
  const random = seeded(seed);
  const json = args.includes('--json');
  const usage = 'usage: resume [--trials N] [--kill-trials N] [--size BYTES] [--max-message B] [--kinds link,reboot,kill] [--seed S] [--plain] [--json]';
  if (!Number.isInteger(trials) || trials < 1 || !Number.isInteger(killTrials) || killTrials < 1 || !Number.isInteger(size) || size < 4096) throw new Error(usage);
  if (!Number.isInteger(maxMessage) || maxMessage < 256) throw new Error(usage);
  if (kinds.some((k) => !KINDS.includes(k))) throw new Error(usage);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-resume-'));
  const ids = plain ? undefined : IdentityStore.open(path.join(dir, 'broker'));
  const broker = await startBroker(ids ? { ferry: { store: ids } } : {});
  const agentCred = await ids?.add('agent', 'bench-agent');
  const opCred = await ids?.add('operator', 'bench-op');
  const tallies = referee(broker);
  const proxy: FaultProxy = await startFaultProxy({ port: broker.port });
  const key = generateOperatorKey();
  const pub = path.join(dir, 'operator.pub');
  fs.writeFileSync(pub, key.publicKey.export({ format: 'pem', type: 'spki' }));
  const agentDir = path.join(dir, 'agent');
  let listening = agentListening(broker);
  let agent = startAgentProcess(broker.url, agentDir, pub, agentCred);
  await listening;
  await publishRelease({ brokerUrl: broker.url, ...opCred, image: demoImage('bench', '1.1.0', size), hw: 'bench', version: '1.1.0', key: key.privateKey });

  const t0 = performance.now();
  const results: TrialResult[] = [];
  try {
    for (const kind of kinds) {
      const n = kind === 'kill' ? killTrials : trials;
      for (let i = 0; i < n; i++) {
        const id = `${kind}-${i}`;
        const cred = await ids?.add('node', id);
        const node = new SimNode({ brokerUrl: kind === 'link' ? proxy.url : broker.url, deviceId: id, ...cred, hw: 'bench', version: '1.0.0', trust: [key.publicKey], maxMessage, window: WINDOW });
        const stages: string[] = [];
        node.on('stage', (s: string) => stages.push(s));
        const diag = () => `${id}: node ${stages.slice(-8).join(' > ')} ${JSON.stringify(node.transfer)}; agent ${tallies.get(id)?.statuses.join(' > ')}; trace ${tallies.get(id)?.trace.join(' ')}`;
        const done = statusReached(broker, id, 'confirmed');
        const at = 0.05 + 0.9 * random();
        await node.start();
        await within(onChunkFraction(node, at), TRIAL_TIMEOUT_MS, diag);
        if (kind === 'link') proxy.dropAll();
        else if (kind === 'reboot') await node.powerCut();
        else {
          agent.kill('SIGKILL');
          await new Promise((r) => agent.once('exit', r));
          listening = agentListening(broker);
          agent = startAgentProcess(broker.url, agentDir, pub, agentCred);
        }
        await within(done, TRIAL_TIMEOUT_MS, diag);
        await node.stop();
        // The next trial's node is new to the agent: it must be listening when that node says Hello.
        if (kind === 'kill') await listening;
        const t = tallies.get(id)!;
        if (process.env.FERRY_BENCH_DEBUG && t.resentHeld > 0) process.stderr.write(`\n[${id}] cut at ${at.toFixed(2)}: ${t.trace.join(' ')}\n`);
        const beyondOne = (m: Map<number, number>) => [...m.values()].reduce((a, c) => a + c - 1, 0);
        results.push({ kind, agentResent: beyondOne(t.sends), resentChunks: beyondOne(t.deliveries), resentBytes: t.dupBytes, resentHeld: t.resentHeld, total: t.held?.size ?? t.sends.size });
        tallies.delete(id);
        if (!json) process.stderr.write(`\r${kind} ${i + 1}/${n}   `);
      }
      if (!json) process.stderr.write('\n');
    }
  } finally {
    agent.kill('SIGKILL');
    await proxy.close();
    await broker.close();
    ids?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const seconds = (performance.now() - t0) / 1000;

  const rows = kinds.map((kind) => {
    const r = results.filter((x) => x.kind === kind);
    const chunks = r.map((x) => x.resentChunks).sort((a, b) => a - b);
    const agentSide = r.map((x) => x.agentResent).sort((a, b) => a - b);
    const bytes = r.map((x) => x.resentBytes).sort((a, b) => a - b);
    const med = (xs: number[]) => (xs.length % 2 ? xs[(xs.length - 1) / 2] : (xs[xs.length / 2 - 1] + xs[xs.length / 2]) / 2);
    const max = (xs: number[]) => xs[xs.length - 1];
    return {
      kind,
      trials: r.length,
      chunksPerImage: r[0]?.total ?? 0,
      medianResentChunks: med(chunks),
      maxResentChunks: max(chunks),
      medianResentBytes: med(bytes),
      maxResentBytes: max(bytes),
      medianFractionOfWindow: Number((med(chunks) / WINDOW).toFixed(2)),
      maxFractionOfWindow: Number((max(chunks) / WINDOW).toFixed(2)),
      resentAlthoughHeld: r.reduce((a, x) => a + x.resentHeld, 0),
      medianAgentResent: med(agentSide),
      maxAgentResent: max(agentSide),
      maxDeliveredPerImage: Number(((r[0]?.total ?? 0) ? (max(chunks) + r[0].total) / r[0].total : 0).toFixed(2)),
    };
  });
  if (json) {
    process.stdout.write(`${JSON.stringify({ size, window: WINDOW, maxMessage, presence: !plain, seed, seconds: Number(seconds.toFixed(1)), rows })}\n`);
    return;
  }
  process.stdout.write(`# resume: ${size} B image, node max message ${maxMessage} B, window ${WINDOW} chunks, ${plain ? 'plain broker (no presence)' : 'ferry broker with presence'}, one interruption per transfer at a random point (seed ${seed}), ${seconds.toFixed(0)} s\n`);
  process.stdout.write('re-sent = chunks delivered to the node beyond one copy each; agent-side = chunks the agent published beyond one copy (incl. probes into a dead link)\n');
  process.stdout.write('| interruption | trials | chunks/image | median re-sent (chunks) | max re-sent (chunks) | median re-sent (B) | max re-sent (B) | median / window | max / window | re-sent although held (all trials) | agent-side median / max (chunks) | max delivered / image |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n');
  for (const r of rows) {
    process.stdout.write(`| ${r.kind} | ${r.trials} | ${r.chunksPerImage} | ${r.medianResentChunks} | ${r.maxResentChunks} | ${r.medianResentBytes} | ${r.maxResentBytes} | ${r.medianFractionOfWindow} | ${r.maxFractionOfWindow} | ${r.resentAlthoughHeld} | ${r.medianAgentResent} / ${r.maxAgentResent} | ${r.maxDeliveredPerImage} |\n`);
  }
}

main().catch((err) => {
  process.stderr.write(`\nresume: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
