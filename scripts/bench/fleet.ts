/**
 * A fleet on one gateway: `ferry gateway` and `ferry sim --devices N` as child processes on
 * loopback, one signed release to all N nodes, and the same with one node, side by side:
 *
 *   - time from the release publish to every node confirmed; per node, time to confirmed and the
 *     transfer itself (download start to confirmed), max / median of each;
 *   - gateway CPU seconds (broker + agent, one process) per MiB relayed to nodes, from its
 *     --stats-file (process.cpuUsage), and the ratio to the one-node figure; the event loop's share
 *     apart (the rest is the password hashing thread, libuv's pool and V8's helpers);
 *   - gateway peak RSS (its VmHWM, from /proc/<pid>/status);
 *   - agent SQLite writes per chunk delivered (the store's own counter, via --stats-file);
 *   - bytes on the wire per node: the sim process's socket bytes both ways (/proc/<pid>/io rchar +
 *     wchar, less what it wrote to stdout/stderr), over the publish-to-confirmed interval.
 *
 *   node dist/scripts/bench/fleet.js [--devices N (1000)] [--quick (= --devices 100)] [--size B] [--max-concurrent K] [--window W] [--cpu-prof DIR] [--json]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { demoImage } from '../../harness/images.js';
import type { ProcessStats } from '../../cli/stats-file.js';
import { chunkCount } from '../../device/transfer.js';
import { negotiateChunkSize } from '../../shared/messages.js';
import { benchArg, median } from './bench-args.js';

const FERRY = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));

interface FleetResult {
  devices: number;
  imageBytes: number;
  maxConcurrent: number;
  allConfirmedSeconds: number;
  completionMaxOverMedian: number;
  transferMaxOverMedian: number;
  medianTransferSeconds: number;
  cpuSeconds: number;
  cpuSecondsPerMiB: number;
  /** The event loop alone (broker + agent), without the other threads (scrypt for logins not seen before, V8 helpers). */
  mainThreadCpuSecondsPerMiB: number;
  otherThreadsCpuSeconds: number;
  retransmitsPerNode: number;
  peakRssMB: number;
  storeWritesPerChunk: number;
  storeCommitsPerChunk: number;
  /** Gateway peak RSS before the release went out (the nodes' connections and their authentication). */
  peakRssBeforeMB: number;
  wireBytesPerNode: number;
  wireOverImage: number;
  simCpuSeconds: number;
}

/** With --cpu-prof DIR, the gateway runs under `node --cpu-prof` and leaves its profile there. */
let gatewayProfileDir: string | undefined;

function ferry(args: string[], opts: { stdio?: 'pipe' | 'ignore'; nodeArgs?: string[] } = {}): ChildProcess {
  return spawn(process.execPath, [...(opts.nodeArgs ?? []), FERRY, ...args], { stdio: ['ignore', opts.stdio ?? 'pipe', 'pipe'] });
}

