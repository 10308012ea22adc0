import t from 'tap';
import { ProtocolError } from '../shared/errors.js';
import {
  classCAccepted, decodeTs005Answers, decodeTs005Requests, encodeTs005Answers, encodeTs005Requests,
  sessionTimeoutSeconds, TS005_PORT, type Ts005Answer, type Ts005Request,
} from '../shared/lora/ts005.js';
import {
  decodeTs003Downlink, decodeTs003Uplink, encodeTs003Downlink, encodeTs003Uplink, gpsSeconds, timeCorrection, TS003_PORT, unixMsOfGps,
  type Ts003Downlink, type Ts003Uplink,
} from '../shared/lora/ts003.js';
import { runSeed, seeded } from '../harness/seeded.js';

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const key = hex('000102030405060708090a0b0c0d0e0f');

// Byte layouts from TS005 v1.0.0 as parsed by LoRaMac-node LmhpRemoteMcastSetup.c (reference lora.md §1.6).
const ts005Requests: [string, Ts005Request, string][] = [
  ['PackageVersionReq', { cmd: 'PackageVersionReq' }, '00'],
  ['McGroupStatusReq: ReqGroupMask bits 3:0', { cmd: 'McGroupStatusReq', reqGroupMask: 5 }, '01 05'],
  [
    'McGroupSetupReq: McGroupIDHeader, McAddr LE32, McKey_encrypted 16 B, minMcFCount LE32, maxMcFCount LE32 = 29 B',
    { cmd: 'McGroupSetupReq', mcGroupId: 1, mcAddr: 0x01020304, mcKeyEncrypted: key, minMcFCount: 0, maxMcFCount: 0xffff },
    '02 01 04030201 000102030405060708090a0b0c0d0e0f 00000000 ffff0000',
  ],
  ['McGroupDeleteReq', { cmd: 'McGroupDeleteReq', mcGroupId: 3 }, '03 03'],
  [
    'McClassCSessionReq: McGroupIDHeader, SessionTime LE32 (GPS s), SessionTimeOut nibble, DLFrequ LE24 ×100 Hz, DR',
    { cmd: 'McClassCSessionReq', mcGroupId: 0, sessionTime: 1_400_000_000, sessionTimeOut: 15, dlFrequencyHz: 869_525_000, dr: 0 },
    // 1,400,000,000 = 0x5372_4E00; 869,525,000 / 100 = 8,695,250 = 0x84_ADD2
    '04 00 004e7253 0f d2ad84 00',
  ],
];

const ts005Answers: [string, Ts005Answer, string][] = [
  ['PackageVersionAns: identifier 2, version 1', { cmd: 'PackageVersionAns', packageIdentifier: 2, packageVersion: 1 }, '00 02 01'],
  [
    'McGroupStatusAns: 6:4 NbTotalGroups, 3:0 AnsGroupMask, then McGroupID + McAddr per group',
    { cmd: 'McGroupStatusAns', nbTotalGroups: 4, groups: [{ mcGroupId: 0, mcAddr: 0x11223344 }, { mcGroupId: 2, mcAddr: 1 }] },
    '01 45 00 44332211 02 01000000',
  ],
  ['McGroupSetupAns ok', { cmd: 'McGroupSetupAns', mcGroupId: 2, idError: false }, '02 02'],
  ['McGroupSetupAns: bit2 IDerror', { cmd: 'McGroupSetupAns', mcGroupId: 1, idError: true }, '02 05'],
  ['McGroupDeleteAns: bit2 McGroupUndefined', { cmd: 'McGroupDeleteAns', mcGroupId: 3, mcGroupUndefined: true }, '03 07'],
  [
    'McClassCSessionAns accepted: status then TimeToStart LE24',
    { cmd: 'McClassCSessionAns', mcGroupId: 1, drError: false, freqError: false, mcGroupUndefined: false, timeToStart: 70_000 },
    '04 01 701101',
  ],
  [
    'McClassCSessionAns refused: bit2 DR error, bit3 freq error, bit4 group undefined, no TimeToStart',
    { cmd: 'McClassCSessionAns', mcGroupId: 2, drError: true, freqError: true, mcGroupUndefined: true },
    '04 1e',
  ],
];

t.test('TS005 runs on FPort 200 and TS003 on 202', async (t) => {
  t.equal(TS005_PORT, 200);
  t.equal(TS003_PORT, 202);
});

t.test('TS005 requests and answers encode to the spec bytes and decode back', async (t) => {
  for (const [name, msg, bytes] of ts005Requests) {
    t.equal(toHex(encodeTs005Requests([msg])), toHex(hex(bytes)), `encode ${name}`);
    t.same(decodeTs005Requests(hex(bytes)), [msg], `decode ${name}`);
  }
  for (const [name, msg, bytes] of ts005Answers) {
    t.equal(toHex(encodeTs005Answers([msg])), toHex(hex(bytes)), `encode ${name}`);
    t.same(decodeTs005Answers(hex(bytes)), [msg], `decode ${name}`);
  }
  const both = encodeTs005Requests([ts005Requests[3][1], ts005Requests[4][1]]);
  t.same(decodeTs005Requests(both), [ts005Requests[3][1], ts005Requests[4][1]], 'several commands in one frame');
  t.ok(classCAccepted(ts005Answers[5][1] as Extract<Ts005Answer, { cmd: 'McClassCSessionAns' }>));
  t.notOk(classCAccepted(ts005Answers[6][1] as Extract<Ts005Answer, { cmd: 'McClassCSessionAns' }>));
});

