import { bad, concat, field, need, readU32, unknownCid, writeU32 } from './codec-util.js';

/**
 * LoRaWAN Application Layer Clock Synchronization v1.0.0 (TS003) messages, on FPort 202 (reference lora.md §1.7;
 * LoRaMac-node LmhpClockSync.c). Times are GPS-epoch seconds, LE32. Never sent over multicast.
 */
export const TS003_PORT = 202;
export const TS003_PACKAGE_IDENTIFIER = 1;
export const TS003_PACKAGE_VERSION = 1;

/** Seconds from the Unix epoch to the GPS epoch (1980-01-06T00:00:00Z). */
export const GPS_EPOCH_UNIX_SECONDS = 315_964_800;
/** GPS time runs ahead of UTC by the leap seconds since 1980 (18 since 2017-01-01). */
export const GPS_LEAP_SECONDS = 18;

/** GPS-epoch seconds for a Unix time in ms (what a LoRaWAN device's clock holds). */
export function gpsSeconds(unixMs: number): number {
  return Math.floor(unixMs / 1000) - GPS_EPOCH_UNIX_SECONDS + GPS_LEAP_SECONDS;
}

export function unixMsOfGps(gps: number): number {
  return (gps + GPS_EPOCH_UNIX_SECONDS - GPS_LEAP_SECONDS) * 1000;
}

export const Cid = { packageVersion: 0x00, appTime: 0x01, deviceAppTimePeriodicity: 0x02, forceDeviceResync: 0x03 } as const;

export type Ts003Uplink =
  | { cmd: 'PackageVersionAns'; packageIdentifier: number; packageVersion: number }
  /** tokenReq: 4 bits, echoed in the answer; ansRequired: the server must answer even when no correction is due. */
  | { cmd: 'AppTimeReq'; deviceTime: number; tokenReq: number; ansRequired: boolean }
  | { cmd: 'DeviceAppTimePeriodicityAns'; notSupported: boolean; deviceTime: number };

export type Ts003Downlink =
  | { cmd: 'PackageVersionReq' }
  /** timeCorrection: signed seconds the device adds to its clock. */
  | { cmd: 'AppTimeAns'; timeCorrection: number; tokenAns: number }
  /** The device should resync every 128 · 2^periodicity s. */
  | { cmd: 'DeviceAppTimePeriodicityReq'; periodicity: number }
  | { cmd: 'ForceDeviceResyncReq'; nbTransmissions: number };

export function encodeTs003Uplink(cmds: readonly Ts003Uplink[]): Uint8Array {
  return concat(
    cmds.map((c) => {
      switch (c.cmd) {
        case 'PackageVersionAns':
          return Uint8Array.of(Cid.packageVersion, field('PackageIdentifier', c.packageIdentifier, 0xff), field('PackageVersion', c.packageVersion, 0xff));
        case 'AppTimeReq': {
          const out = new Uint8Array(6);
          out[0] = Cid.appTime;
          writeU32(out, 1, field('DeviceTime', c.deviceTime, 0xffffffff));
          out[5] = field('TokenReq', c.tokenReq, 15) | (c.ansRequired ? 0x10 : 0);
          return out;
        }
        case 'DeviceAppTimePeriodicityAns': {
          const out = new Uint8Array(6);
          out[0] = Cid.deviceAppTimePeriodicity;
          out[1] = c.notSupported ? 1 : 0;
          writeU32(out, 2, field('Time', c.deviceTime, 0xffffffff));
          return out;
        }
      }
    }),
  );
}

export function encodeTs003Downlink(cmds: readonly Ts003Downlink[]): Uint8Array {
  return concat(
    cmds.map((c) => {
      switch (c.cmd) {
        case 'PackageVersionReq':
          return Uint8Array.of(Cid.packageVersion);
        case 'AppTimeAns': {
          const out = new Uint8Array(6);
          out[0] = Cid.appTime;
          writeU32(out, 1, field('TimeCorrection', c.timeCorrection, 0x7fffffff, -0x80000000) >>> 0);
          out[5] = field('TokenAns', c.tokenAns, 15);
          return out;
        }
        case 'DeviceAppTimePeriodicityReq':
          return Uint8Array.of(Cid.deviceAppTimePeriodicity, field('Periodicity', c.periodicity, 15));
        case 'ForceDeviceResyncReq':
          return Uint8Array.of(Cid.forceDeviceResync, field('NbTransmissions', c.nbTransmissions, 7));
      }
    }),
  );
}

export function decodeTs003Uplink(frame: Uint8Array): Ts003Uplink[] {
  const out: Ts003Uplink[] = [];
  if (frame.length === 0) throw bad('empty TS003 frame');
  let at = 0;
  while (at < frame.length) {
    const cid = frame[at++];
    if (cid === Cid.packageVersion) {
      const p = need(frame, at, 2, 'PackageVersionAns');
      out.push({ cmd: 'PackageVersionAns', packageIdentifier: p[0], packageVersion: p[1] });
      at += 2;
    } else if (cid === Cid.appTime) {
      const p = need(frame, at, 5, 'AppTimeReq');
      out.push({ cmd: 'AppTimeReq', deviceTime: readU32(p, 0), tokenReq: p[4] & 15, ansRequired: (p[4] & 0x10) !== 0 });
      at += 5;
    } else if (cid === Cid.deviceAppTimePeriodicity) {
      const p = need(frame, at, 5, 'DeviceAppTimePeriodicityAns');
      out.push({ cmd: 'DeviceAppTimePeriodicityAns', notSupported: (p[0] & 1) !== 0, deviceTime: readU32(p, 1) });
      at += 5;
    } else throw unknownCid('TS003', 'uplink', cid, at - 1);
  }
  return out;
}

export function decodeTs003Downlink(frame: Uint8Array): Ts003Downlink[] {
  const out: Ts003Downlink[] = [];
  if (frame.length === 0) throw bad('empty TS003 frame');
  let at = 0;
  while (at < frame.length) {
    const cid = frame[at++];
    if (cid === Cid.packageVersion) out.push({ cmd: 'PackageVersionReq' });
    else if (cid === Cid.appTime) {
      const p = need(frame, at, 5, 'AppTimeAns');
      out.push({ cmd: 'AppTimeAns', timeCorrection: readU32(p, 0) | 0, tokenAns: p[4] & 15 });
      at += 5;
    } else if (cid === Cid.deviceAppTimePeriodicity) {
      out.push({ cmd: 'DeviceAppTimePeriodicityReq', periodicity: need(frame, at, 1, 'DeviceAppTimePeriodicityReq')[0] & 15 });
      at += 1;
    } else if (cid === Cid.forceDeviceResync) {
      out.push({ cmd: 'ForceDeviceResyncReq', nbTransmissions: need(frame, at, 1, 'ForceDeviceResyncReq')[0] & 7 });
      at += 1;
    } else throw unknownCid('TS003', 'downlink', cid, at - 1);
  }
  return out;
}

/** Server side: the correction that sets a device clock reading `deviceTime` (GPS s) to `serverUnixMs`. */
export function timeCorrection(deviceTime: number, serverUnixMs: number): number {
  return gpsSeconds(serverUnixMs) - deviceTime;
}
