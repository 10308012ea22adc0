import t from 'tap';
import mqtt from 'mqtt';
import { SimNode } from '../device/node.js';
import { decodeDown, decodeUp, MsgType, Stage, type UpMessage } from '../shared/messages.js';
import { sha256 } from '../shared/manifest.js';
import { demoImage } from '../harness/images.js';
import type { StoredEvent } from '../agent/store.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { makeWorld, type World } from './helpers/world.js';
import { runSeed, seeded } from '../harness/seeded.js';
import { onChunkFraction } from './helpers/agent-process.js';

/**
 * Faults between the agent and its nodes (issue 3): links cut at random byte offsets, a stalled
 * link, a node that vanishes past its download deadline and comes back, duplicated and replayed
 * messages, and many nodes behind a concurrency limit. Every assertion waits on events (agent
 * status and store events, node events, proxy events), never on elapsed time.
 */
const HW = 'esp32-faults';
const seed = runSeed(20250601);
t.comment(`seed ${seed} (FERRY_SEED=${seed} repeats this run)`);

function nextEvent(world: World, node: string | null, kind: string, pred: (e: StoredEvent) => boolean = () => true): Promise<StoredEvent> {
  return new Promise((resolve) => {
    const on = (e: StoredEvent) => {
      if (e.node !== node || e.kind !== kind || !pred(e)) return;
      world.agent.store.off('event', on);
      resolve(e);
    };
    world.agent.store.on('event', on);
  });
}

function node(world: World, id: string, extra: Partial<ConstructorParameters<typeof SimNode>[0]> = {}): SimNode {
  return new SimNode({ brokerUrl: world.broker.url, deviceId: id, hw: HW, version: '1.0.0', trust: [world.key.publicKey], maxMessage: 1024, ...extra });
}

t.test('link cut at seeded random byte offsets: every node ends updated with the verified image', async (t) => {
  const world = await makeWorld();
  const proxy = await startFaultProxy({ port: world.broker.port });
  const image = demoImage(HW, '1.1.0', 160 * 1024);
  const random = seeded(seed);
  const cuts = Array.from({ length: 5 }, () => Math.floor(random() * image.length));
  const nodes: SimNode[] = [];
  t.teardown(async () => {
    for (const n of nodes) await n.stop();
    await proxy.close();
    await world.close();
  });
  await world.publish({ hw: HW, version: '1.1.0', image });
  const cutSeen: number[] = [];
  proxy.events.on('cut', (at) => cutSeen.push(at));
  for (const [k, offset] of cuts.entries()) {
    const n = node(world, `cut-${k}`, { brokerUrl: proxy.url });
    nodes.push(n);
    // The budget belongs to the next connection the proxy accepts: this node's first one.
    proxy.cutAfter(offset);
    const accepted = new Promise<void>((resolve) => proxy.events.once('connection', () => resolve()));
    void n.start();
    await accepted;
  }
  for (const [k, n] of nodes.entries()) {
    const s = await world.until(n.id, (s) => s.state === 'confirmed', `cut-${k} confirmed`);
    t.equal(s.runningVersion, '1.1.0', `cut at byte ${cuts[k]}: node runs 1.1.0`);
    t.ok(n.runningDigest.equals(sha256(image)), `cut at byte ${cuts[k]}: image digest verified on the node`);
  }
  t.same([...cutSeen].sort((a, b) => a - b), [...cuts].sort((a, b) => a - b), 'every link was cut exactly where planned');
});

