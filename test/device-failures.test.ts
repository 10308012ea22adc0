import t from 'tap';
import mqtt, { type MqttClient } from 'mqtt';
import { startBroker, type RunningBroker } from '../broker/server.js';
import { SimNode, type SimNodeOptions } from '../device/node.js';
import { Flash } from '../device/flash.js';
import { makeLayout } from '../device/layout.js';
import { DeviceSystem } from '../device/system.js';
import { describeImage, encodeDescriptor, factoryImage } from '../device/firmware.js';
import { NvsKey } from '../device/nvs.js';
import { encodeMeta, payloadOffset } from '../device/transfer.js';
import { Reason } from '../shared/errors.js';
import { generateOperatorKey, sha256, signManifest } from '../shared/manifest.js';
import { decodeUp, encodeMessage, Encoding, ImageState, MsgType, negotiateChunkSize, Stage, type DownMessage, type Hello, type Report, type UpMessage } from '../shared/messages.js';

/**
 * Seed 001's failure modes that live on the node, each reproduced: rollback tracking, startup
 * cleanup of half-applied state, error persistence, temp-file leftovers, storage checks.
 */
const HW = 'esp32-dev';
const key = generateOperatorKey();

function signed(version: string, image: Buffer, securityVersion = 0): Buffer {
  return signManifest({ hw: HW, version, securityVersion, size: image.length, digest: sha256(image), created: 1_700_000_000, flags: 0 }, key.privateKey);
}

/** The test plays the agent: it sees the node's up messages in order and publishes down messages. */
class Wire {
  readonly seen: UpMessage[] = [];
  private waiters: { pred: (m: UpMessage) => boolean; resolve: (m: UpMessage) => void }[] = [];
  private cursor = 0;
  private constructor(private readonly client: MqttClient, private readonly id: string) {}

