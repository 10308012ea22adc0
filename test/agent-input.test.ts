import t from 'tap';
import mqtt, { type MqttClient } from 'mqtt';
import { SimNode } from '../device/node.js';
import { encodeCbor } from '../shared/cbor.js';
import { encodeMessage, ImageState, MsgType, Stage, type Hello } from '../shared/messages.js';
import { sha256, signManifest } from '../shared/manifest.js';
import { demoImage } from '../harness/images.js';
import { makeWorld, type World } from './helpers/world.js';
import type { StoredEvent } from '../agent/store.js';
import { decodeIntMap } from '../shared/cbor.js';

/**
 * Bad input reaching the agent through a real broker (issue 2, "a test for each"). A plain aedes is
 * used on purpose: the ferry broker plugin would drop most of this before the agent saw it, and the
 * agent must not rely on that. Each message is logged with a reason, nothing crashes, the SQLite
 * state stays intact, and a real node is still served to a confirmed update afterwards.
 */
const HW = 'esp32-input';

/** Collects the agent's log lines and waits for one matching a pattern (event-driven, no sleeps). */
class Logbook {
  readonly lines: string[] = [];
  private waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  readonly log = (level: string, msg: string) => {
    const line = `${level} ${msg}`;
    this.lines.push(line);
    this.waiters = this.waiters.filter((w) => {
      if (!w.re.test(line)) return true;
      w.resolve(line);
      return false;
    });
  };
  /** Resolves with the first line after `from` matching re. */
  waitFor(re: RegExp, from = 0): Promise<string> {
    const seen = this.lines.slice(from).find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ re, resolve }));
  }
}

/** Resolves with the next event row the agent writes for `node` of `kind` (register before causing it). */
function nextEvent(world: World, node: string | null, kind: string): Promise<StoredEvent> {
  return new Promise((resolve) => {
    const on = (e: StoredEvent) => {
      if (e.node !== node || e.kind !== kind) return;
      world.agent.store.off('event', on);
      resolve(e);
    };
    world.agent.store.on('event', on);
  });
}

function hello(id: string, extra: Partial<Hello> = {}): Hello {
  return {
    type: MsgType.hello, proto: 1, deviceId: id, hw: HW, version: '1.0.0', digest: Buffer.alloc(32, 1), securityVersion: 0, slot: 0,
    imageState: ImageState.valid, maxMessage: 4096, caps: 2, window: 16, ...extra,
  };
}

function rawPublish(c: MqttClient, topic: string, payload: Buffer): Promise<void> {
  return new Promise((resolve, reject) => c.publish(topic, payload, { qos: 1 }, (err) => (err ? reject(err) : resolve())));
}

