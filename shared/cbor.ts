import { Encoder } from 'cbor-x';
import { ProtocolError, Reason } from './errors.js';

/**
 * One CBOR profile for everything ferry puts on the wire: plain RFC 8949 items only.
 * cbor-x defaults would emit its record extension (tag 105) and tag Uint8Array as tag 64;
 * a node with a stock CBOR decoder (MicroPython, tinycbor, cborg) must not see either.
 */
const encoder = new Encoder({
  useRecords: false,
  mapsAsObjects: false,
  tagUint8Array: false,
  variableMapSize: true,
  pack: false,
});

export type CborMap = Map<number, unknown>;

export function encodeCbor(value: unknown): Buffer {
  return encoder.encode(value);
}

/** Decodes one complete CBOR item; trailing bytes or any decoder failure is a ProtocolError. */
export function decodeCbor(bytes: Uint8Array): unknown {
  if (bytes.length === 0) throw new ProtocolError(Reason.malformed, 'empty message: expected one CBOR item');
  try {
    return encoder.decode(bytes);
  } catch (err) {
    throw new ProtocolError(Reason.malformed, `malformed CBOR: ${(err as Error).message}`);
  }
}

/** Decodes a CBOR map whose keys are all small unsigned integers. */
export function decodeIntMap(bytes: Uint8Array, what: string): CborMap {
  const value = decodeCbor(bytes);
  if (!(value instanceof Map)) throw new ProtocolError(Reason.malformed, `${what}: expected a CBOR map`);
  for (const key of value.keys()) {
    if (typeof key !== 'number' || !Number.isInteger(key) || key < 0 || key > 23) {
      throw new ProtocolError(Reason.malformed, `${what}: map key ${String(key)} is not an integer 0..23`);
    }
  }
  return value as CborMap;
}

/** Field readers: each names the message and field in its error, so logs say exactly what was wrong. */
export class FieldReader {
  constructor(
    private readonly map: CborMap,
    private readonly what: string,
  ) {}

  has(key: number): boolean {
    return this.map.has(key) && this.map.get(key) !== null && this.map.get(key) !== undefined;
  }

  uint(key: number, name: string, max = Number.MAX_SAFE_INTEGER): number {
    const v = this.map.get(key);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
      throw new ProtocolError(Reason.badField, `${this.what}.${name} (key ${key}): expected an unsigned integer`);
    }
    if (v > max) throw new ProtocolError(Reason.oversize, `${this.what}.${name} (key ${key}): ${v} exceeds ${max}`);
    return v;
  }

  optUint(key: number, name: string, max?: number): number | undefined {
    return this.has(key) ? this.uint(key, name, max) : undefined;
  }

  text(key: number, name: string, maxBytes: number, pattern?: RegExp): string {
    const v = this.map.get(key);
    if (typeof v !== 'string') throw new ProtocolError(Reason.badField, `${this.what}.${name} (key ${key}): expected a text string`);
    if (Buffer.byteLength(v) > maxBytes) {
      throw new ProtocolError(Reason.oversize, `${this.what}.${name} (key ${key}): longer than ${maxBytes} bytes`);
    }
    if (pattern && !pattern.test(v)) throw new ProtocolError(Reason.badField, `${this.what}.${name} (key ${key}): "${v}" is not allowed`);
    return v;
  }

  optText(key: number, name: string, maxBytes: number): string | undefined {
    return this.has(key) ? this.text(key, name, maxBytes) : undefined;
  }

  bytes(key: number, name: string, maxBytes: number, exact?: number): Buffer {
    const v = this.map.get(key);
    if (!(v instanceof Uint8Array)) throw new ProtocolError(Reason.badField, `${this.what}.${name} (key ${key}): expected a byte string`);
    if (exact !== undefined && v.length !== exact) {
      throw new ProtocolError(Reason.badField, `${this.what}.${name} (key ${key}): expected ${exact} bytes, got ${v.length}`);
    }
    if (v.length > maxBytes) throw new ProtocolError(Reason.oversize, `${this.what}.${name} (key ${key}): ${v.length} bytes exceeds ${maxBytes}`);
    return ownBytes(v);
  }

  optBytes(key: number, name: string, maxBytes: number, exact?: number): Buffer | undefined {
    return this.has(key) ? this.bytes(key, name, maxBytes, exact) : undefined;
  }

  map_(key: number, name: string): FieldReader {
    const v = this.map.get(key);
    if (!(v instanceof Map)) throw new ProtocolError(Reason.badField, `${this.what}.${name} (key ${key}): expected a map`);
    return new FieldReader(v as CborMap, `${this.what}.${name}`);
  }
}

/**
 * A copy in memory of its own. The decoder's byte strings are views into the message, and an MQTT
 * payload is a view into a whole socket read (up to 64 KiB of other messages): a 32-byte digest kept
 * in a node's record would hold all of that for as long as the record lives.
 */
function ownBytes(v: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(v.length);
  copy.set(v);
  return copy;
}
