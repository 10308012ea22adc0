import { spawn, type ChildProcess } from 'node:child_process';
import type { RunningBroker } from '../../broker/server.js';
import type { SimNode } from '../../device/node.js';
import { ferryBin } from './ferry-process.js';

// Shared by the fault tests and the resume bench: a real `ferry agent` process to SIGKILL, and waits.

/**
 * `ferry agent` as a child process. Its output is ignored, not piped: nobody reads it, and an unread
 * pipe fills and blocks the agent's log writes.
 */
export function startAgentProcess(brokerUrl: string, dataDir: string, trust: string, credentials?: { username: string; password: string }): ChildProcess {
  // --auto-offer: these tests are about transfers, not rollouts (every release offered at once).
  const args = [ferryBin, 'agent', '--broker', brokerUrl, '--data-dir', dataDir, '--trust', trust, '--auto-offer'];
  if (credentials) args.push('--username', credentials.username);
  // The password goes by environment: a secret on the command line is visible to every user (ps).
  const env = credentials ? { ...process.env, FERRY_PASSWORD: credentials.password } : process.env;
  return spawn(process.execPath, args, { stdio: 'ignore', env });
}

/** Resolves when a client subscribes to the nodes' up topics: the (re)started agent is listening. */
export function agentListening(broker: RunningBroker): Promise<void> {
  return new Promise((resolve) => {
    const on = (subs: { topic: string }[]) => {
      if (!subs.some((s) => s.topic.endsWith('/up'))) return;
      broker.aedes.off('subscribe', on);
      resolve();
    };
    broker.aedes.on('subscribe', on);
  });
}

/** Resolves once the node holds at least `fraction` of the transfer's chunks (and at least one). */
export function onChunkFraction(n: SimNode, fraction: number): Promise<void> {
  return new Promise((resolve) => {
    const on = (received: number, total: number) => {
      if (received >= Math.max(1, Math.floor(total * fraction))) {
        n.off('chunk', on);
        resolve();
      }
    };
    n.on('chunk', on);
  });
}
