import { bad, concat, field, need, readU24, readU32, unknownCid, writeU24, writeU32 } from './codec-util.js';

/**
 * LoRaWAN Remote Multicast Setup v1.0.0 (TS005) messages, byte-exact, on FPort 200. Layouts as parsed by
 * LoRaMac-node LmhpRemoteMcastSetup.c (reference lora.md §1.6). Multi-byte fields are little-endian; one frame may
 * carry several commands. Decoders throw ProtocolError naming the field; encoders RangeError.
 *
 * SessionTime is GPS-epoch seconds (the device's clock is set by TS003). The Class C session lasts 2^k s,
 * k = SessionTimeOut's low nibble (≤ 15, ~9.1 h). DLFrequ is 3 bytes in units of 100 Hz.
 */
export const TS005_PORT = 200;
export const TS005_PACKAGE_IDENTIFIER = 2;
export const TS005_PACKAGE_VERSION = 1;
export const MAX_SESSION_TIMEOUT_EXPONENT = 15;

export const Cid = {
  packageVersion: 0x00,
  mcGroupStatus: 0x01,
  mcGroupSetup: 0x02,
  mcGroupDelete: 0x03,
  mcClassCSession: 0x04,
  mcClassBSession: 0x05,
} as const;

export type Ts005Request =
  | { cmd: 'PackageVersionReq' }
  | { cmd: 'McGroupStatusReq'; reqGroupMask: number }
  | { cmd: 'McGroupSetupReq'; mcGroupId: number; mcAddr: number; mcKeyEncrypted: Uint8Array; minMcFCount: number; maxMcFCount: number }
  | { cmd: 'McGroupDeleteReq'; mcGroupId: number }
  | {
      cmd: 'McClassCSessionReq';
      mcGroupId: number;
      /** GPS-epoch seconds at which the session starts. */
      sessionTime: number;
      /** k: the session lasts 2^k seconds. */
      sessionTimeOut: number;
      /** Downlink frequency in Hz (a multiple of 100). */
      dlFrequencyHz: number;
      dr: number;
    };

export type Ts005Answer =
  | { cmd: 'PackageVersionAns'; packageIdentifier: number; packageVersion: number }
  | { cmd: 'McGroupStatusAns'; nbTotalGroups: number; groups: { mcGroupId: number; mcAddr: number }[] }
  | { cmd: 'McGroupSetupAns'; mcGroupId: number; idError: boolean }
  | { cmd: 'McGroupDeleteAns'; mcGroupId: number; mcGroupUndefined: boolean }
  | {
      cmd: 'McClassCSessionAns';
      mcGroupId: number;
      drError: boolean;
      freqError: boolean;
      mcGroupUndefined: boolean;
      /** Seconds until the session starts; present only when no error bit is set. */
      timeToStart?: number;
    };

/** How long a Class C session of exponent k lasts. */
export function sessionTimeoutSeconds(k: number): number {
  return 2 ** field('SessionTimeOut', k, MAX_SESSION_TIMEOUT_EXPONENT);
}

export function classCAccepted(a: Extract<Ts005Answer, { cmd: 'McClassCSessionAns' }>): boolean {
  return !(a.drError || a.freqError || a.mcGroupUndefined);
}

// ---------------------------------------------------------------- encoding

export function encodeTs005Requests(cmds: readonly Ts005Request[]): Uint8Array {
  return concat(cmds.map(encodeRequest));
}

export function encodeTs005Answers(cmds: readonly Ts005Answer[]): Uint8Array {
  return concat(cmds.map(encodeAnswer));
}

