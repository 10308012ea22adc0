import t, { type Test } from 'tap';
import { startBroker, type RunningBroker } from '../broker/server.js';
import { demoImage } from '../harness/images.js';
import { seeded, runSeed } from '../harness/seeded.js';
import { decodeRequests } from '../shared/lora/ts004.js';
import { TestLoraNode, sha } from './helpers/lora-node.js';
import { isFragment, startPlayer, type Player } from './helpers/lns-player.js';
import { makeWorld, type World } from './helpers/world.js';

/**
 * `ferry agent --lns chirpstack` end to end through real brokers: the agent on a ferry broker (releases, status)
 * and on a second broker speaking ChirpStack's MQTT integration, where the test plays the LNS and LoRa nodes
 * (test/helpers/lns-player.ts, nodes written from docs/lora.md §7). US915 DR3 uplinks (DR13 downlinks: 239 B
 * fragments, no duty cycle) keep the airtime-paced run short; waits are on status events, never sleeps.
 */
const APP = '6d1b2c3a-0000-4000-8000-00000000f00d';

async function setup(t: Test, blockKiB = 2): Promise<{ world: World; player: Player; lns: RunningBroker }> {
  const lns = await startBroker();
  const world = await makeWorld({
    agent: { lora: { lns: { kind: 'chirpstack', brokerUrl: lns.url, application: APP, region: 'US915' }, options: { region: 'US915', blockKiB, answerTimeoutMs: 2000, initialLoss: 0.1, multicastLeadMs: 500, multicastLeadPerMemberMs: 100 } } },
  });
  const player = await startPlayer(lns.url, APP, 3, 902_300_000);
  t.teardown(async () => {
    await player.close();
    await world.close();
    await lns.close();
  });
  return { world, player, lns };
}

t.test('a LoRa node is updated through ChirpStack topics with 10 % fragment loss, and its truth is the agent\'s', async (t) => {
  const { world, player } = await setup(t);
  const dev = '00112233445566aa';
  const node = new TestLoraNode(dev, 'lora-a', '1.0.0', demoImage('lora-a', '1.0.0', 6000));
  player.nodes.set(dev, node);
  const rnd = seeded(runSeed(1310));
  player.deliver = (_d, fPort, bytes) => !(isFragment(fPort, bytes) && rnd() < 0.1);
  await player.uplink(dev, [node.hello()]);
  const idle = await world.until(dev, (s) => s.hw === 'lora-a', 'hello');
  t.equal(idle.runningVersion, '1.0.0');
  const image = demoImage('lora-a', '1.1.0', 6000);
  await world.publish({ hw: 'lora-a', version: '1.1.0', image });
  const done = await world.until(dev, (s) => s.state === 'confirmed', 'confirmed', 120_000);
  t.equal(done.runningVersion, '1.1.0');
  t.equal(done.targetVersion, '1.1.0');
  t.equal(done.total, 4, 'manifest block + 3 image blocks of 2 KiB');
  t.equal(done.progress, 1);
  t.equal(node.version, '1.1.0', 'the node runs the new version');
  t.same(Buffer.from(node.digest), sha(image), 'byte for byte');
  const row = world.agent.store.nodes().find((r) => r.id === dev)!;
  t.equal(row.state, 'confirmed', 'stored in SQLite');
  const events = world.agent.store.events(dev).map((e) => e.kind);
  t.ok(events.includes('lora-offer') && events.includes('lora-confirmed'), `events: ${events.join(', ')}`);
  const frags = player.downlinks.filter((d) => isFragment(d.fPort, d.bytes)).length;
  const m = dataFragments(player);
  t.ok(frags >= m, `fragments sent ${frags} for about ${m} data fragments`);
  t.ok(player.downlinks.every((d) => d.bytes.length <= 242), 'every downlink fits US915 DR13');
});