  static async open(url: string, id: string): Promise<Wire> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
    const w = new Wire(client, id);
    client.on('message', (_topic, payload) => {
      const m = decodeUp(payload);
      w.seen.push(m);
      for (const x of [...w.waiters]) {
        if (x.pred(m)) {
          w.waiters.splice(w.waiters.indexOf(x), 1);
          x.resolve(m);
        }
      }
    });
    await client.subscribeAsync(`ferry/d/${id}/up`, { qos: 1 });
    return w;
  }

  /** The next matching message after the last one consumed (waits on the message event; the timer is a safety net). */
  next<T extends UpMessage>(pred: (m: UpMessage) => boolean, what = 'message'): Promise<T> {
    for (let i = this.cursor; i < this.seen.length; i++) {
      if (pred(this.seen[i])) {
        this.cursor = i + 1;
        return Promise.resolve(this.seen[i] as T);
      }
    }
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} from ${this.id}; after the cursor: ${JSON.stringify(this.seen.slice(this.cursor).map((m) => [m.type, 'stage' in m ? m.stage : '']))}`)), 20_000);
      this.waiters.push({
        pred,
        resolve: (m) => {
          clearTimeout(timer);
          this.cursor = this.seen.length;
          resolve(m as T);
        },
      });
    });
  }

  hello(): Promise<Hello> {
    return this.next<Hello>((m) => m.type === MsgType.hello, 'hello');
  }

  report(stage: number): Promise<Report> {
    return this.next<Report>((m) => m.type === MsgType.report && m.stage === stage, `report stage ${stage}`);
  }

  send(m: DownMessage, qos: 0 | 1 = 1): void {
    this.client.publish(`ferry/d/${this.id}/dn`, encodeMessage(m), { qos });
  }

  count(pred: (m: UpMessage) => boolean): number {
    return this.seen.filter(pred).length;
  }

  close(): Promise<void> {
    return this.client.endAsync();
  }
}

async function setup(t: { teardown(fn: () => unknown): void }, id: string, extra: Partial<SimNodeOptions> = {}) {
  const broker: RunningBroker = await startBroker();
  const wire = await Wire.open(broker.url, id);
  const node = new SimNode({ brokerUrl: broker.url, deviceId: id, hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 1024, window: 8, selfTestMs: 2, rebootMs: 2, reconnectPeriod: 100, ...extra });
  t.teardown(async () => {
    await node.stop();
    await wire.close();
    await broker.close();
  });
  await node.start();
  const hello = await wire.hello();
  return { broker, wire, node, hello, chunkSize: negotiateChunkSize(hello.maxMessage, `ferry/d/${id}/dn`, 16384) };
}

/** Offers and sends a full image; resolves once the node reports verified (or the stage given). */
async function deliver(wire: Wire, session: number, version: string, image: Buffer, chunkSize: number, until: number = Stage.verified, tamper?: (i: number, d: Buffer) => Buffer): Promise<Report> {
  wire.send({ type: MsgType.offer, offerId: 1, session, manifest: signed(version, image), encoding: Encoding.full, payloadSize: image.length, payloadDigest: sha256(image), chunkSize });
  await wire.next((m) => m.type === MsgType.ack && m.session === session);
  for (let i = 0; i * chunkSize < image.length; i++) {
    const data = Buffer.from(image.subarray(i * chunkSize, (i + 1) * chunkSize));
    wire.send({ type: MsgType.chunk, session, index: i, data: tamper ? tamper(i, data) : data }, 0);
  }
  return wire.report(until);
}

t.test('rollback tracking: the node remembers it rolled back and why, across reboots; reported once, and in every Hello', async (t) => {
  const { wire, node, chunkSize } = await setup(t, 'f-track', { failSelfTest: true });
  const image = factoryImage(HW, '1.1.0', 8000);
  await deliver(wire, 11, '1.1.0', image, chunkSize);
  wire.send({ type: MsgType.activate, session: 11 });
  // After the rollback the node says Hello first, then the report it owes.
  const back = await wire.next<Hello>((m) => m.type === MsgType.hello && m.version === '1.0.0', 'hello after the rollback');
  t.same(back.lastOutcome, { version: '1.1.0', stage: Stage.rolledBack, reason: Reason.selfTestFailed });
  const rb = await wire.report(Stage.rolledBack);
  t.match(rb, { session: 11, reason: Reason.selfTestFailed, version: '1.1.0' });
  for (let i = 0; i < 2; i++) {
    await node.powerCut();
    const h = await wire.hello();
    t.same(h.lastOutcome, { version: '1.1.0', stage: Stage.rolledBack, reason: Reason.selfTestFailed }, `still known after power cut ${i + 1}`);
  }
  // The agent asks (Query, e.g. after its own restart): the answer carries it too.
  wire.send({ type: MsgType.query });
  const asked = await wire.hello();
  t.equal(asked.lastOutcome?.stage, Stage.rolledBack);
  t.equal(wire.count((m) => m.type === MsgType.report && m.stage === Stage.rolledBack), 1, 'the rolledBack report was sent once');
});

t.test('error persistence: the last refusal of an update survives a reboot and is in every Hello', async (t) => {
  const { wire, node, chunkSize } = await setup(t, 'f-error');
  const image = factoryImage(HW, '1.1.0', 6000);
  const rej = await deliver(wire, 21, '1.1.0', image, chunkSize, Stage.rejected, (i, d) => {
    if (i === 2) d[5] ^= 0xff;
    return d;
  });
  t.equal(rej.reason, Reason.digestMismatch);
  await node.powerCut();
  const h = await wire.hello();
  t.same(h.lastOutcome, { version: '1.1.0', stage: Stage.rejected, reason: Reason.digestMismatch }, 'the error outlived the reboot');
  t.equal(h.transfer, undefined, 'and the bad transfer did not');
  const writes = node.flash.stats.writes;
  for (let i = 0; i < 3; i++) wire.send({ type: MsgType.offer, offerId: 1, session: 30 + i, manifest: signed('1.1.0', image, 0), encoding: Encoding.full, payloadSize: image.length + 1, payloadDigest: sha256(image), chunkSize });
  await wire.report(Stage.rejected);
  t.equal(node.lastOutcome?.reason, Reason.badField, 'a new refusal replaces it');
  t.ok(node.flash.stats.writes - writes <= 1, 'the same refusal again is not written again (no NVS wear from a flood)');
});

function firmware(profile: 'esp-idf' | 'mcuboot-swap' = 'esp-idf') {
  const layout = makeLayout(256 * 1024);
  const flash = new Flash(layout.flashSize);
  const sys = new DeviceSystem(flash, layout, { hw: HW, version: '1.0.0', profile });
  sys.powerOn('powerOn');
  return { layout, flash, sys };
}

function metaFor(version: string, image: Buffer, extra: { encoding?: number; baseDigest?: Buffer; payload?: Buffer; securityVersion?: number } = {}) {
  const payload = extra.payload ?? image;
  return {
    session: 5, encoding: extra.encoding ?? Encoding.full, payloadSize: payload.length, chunkSize: 1000, payloadDigest: sha256(payload),
    baseDigest: extra.baseDigest, manifest: signed(version, image, extra.securityVersion ?? 0),
  };
}

t.test('startup cleanup: half-applied state is detected at boot, dropped when it cannot be finished, resumed when it can', async (t) => {
  const newer = factoryImage(HW, '1.2.0', 30_000);
  await t.test('a partial download of a newer image is resumed', async (t) => {
    const { sys } = firmware();
    const d = sys.beginDownload(metaFor('1.2.0', newer));
    for (let i = 0; i < 8; i++) d.store(i, newer.subarray(i * 1000, (i + 1) * 1000));
    d.save();
    sys.powerOn('powerOn');
    t.same(sys.cleaned, [], 'nothing dropped');
    t.equal(sys.download?.bitmap.count, 8, 'resumed with its chunks');
  });
  await t.test('a transfer of an image that is not newer than the running one is dropped', async (t) => {
    const { sys } = firmware();
    sys.nvs.put(NvsKey.transfer, encodeMeta(metaFor('1.0.0', factoryImage(HW, '1.0.0', 9000))));
    sys.powerOn('powerOn');
    t.match(sys.cleaned, [/not newer than the running 1\.0\.0/]);
    t.equal(sys.download, undefined);
    t.equal(sys.nvs.get(NvsKey.transfer), undefined);
  });
  await t.test('a transfer below the anti-rollback counter is dropped', async (t) => {
    const layout = makeLayout(256 * 1024);
    const flash = new Flash(layout.flashSize);
    const sys = new DeviceSystem(flash, layout, { hw: HW, version: '1.0.0', securityVersion: 3 });
    sys.powerOn('powerOn');
    sys.nvs.put(NvsKey.transfer, encodeMeta(metaFor('1.2.0', newer, { securityVersion: 2 })));
    sys.powerOn('powerOn');
    t.match(sys.cleaned, [/security version 2 is below the counter 3/]);
  });
  await t.test('a parked delta patch for another base image is dropped', async (t) => {
    const { sys } = firmware();
    const patch = Buffer.alloc(3000, 7);
    sys.nvs.put(NvsKey.transfer, encodeMeta(metaFor('1.2.0', newer, { encoding: Encoding.delta, payload: patch, baseDigest: sha256(Buffer.from('another image')) })));
    sys.nvs.put(NvsKey.transferBitmap, Buffer.concat([sha256(patch).subarray(0, 8), Buffer.from([0xff])]));
    sys.powerOn('powerOn');
    t.match(sys.cleaned, [/delta patch is for another base image/]);
    t.equal(sys.nvs.get(NvsKey.transferBitmap), undefined, 'its bitmap went too');
  });
  await t.test('an unreadable transfer record and an orphan bitmap are dropped', async (t) => {
    const { sys } = firmware();
    sys.nvs.put(NvsKey.transfer, Buffer.from('garbage'));
    sys.powerOn('powerOn');
    t.match(sys.cleaned, ['unreadable transfer record dropped']);
    sys.nvs.put(NvsKey.transferBitmap, Buffer.alloc(12, 0xff));
    sys.powerOn('powerOn');
    t.match(sys.cleaned, ['chunk bitmap without a transfer dropped']);
  });
  await t.test('a descriptor for a half-written download slot is dropped (ESP-IDF: NVS; MCUboot: the header sector)', async (t) => {
    for (const profile of ['esp-idf', 'mcuboot-swap'] as const) {
      const { sys, flash, layout } = firmware(profile);
      const slot = sys.inactiveSlot;
      // A slot whose first sectors were rewritten after its descriptor was recorded.
      sys.port.writeDescriptor(sys.env, slot, describeImage(newer, '1.2.0', 0, signed('1.2.0', newer)));
      flash.erase(layout.slots[slot].offset, 4096);
      flash.write(layout.slots[slot].offset, newer.subarray(0, 2000));
      sys.powerOn('powerOn');
      t.match(sys.cleaned, ['descriptor of a half-written download slot dropped'], profile);
      t.equal(sys.port.readDescriptor(sys.env, slot), undefined, `${profile}: nothing trusts it any more`);
    }
  });
  await t.test('a download that was complete when power went is verified at the next connect', async (t) => {
    const { wire, node, chunkSize } = await setup(t, 'f-complete', { saveEvery: 2 });
    const image = factoryImage(HW, '1.1.0', 7000);
    // Cut power at the first flash operation after the last chunk is stored (its bitmap save).
    const total = Math.ceil(image.length / chunkSize);
    node.on('chunk', (received: number) => {
      if (received === total) node.flash.armPowerCut({ at: 1, mode: 'before' });
    });
    wire.send({ type: MsgType.offer, offerId: 1, session: 41, manifest: signed('1.1.0', image), encoding: Encoding.full, payloadSize: image.length, payloadDigest: sha256(image), chunkSize });
    await wire.next((m) => m.type === MsgType.ack);
    for (let i = 0; i < total; i++) wire.send({ type: MsgType.chunk, session: 41, index: i, data: image.subarray(i * chunkSize, (i + 1) * chunkSize) }, 0);
    const h = await wire.hello();
    t.ok(h.transfer, 'back with its transfer');
    const v = await wire.report(Stage.verified);
    t.equal(v.session, 41, 'verified without a new Offer');
  });
});

t.test('temp-file leftovers: an abandoned session leaves no NVS records and no bytes that reach a later image', async (t) => {
  const { sys, flash, layout } = firmware();
  const newer = factoryImage(HW, '1.2.0', 60_000);
  // An abandoned delta session: its patch parked at the top of the inactive slot, records in NVS.
  const patch = Buffer.alloc(40_000, 0x5a);
  const meta = metaFor('1.2.0', newer, { encoding: Encoding.delta, payload: patch, baseDigest: sha256(Buffer.from('the image it was made for')) });
  const d = sys.beginDownload(meta);
  for (let i = 0; i < d.total; i++) d.store(i, patch.subarray(i * 1000, (i + 1) * 1000));
  const parkedAt = layout.slots[1].offset + payloadOffset(Encoding.delta, layout.slots[1].size, patch.length);
  t.ok(flash.read(parkedAt, 100).equals(patch.subarray(0, 100)), 'the patch is parked at the top of the slot');
  sys.powerOn('powerOn');
  t.match(sys.cleaned, [/transfer of session 5 dropped/]);
  t.same(sys.nvs.keys().filter((k) => k === NvsKey.transfer || k === NvsKey.transferBitmap), [], 'its NVS records are gone');
  // A later full download into the same slot: the stale sectors are erased before reuse.
  const d2 = sys.beginDownload(metaFor('1.2.0', newer));
  for (let i = 0; i < d2.total; i++) d2.store(i, newer.subarray(i * 1000, (i + 1) * 1000));
  t.ok(d2.digestOfStored().equals(sha256(newer)), 'the new image verifies over the old patch area');
});

t.test('storage checks: too big for the slot, or no room for a patch, is refused before any erase', async (t) => {
  for (const boot of ['esp-idf', 'mcuboot-swap'] as const) {
    for (const kind of ['full', 'delta'] as const) {
      // One node per case: a node reports the same refusal reason at most once a second.
      const { wire, node, chunkSize, hello } = await setup(t, `f-space-${boot}-${kind}`, { boot, slotSize: 128 * 1024 });
      const capacity = node.imageCapacity;
      const name = `${boot} ${kind}`;
      t.equal(capacity, boot === 'esp-idf' ? 128 * 1024 : 128 * 1024 - 8192, `${name}: image area of ${capacity} bytes`);
      const erases = node.flash.stats.erases;
      const writes = node.flash.stats.writes;
      if (kind === 'full') {
        const big = factoryImage(HW, '1.1.0', capacity + 1);
        wire.send({ type: MsgType.offer, offerId: 1, session: 51, manifest: signed('1.1.0', big), encoding: Encoding.full, payloadSize: big.length, payloadDigest: sha256(big), chunkSize });
        const r = await wire.report(Stage.rejected);
        t.equal(r.reason, Reason.noSpace, `${name}: one byte too many is noSpace`);
        t.match(r.detail, `${capacity + 1}-byte image does not fit the ${capacity}-byte image area`, 'the reason names both sizes');
      } else {
        // A patch parks at the top of the slot while the image grows from the bottom: both must fit.
        const image = factoryImage(HW, '1.1.0', capacity - 10_000);
        const patch = Buffer.alloc(20_000, 1);
        wire.send({ type: MsgType.offer, offerId: 1, session: 52, manifest: signed('1.1.0', image), encoding: Encoding.delta, payloadSize: patch.length, payloadDigest: sha256(patch), chunkSize, baseDigest: hello.digest });
        const r = await wire.report(Stage.rejected);
        t.equal(r.reason, Reason.noSpace, `${name}: no room for patch and image together`);
        t.match(r.detail, 'do not fit the slot together');
      }
      t.equal(node.flash.stats.erases, erases, `${name}: nothing was erased`);
      t.equal(node.flash.stats.writes - writes, 1, `${name}: one NVS write, the refusal kept as last outcome`);
      t.equal(node.transfer, undefined);
      t.same(node.lastOutcome, { version: '1.1.0', stage: Stage.rejected, reason: Reason.noSpace });
    }
  }
});
