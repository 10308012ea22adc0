import { ProtocolError, Reason } from '../errors.js';

/** Byte helpers shared by the LoRaWAN application-layer package codecs (TS003, TS004, TS005). Little-endian throughout. */

export function field(name: string, v: number, max: number, min = 0): number {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${name} ${v} is not ${min}..${max}`);
  return v;
}

export function need(frame: Uint8Array, at: number, n: number, what: string): Uint8Array {
  if (at + n > frame.length) throw bad(`${what} truncated: needs ${n} B after its CID, ${frame.length - at} left`);
  return frame.subarray(at, at + n);
}

export function bad(message: string): ProtocolError {
  return new ProtocolError(Reason.malformed, message);
}

export function unknownCid(pkg: string, kind: string, cid: number, at: number): ProtocolError {
  return new ProtocolError(Reason.unknownType, `unknown ${pkg} ${kind} CID 0x${cid.toString(16).padStart(2, '0')} at byte ${at}`);
}

export function readU24(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16);
}

export function readU32(b: Uint8Array, at: number): number {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
}

export function writeU24(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
}

export function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
  b[at + 3] = (v >>> 24) & 0xff;
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