function encodeRequest(c: Ts005Request): Uint8Array {
  switch (c.cmd) {
    case 'PackageVersionReq':
      return Uint8Array.of(Cid.packageVersion);
    case 'McGroupStatusReq':
      return Uint8Array.of(Cid.mcGroupStatus, field('ReqGroupMask', c.reqGroupMask, 15));
    case 'McGroupSetupReq': {
      if (c.mcKeyEncrypted.length !== 16) throw new RangeError(`McKey_encrypted is ${c.mcKeyEncrypted.length} B, not 16`);
      const out = new Uint8Array(30);
      out[0] = Cid.mcGroupSetup;
      out[1] = field('McGroupID', c.mcGroupId, 3);
      writeU32(out, 2, field('McAddr', c.mcAddr, 0xffffffff));
      out.set(c.mcKeyEncrypted, 6);
      writeU32(out, 22, field('minMcFCount', c.minMcFCount, 0xffffffff));
      writeU32(out, 26, field('maxMcFCount', c.maxMcFCount, 0xffffffff));
      return out;
    }
    case 'McGroupDeleteReq':
      return Uint8Array.of(Cid.mcGroupDelete, field('McGroupID', c.mcGroupId, 3));
    case 'McClassCSessionReq': {
      if (c.dlFrequencyHz % 100 !== 0) throw new RangeError(`DLFrequ ${c.dlFrequencyHz} Hz is not a multiple of 100 Hz`);
      const out = new Uint8Array(11);
      out[0] = Cid.mcClassCSession;
      out[1] = field('McGroupID', c.mcGroupId, 3);
      writeU32(out, 2, field('SessionTime', c.sessionTime, 0xffffffff));
      out[6] = field('SessionTimeOut', c.sessionTimeOut, MAX_SESSION_TIMEOUT_EXPONENT);
      writeU24(out, 7, field('DLFrequ', c.dlFrequencyHz / 100, 0xffffff));
      out[10] = field('DR', c.dr, 15);
      return out;
    }
  }
}

function encodeAnswer(c: Ts005Answer): Uint8Array {
  switch (c.cmd) {
    case 'PackageVersionAns':
      return Uint8Array.of(Cid.packageVersion, field('PackageIdentifier', c.packageIdentifier, 0xff), field('PackageVersion', c.packageVersion, 0xff));
    case 'McGroupStatusAns': {
      let mask = 0;
      const sorted = [...c.groups].sort((a, b) => a.mcGroupId - b.mcGroupId);
      const out = new Uint8Array(2 + 5 * sorted.length);
      out[0] = Cid.mcGroupStatus;
      sorted.forEach((g, i) => {
        const id = field('McGroupID', g.mcGroupId, 3);
        if (mask & (1 << id)) throw new RangeError(`McGroupID ${id} listed twice`);
        mask |= 1 << id;
        out[2 + 5 * i] = id;
        writeU32(out, 3 + 5 * i, field('McAddr', g.mcAddr, 0xffffffff));
      });
      out[1] = (field('NbTotalGroups', c.nbTotalGroups, 7) << 4) | mask;
      return out;
    }
    case 'McGroupSetupAns':
      return Uint8Array.of(Cid.mcGroupSetup, (c.idError ? 4 : 0) | field('McGroupID', c.mcGroupId, 3));
    case 'McGroupDeleteAns':
      return Uint8Array.of(Cid.mcGroupDelete, (c.mcGroupUndefined ? 4 : 0) | field('McGroupID', c.mcGroupId, 3));
    case 'McClassCSessionAns': {
      const status = field('McGroupID', c.mcGroupId, 3) | (c.drError ? 4 : 0) | (c.freqError ? 8 : 0) | (c.mcGroupUndefined ? 16 : 0);
      const ok = (status & 0x1c) === 0;
      if (ok !== (c.timeToStart !== undefined)) throw new RangeError('McClassCSessionAns carries TimeToStart exactly when no error bit is set');
      if (!ok) return Uint8Array.of(Cid.mcClassCSession, status);
      const out = Uint8Array.of(Cid.mcClassCSession, status, 0, 0, 0);
      writeU24(out, 2, field('TimeToStart', c.timeToStart as number, 0xffffff));
      return out;
    }
  }
}

// ---------------------------------------------------------------- decoding