t.test('bad input from nodes is logged with a reason; the agent keeps serving and its store stays intact', async (t) => {
  const logs = new Logbook();
  const world = await makeWorld({ agent: { log: logs.log } });
  const node = new SimNode({ brokerUrl: world.broker.url, deviceId: 'good', hw: HW, version: '1.0.0', trust: [world.key.publicKey], maxMessage: 2048 });
  const evil = await mqtt.connectAsync(world.broker.url, { protocolVersion: 4, clientId: 'evil', reconnectPeriod: 0 });
  t.teardown(async () => {
    await evil.endAsync();
    await node.stop();
    await world.close();
  });
  await node.start();
  await world.until('good', () => true, 'hello');
  const up = (id: string) => `ferry/d/${id}/up`;

  /** Publishes, then waits for the agent's log line naming the reason, and returns it. */
  const expectLog = async (topic: string, payload: Buffer, re: RegExp): Promise<string> => {
    const from = logs.lines.length;
    await rawPublish(evil, topic, payload);
    return logs.waitFor(re, from);
  };

  await t.test('malformed CBOR', async (t) => {
    const ev = nextEvent(world, 'good', 'bad-message');
    const line = await expectLog(up('good'), Buffer.from([0xff, 0x00, 0x13]), /node good: rejected message: malformed: /);
    t.match(line, /CBOR/, line);
    t.match((await ev).detail, /^malformed/, 'recorded in the events table');
  });

  await t.test('not a map / truncated', async (t) => {
    t.match(await expectLog(up('good'), encodeCbor([1, 2, 3]), /node good: rejected message: malformed: .*map/), /map/);
    t.match(await expectLog(up('good'), Buffer.from([0xa2, 0x00]), /node good: rejected message: malformed/), /malformed/);
  });

  await t.test('unknown message type, and a down message on the up topic', async (t) => {
    t.match(await expectLog(up('good'), encodeCbor(new Map([[0, 99]])), /node good: rejected message: unknownType: message type 99/), /99/);
    t.match(await expectLog(up('good'), encodeMessage({ type: MsgType.activate, session: 1 }), /unknownType: message type 18/), /18/);
  });

  await t.test('oversize fields', async (t) => {
    const h = encodeMessage(hello('good'));
    const m = new Map(decodeMap(h));
    m.set(3, 'x'.repeat(40));
    t.match(await expectLog(up('good'), encodeCbor(m), /rejected message: oversize: hello\.hw/), /longer than 32/);
    t.match(
      await expectLog(up('good'), encodeCbor(new Map<number, unknown>([[0, 3], [1, 0], [2, Stage.rejected], [3, 1], [5, 'y'.repeat(100_000)]])), /rejected message: oversize: report\.detail/),
      /128/,
    );
    t.match(await expectLog(up('good'), encodeCbor(new Map<number, unknown>([[0, 2], [1, 1], [2, 0], [3, Buffer.alloc(9000)]])), /rejected message: oversize: ack\.bitmap/), /8192/);
  });

  await t.test('wrong-typed fields', async (t) => {
    t.match(await expectLog(up('good'), encodeCbor(new Map<number, unknown>([[0, 2], [1, 'abc'], [2, 0]])), /rejected message: badField: ack\.session/), /unsigned integer/);
    t.match(await expectLog(up('good'), encodeCbor(new Map<number, unknown>([[0, 3], [1, 1], [2, -1], [3, 0]])), /rejected message: badField: report\.stage/), /unsigned/);
    const m = new Map(decodeMap(encodeMessage(hello('good'))));
    m.set(5, 'not bytes');
    t.match(await expectLog(up('good'), encodeCbor(m), /rejected message: badField: hello\.digest/), /byte string/);
  });

  await t.test('a Hello with an absurd chunk size or buffer', async (t) => {
    const m = new Map(decodeMap(encodeMessage(hello('good'))));
    m.set(9, 2 ** 31);
    t.match(await expectLog(up('good'), encodeCbor(m), /rejected message: oversize: hello\.maxMessage/), /exceeds/);
    m.set(9, 16);
    t.match(await expectLog(up('good'), encodeCbor(m), /rejected message: badField: hello\.maxMessage/), /minimum/);
    m.set(9, 4096);
    m.set(12, new Map<number, unknown>([[1, 5], [2, Buffer.alloc(32)], [3, 2 ** 40], [4, Buffer.alloc(1)]]));
    t.match(await expectLog(up('good'), encodeCbor(m), /rejected message: oversize: hello\.transfer\.chunkSize/), /exceeds/);
    m.set(11, 0);
    m.delete(12);
    t.match(await expectLog(up('good'), encodeCbor(m), /rejected message: badField: hello\.window/), /minimum/);
    t.equal(world.agent.status('good')!.runningVersion, '1.0.0', 'no rejected hello changed the record');
  });

  await t.test('an Ack for an unknown session is recorded and ignored', async (t) => {
    const ev = nextEvent(world, 'good', 'stale-ack');
    await rawPublish(evil, up('good'), encodeMessage({ type: MsgType.ack, session: 12345, base: 3, bitmap: Buffer.from([0xff]) }));
    t.match((await ev).detail, /session 12345: no live transfer/);
    t.equal(world.agent.status('good')!.state, 'idle');
  });

  await t.test('Reports for a node with no transfer are recorded and ignored', async (t) => {
    const report = async (session: number, stage: number) => {
      const ev = nextEvent(world, 'good', 'stale-report');
      await rawPublish(evil, up('good'), encodeMessage({ type: MsgType.report, session, stage: stage as 1, reason: 0 }));
      return (await ev).detail;
    };
    t.match(await report(777, Stage.verified), /session 777 stage 1 in state idle/);
    // Session 0 is how a node refuses what it cannot read; for a node with nothing in progress it is no news.
    t.match(await report(0, Stage.confirmed), /session 0 stage 3 in state idle/);
    t.match(await report(0, Stage.rebooting), /session 0 stage 2 in state idle/);
    t.match(await report(0, Stage.rolledBack), /session 0 stage 4 in state idle/);
    t.equal(world.agent.status('good')!.state, 'idle', 'not marked confirmed or confirming by a stray report');
  });

  await t.test('messages from devices the agent does not know', async (t) => {
    t.match(await expectLog(up('ghost'), encodeMessage({ type: MsgType.ack, session: 1, base: 0 }), /node ghost: rejected message: unknownDevice: ack from a node that has not said hello/), /ghost/);
    t.match(await expectLog(up('ghost'), encodeMessage({ type: MsgType.report, session: 1, stage: Stage.confirmed, reason: 0 }), /node ghost: rejected message: unknownDevice: report/), /ghost/);
    // A Hello naming another device than its topic: neither id gets a record from it.
    t.match(await expectLog(up('ghost'), encodeMessage(hello('good', { version: '9.9.9' })), /node ghost: rejected message: unknownDevice: hello\.deviceId "good"/), /does not match/);
    // A topic level that cannot be a device id never reaches the node logic.
    const ev = nextEvent(world, null, 'bad-topic');
    t.match(await expectLog(`ferry/d/${'z'.repeat(70)}/up`, encodeMessage(hello('z')), /not a valid device topic/), /ignored/);
    t.match((await ev).detail, /zzzz/);
    const ids = world.agent.store.nodes().map((r) => r.id);
    t.same(ids, ['good'], 'no record was created for unknown or mismatched devices');
    t.equal(world.agent.status('good')!.runningVersion, '1.0.0', 'the mismatched hello did not touch the real node');
  });

  await t.test('a Hello whose buffer leaves no room for a chunk: that node is rejected with the reason, others are fine', async (t) => {
    const id = 'tiny-buffer-node-with-a-long-id';
    await rawPublish(evil, up(id), encodeMessage(hello(id, { maxMessage: 128 })));
    await world.until(id, () => true, 'hello from the tiny node');
    t.pass('a tiny but legal buffer is accepted at hello');
  });

  // After all of that, a real release reaches the real node.
  const image = demoImage(HW, '1.1.0', 96 * 1024);
  await world.publish({ hw: HW, version: '1.1.0', image });
  const s = await world.until('good', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(s.runningVersion, '1.1.0');
  t.ok(node.runningDigest.equals(sha256(image)), 'the real node runs the verified image');
  const tiny = await world.until('tiny-buffer-node-with-a-long-id', (s) => s.state === 'rejected', 'tiny rejected');
  t.equal(tiny.reason, 'badField');
  t.match(tiny.detail, /maxMessage 128 leaves no room/);

  // The store is intact: SQLite's own check, and the rows say what happened.
  t.equal((world.agent.store.db.pragma('integrity_check', { simple: true }) as string), 'ok', 'SQLite integrity_check');
  const rows = world.agent.store.nodes();
  t.same(rows.map((r) => r.id).sort(), ['good', 'tiny-buffer-node-with-a-long-id']);
  const good = rows.find((r) => r.id === 'good')!;
  t.equal(good.state, 'confirmed');
  t.equal(good.runningVersion, '1.1.0');
  t.ok(good.runningDigest?.equals(sha256(image)), 'stored running digest is the image digest');
  t.equal(world.agent.store.releases().length, 1, 'one release, nothing else stored');
  t.notOk(logs.lines.some((l) => l.startsWith('error ')), 'no internal error was logged');
});

t.test('a release for another hardware class is not offered; a manifest on the wrong release topic is refused', async (t) => {
  const logs = new Logbook();
  const world = await makeWorld({ agent: { log: logs.log } });
  const node = new SimNode({ brokerUrl: world.broker.url, deviceId: 'hw-a', hw: 'class-a', version: '1.0.0', trust: [world.key.publicKey], maxMessage: 2048 });
  t.teardown(async () => {
    await node.stop();
    await world.close();
  });
  await node.start();
  await world.until('hw-a', () => true, 'hello');

  const released = new Promise<void>((resolve) => world.agent.once('release', () => resolve()));
  await world.publish({ hw: 'class-b', version: '2.0.0', size: 8 * 1024 });
  await released;
  let s = world.agent.status('hw-a')!;
  t.equal(s.state, 'idle', 'not offered a release for class-b');
  t.equal(s.targetVersion, null);

  // A manifest signed for class-b published on class-a's release topic: refused at intake.
  const image = demoImage('class-b', '2.1.0', 4096);
  const manifest = signManifest({ hw: 'class-b', version: '2.1.0', securityVersion: 0, size: image.length, digest: sha256(image), created: 1, flags: 0 }, world.key.privateKey);
  const op = await mqtt.connectAsync(world.broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(() => op.endAsync());
  const from = logs.lines.length;
  await rawPublish(op, 'ferry/r/class-a/2.1.0/part/0', image);
  await rawPublish(op, 'ferry/r/class-a/2.1.0/manifest', manifest);
  const line = await logs.waitFor(/release class-a 2\.1\.0 refused/, from);
  t.match(line, /manifest for class-b 2\.1\.0 published on the topic of class-a 2\.1\.0/);
  t.ok(world.agent.store.events(undefined, 20).some((e) => e.kind === 'release-refused'), 'refusal recorded');
  s = world.agent.status('hw-a')!;
  t.equal(s.state, 'idle', 'still not offered anything');
  t.equal(world.agent.store.releases().length, 1, 'only the class-b release is stored');

  // Its own class's release is offered and installed.
  const own = demoImage('class-a', '1.1.0', 32 * 1024);
  await world.publish({ hw: 'class-a', version: '1.1.0', image: own });
  s = await world.until('hw-a', (s) => s.state === 'confirmed', 'confirmed');
  t.equal(s.runningVersion, '1.1.0');
  t.ok(node.runningDigest.equals(sha256(own)));
});

/** A message's map, to alter one field and re-encode. */
function decodeMap(bytes: Buffer): [number, unknown][] {
  return [...decodeIntMap(bytes, 'test').entries()] as [number, unknown][];
}
