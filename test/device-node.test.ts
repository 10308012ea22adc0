import t from 'tap';
import mqtt, { type MqttClient } from 'mqtt';
import { startBroker, type RunningBroker } from '../broker/server.js';
import { SimNode, type SimNodeOptions } from '../device/node.js';
import { Reason } from '../shared/errors.js';
import { generateOperatorKey, sha256, signManifest } from '../shared/manifest.js';
import { decodeUp, encodeMessage, ImageState, MsgType, negotiateChunkSize, Stage, type Ack, type DownMessage, type Hello, type Report, type UpMessage } from '../shared/messages.js';
import { ChunkBitmap } from '../shared/bitmap.js';
import { factoryImage } from '../device/firmware.js';
import { createPatch } from '../shared/delta/index.js';

const HW = 'esp32-dev';
const key = generateOperatorKey();

/** The test plays the agent by hand: it sees every up message in order and publishes down messages. */
class HandAgent {
  readonly seen: UpMessage[] = [];
  private waiters: { pred: (m: UpMessage) => boolean; resolve: (m: UpMessage) => void; from: number }[] = [];
  private cursor = 0;
  private constructor(private readonly client: MqttClient, private readonly id: string) {}

  static async connect(url: string, id: string): Promise<HandAgent> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 4, clean: true, reconnectPeriod: 0 });
    const a = new HandAgent(client, id);
    client.on('message', (_topic, payload) => {
      const m = decodeUp(payload);
      a.seen.push(m);
      for (const w of [...a.waiters]) {
        if (a.seen.length - 1 >= w.from && w.pred(m)) {
          a.waiters.splice(a.waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    });
    await client.subscribeAsync(`ferry/d/${id}/up`, { qos: 1 });
    return a;
  }

  /** The next up message (after the last one consumed) that matches; times out for safety, not timing. */
  next<T extends UpMessage>(pred: (m: UpMessage) => boolean, what: string, ms = 15_000): Promise<T> {
    for (let i = this.cursor; i < this.seen.length; i++) {
      if (pred(this.seen[i])) {
        this.cursor = i + 1;
        return Promise.resolve(this.seen[i] as T);
      }
    }
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} from ${this.id}; saw ${JSON.stringify(this.seen.slice(this.cursor).map((m) => m.type))}`)), ms);
      this.waiters.push({
        pred,
        from: this.cursor,
        resolve: (m) => {
          clearTimeout(timer);
          this.cursor = this.seen.indexOf(m) + 1;
          resolve(m as T);
        },
      });
    });
  }

  hello(what = 'hello'): Promise<Hello> {
    return this.next<Hello>((m) => m.type === MsgType.hello, what);
  }

  report(stage: number, what = `report stage ${stage}`): Promise<Report> {
    return this.next<Report>((m) => m.type === MsgType.report && m.stage === stage, what);
  }

  ack(pred: (a: Ack) => boolean = () => true, what = 'ack'): Promise<Ack> {
    return this.next<Ack>((m) => m.type === MsgType.ack && pred(m), what);
  }

  send(m: DownMessage, qos: 0 | 1 = 1): void {
    this.client.publish(`ferry/d/${this.id}/dn`, encodeMessage(m), { qos });
  }

  raw(payload: Buffer): void {
    this.client.publish(`ferry/d/${this.id}/dn`, payload, { qos: 1 });
  }

  close(): Promise<void> {
    return this.client.endAsync();
  }
}

interface Release {
  image: Buffer;
  manifest: Buffer;
  version: string;
}

function release(version: string, size = 40_000, over: Partial<Parameters<typeof signManifest>[0]> = {}, signer = key.privateKey): Release {
  const image = factoryImage(HW, version, size);
  const manifest = signManifest({ hw: HW, version, securityVersion: 0, size: image.length, digest: sha256(image), created: 1_700_000_000, flags: 0, ...over }, signer);
  return { image, manifest, version };
}

async function setup(t: { teardown(fn: () => unknown): void }, id: string, extra: Partial<SimNodeOptions> = {}) {
  const broker: RunningBroker = await startBroker();
  const agent = await HandAgent.connect(broker.url, id);
  const node = new SimNode({ brokerUrl: broker.url, deviceId: id, hw: HW, version: '1.0.0', trust: [key.publicKey], maxMessage: 1024, window: 8, ...extra });
  t.teardown(async () => {
    await node.stop();
    await agent.close();
    await broker.close();
  });
  await node.start();
  const hello = await agent.hello('first hello');
  const chunkSize = negotiateChunkSize(hello.maxMessage, `ferry/d/${id}/dn`, 16384);
  return { broker, agent, node, hello, chunkSize };
}

function offer(session: number, r: Release, chunkSize: number): DownMessage {
  return { type: MsgType.offer, offerId: 1, session, manifest: r.manifest, encoding: 0, payloadSize: r.image.length, payloadDigest: sha256(r.image), chunkSize };
}

function sendChunks(agent: HandAgent, session: number, r: Release, chunkSize: number, indices: Iterable<number>, tamper?: (i: number, data: Buffer) => Buffer): number {
  let n = 0;
  for (const i of indices) {
    let data = r.image.subarray(i * chunkSize, (i + 1) * chunkSize);
    if (tamper) data = tamper(i, Buffer.from(data));
    agent.send({ type: MsgType.chunk, session, index: i, data }, 0);
    n++;
  }
  return n;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

t.test('full update: hello, offer, chunks and acks, verified, activate, trial boot, confirmed', async (t) => {
  const { agent, node, hello, chunkSize } = await setup(t, 'n-ok');
  t.equal(hello.version, '1.0.0');
  t.equal(hello.imageState, ImageState.undefined);
  t.equal(hello.caps & 2, 2, 'claims bootloader rollback');
  t.equal(hello.caps & 1, 1, 'applies delta patches');
  t.equal(hello.window, 8);
  t.equal(hello.maxMessage, 1024);
  t.equal(hello.transfer, undefined);
  t.equal(chunkSize, 960, 'chunk size for a 1024-byte buffer on this topic');
  const r = release('1.1.0');
  const total = Math.ceil(r.image.length / chunkSize);
  agent.send(offer(101, r, chunkSize));
  const first = await agent.ack(() => true, 'ack of the offer');
  t.same({ session: first.session, base: first.base }, { session: 101, base: 0 }, 'fresh transfer acks base 0');
  // Out of order: evens first, then odds; acks must describe exactly what is stored.
  sendChunks(agent, 101, r, chunkSize, range(total).filter((i) => i % 2 === 0));
  const mid = await agent.ack((a) => a.bitmap !== undefined && a.bitmap.length > 0, 'selective ack');
  t.equal(mid.base, 1, 'chunk 1 is the first missing');
  t.equal(mid.bitmap![0] & 0b10, 2, 'chunk 2 (bit 1 relative to base 1) stored');
  sendChunks(agent, 101, r, chunkSize, range(total).filter((i) => i % 2 === 1));
  const done = await agent.ack((a) => a.base === total, 'complete ack');
  t.equal(done.bitmap, undefined, 'nothing past the end');
  const verified = await agent.report(Stage.verified);
  t.equal(verified.session, 101);
  t.equal(verified.version, '1.1.0');
  // A duplicate chunk is acked again, harmlessly.
  sendChunks(agent, 101, r, chunkSize, [0]);
  await agent.ack((a) => a.base === total, 'ack of a duplicate');
  agent.send({ type: MsgType.activate, session: 101 });
  await agent.report(Stage.rebooting);
  const trial = await agent.hello('hello after reboot');
  t.equal(trial.version, '1.1.0');
  t.equal(trial.slot, 1);
  t.ok(trial.digest.equals(sha256(r.image)));
  const confirmed = await agent.report(Stage.confirmed);
  t.equal(confirmed.session, 101);
  t.equal(confirmed.version, '1.1.0');
  t.equal(node.runningVersion, '1.1.0');
  t.equal(node.imageState, ImageState.valid);
  t.ok(node.runningDigest.equals(sha256(r.image)));
  // Already running it: a re-offer is answered confirmed at once.
  agent.send(offer(102, r, chunkSize));
  const again = await agent.report(Stage.confirmed, 'confirmed for a re-offer');
  t.equal(again.session, 102);
});

t.test('a tampered chunk ends in digestMismatch; the running image is untouched', async (t) => {
  const { agent, node, chunkSize } = await setup(t, 'n-tamper');
  const r = release('1.1.0');
  const total = Math.ceil(r.image.length / chunkSize);
  agent.send(offer(5, r, chunkSize));
  await agent.ack();
  sendChunks(agent, 5, r, chunkSize, range(total), (i, d) => {
    if (i === 3) d[10] ^= 0x40;
    return d;
  });
  const rej = await agent.report(Stage.rejected);
  t.equal(rej.reason, Reason.digestMismatch);
  t.equal(node.runningVersion, '1.0.0');
  t.equal(node.transfer, undefined, 'transfer discarded');
  agent.send({ type: MsgType.activate, session: 5 });
  const refused = await agent.report(Stage.rejected, 'activate refused');
  t.equal(refused.reason, Reason.unknownSession);
  t.equal(node.slot, 0, 'never activated');
});

t.test('manifest checks: bad signature, unknown key, wrong hardware, downgrade, security downgrade', async (t) => {
  const { agent, node, chunkSize } = await setup(t, 'n-checks', { securityVersion: 2 });
  const good = release('1.1.0', 4096, { securityVersion: 2 });
  const sig = Buffer.from(good.manifest);
  sig[sig.length - 5] ^= 1;
  agent.send(offer(1, { ...good, manifest: sig }, chunkSize));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.badSignature);
  const rogue = generateOperatorKey();
  agent.send(offer(2, release('1.1.0', 4096, { securityVersion: 2 }, rogue.privateKey), chunkSize));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.unknownKey);
  agent.send(offer(3, release('1.1.0', 4096, { hw: 'other-hw', securityVersion: 2 }), chunkSize));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.wrongHardware);
  agent.send(offer(4, release('0.9.0', 4096, { securityVersion: 2 }), chunkSize));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.downgrade);
  agent.send(offer(6, release('1.2.0', 4096, { securityVersion: 1 }), chunkSize));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.securityDowngrade);
  agent.send(offer(7, release('1.3.0', 3 * 1024 * 1024, { securityVersion: 2 }), chunkSize));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.noSpace);
  t.equal(node.runningVersion, '1.0.0');
  t.equal(node.transfer, undefined, 'no refused offer started a transfer');
});

t.test('malformed and unknown down messages are refused with a reason; the node carries on', async (t) => {
  const { agent, node, chunkSize } = await setup(t, 'n-garbage');
  agent.raw(Buffer.from([0xff, 0x00, 0x13]));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.malformed);
  agent.raw(encodeMessage({ type: MsgType.report, session: 0, stage: Stage.verified, reason: 0 } as unknown as Report));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.unknownType);
  agent.send({ type: MsgType.chunk, session: 999, index: 0, data: Buffer.alloc(10) }, 0);
  t.equal((await agent.report(Stage.rejected)).reason, Reason.unknownSession);
  const r = release('1.1.0', 2000);
  agent.send(offer(8, r, chunkSize));
  await agent.ack();
  sendChunks(agent, 8, r, chunkSize, range(Math.ceil(r.image.length / chunkSize)));
  await agent.report(Stage.verified);
  t.equal(node.runningVersion, '1.0.0', 'still healthy and updating');
});

t.test('power cut mid-download: Hello carries the transfer, and after a re-offer only missing chunks are needed', async (t) => {
  const { agent, node, chunkSize } = await setup(t, 'n-cut', { saveEvery: 4 });
  const r = release('1.1.0', 120_000);
  const total = Math.ceil(r.image.length / chunkSize);
  agent.send(offer(20, r, chunkSize));
  await agent.ack();
  const half = Math.floor(total / 2);
  const stored = new Promise<void>((resolve) => node.on('chunk', (received: number) => received === half && resolve()));
  sendChunks(agent, 20, r, chunkSize, range(half));
  await stored;
  await node.powerCut();
  const h = await agent.hello('hello after power cut');
  t.ok(h.transfer, 'transfer state in hello');
  t.equal(h.transfer!.session, 20);
  t.ok(h.transfer!.digest.equals(sha256(r.image)));
  t.equal(h.transfer!.chunkSize, chunkSize);
  const saved = new ChunkBitmap(total, h.transfer!.bitmap);
  t.ok(saved.count >= half - 4 && saved.count <= half, `saved ${saved.count} of the ${half} chunks received (saved every 4)`);
  agent.send(offer(21, r, chunkSize));
  const resumeAck = await agent.ack((a) => a.session === 21, 'resume ack');
  t.equal(resumeAck.base, saved.firstMissing(), 'ack at once with what it holds');
  const missing = range(total).filter((i) => !saved.has(i));
  const sent = sendChunks(agent, 21, r, chunkSize, missing);
  await agent.report(Stage.verified);
  t.ok(sent <= total - half + 4, `re-sent ${sent} chunks for ${total} (half were stored before the cut)`);
  t.ok(node.flash.stats.erases > 0);
});

t.test('a flash power cut in the middle of a chunk write: the node reboots, resumes, and still verifies', async (t) => {
  const { agent, node, chunkSize } = await setup(t, 'n-torn', { saveEvery: 4 });
  const r = release('1.1.0', 60_000);
  const total = Math.ceil(r.image.length / chunkSize);
  agent.send(offer(30, r, chunkSize));
  await agent.ack();
  node.flash.armPowerCut({ at: 12, mode: 'torn', fraction: 0.5 });
  sendChunks(agent, 30, r, chunkSize, range(total));
  const h = await agent.hello('hello after the injected cut');
  t.ok(h.transfer, 'came back with its transfer');
  agent.send(offer(31, r, chunkSize));
  await agent.ack((a) => a.session === 31, 'resume ack');
  const saved = new ChunkBitmap(total, h.transfer!.bitmap);
  sendChunks(agent, 31, r, chunkSize, range(total).filter((i) => !saved.has(i)));
  const v = await agent.report(Stage.verified);
  t.equal(v.session, 31, 'verified by digest after the torn write');
});

t.test('self-test failure: rolled back with selfTestFailed, running version unchanged', async (t) => {
  const { agent, node, chunkSize } = await setup(t, 'n-fail', { failSelfTest: true });
  const r = release('1.1.0', 10_000);
  agent.send(offer(40, r, chunkSize));
  await agent.ack();
  sendChunks(agent, 40, r, chunkSize, range(Math.ceil(r.image.length / chunkSize)));
  await agent.report(Stage.verified);
  agent.send({ type: MsgType.activate, session: 40 });
  await agent.report(Stage.rebooting);
  const trial = await agent.hello('hello of the trial boot');
  t.equal(trial.version, '1.1.0');
  t.equal(trial.imageState, ImageState.pendingVerify, 'the trial boot says pending-verify');
  const back = await agent.hello('hello after rollback');
  t.equal(back.version, '1.0.0');
  t.same(back.lastOutcome, { version: '1.1.0', stage: Stage.rolledBack, reason: Reason.selfTestFailed });
  const rb = await agent.report(Stage.rolledBack);
  t.equal(rb.reason, Reason.selfTestFailed);
  t.equal(rb.session, 40);
  t.equal(node.runningVersion, '1.0.0');
  t.equal(node.slot, 0);
});

t.test('watchdog during self-test: the bootloader rolls back and the reason is watchdog', async (t) => {
  const { agent, node, chunkSize } = await setup(t, 'n-wdt', { failSelfTest: 'watchdog' });
  const r = release('1.1.0', 10_000);
  agent.send(offer(50, r, chunkSize));
  await agent.ack();
  sendChunks(agent, 50, r, chunkSize, range(Math.ceil(r.image.length / chunkSize)));
  await agent.report(Stage.verified);
  agent.send({ type: MsgType.activate, session: 50 });
  const rb = await agent.report(Stage.rolledBack);
  t.equal(rb.reason, Reason.watchdog);
  t.equal(node.runningVersion, '1.0.0');
});

t.test('deferred activation: busy with retry-after, then activates', async (t) => {
  const { agent, node, chunkSize, hello } = await setup(t, 'n-defer', { deferActivation: { times: 1, retryAfter: 3 } });
  t.equal(hello.caps & 8, 8, 'claims deferred activation');
  const r = release('1.1.0', 5_000);
  agent.send(offer(60, r, chunkSize));
  await agent.ack();
  sendChunks(agent, 60, r, chunkSize, range(Math.ceil(r.image.length / chunkSize)));
  await agent.report(Stage.verified);
  agent.send({ type: MsgType.activate, session: 60 });
  const busy = await agent.report(Stage.busy);
  t.equal(busy.retryAfter, 3);
  agent.send({ type: MsgType.activate, session: 60 });
  await agent.report(Stage.confirmed);
  t.equal(node.runningVersion, '1.1.0');
});

t.test('a node without bootloader rollback does not claim it and refuses releases that do not allow it', async (t) => {
  const { agent, node, chunkSize, hello } = await setup(t, 'n-norb', { rollback: false });
  t.equal(hello.caps & 2, 0);
  agent.send(offer(70, release('1.1.0', 5_000), chunkSize));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.noRollbackSupport);
  const ok = release('1.1.0', 5_000, { flags: 1 });
  agent.send(offer(71, ok, chunkSize));
  await agent.ack();
  sendChunks(agent, 71, ok, chunkSize, range(Math.ceil(ok.image.length / chunkSize)));
  await agent.report(Stage.verified);
  agent.send({ type: MsgType.activate, session: 71 });
  await agent.report(Stage.confirmed);
  t.equal(node.runningVersion, '1.1.0');
  t.equal(node.imageState, ImageState.undefined);
});

/** A new version that shares most bytes with the factory image, as real firmware revisions do. */
function evolved(version: string): Release {
  const base = factoryImage(HW, '1.0.0');
  const image = Buffer.concat([base.subarray(0, 30_000), Buffer.from(`patched in ${version}`), base.subarray(30_000), Buffer.alloc(3000, 7)]);
  const manifest = signManifest({ hw: HW, version, securityVersion: 0, size: image.length, digest: sha256(image), created: 1, flags: 0 }, key.privateKey);
  return { image, manifest, version };
}

t.test('delta update: the patch is stored at the top of the slot, applied, verified and confirmed', async (t) => {
  const { agent, node, chunkSize, hello } = await setup(t, 'n-delta', { saveEvery: 2 });
  const r = evolved('1.1.0');
  const patch = createPatch(factoryImage(HW, '1.0.0'), r.image);
  t.ok(patch.length < r.image.length / 4, `patch ${patch.length} B for a ${r.image.length} B image`);
  const deltaOffer = (session: number, baseDigest: Buffer): DownMessage => ({
    type: MsgType.offer, offerId: 1, session, manifest: r.manifest, encoding: 1, payloadSize: patch.length, payloadDigest: sha256(patch), chunkSize, baseDigest,
  });
  agent.send(deltaOffer(80, sha256(Buffer.from('some other image'))));
  t.equal((await agent.report(Stage.rejected)).reason, Reason.deltaBaseMismatch, 'a patch for another base is refused');
  agent.send(deltaOffer(81, hello.digest));
  await agent.ack((a) => a.session === 81);
  const total = Math.ceil(patch.length / chunkSize);
  // Cut power in the middle of applying the patch (after the patch is stored): the apply re-runs.
  const opsBefore = node.flash.operations;
  node.flash.onOperation = (op) => {
    if (op.kind === 'write' && op.offset < node.layout.slots[1].offset + 8192 && op.offset >= node.layout.slots[1].offset && op.seq > opsBefore) {
      node.flash.onOperation = undefined;
      node.flash.armPowerCut({ at: 1, mode: 'torn', fraction: 0.3 });
    }
  };
  for (let i = 0; i < total; i++) agent.send({ type: MsgType.chunk, session: 81, index: i, data: patch.subarray(i * chunkSize, (i + 1) * chunkSize) }, 0);
  const h = await agent.hello('hello after the cut during patching');
  t.ok(h.transfer && new ChunkBitmap(total, h.transfer.bitmap).complete, 'the whole patch was saved before applying');
  agent.send(deltaOffer(82, hello.digest));
  await agent.ack((a) => a.session === 82 && a.base === total, 'complete at once');
  await agent.report(Stage.verified);
  agent.send({ type: MsgType.activate, session: 82 });
  await agent.report(Stage.confirmed);
  t.equal(node.runningVersion, '1.1.0');
  t.ok(node.runningDigest.equals(sha256(r.image)), 'runs exactly the new image');
});