export function decodeTs005Requests(frame: Uint8Array): Ts005Request[] {
  const out: Ts005Request[] = [];
  if (frame.length === 0) throw bad('empty TS005 frame');
  let at = 0;
  while (at < frame.length) {
    const cid = frame[at++];
    switch (cid) {
      case Cid.packageVersion:
        out.push({ cmd: 'PackageVersionReq' });
        break;
      case Cid.mcGroupStatus:
        out.push({ cmd: 'McGroupStatusReq', reqGroupMask: need(frame, at, 1, 'McGroupStatusReq')[0] & 15 });
        at += 1;
        break;
      case Cid.mcGroupSetup: {
        const p = need(frame, at, 29, 'McGroupSetupReq');
        at += 29;
        const minMcFCount = readU32(p, 21);
        const maxMcFCount = readU32(p, 25);
        if (maxMcFCount < minMcFCount) throw bad(`McGroupSetupReq maxMcFCount ${maxMcFCount} is below minMcFCount ${minMcFCount}`);
        out.push({ cmd: 'McGroupSetupReq', mcGroupId: p[0] & 3, mcAddr: readU32(p, 1), mcKeyEncrypted: Uint8Array.from(p.subarray(5, 21)), minMcFCount, maxMcFCount });
        break;
      }
      case Cid.mcGroupDelete:
        out.push({ cmd: 'McGroupDeleteReq', mcGroupId: need(frame, at, 1, 'McGroupDeleteReq')[0] & 3 });
        at += 1;
        break;
      case Cid.mcClassCSession: {
        const p = need(frame, at, 10, 'McClassCSessionReq');
        at += 10;
        const freq = readU24(p, 6) * 100;
        if (freq === 0) throw bad('McClassCSessionReq DLFrequ is 0');
        out.push({ cmd: 'McClassCSessionReq', mcGroupId: p[0] & 3, sessionTime: readU32(p, 1), sessionTimeOut: p[5] & 15, dlFrequencyHz: freq, dr: p[9] & 15 });
        break;
      }
      default:
        throw unknownCid('TS005', 'request', cid, at - 1);
    }
  }
  return out;
}

export function decodeTs005Answers(frame: Uint8Array): Ts005Answer[] {
  const out: Ts005Answer[] = [];
  if (frame.length === 0) throw bad('empty TS005 frame');
  let at = 0;
  while (at < frame.length) {
    const cid = frame[at++];
    switch (cid) {
      case Cid.packageVersion: {
        const p = need(frame, at, 2, 'PackageVersionAns');
        at += 2;
        out.push({ cmd: 'PackageVersionAns', packageIdentifier: p[0], packageVersion: p[1] });
        break;
      }
      case Cid.mcGroupStatus: {
        const s = need(frame, at, 1, 'McGroupStatusAns')[0];
        at += 1;
        const groups: { mcGroupId: number; mcAddr: number }[] = [];
        for (let id = 0; id < 4; id++) {
          if (!(s & (1 << id))) continue;
          const g = need(frame, at, 5, `McGroupStatusAns group ${id}`);
          at += 5;
          groups.push({ mcGroupId: g[0] & 3, mcAddr: readU32(g, 1) });
        }
        out.push({ cmd: 'McGroupStatusAns', nbTotalGroups: (s >> 4) & 7, groups });
        break;
      }
      case Cid.mcGroupSetup: {
        const b = need(frame, at, 1, 'McGroupSetupAns')[0];
        at += 1;
        out.push({ cmd: 'McGroupSetupAns', mcGroupId: b & 3, idError: (b & 4) !== 0 });
        break;
      }
      case Cid.mcGroupDelete: {
        const b = need(frame, at, 1, 'McGroupDeleteAns')[0];
        at += 1;
        out.push({ cmd: 'McGroupDeleteAns', mcGroupId: b & 3, mcGroupUndefined: (b & 4) !== 0 });
        break;
      }
      case Cid.mcClassCSession: {
        const s = need(frame, at, 1, 'McClassCSessionAns')[0];
        at += 1;
        const a: Extract<Ts005Answer, { cmd: 'McClassCSessionAns' }> = {
          cmd: 'McClassCSessionAns', mcGroupId: s & 3, drError: (s & 4) !== 0, freqError: (s & 8) !== 0, mcGroupUndefined: (s & 16) !== 0,
        };
        if (classCAccepted(a)) {
          a.timeToStart = readU24(need(frame, at, 3, 'McClassCSessionAns TimeToStart'), 0);
          at += 3;
        }
        out.push(a);
        break;
      }
      default:
        throw unknownCid('TS005', 'answer', cid, at - 1);
    }
  }
  return out;
}