t.test('a node that reboots mid-transfer resumes: blocks it holds are never sent again', async (t) => {
  const { world, player } = await setup(t);
  const dev = '00112233445566bb';
  const node = new TestLoraNode(dev, 'lora-b', '1.0.0', demoImage('lora-b', '1.0.0', 8000));
  player.nodes.set(dev, node);
  let rebootedAt = -1;
  let heldAtReboot = 0;
  let heldSet = new Set<number>();
  player.deliver = (d, fPort, bytes) => {
    // Power cut once the node holds two blocks and part of the third: frames in flight are lost, then it boots.
    if (rebootedAt < 0 && node.persisted && node.persisted.blocks.length === 2 && node.persisted.partial.size >= 3 && isFragment(fPort, bytes)) {
      rebootedAt = player.downlinks.length; // the frames after the one lost with the power cut
      heldAtReboot = node.persisted.partial.size;
      heldSet = new Set(node.persisted.partial.keys());
      const boot = node.reboot();
      setTimeout(() => void player.uplink(d, boot), 50);
      return false;
    }
    return true;
  };
  await player.uplink(dev, [node.hello()]);
  await world.until(dev, (s) => s.hw === 'lora-b', 'hello');
  const image = demoImage('lora-b', '1.1.0', 8000);
  await world.publish({ hw: 'lora-b', version: '1.1.0', image });
  await world.until(dev, (s) => s.state === 'confirmed', 'confirmed', 120_000);
  t.ok(rebootedAt > 0, 'the node rebooted mid-transfer');
  t.same(Buffer.from(node.digest), sha(image));
  const blocksAfter = new Set(
    player.downlinks.slice(rebootedAt).flatMap((d) => (d.fPort === 201 ? decodeRequests(d.bytes) : [])).filter((c) => c.cmd === 'FragSessionSetupReq').map((c) => (c as { descriptor: number }).descriptor & 0xffff),
  );
  t.notOk(blocksAfter.has(0) || blocksAfter.has(1), `after the reboot only blocks ${[...blocksAfter].join(', ')} were set up (the node held 0 and 1)`);
  t.ok(blocksAfter.has(2), 'block 2 was set up again with the same descriptor');
  t.ok(heldAtReboot >= 3, `the node kept ${heldAtReboot} fragments of block 2 across the reboot`);
  // From the resume pages on, block 2 gets exactly the uncoded fragments the node lacks (docs/lora.md §7.3 step 4).
  const afterResume = player.downlinks.slice(rebootedAt).flatMap((d) => (d.fPort === 201 ? decodeRequests(d.bytes) : []));
  const setup2 = afterResume.findIndex((c) => c.cmd === 'FragSessionSetupReq' && (c.descriptor & 0xffff) === 2);
  const block2 = afterResume.slice(setup2).filter((c) => c.cmd === 'DataFragment' && c.fragIndex === 2);
  const resent = block2.map((c) => (c as { counter: number }).counter);
  t.ok(resent.length > 0 && resent.every((n) => n <= 9 && !heldSet.has(n - 1)), `block 2 after resume: fragments ${resent.join(', ')}, none of the ${heldAtReboot} it held`);
});

