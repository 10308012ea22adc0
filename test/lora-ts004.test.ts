import t from 'tap';
import { ProtocolError, Reason } from '../shared/errors.js';
import {
  decodeAnswers, decodeRequests, encodeAnswers, encodeRequests, setupAccepted, TS004_PORT, type Ts004Answer, type Ts004Request,
} from '../shared/lora/ts004.js';
import { runSeed, seeded } from '../harness/seeded.js';

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');

// Byte layouts from TS004 v1.0.0 §3 (and LoRaMac-node LmhpFragmentation.c, which parses the same bytes).
const requests: [string, Ts004Request, string][] = [
  ['PackageVersionReq', { cmd: 'PackageVersionReq' }, '00'],
  ['FragSessionStatusReq: bit0 participants, bits 2:1 FragIndex', { cmd: 'FragSessionStatusReq', fragIndex: 2, participants: true }, '01 05'],
  ['FragSessionStatusReq, only missing', { cmd: 'FragSessionStatusReq', fragIndex: 0, participants: false }, '01 00'],
  [
    'FragSessionSetupReq: FragSession (5:4 index, 3:0 groups), NbFrag LE16, FragSize, Control (5:3 algo, 2:0 delay), Padding, Descriptor LE32',
    { cmd: 'FragSessionSetupReq', fragIndex: 1, mcGroupBitMask: 1, nbFrag: 277, fragSize: 48, fragAlgo: 0, blockAckDelay: 7, padding: 5, descriptor: 0x04030201 },
    '02 11 1501 30 07 05 01020304',
  ],
  [
    'FragSessionSetupReq at the field limits',
    { cmd: 'FragSessionSetupReq', fragIndex: 3, mcGroupBitMask: 15, nbFrag: 16383, fragSize: 255, fragAlgo: 7, blockAckDelay: 0, padding: 254, descriptor: 0xffffffff },
    '02 3f ff3f ff 38 fe ffffffff',
  ],
  ['FragSessionDeleteReq', { cmd: 'FragSessionDeleteReq', fragIndex: 3 }, '03 03'],
  ['DataFragment: Index&N LE16 (15:14 FragIndex, 13:0 N) then the fragment', { cmd: 'DataFragment', fragIndex: 1, counter: 3, payload: hex('aabb') }, '08 0340 aabb'],
  ['DataFragment, largest N', { cmd: 'DataFragment', fragIndex: 3, counter: 16383, payload: hex('01') }, '08 ffff 01'],
];

const answers: [string, Ts004Answer, string][] = [
  ['PackageVersionAns', { cmd: 'PackageVersionAns', packageIdentifier: 3, packageVersion: 1 }, '00 03 01'],
  [
    'FragSessionStatusAns v1: Received&Index LE16, MissingFrag, Status',
    { cmd: 'FragSessionStatusAns', fragIndex: 1, nbFragReceived: 300, missingFrag: 7, notEnoughMatrixMemory: false },
    '01 2c41 07 00',
  ],
  ['FragSessionStatusAns, memory error', { cmd: 'FragSessionStatusAns', fragIndex: 0, nbFragReceived: 16383, missingFrag: 255, notEnoughMatrixMemory: true }, '01 ff3f ff 01'],
  [
    'FragSessionSetupAns: 7:6 FragIndex, bit1 not enough memory',
    { cmd: 'FragSessionSetupAns', fragIndex: 2, encodingUnsupported: false, notEnoughMemory: true, fragIndexUnsupported: false, wrongDescriptor: false },
    '02 82',
  ],
  [
    'FragSessionSetupAns, every error bit',
    { cmd: 'FragSessionSetupAns', fragIndex: 3, encodingUnsupported: true, notEnoughMemory: true, fragIndexUnsupported: true, wrongDescriptor: true },
    '02 cf',
  ],
  ['FragSessionDeleteAns: 1:0 FragIndex, bit2 no such session', { cmd: 'FragSessionDeleteAns', fragIndex: 1, sessionDoesNotExist: true }, '03 05'],
];

