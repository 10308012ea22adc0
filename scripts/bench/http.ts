import http from 'node:http';
import { startHttpGateway, type HttpGateway } from '../../test/helpers/http-gateway.js';
import { untilStatus } from '../../test/helpers/world.js';
import { benchArg, median } from './bench-args.js';

/**
 * What the `--http` status server costs, side by side in one run: the same update of N simulated
 * nodes (fresh gateway each time) with no status page open and with K live-update clients reading,
 * as process CPU time and wall time; bytes each live client received; and the size and time of
 * `/metrics` and `/api/status` at N nodes once the update is over. Everything runs in this process (broker, agent, nodes),
 * so CPU figures are the whole system's: the ratio is what matters. --json for machine output.
 *
 *   node dist/scripts/bench/http.js [--nodes 100] [--clients 16] [--size 65536]
 */
const args = process.argv.slice(2);
const N = Number(benchArg(args, 'nodes', '100'));
const K = Number(benchArg(args, 'clients', '16'));
const SIZE = Number(benchArg(args, 'size', '65536'));
const json = args.includes('--json');

interface Run {
  clients: number;
  wallMs: number;
  cpuMs: number;
  bytesPerClient: number;
}

function reader(base: string): { bytes: () => number; close: () => void } {
  let bytes = 0;
  const req = http.get(`${base}/api/events`, { agent: false }, (res) => res.on('data', (d: Buffer) => (bytes += d.length)));
  req.on('error', () => {});
  return { bytes: () => bytes, close: () => req.destroy() };
}

const endpoints: { path: string; bytes: number; medianMs: number }[] = [];

async function update(clients: number): Promise<Run> {
  const g: HttpGateway = await startHttpGateway({ nodes: N });
  g.agent.setMaxListeners(0); // one waiter per node below
  try {
    const ids = Array.from({ length: N }, (_, i) => `node-${i + 1}`);
    await Promise.all(ids.map((id) => untilStatus(g.agent, id, () => true, 'hello', 120_000)));
    const readers = Array.from({ length: clients }, () => reader(g.http.url));
    await new Promise((r) => setTimeout(r, 500)); // let the readers take their snapshots first
    const start = performance.now();
    const cpu = process.cpuUsage();
    await g.publish('1.1.0', SIZE);
    await Promise.all(ids.map((id) => untilStatus(g.agent, id, (s) => s.state === 'confirmed', 'confirmed', 600_000)));
    const used = process.cpuUsage(cpu);
    const wallMs = performance.now() - start;
    const total = readers.reduce((a, r) => a + r.bytes(), 0);
    readers.forEach((r) => r.close());
    if (clients === 0) for (const path of ['/metrics', '/api/status']) endpoints.push(await endpoint(g.http.url, path));
    return { clients, wallMs, cpuMs: (used.user + used.system) / 1000, bytesPerClient: clients ? total / clients : 0 };
  } finally {
    await g.close();
  }
}

async function endpoint(base: string, path: string): Promise<{ path: string; bytes: number; medianMs: number }> {
  const times: number[] = [];
  let bytes = 0;
  for (let i = 0; i < 25; i++) {
    const t0 = performance.now();
    bytes = (await (await fetch(`${base}${path}`)).arrayBuffer()).byteLength;
    if (i >= 5) times.push(performance.now() - t0); // the first few warm up the code paths
  }
  return { path, bytes, medianMs: median(times) };
}

const without = await update(0);
const withClients = await update(K);
const result = { nodes: N, imageBytes: SIZE, without, withClients, cpuRatio: withClients.cpuMs / without.cpuMs, endpoints };
if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
else {
  const line = (r: Run) => `${String(r.clients).padStart(3)} live clients: update of ${N} nodes in ${(r.wallMs / 1000).toFixed(1)} s, CPU ${(r.cpuMs / 1000).toFixed(1)} s` +
    (r.clients ? `, ${(r.bytesPerClient / 1024).toFixed(0)} KiB to each client (${((r.bytesPerClient / 1024) / (r.wallMs / 1000)).toFixed(0)} KiB/s)` : '');
  console.log(line(without));
  console.log(line(withClients));
  console.log(`CPU with ${K} clients / without: ${result.cpuRatio.toFixed(2)}`);
  for (const e of endpoints) console.log(`${e.path.padEnd(12)} at ${N} nodes, quiet: ${(e.bytes / 1024).toFixed(1)} KiB, median ${e.medianMs.toFixed(1)} ms`);
}
process.exit(0);
