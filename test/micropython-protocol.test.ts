import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { startBroker } from '../broker/server.js';
import { decodeCbor, encodeCbor } from '../shared/cbor.js';
import { generateOperatorKey, sha256, signManifest } from '../shared/manifest.js';
import { decodeUp, MsgType, Stage, type UpMessage } from '../shared/messages.js';
import { Reason } from '../shared/errors.js';
import { demoImage } from '../harness/images.js';
import { MicroPythonNode } from '../device/micropython-host.js';

/**
 * The MicroPython client's side of the protocol decisions, message by message: a test client plays
 * the agent on a real broker (no agent logic in the way), so each answer is checked exactly.
 */
const HW = 'esp32-mpy';
const ID = 'mpy-proto';

t.test('offer-id echo, Query, Cancel and refusals of malformed input', async (t) => {
  const broker = await startBroker();
  const key = generateOperatorKey();
  const flashDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-mpy-proto-'));
  const node = new MicroPythonNode({ brokerUrl: broker.url, deviceId: ID, hw: HW, version: '1.0.0', trust: [key.publicKey], flashDir, image: demoImage(HW, '1.0.0', 16 * 1024), slotSize: 64 * 1024 });
  const agent: MqttClient = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(async () => {
    await node.stop();
    await agent.endAsync();
    await broker.close();
    fs.rmSync(flashDir, { recursive: true, force: true });
  });
  const inbox: { msg: UpMessage; raw: Map<number, unknown> }[] = [];
  const waiters: (() => void)[] = [];
  agent.on('message', (_topic, payload) => {
    inbox.push({ msg: decodeUp(payload), raw: decodeCbor(payload) as Map<number, unknown> });
    for (const w of waiters.splice(0)) w();
  });
  await agent.subscribeAsync(`ferry/d/${ID}/up`, { qos: 1 });
  /** The next up message matching pred (consumes everything before it). */
  const next = async (pred: (m: UpMessage) => boolean, what: string) => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const i = inbox.findIndex((e) => pred(e.msg));
      if (i >= 0) return inbox.splice(0, i + 1)[i];
      if (Date.now() > deadline) throw new Error(`no ${what}; got ${JSON.stringify(inbox.map((e) => e.msg.type))}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 500);
      });
    }
  };
  const send = (m: Map<number, unknown>) => agent.publishAsync(`ferry/d/${ID}/dn`, encodeCbor(m), { qos: 1 });

  await node.start();
  const hello = await next((m) => m.type === MsgType.hello, 'hello');
  t.equal(hello.msg.type === MsgType.hello && hello.msg.maxMessage >= 4096 + 20, true, 'max-message leaves room for 4 KiB chunks');

  const image = demoImage(HW, '1.1.0', 40 * 1024);
  const manifest = signManifest({ hw: HW, version: '1.1.0', securityVersion: 0, size: image.length, digest: sha256(image), created: 1, flags: 0 }, key.privateKey);
  const offer = (session: number, offerId: number) =>
    new Map<number, unknown>([[0, MsgType.offer], [1, session], [2, manifest], [3, 0], [4, image.length], [5, sha256(image)], [6, 4096], [8, offerId]]);
  const chunk = (session: number, i: number) => new Map<number, unknown>([[0, MsgType.chunk], [1, session], [2, i], [3, image.subarray(i * 4096, (i + 1) * 4096)]]);

  await send(offer(7, 101));
  let a = await next((m) => m.type === MsgType.ack, 'ack answering the offer');
  t.equal(a.raw.get(4), 101, 'the Ack answering an Offer carries its offer id (key 4)');
  t.equal(a.msg.type === MsgType.ack && a.msg.base, 0);

  await send(chunk(7, 0));
  await send(chunk(7, 1));
  await send(chunk(7, 3));
  await send(chunk(7, 4));
  a = await next((m) => m.type === MsgType.ack, 'routine ack');
  t.equal(a.raw.has(4), false, 'a routine Ack has no key 4');

  await send(offer(8, 102));
  a = await next((m) => m.type === MsgType.ack && m.session === 8, 'ack answering the repeated offer');
  t.equal(a.raw.get(4), 102, 'a repeated Offer of the same payload is answered at once, with its own id');
  t.same(a.msg.type === MsgType.ack && [a.msg.base, [...(a.msg.bitmap ?? [])]], [2, [0b110]], 'and says what is held: 0, 1, 3, 4');

  await send(new Map<number, unknown>([[0, MsgType.query], [1, 2]]));
  const h2 = await next((m) => m.type === MsgType.hello, 'hello answering a query');
  t.equal(h2.msg.type === MsgType.hello && h2.msg.transfer?.session, 8, 'the Hello carries the transfer-state');

  await send(new Map<number, unknown>([[0, MsgType.cancel], [1, 99], [2, Reason.cancelled]]));
  await send(new Map<number, unknown>([[0, MsgType.cancel], [1, 8], [2, Reason.cancelled]]));
  const r = await next((m) => m.type === MsgType.report, 'cancel acknowledgement');
  t.match(r.msg, { stage: Stage.rejected, reason: Reason.cancelled, session: 8 }, 'a Cancel for its session is acknowledged; one for another is ignored');
  await send(new Map<number, unknown>([[0, MsgType.query]]));
  const h3 = await next((m) => m.type === MsgType.hello, 'hello after cancel');
  t.equal(h3.msg.type === MsgType.hello && h3.msg.transfer, undefined, 'the transfer-state is forgotten');

  // An Offer repeated while the node still checks the signature: the answer names the newest.
  const image2 = demoImage(HW, '1.2.0', 40 * 1024);
  const manifest2 = signManifest({ hw: HW, version: '1.2.0', securityVersion: 0, size: image2.length, digest: sha256(image2), created: 1, flags: 0 }, key.privateKey);
  const offer2 = (session: number, offerId: number) =>
    new Map<number, unknown>([[0, MsgType.offer], [1, session], [2, manifest2], [3, 0], [4, image2.length], [5, sha256(image2)], [6, 4096], [8, offerId]]);
  await send(offer2(20, 201));
  await send(offer2(21, 202));
  a = await next((m) => m.type === MsgType.ack, 'ack answering the repeated offer');
  t.same([a.raw.get(4), a.msg.type === MsgType.ack && a.msg.session], [202, 21], 'the answer carries the newest offer id and session');

  // Section 3's refusals, each with its reason and the release's version.
  const refusals: [string, { hw?: string; version?: string; size?: number; securityVersion?: number }, number][] = [
    ['another hardware class', { hw: 'other-board' }, Reason.wrongHardware],
    ['an older version', { version: '0.9.0' }, Reason.downgrade],
    ['an image larger than the slot', { version: '3.0.0', size: 65 * 1024 }, Reason.noSpace],
  ];
  let session = 30;
  for (const [what, m, reason] of refusals) {
    const img = demoImage(HW, m.version ?? '2.0.0', m.size ?? 8 * 1024);
    const blob = signManifest({ hw: m.hw ?? HW, version: m.version ?? '2.0.0', securityVersion: 0, size: img.length, digest: sha256(img), created: 1, flags: 0 }, key.privateKey);
    session++;
    await send(new Map<number, unknown>([[0, MsgType.offer], [1, session], [2, blob], [3, 0], [4, img.length], [5, sha256(img)], [6, 4096], [8, 300 + session]]));
    const r2 = await next((x) => x.type === MsgType.report, what);
    t.match(r2.msg, { stage: Stage.rejected, reason, session, version: m.version ?? '2.0.0' }, `${what} is refused`);
  }

  await agent.publishAsync(`ferry/d/${ID}/dn`, Buffer.from([0xd8, 0x40, 0x41, 0x00]), { qos: 1 });
  const bad = await next((m) => m.type === MsgType.report, 'refusal of a tag');
  t.match(bad.msg, { stage: Stage.rejected, reason: Reason.malformed }, 'a tagged item is refused as malformed');
  await send(new Map<number, unknown>([[0, 99]]));
  const unk = await next((m) => m.type === MsgType.report, 'refusal of an unknown type');
  t.match(unk.msg, { stage: Stage.rejected, reason: Reason.unknownType });
  t.ok(node.lines.every((l) => !/Traceback/.test(l)), 'no Python exception');
});
