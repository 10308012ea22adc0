import fs from 'node:fs';
import type { Agent } from '../agent/agent.js';

/** What `--stats-file` holds: this process's CPU and memory, and the agent's store writes. */
export interface ProcessStats {
  pid: number;
  at: number;
  /** CPU seconds since the process started, user and system. */
  cpuUser: number;
  cpuSystem: number;
  rssBytes: number;
  /** Peak resident set size, bytes. */
  maxRssBytes: number;
  heapUsedBytes: number;
  /** V8 heap reserved, and memory outside it (Buffers and other native allocations V8 knows of). */
  heapTotalBytes: number;
  externalBytes: number;
  storeWrites: number;
  storeCommits: number;
}

/**
 * Writes ProcessStats as JSON to `file` at start, whenever the process gets SIGUSR2, and on stop,
 * replacing it with a rename so a reader never sees half a file: a benchmark asks for a fresh copy
 * when it wants one, so the measured process does no periodic work for it.
 */
export function startStatsFile(file: string, agent: Agent): () => void {
  const write = () => {
    const cpu = process.cpuUsage();
    const mem = process.memoryUsage();
    const stats: ProcessStats = {
      pid: process.pid,
      at: Date.now(),
      cpuUser: cpu.user / 1e6,
      cpuSystem: cpu.system / 1e6,
      rssBytes: mem.rss,
      maxRssBytes: process.resourceUsage().maxRSS * 1024,
      heapUsedBytes: mem.heapUsed,
      heapTotalBytes: mem.heapTotal,
      externalBytes: mem.external,
      storeWrites: agent.store.writes,
      storeCommits: agent.store.commits,
    };
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      fs.writeFileSync(tmp, JSON.stringify(stats));
      fs.renameSync(tmp, file);
    } catch {
      // A stats file that cannot be written must not stop the gateway; the reader sees it go stale.
    }
  };
  write();
  process.on('SIGUSR2', write);
  return () => {
    process.off('SIGUSR2', write);
    write();
  };
}