t.test('hostile LNS input is warned about on one line and never takes the agent down', async (t) => {
  const { world, player } = await setup(t);
  const c = player.client;
  const up = (dev: string) => `application/${APP}/device/${dev}/event/up`;
  const junk: [string, string | Buffer][] = [
    [up('00112233445566cc'), 'not json'],
    [up('00112233445566cc'), Buffer.alloc(64 * 1024, 0x7b)],
    [up('00112233445566cc'), JSON.stringify([1, 2])],
    [up('00112233445566cc'), JSON.stringify({ deviceInfo: { devEui: 'ffffffffffffffff' }, fPort: 10, fCnt: 1, dr: 3, data: 'AA==' })],
    [up('00112233445566cc'), JSON.stringify({ deviceInfo: { devEui: '00112233445566cc' }, fPort: 10, fCnt: 1, dr: 3, data: '!!!' })],
    [up('00112233445566cc'), JSON.stringify({ deviceInfo: { devEui: '00112233445566cc' }, fPort: 'x', fCnt: 1, dr: 3, data: 'AA==' })],
    [up('00112233445566cc'), JSON.stringify({ deviceInfo: { devEui: '00112233445566cc' }, fPort: 10, fCnt: 1, dr: 99, data: 'AA==' })],
    [up('00112233445566cc'), JSON.stringify({ deviceInfo: { devEui: '00112233445566cc' }, fPort: 10, fCnt: 1, dr: 3, data: Buffer.from([0xa1, 0x00, 0x63]).toString('base64') })],
    [up('00112233445566cc'), JSON.stringify({ deviceInfo: { devEui: '00112233445566cc' }, fPort: 201, fCnt: 1, dr: 3, data: Buffer.from([0x7f, 1, 2]).toString('base64') })],
    [up('not-a-dev-eui'), JSON.stringify({})],
    [`application/${APP}/device/00112233445566cc/event/log`, JSON.stringify({ level: 'ERROR' })],
    [`application/${APP}/device/00112233445566cc/event/txack`, JSON.stringify({ queueItemId: 42 })],
  ];
  for (const [topic, payload] of junk) await c.publishAsync(topic, payload);
  // The agent still works: a real node after the junk is heard and stored.
  const dev = '00112233445566cc';
  const node = new TestLoraNode(dev, 'lora-c', '2.0.0', demoImage('lora-c', '2.0.0', 100));
  player.nodes.set(dev, node);
  await player.uplink(dev, [node.hello()]);
  const s = await world.until(dev, (x) => x.hw === 'lora-c', 'hello after junk');
  t.equal(s.runningVersion, '2.0.0');
  t.equal(world.agent.statuses().filter((x) => x.id !== dev && /^[0-9a-f]{16}$/.test(x.id)).length, 0, 'junk created no node');
});

