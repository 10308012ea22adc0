import { bad, concat, field, need, readU32, unknownCid, writeU32 } from './codec-util.js';

/**
 * LoRaWAN Fragmented Data Block Transport v1.0.0 (TS004) messages, byte-exact. They travel on FPort 201;
 * one frame may carry several commands back to back. Multi-byte fields are little-endian. RFU bits are sent
 * as 0 and ignored on receipt (the spec's rule, so a later minor version still decodes).
 * Decoders throw ProtocolError naming the field that was wrong and never anything else.
 */
export const TS004_PORT = 201;
export const TS004_PACKAGE_IDENTIFIER = 3;
export const TS004_PACKAGE_VERSION = 1;

export const Cid = {
  packageVersion: 0x00,
  fragSessionStatus: 0x01,
  fragSessionSetup: 0x02,
  fragSessionDelete: 0x03,
  dataFragment: 0x08,
} as const;

/** Server → device commands. */
export type Ts004Request =
  | { cmd: 'PackageVersionReq' }
  /** participants: every device answers (true) or only those still missing fragments (false). */
  | { cmd: 'FragSessionStatusReq'; fragIndex: number; participants: boolean }
  | {
      cmd: 'FragSessionSetupReq';
      fragIndex: number;
      /** Multicast groups (bit i = McGroup i) the session is bound to. */
      mcGroupBitMask: number;
      nbFrag: number;
      fragSize: number;
      /** 0 = the parity-check code of the appendix. */
      fragAlgo: number;
      /** Status answers are spread over rand · 2^(BlockAckDelay+4) s. */
      blockAckDelay: number;
      padding: number;
      descriptor: number;
    }
  | { cmd: 'FragSessionDeleteReq'; fragIndex: number }
  /** counter is N, 1-based; counters above NbFrag are coded fragments. */
  | { cmd: 'DataFragment'; fragIndex: number; counter: number; payload: Uint8Array };

/** Device → server answers. */
export type Ts004Answer =
  | { cmd: 'PackageVersionAns'; packageIdentifier: number; packageVersion: number }
  | { cmd: 'FragSessionStatusAns'; fragIndex: number; nbFragReceived: number; missingFrag: number; notEnoughMatrixMemory: boolean }
  | {
      cmd: 'FragSessionSetupAns';
      fragIndex: number;
      encodingUnsupported: boolean;
      notEnoughMemory: boolean;
      fragIndexUnsupported: boolean;
      wrongDescriptor: boolean;
    }
  | { cmd: 'FragSessionDeleteAns'; fragIndex: number; sessionDoesNotExist: boolean };

// ---------------------------------------------------------------- encoding

export function encodeRequests(cmds: readonly Ts004Request[]): Uint8Array {
  const early = cmds.findIndex((c, i) => c.cmd === 'DataFragment' && i < cmds.length - 1);
  if (early >= 0) throw new RangeError(`DataFragment at position ${early} must be the last command of a frame (it runs to the end)`);
  return concat(cmds.map(encodeRequest));
}

export function encodeAnswers(cmds: readonly Ts004Answer[]): Uint8Array {
  return concat(cmds.map(encodeAnswer));
}

export function encodeRequest(c: Ts004Request): Uint8Array {
  switch (c.cmd) {
    case 'PackageVersionReq':
      return Uint8Array.of(Cid.packageVersion);
    case 'FragSessionStatusReq':
      return Uint8Array.of(Cid.fragSessionStatus, (field('FragIndex', c.fragIndex, 3) << 1) | (c.participants ? 1 : 0));
    case 'FragSessionSetupReq': {
      const nbFrag = field('NbFrag', c.nbFrag, 0xffff, 1);
      const fragSize = field('FragSize', c.fragSize, 0xff, 1);
      const out = new Uint8Array(11);
      out[0] = Cid.fragSessionSetup;
      out[1] = (field('FragIndex', c.fragIndex, 3) << 4) | field('McGroupBitMask', c.mcGroupBitMask, 15);
      out[2] = nbFrag & 0xff;
      out[3] = nbFrag >> 8;
      out[4] = fragSize;
      out[5] = (field('FragAlgo', c.fragAlgo, 7) << 3) | field('BlockAckDelay', c.blockAckDelay, 7);
      out[6] = field('Padding', c.padding, fragSize - 1);
      writeU32(out, 7, field('Descriptor', c.descriptor, 0xffffffff));
      return out;
    }
    case 'FragSessionDeleteReq':
      return Uint8Array.of(Cid.fragSessionDelete, field('FragIndex', c.fragIndex, 3));
    case 'DataFragment': {
      const indexAndN = (field('FragIndex', c.fragIndex, 3) << 14) | field('N', c.counter, 0x3fff, 1);
      if (c.payload.length === 0) throw new RangeError('DataFragment payload is empty');
      const out = new Uint8Array(3 + c.payload.length);
      out[0] = Cid.dataFragment;
      out[1] = indexAndN & 0xff;
      out[2] = indexAndN >> 8;
      out.set(c.payload, 3);
      return out;
    }
  }
}

