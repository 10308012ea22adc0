import t, { type Test } from 'tap';
import { decode as cborgDecode } from 'cborg';
import { encodeCbor } from '../shared/cbor.js';
import { ProtocolError, Reason } from '../shared/errors.js';
import { decodeDown, decodeUp, encodeMessage, ImageState, MsgType, negotiateChunkSize, QueryReason, Stage, type Message } from '../shared/messages.js';
import { ChunkBitmap } from '../shared/bitmap.js';

const digest = Buffer.alloc(32, 7);

const samples: Message[] = [
  {
    type: MsgType.hello, proto: 1, deviceId: 'node-1', hw: 'esp32-devkit', version: '1.0.0', digest, securityVersion: 2, slot: 1,
    imageState: ImageState.valid, maxMessage: 4096, caps: 15, window: 16,
    transfer: { session: 0xfffffffe, digest, chunkSize: 4032, bitmap: Buffer.from([0x13, 0x02]) },
    lastOutcome: { version: '1.1.0', stage: Stage.rolledBack, reason: Reason.selfTestFailed },
    bootCount: 3,
  },
  { type: MsgType.hello, proto: 1, deviceId: 'n', hw: 'h', version: '0.0.1', digest, securityVersion: 0, slot: 0, imageState: ImageState.undefined, maxMessage: 128, caps: 0, window: 1 },
  { type: MsgType.ack, session: 5, base: 10, bitmap: Buffer.from([0b101]) },
  { type: MsgType.ack, session: 5, base: 0 },
  { type: MsgType.ack, session: 5, base: 0, answers: 7 },
  { type: MsgType.report, session: 9, stage: Stage.busy, reason: Reason.busy, version: '2.0.0', detail: 'motor running', retryAfter: 30 },
  { type: MsgType.report, session: 0, stage: Stage.confirmed, reason: 0 },
  { type: MsgType.offer, offerId: 1, session: 1, manifest: Buffer.from([0x84, 1, 2, 3]), encoding: 0, payloadSize: 1000, payloadDigest: digest, chunkSize: 512 },
  { type: MsgType.offer, offerId: 1, session: 1, manifest: Buffer.from([1]), encoding: 1, payloadSize: 10, payloadDigest: digest, chunkSize: 64, baseDigest: digest },
  { type: MsgType.chunk, session: 4294967295, index: 65535, data: Buffer.alloc(300, 1) },
  { type: MsgType.activate, session: 3 },
  { type: MsgType.cancel, session: 3, reason: Reason.cancelled },
  { type: MsgType.error, reason: Reason.malformed, detail: 'bad' },
  { type: MsgType.query },
  { type: MsgType.query, reason: QueryReason.presence },
];

const isUp = (m: Message) => m.type === MsgType.hello || m.type === MsgType.ack || m.type === MsgType.report;

t.test('every message round-trips through encode/decode', async (t) => {
  for (const m of samples) {
    const bytes = encodeMessage(m);
    const back = isUp(m) ? decodeUp(bytes) : decodeDown(bytes);
    t.same(back, m, `type ${m.type}`);
  }
});

t.test('a second CBOR library (cborg, strict) decodes every message to an integer-keyed map', async (t) => {
  for (const m of samples) {
    const decoded = cborgDecode(encodeMessage(m), { useMaps: true, strict: true }) as Map<number, unknown>;
    t.ok(decoded instanceof Map, `type ${m.type} is a map`);
    t.equal(decoded.get(0), m.type, 'key 0 is the type');
    for (const k of decoded.keys()) t.type(k, 'number');
  }
  const chunk = cborgDecode(encodeMessage(samples[9]), { useMaps: true }) as Map<number, unknown>;
  t.ok(chunk.get(3) instanceof Uint8Array, 'chunk data is a plain byte string, not a tagged typed array');
});

t.test('no CBOR tags or records appear on the wire', async (t) => {
  for (const m of samples) {
    const bytes = encodeMessage(m);
    // Major type 6 (tags) would start 0xc0..0xdb; cborg in strict mode rejects nothing here, and
    // re-encoding through cborg gives the same length (no extension types hidden inside).
    const decoded = cborgDecode(bytes, { useMaps: true });
    t.ok(decoded, `type ${m.type} decodes without tag handlers`);
  }
});