t.test('TS004 runs on FPort 201', async (t) => {
  t.equal(TS004_PORT, 201);
});

t.test('every request encodes to the spec bytes and decodes back', async (t) => {
  for (const [name, msg, bytes] of requests) {
    t.equal(toHex(encodeRequests([msg])), toHex(hex(bytes)), `encode ${name}`);
    t.same(decodeRequests(hex(bytes)), [msg], `decode ${name}`);
  }
});

t.test('every answer encodes to the spec bytes and decodes back', async (t) => {
  for (const [name, msg, bytes] of answers) {
    t.equal(toHex(encodeAnswers([msg])), toHex(hex(bytes)), `encode ${name}`);
    t.same(decodeAnswers(hex(bytes)), [msg], `decode ${name}`);
  }
  t.notOk(setupAccepted(answers[3][1] as Extract<Ts004Answer, { cmd: 'FragSessionSetupAns' }>));
  t.ok(setupAccepted(decodeAnswers(hex('02 40'))[0] as Extract<Ts004Answer, { cmd: 'FragSessionSetupAns' }>), 'no error bit: accepted');
});

t.test('several commands share one frame; a DataFragment must come last', async (t) => {
  const frame = encodeRequests([requests[0][1], requests[1][1], requests[6][1]]);
  t.equal(toHex(frame), '000105080340aabb');
  t.same(decodeRequests(frame), [requests[0][1], requests[1][1], requests[6][1]]);
  t.throws(() => encodeRequests([requests[6][1], requests[0][1]]), /DataFragment at position 0 must be the last/);
  t.same(decodeAnswers(hex('000301 0305')), [answers[0][1], answers[5][1]]);
});

t.test('RFU bits are ignored on receipt', async (t) => {
  t.same(decodeRequests(hex('01 f9')), [{ cmd: 'FragSessionStatusReq', fragIndex: 0, participants: true }]);
  t.same(decodeRequests(hex('03 fe')), [{ cmd: 'FragSessionDeleteReq', fragIndex: 2 }]);
  t.same(decodeAnswers(hex('01 0000 00 fe')), [{ cmd: 'FragSessionStatusAns', fragIndex: 0, nbFragReceived: 0, missingFrag: 0, notEnoughMatrixMemory: false }]);
});

t.test('malformed frames are refused with a ProtocolError naming what was wrong', async (t) => {
  const bad: [string, string, RegExp, number][] = [
    ['', 'req', /empty TS004 frame/, Reason.malformed],
    ['02 11 1501 30 07 05 010203', 'req', /FragSessionSetupReq truncated: needs 10 B after its CID, 9 left/, Reason.malformed],
    ['02 11 0000 30 07 05 01020304', 'req', /NbFrag 0 is not 1\.\.16383/, Reason.malformed],
    ['02 11 0040 30 07 05 01020304', 'req', /NbFrag 16384 is not 1\.\.16383/, Reason.malformed],
    ['02 11 1501 00 07 00 01020304', 'req', /FragSize is 0/, Reason.malformed],
    ['02 11 1501 30 07 30 01020304', 'req', /Padding 48 is not below FragSize 48/, Reason.malformed],
    ['08 0040 aa', 'req', /DataFragment N is 0/, Reason.malformed],
    ['08 01', 'req', /DataFragment truncated/, Reason.malformed],
    ['01', 'req', /FragSessionStatusReq truncated/, Reason.malformed],
    ['09', 'req', /unknown TS004 request CID 0x09 at byte 0/, Reason.unknownType],
    ['00 04', 'req', /unknown TS004 request CID 0x04 at byte 1/, Reason.unknownType],
    ['01 2c41 07', 'ans', /FragSessionStatusAns truncated/, Reason.malformed],
    ['00 03', 'ans', /PackageVersionAns truncated/, Reason.malformed],
    ['08 0100 aa', 'ans', /unknown TS004 answer CID 0x08/, Reason.unknownType],
  ];
  for (const [bytes, dir, re, reason] of bad) {
    const decode = dir === 'req' ? decodeRequests : decodeAnswers;
    let caught: unknown;
    try {
      decode(hex(bytes));
    } catch (e) {
      caught = e;
    }
    t.ok(caught instanceof ProtocolError, `${dir} ${bytes || '(empty)'} raises a ProtocolError`);
    t.match((caught as Error).message, re);
    t.equal((caught as ProtocolError).reason, reason);
  }
});

