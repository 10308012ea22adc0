import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import { Agent } from '../../agent/agent.js';
import type { LiveOptions } from '../../agent/http/live.js';
import { startStatusServer, type StatusServer } from '../../agent/http/server.js';
import { IdentityStore } from '../../broker/identity-store.js';
import { provision } from '../../broker/provision.js';
import { startBroker, type RunningBroker } from '../../broker/server.js';
import { fleetIds, startFleet, type Fleet } from '../../device/fleet.js';
import { demoImage } from '../../harness/images.js';
import { publishRelease } from '../../operator/publish.js';
import { generateOperatorKey } from '../../shared/manifest.js';

/**
 * What `ferry gateway --http 0` runs, in this process: the ferry broker with identities (anonymous
 * refused), the agent on it, the status server beside them, and `nodes` simulated nodes provisioned
 * like `ferry demo` does. Tests publish signed releases through a real operator identity.
 */
export interface HttpGateway {
  broker: RunningBroker;
  agent: Agent;
  http: StatusServer;
  fleet: Fleet | undefined;
  store: IdentityStore;
  key: { privateKey: KeyObject; publicKey: KeyObject };
  dataDir: string;
  publish(version: string, size?: number): Promise<unknown>;
  close(): Promise<void>;
}

export async function startHttpGateway(o: { nodes: number; failSelfTest?: number; hw?: string; live?: Partial<LiveOptions> }): Promise<HttpGateway> {
  const hw = o.hw ?? 'esp32-devkitc';
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-http-'));
  const store = IdentityStore.open(dataDir);
  const key = generateOperatorKey();
  const [operator] = (await provision(store, 'operator', ['http-operator'])).values();
  const [agentCred] = (await provision(store, 'agent', ['http-agent'], { serves: ['*'] })).values();
  const ids = fleetIds(o.nodes);
  const nodeCreds = o.nodes > 0 ? await provision(store, 'node', ids) : new Map();
  const broker = await startBroker({ ferry: { store, allowAnonymous: false } });
  const agent = new Agent({ brokerUrl: broker.url, ...agentCred, dataDir, trust: [key.publicKey], rtt: { initialRto: 300, minRto: 100 } });
  await agent.start();
  const plugin = broker.plugin!;
  const http = await startStatusServer({ agent, broker: () => plugin.stats(), startedAt: performance.timeOrigin, port: 0, ...o.live });
  const fleet =
    o.nodes > 0
      ? await startFleet({
          brokerUrl: broker.url, count: o.nodes, hw, version: '1.0.0', trust: [key.publicKey], failSelfTest: o.failSelfTest ?? 0,
          selfTestMs: 5, rebootMs: 5, reconnectPeriod: 100, maxMessage: 2048,
          perNode: Object.fromEntries(ids.map((id) => [id, { ...nodeCreds.get(id)! }])),
        })
      : undefined;
  return {
    broker, agent, http, fleet, store, key, dataDir,
    publish: (version, size = 48 * 1024) => publishRelease({ brokerUrl: broker.url, ...operator, image: demoImage(hw, version, size), hw, version, key: key.privateKey }),
    async close() {
      await http.close();
      await fleet?.stop();
      await agent.stop();
      await broker.close();
      store.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Plain HTTP GET (or another method) on loopback: status, headers and body as text. */
export async function request(url: string, init: RequestInit = {}): Promise<{ status: number; headers: Headers; body: string }> {
  const res = await fetch(url, { redirect: 'manual', ...init });
  return { status: res.status, headers: res.headers, body: await res.text() };
}
