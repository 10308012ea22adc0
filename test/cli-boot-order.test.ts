import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { NodeStatus } from '../agent/status.js';
import { IdentityStore, startBroker, type Credentials, type RunningBroker } from '../broker/index.js';
import { demoImage } from '../harness/images.js';
import { SimNode } from '../device/node.js';
import { publishRelease } from '../operator/publish.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { connect, end, freePort, nextMessage, subscribe, tmpDir } from './helpers/broker-support.js';
import { startFerry } from './helpers/ferry-process.js';

/**
 * Issue 10 item 8, the boot order of a gateway whose network comes late: `ferry agent` started
 * before its broker, and `ferry gateway` started before its upstream. Each must keep retrying with
 * backoff (saying so), never crash (it did, at the first CONNACK after the broker appeared: a
 * reconnect of an ended client, on closed message stores), and do its job once the broker is there.
 */
const HW = 'esp32-late';

/** Starts a broker on `port` and resolves `subscribed` once a client subscribes to a topic matching `re`. */
async function brokerOn(port: number, store: IdentityStore, re: RegExp): Promise<{ broker: RunningBroker; subscribed: Promise<void> }> {
  let resolve!: () => void;
  const subscribed = new Promise<void>((r) => (resolve = r));
  const broker = await startBroker({
    port,
    host: '127.0.0.1',
    ferry: { store },
    // Attached before the listener opens, so an agent that connects at once is not missed.
    setup: (aedes) => void aedes.on('subscribe', (subs) => subs.some((s) => re.test(s.topic)) && resolve()),
  });
  return { broker, subscribed };
}

async function untilStatus(url: string, cred: Credentials, id: string, pred: (s: NodeStatus) => boolean): Promise<{ done: Promise<unknown>; close(): Promise<void> }> {
  const c = await connect(url, { ...cred, clientId: `watch-${id}` });
  const done = nextMessage(c, (tp, p) => tp === `ferry/d/${id}/status` && pred(JSON.parse(p.toString()) as NodeStatus));
  await subscribe(c, `ferry/d/${id}/status`);
  return { done, close: () => end(c) };
}

function writeSecret(dir: string, name: string, secret: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  return file;
}