t.test('The Things Stack: nodes are mapped, but no unicast FUOTA is planned (fair use)', async (t) => {
  const lns = await startBroker();
  const world = await makeWorld({ agent: { lora: { lns: { kind: 'tts', brokerUrl: lns.url, application: 'ferry-app@ttn', region: 'EU868' } } } });
  t.teardown(async () => {
    await world.close();
    await lns.close();
  });
  const { default: mqtt } = await import('mqtt');
  const c = await mqtt.connectAsync(lns.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(() => c.endAsync());
  const dev = '70b3d57ed0000001';
  const node = new TestLoraNode(dev, 'lora-t', '1.0.0', demoImage('lora-t', '1.0.0', 100));
  const ready = new Promise<void>((r) => world.agent.once('release', () => r()));
  await world.publish({ hw: 'lora-t', version: '1.1.0', size: 3000 });
  await ready;
  const body = {
    end_device_ids: { device_id: 'node-1', application_ids: { application_id: 'ferry-app' }, dev_eui: dev.toUpperCase() },
    uplink_message: { f_port: 10, f_cnt: 1, frm_payload: Buffer.from(node.hello().bytes).toString('base64'), rx_metadata: [{ rssi: -90, snr: 3 }], settings: { data_rate: { lora: { bandwidth: 125000, spreading_factor: 7 } }, frequency: '868100000' } },
  };
  await c.publishAsync('v3/ferry-app@ttn/devices/node-1/up', JSON.stringify(body));
  const s = await world.until(dev, (x) => /no LoRa FUOTA planned/.test(x.detail), 'refusal');
  t.equal(s.state, 'idle');
  t.match(s.detail, /fair use/);
});

t.test('several nodes of one hw share one multicast stream; repair is per node', async (t) => {
  const { world, player } = await setup(t);
  const devs = ['00112233445566d1', '00112233445566d2', '00112233445566d3'];
  const losses = [0, 0.1, 0.2];
  const rnd = seeded(runSeed(1311));
  const nodes = devs.map((d) => new TestLoraNode(d, 'lora-m', '1.0.0', demoImage('lora-m', '1.0.0', 6000)));
  nodes.forEach((n, i) => player.nodes.set(devs[i], n));
  player.deliver = (d, fPort, bytes) => !(isFragment(fPort, bytes) && rnd() < losses[devs.indexOf(d)]);
  for (const n of nodes) {
    await player.uplink(n.devEui, [n.hello()]);
    await world.until(n.devEui, (s) => s.hw === 'lora-m', 'hello');
  }
  const image = demoImage('lora-m', '1.1.0', 6000);
  await world.publish({ hw: 'lora-m', version: '1.1.0', image });
  for (const d of devs) await world.until(d, (s) => s.state === 'confirmed', `${d} confirmed`, 120_000);
  for (const n of nodes) t.same(Buffer.from(n.digest), sha(image), `${n.devEui} runs the new image`);
  const frags = player.downlinks.filter((d) => isFragment(d.fPort, d.bytes));
  const group = frags.filter((d) => d.devEui.startsWith('group:')).length;
  const unicast = frags.length - group;
  const m = dataFragments(player);
  t.ok(group >= m, `${group} fragments on the group for ${m} data fragments`);
  // Three nodes losing 0, 10 and 20 %: one stream plus small repairs, below three unicast transfers (≥ 3·M even without loss).
  t.ok(frags.length < 3 * m, `fragment frames for 3 nodes: ${frags.length} (${group} multicast + ${unicast} unicast repair) for ${m} data fragments`);
});

/** M summed over the distinct blocks the agent set up. */
function dataFragments(player: Player): number {
  const byBlock = new Map<number, number>();
  for (const d of player.downlinks) {
    if (d.fPort !== 201) continue;
    for (const c of decodeRequests(d.bytes)) if (c.cmd === 'FragSessionSetupReq') byBlock.set(c.descriptor, c.nbFrag);
  }
  return [...byBlock.values()].reduce((a, b) => a + b, 0);
}

t.test('an LNS that transmits at a lower DR refuses big frames: the agent steps down and still delivers', async (t) => {
  const { world, player } = await setup(t);
  const dev = '00112233445566ee';
  const node = new TestLoraNode(dev, 'lora-e', '1.0.0', demoImage('lora-e', '1.0.0', 3000));
  player.nodes.set(dev, node);
  player.maxPayload = 53; // US915 DR8 (RX2's default), where the uplink DR suggested DR13
  await player.uplink(dev, [node.hello()]);
  await world.until(dev, (s) => s.hw === 'lora-e', 'hello');
  const image = demoImage('lora-e', '1.1.0', 3000);
  await world.publish({ hw: 'lora-e', version: '1.1.0', image });
  await world.until(dev, (s) => s.state === 'confirmed', 'confirmed', 120_000);
  t.same(Buffer.from(node.digest), sha(image));
  const refused = player.downlinks.filter((d) => d.bytes.length > 53).length;
  t.ok(refused > 0, `${refused} frames refused before the agent stepped down`);
});

t.test('under the rollout offer policy a LoRa node is offered nothing, and its status says why', async (t) => {
  const lns = await startBroker();
  const world = await makeWorld({
    agent: { offerPolicy: 'rollout', lora: { lns: { kind: 'chirpstack', brokerUrl: lns.url, application: APP, region: 'US915' }, options: { region: 'US915', blockKiB: 2 } } },
  });
  const player = await startPlayer(lns.url, APP, 3, 902_300_000);
  t.teardown(async () => {
    await player.close();
    await world.close();
    await lns.close();
  });
  const dev = '00112233445566ab';
  const node = new TestLoraNode(dev, 'lora-r', '1.0.0', demoImage('lora-r', '1.0.0', 3000));
  player.nodes.set(dev, node);
  await player.uplink(dev, [node.hello()]);
  await world.until(dev, (s) => s.hw === 'lora-r', 'hello');
  await world.publish({ hw: 'lora-r', version: '1.1.0', image: demoImage('lora-r', '1.1.0', 3000) });
  const held = await world.until(dev, (s) => /rollouts, which do not cover LoRa nodes/.test(s.detail), 'held');
  t.equal(held.state, 'idle', 'no transfer started');
  t.equal(held.runningVersion, '1.0.0');
  t.notOk(player.downlinks.some((d) => d.fPort === 201), 'no fragmentation session set up');
});
