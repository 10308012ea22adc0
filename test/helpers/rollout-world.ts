import fs from 'node:fs';
import path from 'node:path';
import { Agent, type AgentOptions } from '../../agent/agent.js';
import type { RolloutView } from '../../agent/rollout-view.js';
import type { Clock } from '../../agent/updates.js';
import { IdentityStore } from '../../broker/identity-store.js';
import { provision } from '../../broker/provision.js';
import { startBroker, type BrokerOptions, type RunningBroker } from '../../broker/server.js';
import { SimNode, type SimNodeOptions } from '../../device/node.js';
import { demoImage } from '../../harness/images.js';
import { publishRelease } from '../../operator/publish.js';
import { generateOperatorKey } from '../../shared/manifest.js';
import { runFerry, type FerryResult } from './ferry-process.js';
import { tmpDir } from './broker-support.js';

export const IMAGE_SIZE = 16 * 1024;

/**
 * A rollout test bed: a ferry broker with identities (so groups and the ACL are real), agents with
 * offer policy `rollout`, simulated nodes, an operator key on disk for the `ferry rollout` CLI.
 */
export interface RolloutWorld {
  dir: string;
  store: IdentityStore;
  brokers: RunningBroker[];
  key: ReturnType<typeof generateOperatorKey>;
  keyFile: string;
  operator: { username: string; password: string };
  agents: Agent[];
  nodes: SimNode[];
  /** Starts (or, with a name used before, restarts on the same data dir) an agent. */
  addAgent(name: string, brokerIndex?: number, extra?: Partial<AgentOptions>, clock?: Clock): Promise<Agent>;
  /** What an agent named `name` serves (before its first addAgent). */
  serves(name: string, list: string[]): void;
  addNodes(ids: string[], opts?: (id: string) => Partial<SimNodeOptions> & { groups?: string[]; broker?: number }): Promise<SimNode[]>;
  publish(version: string): Promise<void>;
  /** Stops a node and starts it again on the same flash (with changed options). */
  restartNode(old: SimNode, extra?: Partial<SimNodeOptions>): Promise<SimNode>;
  /** Runs `ferry rollout ARGS` as a process against broker 0 with the operator's identity. */
  cli(args: string[], broker?: number): Promise<FerryResult>;
  close(): Promise<void>;
}

export const HW = 'esp32-roll';

export async function makeRolloutWorld(brokerOpts: BrokerOptions[] = [{}]): Promise<RolloutWorld> {
  const dir = tmpDir('rollout');
  const store = IdentityStore.open(path.join(dir, 'ids'));
  const brokers: RunningBroker[] = [];
  for (const b of brokerOpts) brokers.push(await startBroker({ ...b, ferry: { store, storePollMs: 100 } }));
  const key = generateOperatorKey();
  const keyFile = path.join(dir, 'operator.key');
  fs.writeFileSync(keyFile, key.privateKey.export({ format: 'pem', type: 'pkcs8' }));
  const [operator] = (await provision(store, 'operator', ['op-1'])).values();
  const agentCreds = new Map<string, { username: string; password: string }>();
  const serves = new Map<string, string[]>();
  const nodeOpts = new Map<string, SimNodeOptions>();
  const w: RolloutWorld = {
    dir, store, brokers, key, keyFile, operator, agents: [], nodes: [],
    serves: (name, list) => void serves.set(name, list),
    async addAgent(name, brokerIndex = 0, extra = {}, clock) {
      let cred = agentCreds.get(name);
      if (!cred) {
        cred = (await provision(store, 'agent', [name], { serves: serves.get(name) ?? ['*'] })).get(name)!;
        agentCreds.set(name, cred);
      }
      const opts: AgentOptions = {
        brokerUrl: brokers[brokerIndex].url, username: name, password: cred.password, clientId: name,
        dataDir: path.join(dir, `agent-${name}`), trust: [key.publicKey], rtt: { initialRto: 300, minRto: 100 }, offerPolicy: 'rollout', ...extra,
      };
      const agent = new Agent(opts, clock);
      await agent.start();
      w.agents.push(agent);
      return agent;
    },
    async addNodes(ids, opts = () => ({})) {
      const byGroup = new Map<string, string[]>();
      for (const id of ids) {
        const g = (opts(id).groups ?? []).join(',');
        byGroup.set(g, [...(byGroup.get(g) ?? []), id]);
      }
      const creds = new Map<string, { username: string; password: string }>();
      for (const [g, list] of byGroup) for (const [id, c] of await provision(store, 'node', list, { groups: g ? g.split(',') : [] })) creds.set(id, c);
      const made = ids.map((id) => {
        const { groups: _g, broker = 0, ...o } = opts(id);
        const full: SimNodeOptions = {
          brokerUrl: brokers[broker].url, deviceId: id, ...creds.get(id)!, hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 4096,
          selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100, slotSize: 128 * 1024, initialImage: demoImage(HW, '1.0.0', IMAGE_SIZE), ...o,
        };
        nodeOpts.set(id, full);
        return new SimNode(full);
      });
      await Promise.all(made.map((n) => n.start()));
      w.nodes.push(...made);
      return made;
    },
    async restartNode(old, extra = {}) {
      await old.stop();
      const n = new SimNode({ ...nodeOpts.get(old.id)!, flash: old.flash, ...extra });
      w.nodes[w.nodes.indexOf(old)] = n;
      await n.start();
      return n;
    },
    async publish(version) {
      await publishRelease({ brokerUrl: brokers[0].url, ...operator, image: demoImage(HW, version, IMAGE_SIZE), hw: HW, version, key: key.privateKey });
    },
    cli(args, broker = 0) {
      return runFerry(['rollout', ...args, '--broker', brokers[broker].url, '--username', operator.username], { FERRY_PASSWORD: operator.password }, 60_000);
    },
    async close() {
      await Promise.all(w.nodes.map((n) => n.stop()));
      for (const a of w.agents) await a.stop().catch(() => {});
      for (const b of brokers) await b.close();
      store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return w;
}

/** Resolves once the agent's view of a rollout satisfies pred (checked every 50 ms; the deadline is a hang guard, not an assertion). */
export async function untilRollout(agent: Agent, pred: (v: RolloutView) => boolean, what: string, ms = 60_000): Promise<RolloutView> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = agent.rollouts()[0];
    if (v && pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for rollout: ${what}; last view ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
