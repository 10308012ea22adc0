import t from 'tap';
import { LoraNode, type NodeOutput } from '../device/lora/lora-node.js';
import { decodeUp, encodeDown, StatusFlag, type LoraUp } from '../shared/lora/control.js';
import { fragmentBlock } from '../shared/lora/fec.js';
import { decodeAnswers, encodeRequests, type Ts004Request } from '../shared/lora/ts004.js';
import { generateOperatorKey, sha256, signManifest } from '../shared/manifest.js';
import { Stage } from '../shared/messages.js';
import { seeded } from '../harness/seeded.js';

const signer = generateOperatorKey();
const img = Buffer.from(Array.from({ length: 20_000 }, (_, i) => (i * 13 + (i >> 9)) & 0xff));
const manifest = signManifest({ hw: 'lora-dev', version: '2.0.0', securityVersion: 0, size: img.length, digest: sha256(img), created: 1_700_000_000, flags: 0 }, signer.privateKey);
const tid = 0x00070003;
const fragSize = 239;

const control = (o: NodeOutput): LoraUp[] => o.uplinks.filter((u) => u.fPort === 10).map((u) => decodeUp(u.bytes));
const setup = (block: number, data: Buffer): Ts004Request => {
  const f = fragmentBlock(data, fragSize);
  return { cmd: 'FragSessionSetupReq', fragIndex: block % 4, mcGroupBitMask: 0, nbFrag: f.fragments.length, fragSize, fragAlgo: 0, blockAckDelay: 0, padding: f.padding, descriptor: ((tid & 0xffff) << 16) | block };
};
const frag = (block: number, data: Buffer, n: number): Uint8Array =>
  encodeRequests([{ cmd: 'DataFragment', fragIndex: block % 4, counter: n, payload: fragmentBlock(data, fragSize).fragments[n - 1] }]);

t.test('a node persists what it holds of a block and reports it after a reboot; the transfer continues', async (t) => {
  const node = new LoraNode({ devEui: '70b3d57ed0000009', hw: 'lora-dev', version: '1.0.0', trust: [signer.publicKey], random: seeded(3) });
  let now = 1_800_000_000_000;
  node.boot('powerOn', now);
  const offer = encodeDown({ type: 'offer', transferId: tid, digestPrefix: sha256(img).subarray(0, 4), version: '2.0.0', blocks: 2, size: img.length, blockKiB: 64, encoding: 0 });
  t.match(control(node.receive(10, offer, null, now)), [{ type: 'status', transferId: tid, done: 0 }]);
  node.receive(201, encodeRequests([setup(0, manifest)]), null, now);
  for (let n = 1; n <= fragmentBlock(manifest, fragSize).fragments.length; n++) node.receive(201, frag(0, manifest, n), null, now);
  const m = fragmentBlock(img, fragSize).fragments.length; // 84
  const answer = decodeAnswers(node.receive(201, encodeRequests([setup(1, img)]), null, now).uplinks[0].bytes);
  t.match(answer, [{ cmd: 'FragSessionSetupAns', fragIndex: 1, notEnoughMemory: false, wrongDescriptor: false }]);
  const skipped = new Set([3, 9, 20]);
  for (let n = 1; n <= 40; n++) if (!skipped.has(n)) node.receive(201, frag(1, img, n), null, (now += 4000));
  // 37 stored; saved every 16 → 32 persisted.
  now += 60_000;
  const boot = control(node.boot('powerOn', now));
  t.match(boot[0], { type: 'hello', version: '1.0.0', transferId: tid }, 'lhello names the transfer it holds');
  const pages = boot.filter((x) => x.type === 'status') as Extract<LoraUp, { type: 'status' }>[];
  t.ok(pages.length >= 1 && pages.every((p) => p.done === 1 && (p.flags & StatusFlag.resume) !== 0), 'lstatus pages flagged resume, block 1 in progress');
  t.equal(pages[0].unknown, m - 32, 'the 32 persisted fragments are held; the rest are unknown');
  t.ok((pages.at(-1)!.flags & StatusFlag.lastPage) !== 0);
  // The agent sets block 1 up again (same descriptor) and sends what is missing with fresh counters.
  node.receive(201, encodeRequests([setup(1, img)]), null, now);
  const unknown = new Set(pages.flatMap((p) => [...p.bitmap!].flatMap((byte, j) => [0, 1, 2, 3, 4, 5, 6, 7].filter((b) => byte & (1 << b)).map((b) => p.page! * 128 + j * 8 + b))));
  let verified: LoraUp[] = [];
  for (let n = 1; n <= m; n++) if (unknown.has(n - 1)) verified = verified.concat(control(node.receive(201, frag(1, img, n), null, (now += 4000))));
  t.match(verified, [{ type: 'report', transferId: tid, stage: Stage.verified }], 'the node checked the image digest itself');
  const act = node.receive(10, encodeDown({ type: 'activate', transferId: tid }), null, now);
  t.match(control(act), [{ type: 'report', stage: Stage.rebooting }]);
  t.ok(act.rebootAfterMs !== undefined);
  const after = control(node.boot('software', now + 2000));
  t.match(after, [{ type: 'hello', version: '2.0.0' }, { type: 'report', transferId: tid, stage: Stage.confirmed }]);
  t.equal(node.runningVersion, '2.0.0');
});

t.test('a block whose decoder would exceed the RAM budget is refused with notEnoughMemory', async (t) => {
  const node = new LoraNode({ devEui: '70b3d57ed000000a', hw: 'lora-dev', version: '1.0.0', trust: [signer.publicKey], random: seeded(4), ramBudget: 16 });
  node.boot('powerOn', 0);
  node.receive(10, encodeDown({ type: 'offer', transferId: tid, digestPrefix: sha256(img).subarray(0, 4), version: '2.0.0', blocks: 2, size: img.length, blockKiB: 64, encoding: 0 }), null, 0);
  t.match(decodeAnswers(node.receive(201, encodeRequests([setup(0, manifest)]), null, 0).uplinks[0].bytes), [{ cmd: 'FragSessionSetupAns', notEnoughMemory: false }], 'the 2-fragment manifest block fits');
  for (let n = 1; n <= fragmentBlock(manifest, fragSize).fragments.length; n++) node.receive(201, frag(0, manifest, n), null, 0);
  // 16 B hold L = 6 (6·7/16 + 12 = 15 B); 84 fragments want ⌈0.1·84⌉ = 9.
  const a = decodeAnswers(node.receive(201, encodeRequests([setup(1, img)]), null, 0).uplinks[0].bytes);
  t.match(a, [{ cmd: 'FragSessionSetupAns', fragIndex: 1, notEnoughMemory: true }]);
});