t.test('ferry agent started before its broker: waits, retries with backoff, then updates a node', async (t) => {
  const dir = tmpDir('late-broker');
  const key = generateOperatorKey();
  const pub = path.join(dir, 'operator.pub');
  fs.writeFileSync(pub, key.publicKey.export({ format: 'pem', type: 'spki' }));
  const store = IdentityStore.open(path.join(dir, 'broker'));
  const agentCred = await store.add('agent', 'site-1');
  const op = await store.add('operator', 'op-1');
  const nodeCred = await store.add('node', 'late-1');
  const port = await freePort(); // nothing listens there yet

  // host:port without a scheme, the password in a file: items 13 and 12 on the way.
  const agent = startFerry(['agent', '--broker', `127.0.0.1:${port}`, '--username', 'site-1', '--password-file', writeSecret(dir, 'agent.secret', agentCred.password), '--data-dir', path.join(dir, 'agent'), '--trust', pub, '--auto-offer']);
  let broker: RunningBroker | undefined;
  let node: SimNode | undefined;
  t.teardown(async () => {
    await agent.stop();
    await node?.stop();
    await broker?.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  await agent.waitFor(new RegExp(`waiting for the nodes broker mqtt://127\\.0\\.0\\.1:${port} \\(connect ECONNREFUSED`));
  // A second refused attempt: it is retrying, not waiting on a single connect.
  await agent.waitFor(/ECONNREFUSED[^]*ECONNREFUSED[^]*ECONNREFUSED/);
  t.pass('the agent says it waits for its broker, and keeps trying');

  const started = await brokerOn(port, store, /\/up$/);
  broker = started.broker;
  await started.subscribed;
  await agent.waitFor(/agent connected to mqtt:\/\/127\.0\.0\.1:\d+/);
  t.pass('once the broker is up the agent connects and subscribes');

  node = new SimNode({ brokerUrl: broker.url, deviceId: 'late-1', ...nodeCred, hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 2048, selfTestMs: 5, rebootMs: 5, slotSize: 128 * 1024 });
  await node.start();
  const confirmed = await untilStatus(broker.url, op, 'late-1', (s) => s.state === 'confirmed');
  await publishRelease({ brokerUrl: broker.url, ...op, image: demoImage(HW, '1.1.0', 24 * 1024), hw: HW, version: '1.1.0', key: key.privateKey });
  await confirmed.done;
  await confirmed.close();
  t.equal(node.runningVersion, '1.1.0', 'and updates the node');
  t.equal(agent.child.exitCode, null, 'the agent is still running');
  t.notMatch(agent.stderr(), /TypeError|\n\s+at /, 'no crash, no stack trace');
  t.equal(await agent.stop(), 0, 'SIGTERM: exit 0');
});

t.test('ferry gateway started before its upstream: serves its broker, waits for upstream, then relays a release', async (t) => {
  const dir = tmpDir('late-upstream');
  const key = generateOperatorKey();
  const pub = path.join(dir, 'operator.pub');
  fs.writeFileSync(pub, key.publicKey.export({ format: 'pem', type: 'spki' }));
  const gatewayDir = path.join(dir, 'gateway');
  const local = IdentityStore.open(gatewayDir);
  const nodeCred = await local.add('node', 'late-2');
  local.close();
  const upStore = IdentityStore.open(path.join(dir, 'upstream'));
  const site = await upStore.add('agent', 'site-2');
  const op = await upStore.add('operator', 'op-2');
  const upPort = await freePort();

  const gateway = startFerry(['gateway', '--port', '0', '--host', '127.0.0.1', '--data-dir', gatewayDir, '--trust', pub, '--auto-offer',
    '--upstream', `mqtt://127.0.0.1:${upPort}`, '--upstream-username', 'site-2'], { FERRY_UPSTREAM_PASSWORD: site.password });
  let upstream: RunningBroker | undefined;
  let node: SimNode | undefined;
  t.teardown(async () => {
    await gateway.stop();
    await node?.stop();
    await upstream?.close();
    upStore.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const [, localPort] = await gateway.waitFor(/ferry gateway: broker on 127\.0\.0\.1:(\d+)/);
  await gateway.waitFor(new RegExp(`waiting for the upstream broker mqtt://127\\.0\\.0\\.1:${upPort} \\(connect ECONNREFUSED`));
  await gateway.waitFor(/ECONNREFUSED[^]*ECONNREFUSED[^]*ECONNREFUSED/);
  t.pass('the gateway serves its own broker and says it waits for upstream');

  const started = await brokerOn(upPort, upStore, /\/manifest$/);
  upstream = started.broker;
  await started.subscribed;
  await gateway.waitFor(/agent connected to \S+ \(nodes\) and \S+ \(releases, status\)/);
  t.pass('once upstream is up the gateway connects and subscribes there');

  const localUrl = `mqtt://127.0.0.1:${localPort}`;
  node = new SimNode({ brokerUrl: localUrl, deviceId: 'late-2', ...nodeCred, hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 2048, selfTestMs: 5, rebootMs: 5, slotSize: 128 * 1024 });
  await node.start();
  const confirmed = await untilStatus(upstream.url, op, 'late-2', (s) => s.state === 'confirmed');
  await publishRelease({ brokerUrl: upstream.url, ...op, image: demoImage(HW, '1.2.0', 24 * 1024), hw: HW, version: '1.2.0', key: key.privateKey });
  await confirmed.done;
  await confirmed.close();
  t.equal(node.runningVersion, '1.2.0', 'the node on the gateway runs the release published upstream');
  t.notMatch(gateway.stderr(), /TypeError|\n\s+at /, 'no crash, no stack trace');
  t.equal(await gateway.stop(), 0, 'SIGTERM: exit 0');
});