t.test('Query is the smallest message a node receives: type only, or type and reason', async (t) => {
  const bare = encodeMessage({ type: MsgType.query });
  t.same([...bare], [0xa1, 0x00, 0x15], 'a1 00 15: {0: 21}');
  const byCborg = cborgDecode(encodeMessage({ type: MsgType.query, reason: QueryReason.agentConnected }), { useMaps: true, strict: true }) as Map<number, unknown>;
  t.same([...byCborg.entries()], [[0, 21], [1, 1]], 'cborg reads {0: 21, 1: 1}');
  t.same(decodeDown(Buffer.from([0xa1, 0x00, 0x15])), { type: MsgType.query }, 'hand-written bytes decode');
  rejects(t, () => decodeUp(bare), Reason.unknownType, /not a node/, 'query on the up topic');
  rejects(t, () => decodeDown(encodeCbor(new Map<number, unknown>([[0, 21], [1, 'now']]))), Reason.badField, /query\.reason/, 'text reason');
  rejects(t, () => decodeDown(encodeCbor(new Map<number, unknown>([[0, 21], [1, 300]]))), Reason.oversize, /query\.reason/, 'reason out of range');
});

t.test('chunk overhead stays small', async (t) => {
  const bytes = encodeMessage({ type: MsgType.chunk, session: 0xffffffff, index: 60000, data: Buffer.alloc(4032) });
  t.ok(bytes.length - 4032 <= 20, `overhead ${bytes.length - 4032} bytes`);
});

function rejects(t: Test, f: () => unknown, reason: number, pattern: RegExp, msg: string) {
  try {
    f();
    t.fail(`${msg}: accepted`);
  } catch (err) {
    t.ok(err instanceof ProtocolError, `${msg}: ProtocolError`);
    t.equal((err as ProtocolError).reason, reason, `${msg}: reason ${(err as ProtocolError).reasonName}`);
    t.match((err as Error).message, pattern, `${msg}: message names the problem`);
  }
}

t.test('malformed and out-of-range input is rejected with a reason naming the field', async (t) => {
  rejects(t, () => decodeUp(Buffer.alloc(0)), Reason.malformed, /empty/, 'empty');
  rejects(t, () => decodeUp(Buffer.from([0xa1, 0x00])), Reason.malformed, /CBOR/, 'truncated map');
  rejects(t, () => decodeUp(Buffer.from([0xff, 0x00, 0x01])), Reason.malformed, /CBOR/, 'garbage');
  rejects(t, () => decodeUp(encodeCbor([1, 2, 3])), Reason.malformed, /map/, 'array instead of map');
  rejects(t, () => decodeUp(encodeCbor(new Map<unknown, unknown>([['type', 1]]))), Reason.malformed, /key/, 'text keys');
  rejects(t, () => decodeUp(encodeCbor(new Map([[0, 99]]))), Reason.unknownType, /type 99/, 'unknown type');
  rejects(t, () => decodeUp(encodeMessage(samples[7])), Reason.unknownType, /not a node/, 'offer on the up topic');
  rejects(t, () => decodeDown(encodeMessage(samples[2])), Reason.unknownType, /not an agent/, 'ack on the down topic');
  const hello = new Map(encodeAndBack(samples[1]));
  hello.set(5, Buffer.alloc(31));
  rejects(t, () => decodeUp(encodeCbor(hello)), Reason.badField, /hello\.digest.*32 bytes/, 'short digest');
  hello.set(5, digest);
  hello.set(3, 'x'.repeat(40));
  rejects(t, () => decodeUp(encodeCbor(hello)), Reason.oversize, /hello\.hw/, 'oversize hw');
  hello.set(3, 'esp32');
  hello.set(2, 'bad/id');
  rejects(t, () => decodeUp(encodeCbor(hello)), Reason.badField, /hello\.deviceId/, 'wildcard-ish device id');
  hello.set(2, 'node-1');
  hello.set(1, 2);
  rejects(t, () => decodeUp(encodeCbor(hello)), Reason.unsupportedVersion, /protocol 2/, 'future protocol');
  hello.set(1, 1);
  hello.set(9, -5);
  rejects(t, () => decodeUp(encodeCbor(hello)), Reason.badField, /maxMessage/, 'negative maxMessage');
  hello.set(9, 10);
  rejects(t, () => decodeUp(encodeCbor(hello)), Reason.badField, /maxMessage.*minimum/, 'tiny maxMessage');
  rejects(t, () => decodeUp(encodeCbor(new Map<number, unknown>([[0, 2], [1, 1], [2, 1], [3, Buffer.alloc(9000)]]))), Reason.oversize, /ack\.bitmap/, 'oversize bitmap');
  rejects(t, () => decodeUp(encodeCbor(new Map<number, unknown>([[0, 3], [1, 1], [2, 42], [3, 0]]))), Reason.badField, /stage 42/, 'unknown stage');
  rejects(t, () => decodeDown(encodeCbor(new Map<number, unknown>([[0, 17], [1, 1], [2, 70000], [3, Buffer.alloc(1)]]))), Reason.oversize, /chunk\.index/, 'index out of range');
});