t.test('encoders refuse out-of-range fields, naming them', async (t) => {
  const setup = requests[3][1] as Extract<Ts004Request, { cmd: 'FragSessionSetupReq' }>;
  const cases: [Ts004Request, RegExp][] = [
    [{ ...setup, fragIndex: 4 }, /FragIndex 4 is not 0\.\.3/],
    [{ ...setup, mcGroupBitMask: 16 }, /McGroupBitMask 16/],
    [{ ...setup, nbFrag: 0 }, /NbFrag 0 is not 1\.\.65535/],
    [{ ...setup, fragSize: 256 }, /FragSize 256/],
    [{ ...setup, padding: 48 }, /Padding 48 is not 0\.\.47/],
    [{ ...setup, fragAlgo: 8 }, /FragAlgo 8/],
    [{ ...setup, blockAckDelay: -1 }, /BlockAckDelay -1/],
    [{ ...setup, descriptor: 2 ** 32 }, /Descriptor 4294967296/],
    [{ cmd: 'DataFragment', fragIndex: 0, counter: 0, payload: hex('aa') }, /N 0 is not 1\.\.16383/],
    [{ cmd: 'DataFragment', fragIndex: 0, counter: 16384, payload: hex('aa') }, /N 16384/],
    [{ cmd: 'DataFragment', fragIndex: 0, counter: 1, payload: new Uint8Array(0) }, /payload is empty/],
    [{ cmd: 'FragSessionStatusReq', fragIndex: 1.5, participants: true }, /FragIndex 1\.5/],
  ];
  for (const [msg, re] of cases) t.throws(() => encodeRequests([msg]), re, re.source);
  t.throws(() => encodeAnswers([{ cmd: 'FragSessionStatusAns', fragIndex: 0, nbFragReceived: 16384, missingFrag: 0, notEnoughMatrixMemory: false }]), /NbFragReceived 16384/);
  t.throws(() => encodeAnswers([{ cmd: 'FragSessionStatusAns', fragIndex: 0, nbFragReceived: 1, missingFrag: 256, notEnoughMatrixMemory: false }]), /MissingFrag 256/);
});

t.test('fuzz: random frames either decode (and re-encode stably) or raise a ProtocolError, nothing else', async (t) => {
  const seed = runSeed(13004);
  const rnd = seeded(seed);
  const cids = [0, 1, 2, 3, 8];
  let decoded = 0;
  let refused = 0;
  let unexpected = 0;
  for (let i = 0; i < 20_000; i++) {
    const frame = new Uint8Array(Math.floor(rnd() * 24));
    for (let k = 0; k < frame.length; k++) frame[k] = rnd() < 0.3 ? cids[Math.floor(rnd() * cids.length)] : Math.floor(rnd() * 256);
    for (const [decode, encode] of [[decodeRequests, encodeRequests], [decodeAnswers, encodeAnswers]] as const) {
      try {
        const msgs = decode(frame);
        decoded++;
        // Re-encoding clears RFU bits; decoding that again must give the same messages.
        const again = decode((encode as (m: unknown[]) => Uint8Array)(msgs));
        if (JSON.stringify(again) !== JSON.stringify(msgs)) unexpected++;
      } catch (e) {
        if (e instanceof ProtocolError) refused++;
        else unexpected++;
      }
    }
  }
  t.equal(unexpected, 0, `seed ${seed}: no other exception and no unstable round trip`);
  t.ok(decoded > 1000 && refused > 1000, `both outcomes exercised (decoded ${decoded}, refused ${refused})`);
});