export function encodeAnswer(c: Ts004Answer): Uint8Array {
  switch (c.cmd) {
    case 'PackageVersionAns':
      return Uint8Array.of(Cid.packageVersion, field('PackageIdentifier', c.packageIdentifier, 0xff), field('PackageVersion', c.packageVersion, 0xff));
    case 'FragSessionStatusAns': {
      const v = (field('FragIndex', c.fragIndex, 3) << 14) | field('NbFragReceived', c.nbFragReceived, 0x3fff);
      return Uint8Array.of(Cid.fragSessionStatus, v & 0xff, v >> 8, field('MissingFrag', c.missingFrag, 0xff), c.notEnoughMatrixMemory ? 1 : 0);
    }
    case 'FragSessionSetupAns':
      return Uint8Array.of(
        Cid.fragSessionSetup,
        (field('FragIndex', c.fragIndex, 3) << 6) | (c.wrongDescriptor ? 8 : 0) | (c.fragIndexUnsupported ? 4 : 0) |
          (c.notEnoughMemory ? 2 : 0) | (c.encodingUnsupported ? 1 : 0),
      );
    case 'FragSessionDeleteAns':
      return Uint8Array.of(Cid.fragSessionDelete, field('FragIndex', c.fragIndex, 3) | (c.sessionDoesNotExist ? 4 : 0));
  }
}

// ---------------------------------------------------------------- decoding

/** Decodes the FRMPayload of a server → device frame on FPort 201 into its commands. */
export function decodeRequests(frame: Uint8Array): Ts004Request[] {
  const out: Ts004Request[] = [];
  let at = 0;
  if (frame.length === 0) throw bad('empty TS004 frame');
  while (at < frame.length) {
    const cid = frame[at++];
    switch (cid) {
      case Cid.packageVersion:
        out.push({ cmd: 'PackageVersionReq' });
        break;
      case Cid.fragSessionStatus: {
        const b = need(frame, at, 1, 'FragSessionStatusReq')[0];
        at += 1;
        out.push({ cmd: 'FragSessionStatusReq', fragIndex: (b >> 1) & 3, participants: (b & 1) === 1 });
        break;
      }
      case Cid.fragSessionSetup: {
        const p = need(frame, at, 10, 'FragSessionSetupReq');
        at += 10;
        const nbFrag = p[1] | (p[2] << 8);
        const fragSize = p[3];
        if (nbFrag === 0 || nbFrag > 0x3fff) throw bad(`FragSessionSetupReq NbFrag ${nbFrag} is not 1..16383 (N is 14 bits)`);
        if (fragSize === 0) throw bad('FragSessionSetupReq FragSize is 0');
        if (p[5] >= fragSize) throw bad(`FragSessionSetupReq Padding ${p[5]} is not below FragSize ${fragSize}`);
        out.push({
          cmd: 'FragSessionSetupReq',
          fragIndex: (p[0] >> 4) & 3,
          mcGroupBitMask: p[0] & 15,
          nbFrag,
          fragSize,
          fragAlgo: (p[4] >> 3) & 7,
          blockAckDelay: p[4] & 7,
          padding: p[5],
          descriptor: readU32(p, 6),
        });
        break;
      }
      case Cid.fragSessionDelete: {
        const b = need(frame, at, 1, 'FragSessionDeleteReq')[0];
        at += 1;
        out.push({ cmd: 'FragSessionDeleteReq', fragIndex: b & 3 });
        break;
      }
      case Cid.dataFragment: {
        // A DataFragment has no length field: its payload is the rest of the frame.
        const h = need(frame, at, 3, 'DataFragment');
        const v = h[0] | (h[1] << 8);
        const counter = v & 0x3fff;
        if (counter === 0) throw bad('DataFragment N is 0 (fragment counters start at 1)');
        out.push({ cmd: 'DataFragment', fragIndex: v >> 14, counter, payload: Uint8Array.from(frame.subarray(at + 2)) });
        at = frame.length;
        break;
      }
      default:
        throw unknownCid('TS004', 'request', cid, at - 1);
    }
  }
  return out;
}

/** Decodes the FRMPayload of a device → server frame on FPort 201 into its answers. */
export function decodeAnswers(frame: Uint8Array): Ts004Answer[] {
  const out: Ts004Answer[] = [];
  let at = 0;
  if (frame.length === 0) throw bad('empty TS004 frame');
  while (at < frame.length) {
    const cid = frame[at++];
    switch (cid) {
      case Cid.packageVersion: {
        const p = need(frame, at, 2, 'PackageVersionAns');
        at += 2;
        out.push({ cmd: 'PackageVersionAns', packageIdentifier: p[0], packageVersion: p[1] });
        break;
      }
      case Cid.fragSessionStatus: {
        const p = need(frame, at, 4, 'FragSessionStatusAns');
        at += 4;
        const v = p[0] | (p[1] << 8);
        out.push({ cmd: 'FragSessionStatusAns', fragIndex: v >> 14, nbFragReceived: v & 0x3fff, missingFrag: p[2], notEnoughMatrixMemory: (p[3] & 1) === 1 });
        break;
      }
      case Cid.fragSessionSetup: {
        const b = need(frame, at, 1, 'FragSessionSetupAns')[0];
        at += 1;
        out.push({
          cmd: 'FragSessionSetupAns',
          fragIndex: b >> 6,
          encodingUnsupported: (b & 1) !== 0,
          notEnoughMemory: (b & 2) !== 0,
          fragIndexUnsupported: (b & 4) !== 0,
          wrongDescriptor: (b & 8) !== 0,
        });
        break;
      }
      case Cid.fragSessionDelete: {
        const b = need(frame, at, 1, 'FragSessionDeleteAns')[0];
        at += 1;
        out.push({ cmd: 'FragSessionDeleteAns', fragIndex: b & 3, sessionDoesNotExist: (b & 4) !== 0 });
        break;
      }
      default:
        throw unknownCid('TS004', 'answer', cid, at - 1);
    }
  }
  return out;
}

/** A FragSessionSetupAns accepts the session when none of its error bits is set. */
export function setupAccepted(a: Extract<Ts004Answer, { cmd: 'FragSessionSetupAns' }>): boolean {
  return !(a.encodingUnsupported || a.notEnoughMemory || a.fragIndexUnsupported || a.wrongDescriptor);
}
