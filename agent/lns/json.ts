/**
 * Defensive reading of an LNS's JSON: everything from the LNS broker is hostile input. Size is capped before
 * parsing, every field is type-checked, and a bad message becomes one warning line, never an exception.
 */
export const MAX_LNS_MESSAGE = 16 * 1024;

export class BadLnsMessage extends Error {}

export type Obj = Record<string, unknown>;

export function parseObject(payload: Buffer, what: string, maxBytes = MAX_LNS_MESSAGE): Obj {
  if (payload.length > maxBytes) throw new BadLnsMessage(`${what}: ${payload.length} B exceeds ${maxBytes} B`);
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw new BadLnsMessage(`${what}: not JSON (${(err as Error).message})`);
  }
  if (!isObj(v)) throw new BadLnsMessage(`${what}: expected a JSON object`);
  return v;
}

export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function obj(o: Obj, key: string, what: string): Obj {
  const v = o[key];
  if (!isObj(v)) throw new BadLnsMessage(`${what}.${key}: expected an object`);
  return v;
}

export function optObj(o: Obj, key: string): Obj | undefined {
  const v = o[key];
  return isObj(v) ? v : undefined;
}

export function str(o: Obj, key: string, what: string, maxLen = 256): string {
  const v = o[key];
  if (typeof v !== 'string') throw new BadLnsMessage(`${what}.${key}: expected a string`);
  if (v.length > maxLen) throw new BadLnsMessage(`${what}.${key}: longer than ${maxLen} characters`);
  return v;
}

export function optStr(o: Obj, key: string, maxLen = 256): string | undefined {
  const v = o[key];
  return typeof v === 'string' && v.length <= maxLen ? v : undefined;
}

export function int(o: Obj, key: string, what: string, min: number, max: number): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new BadLnsMessage(`${what}.${key}: expected an integer ${min}..${max}`);
  return v;
}

export function optNum(o: Obj, key: string): number | undefined {
  const v = o[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Strict base64 (the LNS's FRMPayload encoding); at most 255 decoded bytes, a LoRaWAN frame's ceiling. */
export function base64(o: Obj, key: string, what: string, optional = false): Buffer {
  const v = o[key];
  if (v === undefined && optional) return Buffer.alloc(0);
  if (typeof v !== 'string' || v.length % 4 !== 0 || !BASE64.test(v) || v.length > 344) throw new BadLnsMessage(`${what}.${key}: expected base64 of at most 255 bytes`);
  return Buffer.from(v, 'base64');
}

export const DEV_EUI = /^[0-9a-f]{16}$/;

export function devEui(v: unknown, what: string): string {
  const s = typeof v === 'string' ? v.toLowerCase() : '';
  if (!DEV_EUI.test(s)) throw new BadLnsMessage(`${what}: devEui ${JSON.stringify(String(v)).slice(0, 40)} is not 16 hex digits`);
  return s;
}

/** At most one warning per `everyMs` per key: a flood of garbage costs a line a second, not a full disk. */
export function rateLimited(everyMs = 1000): (key: string, now?: number) => boolean {
  const last = new Map<string, number>();
  return (key, now = Date.now()) => {
    if (now - (last.get(key) ?? -Infinity) < everyMs) return false;
    if (last.size > 1000) last.clear();
    last.set(key, now);
    return true;
  };
}