function encodeAndBack(m: Message): [number, unknown][] {
  return [...(cborgDecode(encodeMessage(m), { useMaps: true }) as Map<number, unknown>).entries()];
}

t.test('unknown keys are ignored for forward compatibility', async (t) => {
  const m = new Map(encodeAndBack(samples[10]));
  m.set(23, 'future');
  t.same(decodeDown(encodeCbor(m)), samples[10]);
});

t.test('chunk size is negotiated from the node buffer and the topic', async (t) => {
  const topic = 'ferry/d/node-1/dn';
  const size = negotiateChunkSize(4096, topic, 16384);
  t.equal(size % 64, 0);
  const packet = 5 + 2 + topic.length + encodeMessage({ type: MsgType.chunk, session: 0xffffffff, index: 65535, data: Buffer.alloc(size) }).length;
  t.ok(packet <= 4096, `whole PUBLISH ${packet} fits 4096`);
  t.equal(negotiateChunkSize(1 << 20, topic, 16384), 16384, 'agent cap applies');
  t.equal(negotiateChunkSize(256, topic, 16384), 192);
  t.throws(() => negotiateChunkSize(100, topic, 16384), /no room/);
});

t.test('bitmap: LSB-first convention, acks, slices', async (t) => {
  const b = new ChunkBitmap(10);
  for (const i of [0, 1, 4, 9]) b.set(i);
  t.same([...b.toBytes()], [0x13, 0x02], 'chunks 0,1,4,9 -> 13 02');
  t.equal(b.firstMissing(), 2);
  t.same([...b.slice(2, 64)], [0b10000100], 'bits after base 2: chunk 4 (bit 2) and 9 (bit 7)');
  t.equal(b.set(4), false, 'duplicate set is harmless');
  const c = new ChunkBitmap(10);
  t.same(c.applyAck(2, b.slice(2, 64)).sort((x, y) => x - y), [0, 1, 4, 9]);
  t.equal(c.count, 4);
  const d = new ChunkBitmap(3, Buffer.from([0xff, 0xff]));
  t.equal(d.count, 3, 'bits past the end and extra bytes are ignored');
  t.ok(d.complete);
});

t.test('offer-id: required on an Offer and at least 1; an Ack may echo one (key 4)', async (t) => {
  const offer = { type: MsgType.offer, offerId: 1, session: 1, manifest: Buffer.from([1]), encoding: 0, payloadSize: 10, payloadDigest: Buffer.alloc(32), chunkSize: 64 } as const;
  const without = new Map(cborgDecode(encodeMessage(offer), { useMaps: true }) as Map<number, unknown>);
  without.delete(8);
  t.throws(() => decodeDown(encodeCbor(without)), /offerId/, 'an Offer without key 8 is refused, naming the field');
  t.throws(() => decodeDown(encodeMessage({ ...offer, offerId: 0 })), /offerId/, 'offer-id 0 is refused');
  t.throws(() => decodeUp(encodeMessage({ type: MsgType.ack, session: 1, base: 0, answers: 0 })), /answers/, 'answers 0 is refused');
});