t.test('a stalled link: the RTO backs off while nothing moves, and the transfer finishes after the stall', async (t) => {
  const world = await makeWorld();
  const proxy = await startFaultProxy({ port: world.broker.port });
  const n = node(world, 'stall', { brokerUrl: proxy.url });
  t.teardown(async () => {
    await n.stop();
    await proxy.close();
    await world.close();
  });
  await n.start();
  await world.until('stall', () => true, 'hello');
  const image = demoImage(HW, '1.1.0', 200 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  await onChunkFraction(n, 0.3);
  proxy.stall();
  const stalledAt = n.transfer!.received;
  // Watch the retransmission timer while nothing gets through: each loss event doubles the RTO
  // (expiries a few ms apart are one event), until it is 8 times what it was.
  const rtos: number[] = [];
  await new Promise<void>((resolve) => {
    const on = (e: { id: string; rto: number; expiries: number }) => {
      if (e.id !== 'stall') return;
      rtos.push(e.rto);
      if (e.rto >= 8 * rtos[0]) {
        world.agent.off('windowTimeout', on);
        resolve();
      }
    };
    world.agent.on('windowTimeout', on);
  });
  t.equal(n.transfer!.received, stalledAt, 'nothing reached the node during the stall');
  t.ok(rtos.every((r, i) => i === 0 || r >= rtos[i - 1]), `the RTO never shrank while silent: ${rtos.join(' -> ')} ms`);
  t.ok(rtos[rtos.length - 1] >= 8 * rtos[0], 'and backed off exponentially');
  t.not(world.agent.status('stall')!.state, 'timedOut');
  proxy.resume();
  const s = await world.until('stall', (s) => s.state === 'confirmed', 'confirmed after the stall');
  t.equal(s.runningVersion, '1.1.0');
  t.ok(n.runningDigest.equals(sha256(image)), 'verified image running');
});

t.test('a node vanishes mid-transfer: timed out naming the download stage, then resumed when it returns', async (t) => {
  // "Returns an hour later", scaled: the download deadline is seconds, not the default 30 minutes.
  const world = await makeWorld({ agent: { deadlines: { download: 4000 }, maxControlRetries: 3 } });
  let n = node(world, 'away');
  t.teardown(async () => {
    await n.stop();
    await world.close();
  });
  await n.start();
  await world.until('away', () => true, 'hello');
  const image = demoImage(HW, '1.1.0', 96 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  await onChunkFraction(n, 0.3);
  const flash = n.flash;
  await n.stop(); // gone without a word: no power, no network
  const timedOut = await world.until('away', (s) => s.state === 'timedOut', 'timed out');
  t.equal(timedOut.reason, 'timeout');
  t.match(timedOut.detail, /download deadline passed/, `the stage is named: ${timedOut.detail}`);
  t.equal(world.agent.store.nodes().find((r) => r.id === 'away')!.state, 'timedOut', 'recorded durably, not "in progress"');

  const held = n.transfer?.received ?? 0;
  n = node(world, 'away', { flash });
  await n.start();
  const s = await world.until('away', (s) => s.state === 'confirmed', 'confirmed after returning');
  t.equal(s.runningVersion, '1.1.0');
  t.ok(n.runningDigest.equals(sha256(image)), 'verified image running');
  const row = world.agent.store.nodes().find((r) => r.id === 'away')!;
  t.ok(row.bytesSent < image.length * 0.85, `resumed, not restarted: ${row.bytesSent} B sent after the return (node held ${held} chunks)`);
});

t.test('duplicate, reordered and late messages are harmless', async (t) => {
  const world = await makeWorld();
  const n = node(world, 'dup');
  const sniff = await mqtt.connectAsync(world.broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  const seen: { msg: UpMessage; raw: Buffer }[] = [];
  let offersAfterConfirm = 0;
  let confirmed = false;
  let onSeen = () => {};
  sniff.on('message', (topic, payload) => {
    if (topic.endsWith('/up')) {
      seen.push({ msg: decodeUp(payload), raw: Buffer.from(payload) });
      onSeen();
    }
    else if (confirmed && decodeDown(payload).type === MsgType.offer) offersAfterConfirm++;
  });
  await sniff.subscribeAsync(['ferry/d/dup/up', 'ferry/d/dup/dn'], { qos: 1 });
  t.teardown(async () => {
    await sniff.endAsync();
    await n.stop();
    await world.close();
  });
  const replay = (raw: Buffer) => sniff.publishAsync('ferry/d/dup/up', raw, { qos: 1 });
  const find = (pred: (m: UpMessage) => boolean) => seen.find((s) => pred(s.msg))!.raw;
  /** The sniffer and the agent get each message from the broker independently: either may be first. */
  const sniffed = (pred: (m: UpMessage) => boolean) => new Promise<void>((resolve) => ((onSeen = () => seen.some((s) => pred(s.msg)) && resolve()), onSeen()));

  await n.start();
  await world.until('dup', () => true, 'hello');
  const image = demoImage(HW, '1.1.0', 128 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  await onChunkFraction(n, 0.4);
  await n.powerCut(); // its boot Hello carries the bitmap as of now: stale soon
  await onChunkFraction(n, 0.8);
  const oldAck = find((m) => m.type === MsgType.ack && m.base > 0);
  const staleHello = find((m) => m.type === MsgType.hello && m.transfer !== undefined);
  // Mid-transfer: an old Ack twice and the stale Hello, out of order with the node's own messages.
  await replay(oldAck);
  await replay(staleHello);
  await replay(oldAck);

  const s = await world.until('dup', (s) => s.state === 'confirmed', 'confirmed');
  confirmed = true;
  await sniffed((m) => m.type === MsgType.report && m.stage === Stage.confirmed);
  t.equal(s.runningVersion, '1.1.0');
  t.ok(s.retransmits < s.total / 2, `retransmits ${s.retransmits} of ${s.total} chunks`);

  // After the update: every old message again. None may reopen or undo the finished update.
  const preUpdateHello = find((m) => m.type === MsgType.hello);
  const verified = find((m) => m.type === MsgType.report && m.stage === Stage.verified);
  const rebooting = find((m) => m.type === MsgType.report && m.stage === Stage.rebooting);
  const confirmedReport = find((m) => m.type === MsgType.report && m.stage === Stage.confirmed);
  const staleHellos = [nextEvent(world, 'dup', 'stale-hello'), nextEvent(world, 'dup', 'stale-hello', (e) => /boot 2/.test(e.detail))];
  const staleReports = [1, 2, 3].map((stage) => nextEvent(world, 'dup', 'stale-report', (e) => e.detail.includes(`stage ${stage} `)));
  const staleAck = nextEvent(world, 'dup', 'stale-ack');
  for (const raw of [preUpdateHello, verified, rebooting, confirmedReport, oldAck, staleHello]) await replay(raw);
  for (const e of staleHellos) t.match((await e).detail, /boot \d+ after boot \d+/, 'a Hello from an earlier boot is recognised as stale');
  for (const e of staleReports) t.match((await e).detail, /in state confirmed/, 'a replayed report is recognised as stale');
  t.match((await staleAck).detail, /no live transfer/);

  // The record still says what is true, and nothing was offered again.
  const after = world.agent.status('dup')!;
  t.equal(after.state, 'confirmed');
  t.equal(after.runningVersion, '1.1.0');
  t.equal(world.agent.store.nodes()[0].state, 'confirmed');
  t.equal(offersAfterConfirm, 0, 'no new Offer after the replays');
  t.ok(n.runningDigest.equals(sha256(image)));
});

t.test('12 nodes, at most 3 transfers at once, started in arrival order, none starves', async (t) => {
  const world = await makeWorld({ agent: { maxConcurrent: 3 } });
  const ids = Array.from({ length: 12 }, (_, i) => `many-${String(i).padStart(2, '0')}`);
  const nodes = ids.map((id) => node(world, id, { maxMessage: 2048 }));
  t.teardown(async () => {
    for (const n of nodes) await n.stop();
    await world.close();
  });
  for (const n of nodes) {
    await n.start();
    await world.until(n.id, () => true, 'hello');
  }
  const ACTIVE = new Set(['offered', 'downloading', 'verifying']);
  const active = new Set<string>();
  let maxActive = 0;
  const queuedOrder: string[] = [];
  const startOrder: string[] = [];
  const done = new Set<string>();
  const allDone = new Promise<void>((resolve) => {
    world.agent.store.on('event', (e) => {
      if (e.kind !== 'state' || !e.node) return;
      const [from, to] = e.detail.split(' -> ');
      if (to === 'queued') queuedOrder.push(e.node);
      if (from === 'queued' && to === 'offered') startOrder.push(e.node);
      if (ACTIVE.has(to)) active.add(e.node);
      else active.delete(e.node);
      maxActive = Math.max(maxActive, active.size);
      if (to === 'confirmed') done.add(e.node);
      if (done.size === ids.length) resolve();
    });
  });
  const image = demoImage(HW, '1.1.0', 24 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  await allDone;
  t.equal(maxActive, 3, 'never more than 3 transfers active at once (and the limit was used)');
  t.equal(queuedOrder.length, 9, 'nine nodes waited their turn');
  t.same(startOrder, queuedOrder, 'waiting nodes started in the order they were queued (FIFO)');
  for (const n of nodes) t.ok(n.runningDigest.equals(sha256(image)), `${n.id} runs the verified image`);
});