t.test('TS005 session timeout is 2^k s with k ≤ 15', async (t) => {
  t.equal(sessionTimeoutSeconds(0), 1);
  t.equal(sessionTimeoutSeconds(15), 32_768);
  t.throws(() => sessionTimeoutSeconds(16), /SessionTimeOut 16/);
  t.throws(() => encodeTs005Requests([{ ...(ts005Requests[4][1] as Extract<Ts005Request, { cmd: 'McClassCSessionReq' }>), sessionTimeOut: 16 }]), /SessionTimeOut/);
  t.throws(() => encodeTs005Requests([{ ...(ts005Requests[4][1] as Extract<Ts005Request, { cmd: 'McClassCSessionReq' }>), dlFrequencyHz: 869_525_050 }]), /multiple of 100/);
});

t.test('TS005 decoders name what is wrong', async (t) => {
  const cases: [string, RegExp][] = [
    ['', /empty TS005/],
    ['02 01 0403', /McGroupSetupReq truncated/],
    ['04 00 004e7253 0f d2ad', /McClassCSessionReq truncated/],
    ['04 00 004e7253 0f 000000 00', /DLFrequ is 0/],
    ['02 00 00000000 000102030405060708090a0b0c0d0e0f 05000000 04000000', /maxMcFCount 4 is below minMcFCount 5/],
    ['09', /unknown TS005 request CID 0x09 at byte 0/],
  ];
  for (const [bytes, re] of cases) t.throws(() => decodeTs005Requests(hex(bytes)), re, bytes || '(empty)');
  t.throws(() => decodeTs005Answers(hex('04 00 7011')), /TimeToStart truncated/);
  t.throws(() => decodeTs005Answers(hex('01 03 00 44332211')), /group 1 truncated/);
});

// TS003 v1.0.0 (reference lora.md §1.7; LoRaMac-node LmhpClockSync.c).
const ts003Up: [string, Ts003Uplink, string][] = [
  ['AppTimeReq: DeviceTime LE32, Param (3:0 TokenReq, bit4 AnsRequired)', { cmd: 'AppTimeReq', deviceTime: 0x12345678, tokenReq: 3, ansRequired: true }, '01 78563412 13'],
  ['DeviceAppTimePeriodicityAns: Status bit0, Time LE32', { cmd: 'DeviceAppTimePeriodicityAns', notSupported: false, deviceTime: 256 }, '02 00 00010000'],
  ['PackageVersionAns: identifier 1, version 1', { cmd: 'PackageVersionAns', packageIdentifier: 1, packageVersion: 1 }, '00 01 01'],
];
const ts003Down: [string, Ts003Downlink, string][] = [
  ['AppTimeAns: TimeCorrection signed LE32, TokenAns', { cmd: 'AppTimeAns', timeCorrection: -2, tokenAns: 3 }, '01 feffffff 03'],
  ['AppTimeAns positive', { cmd: 'AppTimeAns', timeCorrection: 1000, tokenAns: 15 }, '01 e8030000 0f'],
  ['DeviceAppTimePeriodicityReq', { cmd: 'DeviceAppTimePeriodicityReq', periodicity: 9 }, '02 09'],
  ['ForceDeviceResyncReq: bits 2:0 NbTransmissions', { cmd: 'ForceDeviceResyncReq', nbTransmissions: 3 }, '03 03'],
  ['PackageVersionReq', { cmd: 'PackageVersionReq' }, '00'],
];

t.test('TS003 messages encode to the spec bytes and decode back', async (t) => {
  for (const [name, msg, bytes] of ts003Up) {
    t.equal(toHex(encodeTs003Uplink([msg])), toHex(hex(bytes)), `encode ${name}`);
    t.same(decodeTs003Uplink(hex(bytes)), [msg], `decode ${name}`);
  }
  for (const [name, msg, bytes] of ts003Down) {
    t.equal(toHex(encodeTs003Downlink([msg])), toHex(hex(bytes)), `encode ${name}`);
    t.same(decodeTs003Downlink(hex(bytes)), [msg], `decode ${name}`);
  }
  t.throws(() => decodeTs003Uplink(hex('01 785634')), /AppTimeReq truncated/);
  t.throws(() => decodeTs003Downlink(hex('07')), /unknown TS003 downlink CID 0x07/);
});

t.test('GPS time: epoch 1980-01-06, 18 leap seconds; a correction sets the device clock', async (t) => {
  t.equal(gpsSeconds(Date.UTC(1980, 0, 6)), 18);
  t.equal(unixMsOfGps(gpsSeconds(Date.UTC(2026, 11, 3, 10, 0, 0))), Date.UTC(2026, 11, 3, 10, 0, 0));
  const now = Date.UTC(2026, 11, 3, 10, 0, 0);
  const device = gpsSeconds(now) - 5;
  t.equal(device + timeCorrection(device, now), gpsSeconds(now));
});

t.test('random frames decode or raise ProtocolError, never anything else', async (t) => {
  const rand = seeded(runSeed(5005));
  const decoders = [decodeTs005Requests, decodeTs005Answers, decodeTs003Uplink, decodeTs003Downlink];
  let ok = 0;
  for (let i = 0; i < 20_000; i++) {
    const frame = Uint8Array.from({ length: Math.floor(rand() * 40) }, () => (rand() < 0.5 ? Math.floor(rand() * 6) : Math.floor(rand() * 256)));
    for (const decode of decoders) {
      try {
        decode(frame);
        ok++;
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
      }
    }
  }
  t.ok(ok > 0, `${ok} random frames decoded`);
});