function runFerry(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = ferry(args);
    let out = '';
    let err = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    c.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`ferry ${args[0]} exited ${code}: ${err.trim()}`))));
  });
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function procIo(pid: number): { rchar: number; wchar: number } {
  const text = fs.readFileSync(`/proc/${pid}/io`, 'utf8');
  const get = (k: string) => Number(new RegExp(`^${k}: (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
  return { rchar: get('rchar'), wchar: get('wchar') };
}

function vmHwmBytes(pid: number): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** utime + stime of a process, seconds (/proc/<pid>/stat fields 14 and 15, in clock ticks of 1/100 s). */
function procCpuSeconds(pid: number, file = `/proc/${pid}/stat`): number {
  const stat = fs.readFileSync(file, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * CPU seconds of a process's main thread (the event loop: broker + agent) and of all its other
 * threads (the password hashing thread, libuv's pool, V8 helpers): the process's total less the main
 * thread's, since a thread that has ended (the hashing thread stops when idle) is no longer listed
 * but its time stays in the total.
 */
function threadCpuSeconds(pid: number): { main: number; others: number } {
  const main = procCpuSeconds(pid, `/proc/${pid}/task/${pid}/stat`);
  return { main, others: procCpuSeconds(pid) - main };
}

/** Asks the gateway for a fresh --stats-file (SIGUSR2) and reads it. */
async function freshStats(pid: number, file: string): Promise<ProcessStats> {
  const asked = Date.now();
  process.kill(pid, 'SIGUSR2');
  return until('a fresh stats file', 10_000, () => {
    const s = readStats(file);
    return s && s.at >= asked ? s : undefined;
  });
}

function readStats(file: string): ProcessStats | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as ProcessStats;
  } catch {
    return undefined;
  }
}

async function until<T>(what: string, timeoutMs: number, probe: () => T | undefined): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}


async function fleetRun(devices: number, size: number, maxConcurrent: number, window: number, progress: (msg: string) => void): Promise<FleetResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-fleet-'));
  const children: ChildProcess[] = [];
  try {
    const op = JSON.parse(await runFerry(['operators', 'add', 'bench-op', '--data-dir', dir, '--json'])) as { password: string };
    await runFerry(['keygen', '--out', path.join(dir, 'keys'), '--json']);
    const imageFile = path.join(dir, 'image.bin');
    fs.writeFileSync(imageFile, demoImage('fleet', '1.1.0', size));
    const port = await freePort();
    const broker = `mqtt://127.0.0.1:${port}`;
    const statsFile = path.join(dir, 'gateway-stats.json');
    const gateway = ferry(['gateway', '--port', String(port), '--host', '127.0.0.1', '--data-dir', dir, '--stats-file', statsFile, '--max-concurrent', String(maxConcurrent), '--json'], {
      stdio: 'ignore',
      nodeArgs: gatewayProfileDir ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(gatewayProfileDir)}`, `--cpu-prof-name=gateway-${devices}.cpuprofile`] : [],
    });
    children.push(gateway);
    let gatewayErr = '';
    gateway.stderr!.on('data', (d: Buffer) => (gatewayErr = (gatewayErr + d.toString()).slice(-2000)));
    gateway.on('exit', (code) => {
      if (code) progress(`gateway exited ${code}: ${gatewayErr.trim()}`);
    });
    await until('the gateway', 30_000, () => (readStats(statsFile) ? true : undefined));

    // The sim: N nodes, provisioned in the gateway's identity store; its JSON lines give the timings.
    const sim = ferry([
      'sim', '--broker', broker, '--devices', String(devices), '--hw', 'fleet', '--version', '1.0.0', '--trust', path.join(dir, 'keys', 'operator.pub'),
      '--provision', '--data-dir', dir, '--window', String(window), '--json',
    ]);
    children.push(sim);
    const pid = sim.pid!;
    let outBytes = 0;
    sim.stderr!.on('data', (d: Buffer) => (outBytes += d.length));
    const started = { all: false };
    const connected = new Set<string>();
    const downloadAt = new Map<string, number>();
    const confirmedAt = new Map<string, number>();
    const failed: string[] = [];
    readline.createInterface({ input: sim.stdout! }).on('line', (line) => {
      outBytes += Buffer.byteLength(line) + 1;
      let e: { at: string; id: string; event: string; stage?: string; devices?: number };
      try {
        e = JSON.parse(line) as typeof e;
      } catch {
        return;
      }
      const at = Date.parse(e.at);
      if (e.id === 'sim' && e.event === 'started') started.all = true;
      if (e.event === 'connected') connected.add(e.id);
      if (e.event === 'downloading' && !downloadAt.has(e.id)) downloadAt.set(e.id, at);
      if (e.event === 'outcome') {
        if (e.stage === 'confirmed') confirmedAt.set(e.id, at);
        else failed.push(`${e.id}: ${e.stage}`);
      }
    });
    await until(`${devices} simulated nodes to start`, 300_000, () => (started.all ? true : undefined));
    // Every node through the gateway's authentication (scrypt per connect) and connected.
    await until(`${devices} simulated nodes to connect`, 600_000, () => (connected.size >= devices ? true : undefined));
    // Let the gateway hear every Hello (each node is then idle on 1.0.0) before the release goes out.
    await new Promise((r) => setTimeout(r, Math.min(10_000, 1000 + devices * 5)));
    progress(`${devices} nodes up; publishing`);

    const stats0 = await freshStats(gateway.pid!, statsFile);
    const threads0 = threadCpuSeconds(gateway.pid!);
    const hwm0 = vmHwmBytes(gateway.pid!);
    const io0 = procIo(pid);
    const out0 = outBytes;
    const simCpu0 = procCpuSeconds(pid);
    const t0 = Date.now();
    const publish = ['release', 'publish', '--broker', broker, '--image', imageFile, '--version', '1.1.0', '--hw', 'fleet', '--key', path.join(dir, 'keys', 'operator.key'), '--username', 'bench-op', '--password', op.password, '--json'];
    for (let attempt = 1; ; attempt++) {
      try {
        await runFerry(publish);
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
        progress(`${(err as Error).message}; publishing again`);
      }
    }
    let lastShown = 0;
    await until(`all ${devices} nodes confirmed`, 60 * 60_000, () => {
      if (failed.length > 0) throw new Error(`nodes did not confirm: ${failed.slice(0, 5).join(', ')}`);
      if (confirmedAt.size !== lastShown && (confirmedAt.size - lastShown >= Math.max(1, devices / 10) || confirmedAt.size === devices)) {
        lastShown = confirmedAt.size;
        progress(`${confirmedAt.size}/${devices} confirmed`);
      }
      return confirmedAt.size === devices ? true : undefined;
    });
    const tEnd = Math.max(...confirmedAt.values());
    const stats1 = await freshStats(gateway.pid!, statsFile);
    const threads1 = threadCpuSeconds(gateway.pid!);
    const statuses = JSON.parse(await runFerry(['status', '--broker', broker, '--username', 'bench-op', '--password', op.password, '--json'])) as { retransmits: number }[];
    const retransmits = statuses.reduce((sum, st) => sum + (st.retransmits ?? 0), 0);
    const io1 = procIo(pid);
    const simCpu1 = procCpuSeconds(pid);
    const hwm = vmHwmBytes(gateway.pid!);

    const chunk = negotiateChunkSize(4096, 'ferry/d/node-1000/dn', 16 * 1024);
    const chunksDelivered = devices * chunkCount(size, chunk);
    const mib = (devices * size) / 1048576;
    const cpu = stats1.cpuUser + stats1.cpuSystem - (stats0.cpuUser + stats0.cpuSystem);
    const completion = [...confirmedAt.values()].map((t) => t - t0);
    const transfer = [...confirmedAt.entries()].map(([id, t]) => t - (downloadAt.get(id) ?? t0));
    const wire = io1.rchar + io1.wchar - (io0.rchar + io0.wchar) - (outBytes - out0);
    return {
      devices,
      imageBytes: size,
      maxConcurrent,
      allConfirmedSeconds: (tEnd - t0) / 1000,
      completionMaxOverMedian: Math.max(...completion) / median(completion),
      transferMaxOverMedian: Math.max(...transfer) / median(transfer),
      medianTransferSeconds: median(transfer) / 1000,
      cpuSeconds: cpu,
      cpuSecondsPerMiB: cpu / mib,
      mainThreadCpuSecondsPerMiB: (threads1.main - threads0.main) / mib,
      otherThreadsCpuSeconds: threads1.others - threads0.others,
      retransmitsPerNode: retransmits / devices,
      peakRssMB: Math.max(hwm, stats1.maxRssBytes) / 1048576,
      storeWritesPerChunk: (stats1.storeWrites - stats0.storeWrites) / chunksDelivered,
      storeCommitsPerChunk: (stats1.storeCommits - stats0.storeCommits) / chunksDelivered,
      peakRssBeforeMB: hwm0 / 1048576,
      wireBytesPerNode: wire / devices,
      wireOverImage: wire / devices / size,
      simCpuSeconds: simCpu1 - simCpu0,
    };
  } finally {
    for (const c of children.reverse()) {
      if (c.exitCode === null) {
        c.kill('SIGTERM');
        await new Promise<void>((r) => {
          const t = setTimeout(() => {
            c.kill('SIGKILL');
            r();
          }, 10_000);
          c.once('exit', () => {
            clearTimeout(t);
            r();
          });
        });
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, dflt: string) => benchArg(args, name, dflt);
  const json = args.includes('--json');
  const devices = Number(arg('devices', args.includes('--quick') ? '100' : '1000'));
  const size = Number(arg('size', String(256 * 1024)));
  const maxConcurrent = Number(arg('max-concurrent', '16'));
  const window = Number(arg('window', '16'));
  gatewayProfileDir = args.includes('--cpu-prof') ? arg('cpu-prof', '.') : undefined;
  if (!Number.isInteger(devices) || devices < 1 || devices > 1000 || !Number.isInteger(size) || size < 4096 || !Number.isInteger(maxConcurrent) || maxConcurrent < 1 || !Number.isInteger(window) || window < 1 || window > 1024) {
    throw new Error('usage: fleet [--devices 1..1000 | --quick] [--size BYTES>=4096] [--max-concurrent K] [--window W] [--json]');
  }
  const progress = (msg: string) => {
    if (!json) process.stderr.write(`fleet: ${msg}\n`);
  };
  const rows: FleetResult[] = [];
  for (const n of devices === 1 ? [1] : [1, devices]) {
    progress(`${n} node${n === 1 ? '' : 's'}`);
    rows.push(await fleetRun(n, size, maxConcurrent, window, progress));
  }
  const one = rows[0];
  const out = rows.map((r) => ({
    ...r,
    cpuPerMiBOverOneNode: Number((r.cpuSecondsPerMiB / one.cpuSecondsPerMiB).toFixed(2)),
    mainThreadPerMiBOverOneNode: Number((r.mainThreadCpuSecondsPerMiB / one.mainThreadCpuSecondsPerMiB).toFixed(2)),
  }));
  if (json) {
    process.stdout.write(`${JSON.stringify(out)}\n`);
    return;
  }
  const f = (x: number, d = 2) => x.toFixed(d);
  process.stdout.write(
    `# fleet: ${size} B image to N simulated nodes (4 KiB max message, window ${window}), ferry gateway (broker + agent, one process) and ferry sim as child processes on loopback, ` +
      `max-concurrent ${maxConcurrent}; ${os.cpus().length}-core machine shared with other work\n`,
  );
  process.stdout.write(
    '| nodes | all confirmed | completion max/median | transfer max/median (median) | gateway CPU s (other threads) | CPU s per MiB (× one node) | event loop CPU s per MiB (× one node) | gateway peak RSS (before the release) | SQLite writes (commits) per chunk | wire bytes per node (/ image) | retransmits per node | sim CPU s |\n' +
      '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n',
  );
  for (const r of out) {
    process.stdout.write(
      `| ${r.devices} | ${f(r.allConfirmedSeconds, 1)} s | ${f(r.completionMaxOverMedian)} | ${f(r.transferMaxOverMedian)} (${f(r.medianTransferSeconds)} s) | ${f(r.cpuSeconds, 1)} (${f(r.otherThreadsCpuSeconds, 1)}) | ` +
        `${f(r.cpuSecondsPerMiB, 3)} (${r.cpuPerMiBOverOneNode}) | ${f(r.mainThreadCpuSecondsPerMiB, 3)} (${r.mainThreadPerMiBOverOneNode}) | ${f(r.peakRssMB, 0)} MB (${f(r.peakRssBeforeMB, 0)} MB) | ${f(r.storeWritesPerChunk, 3)} (${f(r.storeCommitsPerChunk, 3)}) | ` +
        `${Math.round(r.wireBytesPerNode)} (${f(r.wireOverImage, 3)}) | ${f(r.retransmitsPerNode, 1)} | ${f(r.simCpuSeconds, 1)} |\n`,
    );
  }
}

main().catch((err) => {
  process.stderr.write(`fleet: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
