import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { Agent } from '../agent/agent.js';
import type { NodeStatus } from '../agent/status.js';
import { IdentityStore, startBroker, type Credentials, type RunningBroker } from '../broker/index.js';
import { demoImage } from '../harness/images.js';
import { SimNode } from '../device/node.js';
import { publishRelease } from '../operator/publish.js';
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { connect, end, nextMessage, publish, subscribe, tmpDir } from './helpers/broker-support.js';

/**
 * The real deployment: operators and the release pipeline talk to an upstream broker; the gateway
 * runs its own local broker for its nodes. The agent reads releases from upstream and reports status
 * there, while it talks to its nodes on the local broker. Two brokers, two identity stores (the
 * upstream one knows no node at all), auth on both.
 */
const here = path.dirname(fileURLToPath(import.meta.url));
const ferryBin = path.resolve(here, '../bin/ferry.js');
const HW = 'esp32-split';

interface Split {
  upstream: RunningBroker;
  local: RunningBroker;
  up: { agent: Credentials; op: Credentials; store: IdentityStore };
  loc: { agent: Credentials; node: Credentials; store: IdentityStore };
  key: ReturnType<typeof generateOperatorKey>;
  dir: string;
  close(): Promise<void>;
}

async function split(nodeId: string): Promise<Split> {
  const dir = tmpDir('upstream');
  const upStore = IdentityStore.open(path.join(dir, 'upstream'));
  const locStore = IdentityStore.open(path.join(dir, 'local'));
  const upstream = await startBroker({ ferry: { store: upStore } });
  const local = await startBroker({ ferry: { store: locStore } });
  const up = { agent: await upStore.add('agent', 'site-7'), op: await upStore.add('operator', 'release-bot'), store: upStore };
  const loc = { agent: await locStore.add('agent', 'gateway-agent'), node: await locStore.add('node', nodeId), store: locStore };
  return {
    upstream, local, up, loc, key: generateOperatorKey(), dir,
    async close() {
      await upstream.close();
      await local.close();
      upStore.close();
      locStore.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves with the retained-or-live status document of `id` on `url` once `pred` holds. */
async function watchStatus(url: string, cred: Credentials, clientId: string, id: string, pred: (s: NodeStatus) => boolean) {
  const c = await connect(url, { ...cred, clientId });
  const got = nextMessage(c, (tp, p) => tp === `ferry/d/${id}/status` && pred(JSON.parse(p.toString()) as NodeStatus));
  const [granted] = await subscribe(c, `ferry/d/${id}/status`);
  if (granted !== 1) throw new Error(`${cred.username} may not read ${id}'s status on ${url}`);
  return { c, got };
}

/** Topics retained under `filter` on the broker: retained copies arrive before a marker published after the SUBACK. */
async function retainedUnder(url: string, cred: Credentials, clientId: string, filter: string): Promise<string[]> {
  const c = await connect(url, { ...cred, clientId });
  const seen: string[] = [];
  c.on('message', (tp, _p, packet) => packet.retain && tp !== 'plain/marker' && seen.push(tp));
  await subscribe(c, [filter, 'plain/marker']);
  const marker = nextMessage(c, (tp) => tp === 'plain/marker');
  await publish(c, 'plain/marker', 'x');
  await marker;
  await end(c);
  return seen;
}

t.test('agent (in process): releases and status upstream, the node on the local broker', async (t) => {
  const s = await split('node-l1');
  const agent = new Agent({
    brokerUrl: s.local.url, ...s.loc.agent,
    upstreamUrl: s.upstream.url, upstreamUsername: s.up.agent.username, upstreamPassword: s.up.agent.password,
    dataDir: path.join(s.dir, 'agent'), trust: [s.key.publicKey], rtt: { initialRto: 300, minRto: 100 },
  });
  const node = new SimNode({ brokerUrl: s.local.url, deviceId: 'node-l1', ...s.loc.node, hw: HW, version: '1.0.0', trust: [s.key.publicKey], maxMessage: 2048 });
  t.teardown(async () => {
    await node.stop();
    await agent.stop();
    await s.close();
  });
  await agent.start();
  t.same(connectedAs(s.local), ['gateway-agent'], 'the agent is on the local broker as gateway-agent');
  t.same(connectedAs(s.upstream), ['site-7'], 'and upstream as site-7');
  await node.start();

  const confirmedUp = await watchStatus(s.upstream.url, s.up.op, 'op-watch', 'node-l1', (st) => st.state === 'confirmed');
  const image = demoImage(HW, '1.1.0', 80 * 1024);
  await publishRelease({ brokerUrl: s.upstream.url, ...s.up.op, image, hw: HW, version: '1.1.0', key: s.key.privateKey });
  const st = JSON.parse((await confirmedUp.got).payload.toString()) as NodeStatus;
  t.equal(st.runningVersion, '1.1.0', 'upstream status: confirmed on 1.1.0');
  t.equal(node.runningVersion, '1.1.0', 'the node on the local broker runs 1.1.0');
  t.ok(node.runningDigest.equals(sha256(image)), 'the image the operator published upstream');
  await end(confirmedUp.c);

  // Retained: an operator connecting upstream later still reads the outcome.
  const late = await watchStatus(s.upstream.url, s.up.op, 'op-late', 'node-l1', () => true);
  const r = await late.got;
  t.ok(r.retain && (JSON.parse(r.payload.toString()) as NodeStatus).state === 'confirmed', 'confirmed status is retained upstream');
  await end(late.c);
  t.same(await retainedUnder(s.local.url, s.loc.agent, 'gw-check', 'ferry/r/#'), [], 'the release never touched the local broker');
  t.same(await retainedUnder(s.upstream.url, s.up.op, 'op-check', 'ferry/d/+/presence'), [], 'node presence stays on the local broker');
});

t.test('`ferry agent --upstream` (a real process) does the same', async (t) => {
  const s = await split('node-l2');
  const pub = path.join(s.dir, 'operator.pub');
  fs.writeFileSync(pub, s.key.publicKey.export({ format: 'pem', type: 'spki' }));
  let stderr = '';
  const agent: ChildProcess = spawn(process.execPath, [
    ferryBin, 'agent', '--broker', s.local.url, '--username', s.loc.agent.username,
    '--upstream', s.upstream.url, '--upstream-username', s.up.agent.username,
    '--data-dir', path.join(s.dir, 'agent'), '--trust', pub, '--auto-offer',
  ], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, FERRY_PASSWORD: s.loc.agent.password, FERRY_UPSTREAM_PASSWORD: s.up.agent.password } });
  const node = new SimNode({ brokerUrl: s.local.url, deviceId: 'node-l2', ...s.loc.node, hw: HW, version: '1.0.0', trust: [s.key.publicKey], maxMessage: 2048 });
  t.teardown(async () => {
    agent.kill('SIGTERM');
    await node.stop();
    await s.close();
  });
  // The agent logs that line once it is connected to both brokers and subscribed on both.
  const ready = /agent connected to \S+ \(nodes\) and \S+ \(releases, status\)/;
  await new Promise<void>((resolve, reject) => {
    agent.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (ready.test(stderr)) resolve();
    });
    agent.once('exit', (code) => reject(new Error(`ferry agent exited with ${code}: ${stderr}`)));
  });
  t.pass('the agent says which broker does what');
  t.same(connectedAs(s.upstream), ['site-7'], 'it is upstream as site-7');
  await node.start();
  const confirmedUp = await watchStatus(s.upstream.url, s.up.op, 'op-watch-2', 'node-l2', (st) => st.state === 'confirmed');
  const image = demoImage(HW, '1.2.0', 40 * 1024);
  await publishRelease({ brokerUrl: s.upstream.url, ...s.up.op, image, hw: HW, version: '1.2.0', key: s.key.privateKey });
  await confirmedUp.got;
  t.equal(node.runningVersion, '1.2.0', 'the node runs the release published upstream');
  await end(confirmedUp.c);
});

/** The identities connected to a broker right now. */
function connectedAs(b: RunningBroker): (string | undefined)[] {
  return Object.keys((b.aedes as unknown as { clients: Record<string, unknown> }).clients).map((id) => b.plugin!.principalOf(id)?.id);
}
