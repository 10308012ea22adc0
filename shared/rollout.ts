import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { HW_PATTERN, keyId } from './manifest.js';
import { isDeviceId } from './topics.js';
import { compareVersions, isVersion } from './version.js';

/**
 * Rollouts (campaigns): the operator's signed instruction "offer release HW/VER to these nodes, a
 * canary first, then in waves, with these brakes" (docs/protocol.md section 2.4). Pure: parsing,
 * validation, signing and verification; no sockets, no disk.
 */

/** A count of nodes, or a percentage of the rollout's nodes. */
export type Amount = { n: number } | { pct: number };

export type RolloutCommand = 'run' | 'pause' | 'abort';

export interface RolloutSpec {
  v: 1;
  /** Topic-safe id (a device-id-like name). */
  id: string;
  hw: string;
  version: string;
  /** Hex SHA-256 of the release image: the rollout binds the exact image. */
  digest: string;
  /** Only nodes in one of these broker groups (empty: every group). */
  groups: string[];
  /** Only these nodes (empty: every node of the hw class). */
  devices: string[];
  /** Canary wave (wave 0) size; { n: 0 } means none. */
  canary: Amount;
  /** Cumulative share of the rollout's nodes reached by the end of each wave after the canary; the last is 100. */
  waves: number[];
  /** The rollout halts once failures exceed this. */
  maxFailures: Amount;
  /** Gateway-local time window "HH:MM-HH:MM" in which offers start; null: any time. */
  window: string | null;
  /** Nodes reporting a battery below this percentage are skipped; null: no check. */
  minBattery: number | null;
  /** When halted, offer nodes that confirmed the release their previous release (a downgrade this rollout authorises). */
  autoRevert: boolean;
  /** `--auto`: every node of the class at once, no canary, no halt. */
  auto: boolean;
  /**
   * Wave membership fixed by the operator tool at start from the fleet it saw (retained node statuses
   * and broker node info): per wave (index 0 = canary) the highest node rank in it (hex, "" when the
   * wave is empty) and its node count. Agents place every node by its rank alone, so agents serving
   * different parts of the fleet agree without waiting for each other; a node that shows up later
   * falls into the wave whose rank range covers it. null: agents rank the nodes they see together.
   */
  plan: { last: string[]; counts: number[] } | null;
  /** With autoRevert: base64 of the signed revert permit (signPermit) the agent hands the node with the downgrade Offer. */
  revertPermit: string | null;
  /** The operator's command: start/resume (`run`), `pause`, `abort`. */
  command: RolloutCommand;
  /** Raised by every command: an agent ignores a document with a seq below the one it holds (no replay). */
  seq: number;
  /** Unix seconds. */
  created: number;
}

/** The signed envelope retained on `P/rollout/<id>` (UTF-8 JSON). */
export interface SignedRollout {
  /** The rollout document, as the exact JSON text that was signed. */
  doc: string;
  /** Hex key id of the signing operator key (8 bytes, as manifests). */
  kid: string;
  /** Base64 Ed25519 signature over DOMAIN || doc. */
  sig: string;
}

/** Domain separation: a rollout signature can never pass for a manifest's or a permit's, nor the reverse. */
const DOMAIN = Buffer.from('ferry-rollout-v1\0');

export const MAX_ROLLOUT_DOC = 16 * 1024;
export const ROLLOUT_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const WINDOW = /^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$/;

export class RolloutError extends Error {}

/** Parses `N` or `P%` (flag values). */
export function parseAmount(text: string, what: string): Amount {
  const m = /^([0-9]+(?:\.[0-9]+)?)(%?)$/.exec(text.trim());
  if (!m) throw new RolloutError(`${what} "${text}" must be a count (3) or a percentage (10%)`);
  const v = Number(m[1]);
  if (m[2]) {
    if (!(v >= 0 && v <= 100)) throw new RolloutError(`${what} "${text}": a percentage must be 0..100`);
    return { pct: v };
  }
  if (!Number.isInteger(v)) throw new RolloutError(`${what} "${text}": a count must be a whole number`);
  return { n: v };
}

/** Parses `--waves 10%,50%,100%`: cumulative percentages, strictly increasing, the last 100 (added if missing). */
export function parseWaves(text: string): number[] {
  const items = text.split(',').map((s) => s.trim());
  const out: number[] = [];
  for (const item of items) {
    const m = /^([0-9]+(?:\.[0-9]+)?)%$/.exec(item);
    if (!m) throw new RolloutError(`--waves "${text}": "${item}" is not a percentage like 25%`);
    const v = Number(m[1]);
    if (!(v > 0 && v <= 100)) throw new RolloutError(`--waves "${text}": ${item} must be above 0% and at most 100%`);
    if (out.length > 0 && v <= out[out.length - 1]) throw new RolloutError(`--waves "${text}": each wave must reach more nodes than the one before (cumulative percentages, increasing)`);
    out.push(v);
  }
  if (out[out.length - 1] !== 100) out.push(100);
  return out;
}

export function parseWindow(text: string): string {
  if (!WINDOW.test(text)) throw new RolloutError(`--window "${text}" must be HH:MM-HH:MM (24-hour gateway-local time, e.g. 01:00-05:00)`);
  return text;
}

/** Is `minuteOfDay` (0..1439) inside the window? A window may wrap midnight (22:00-04:00). */
export function inWindow(window: string | null, minuteOfDay: number): boolean {
  if (!window) return true;
  const m = WINDOW.exec(window);
  if (!m) return false;
  const from = Number(m[1]) * 60 + Number(m[2]);
  const to = Number(m[3]) * 60 + Number(m[4]);
  if (from === to) return true;
  return from < to ? minuteOfDay >= from && minuteOfDay < to : minuteOfDay >= from || minuteOfDay < to;
}

/** Resolves an amount against a node count (a percentage rounds up: 10% of 5 nodes is 1). */
export function resolveAmount(a: Amount, total: number): number {
  return 'n' in a ? a.n : Math.ceil((a.pct * total) / 100 - 1e-9);
}

export function describeAmount(a: Amount): string {
  return 'n' in a ? String(a.n) : `${a.pct}%`;
}

function fail(msg: string): never {
  throw new RolloutError(msg);
}

function isAmount(a: unknown): a is Amount {
  if (typeof a !== 'object' || a === null) return false;
  const o = a as Record<string, unknown>;
  if ('n' in o) return Number.isInteger(o.n) && (o.n as number) >= 0;
  return typeof o.pct === 'number' && o.pct >= 0 && o.pct <= 100;
}

/** Validates a decoded rollout document field by field; throws RolloutError naming the field. */
export function validateSpec(x: unknown): RolloutSpec {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) fail('rollout document is not a JSON object');
  const o = x as Record<string, unknown>;
  if (o.v !== 1) fail(`rollout document version ${JSON.stringify(o.v)} is not supported (expected 1)`);
  if (typeof o.id !== 'string' || !ROLLOUT_ID.test(o.id)) fail('rollout id must be 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)');
  if (typeof o.hw !== 'string' || !HW_PATTERN.test(o.hw)) fail('rollout hw is not a hardware class');
  if (typeof o.version !== 'string' || !isVersion(o.version)) fail('rollout version is not a release version');
  if (typeof o.digest !== 'string' || !/^[0-9a-f]{64}$/.test(o.digest)) fail('rollout digest must be 64 hex digits');
  const names = (v: unknown, what: string, ok: (s: string) => boolean) => {
    if (!Array.isArray(v) || v.length > 10_000 || !v.every((s) => typeof s === 'string' && ok(s))) fail(`rollout ${what} must be a list of valid names`);
    return v as string[];
  };
  const groups = names(o.groups, 'groups', (s) => HW_PATTERN.test(s));
  const devices = names(o.devices, 'devices', isDeviceId);
  if (!isAmount(o.canary)) fail('rollout canary must be {n} or {pct}');
  if (!isAmount(o.maxFailures)) fail('rollout maxFailures must be {n} or {pct}');
  const waves = o.waves;
  if (!Array.isArray(waves) || waves.length === 0 || waves.length > 100 || !waves.every((w, i) => typeof w === 'number' && w > 0 && w <= 100 && (i === 0 || w > waves[i - 1])) || waves[waves.length - 1] !== 100) {
    fail('rollout waves must be increasing cumulative percentages ending at 100');
  }
  if (o.window !== null && (typeof o.window !== 'string' || !WINDOW.test(o.window))) fail('rollout window must be HH:MM-HH:MM or null');
  if (o.minBattery !== null && !(typeof o.minBattery === 'number' && o.minBattery >= 0 && o.minBattery <= 100)) fail('rollout minBattery must be 0..100 or null');
  if (typeof o.autoRevert !== 'boolean' || typeof o.auto !== 'boolean') fail('rollout autoRevert and auto must be booleans');
  const plan = o.plan as RolloutSpec['plan'];
  if (plan !== null && (typeof plan !== 'object' || !Array.isArray(plan.last) || !Array.isArray(plan.counts) || plan.last.length !== waves.length + 1 || plan.counts.length !== waves.length + 1
    || !plan.last.every((x) => typeof x === 'string' && /^([0-9a-f]{64})?$/.test(x)) || !plan.counts.every((n) => Number.isInteger(n) && n >= 0))) {
    fail('rollout plan must be {last, counts} with one entry per wave (canary included)');
  }
  if (o.revertPermit !== null && (typeof o.revertPermit !== 'string' || o.revertPermit.length > 1024)) fail('rollout revertPermit must be base64 text or null');
  if (o.command !== 'run' && o.command !== 'pause' && o.command !== 'abort') fail('rollout command must be run, pause or abort');
  if (!Number.isInteger(o.seq) || (o.seq as number) < 0) fail('rollout seq must be a whole number');
  if (!Number.isInteger(o.created) || (o.created as number) < 0) fail('rollout created must be Unix seconds');
  return {
    v: 1, id: o.id as string, hw: o.hw as string, version: o.version as string, digest: o.digest as string, groups, devices,
    canary: o.canary as Amount, waves: waves as number[], maxFailures: o.maxFailures as Amount, window: o.window as string | null,
    minBattery: o.minBattery as number | null, autoRevert: o.autoRevert as boolean, auto: o.auto as boolean,
    plan, revertPermit: o.revertPermit as string | null, command: o.command as RolloutCommand,
    seq: o.seq as number, created: o.created as number,
  };
}

export function signRollout(spec: RolloutSpec, privateKey: KeyObject): Buffer {
  const doc = JSON.stringify(validateSpec(spec));
  const sig = sign(null, Buffer.concat([DOMAIN, Buffer.from(doc)]), privateKey);
  const env: SignedRollout = { doc, kid: keyId(createPublicKey(privateKey)).toString('hex'), sig: sig.toString('base64') };
  return Buffer.from(JSON.stringify(env));
}

function envelopeOf(bytes: Uint8Array): SignedRollout {
  if (bytes.length > MAX_ROLLOUT_DOC) fail(`rollout document of ${bytes.length} bytes exceeds ${MAX_ROLLOUT_DOC}`);
  let env: unknown;
  try {
    env = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    fail('rollout document is not JSON');
  }
  const e = env as Record<string, unknown>;
  if (typeof e !== 'object' || e === null || typeof e.doc !== 'string' || typeof e.kid !== 'string' || typeof e.sig !== 'string') fail('rollout document is not a signed envelope {doc, kid, sig}');
  return e as unknown as SignedRollout;
}

/** The document without checking its signature (operator tools reading what the broker holds). */
export function peekRollout(bytes: Uint8Array): RolloutSpec {
  const env = envelopeOf(bytes);
  try {
    return validateSpec(JSON.parse(env.doc));
  } catch (err) {
    if (err instanceof RolloutError) throw err;
    fail('rollout doc is not JSON');
  }
}

/**
 * Verifies the envelope against the trusted operator keys and returns the document. With no keys
 * (an agent started without --trust) the document is taken as it is, like manifests.
 */
export function verifyRollout(bytes: Uint8Array, trusted: readonly KeyObject[]): RolloutSpec {
  const env = envelopeOf(bytes);
  const spec = peekRollout(bytes);
  if (trusted.length === 0) return spec;
  const keys = trusted.filter((k) => keyId(k).toString('hex') === env.kid);
  if (keys.length === 0) fail(`rollout ${spec.id} is signed by unknown key ${env.kid.slice(0, 16)}`);
  const message = Buffer.concat([DOMAIN, Buffer.from(env.doc)]);
  const sig = Buffer.from(env.sig, 'base64');
  if (!keys.some((k) => verify(null, message, k, sig))) fail(`rollout ${spec.id}: signature does not verify (forged or altered)`);
  return spec;
}

/** True when `a` replaces `b` (a later command of the same rollout). */
export function supersedes(a: RolloutSpec, b: RolloutSpec | undefined): boolean {
  return !b || a.seq > b.seq;
}

/** The newest of several rollouts of one hw class (by creation, then id). */
export function newestFirst(a: RolloutSpec, b: RolloutSpec): number {
  return b.created - a.created || compareVersions(b.version, a.version) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/**
 * A revert permit: the operator's signed "a node of `hw` running `from` may take an older release"
 * (docs/protocol.md section 2.4). It travels in the Offer (key 9) of an auto-revert, so the node
 * itself can tell an authorised downgrade from a forged one; the security version still holds.
 * Encoded as CBOR-free JSON: { doc, kid, sig } like a rollout, with its own signing domain.
 */
export interface RevertPermit {
  v: 1;
  kind: 'revert';
  rollout: string;
  hw: string;
  from: string;
}

const PERMIT_DOMAIN = Buffer.from('ferry-permit-v1\0');
export const MAX_PERMIT = 512;

export function signPermit(p: RevertPermit, privateKey: KeyObject): Buffer {
  const doc = JSON.stringify(p);
  const sig = sign(null, Buffer.concat([PERMIT_DOMAIN, Buffer.from(doc)]), privateKey);
  return Buffer.from(JSON.stringify({ doc, kid: keyId(createPublicKey(privateKey)).toString('hex'), sig: sig.toString('base64') }));
}

/** Verifies a permit against the node's keys; throws RolloutError naming what is wrong. */
export function verifyPermit(bytes: Uint8Array, trusted: readonly KeyObject[]): RevertPermit {
  if (bytes.length > MAX_PERMIT) fail(`revert permit of ${bytes.length} bytes exceeds ${MAX_PERMIT}`);
  let env: Record<string, unknown>;
  let p: Record<string, unknown>;
  try {
    env = JSON.parse(Buffer.from(bytes).toString('utf8'));
    p = JSON.parse(String(env.doc));
  } catch {
    fail('revert permit is not a signed JSON envelope');
  }
  if (p.v !== 1 || p.kind !== 'revert' || typeof p.hw !== 'string' || typeof p.from !== 'string' || typeof p.rollout !== 'string') fail('revert permit fields are not valid');
  const keys = trusted.filter((k) => keyId(k).toString('hex') === env.kid);
  if (keys.length === 0) fail('revert permit signed by an unknown key');
  const message = Buffer.concat([PERMIT_DOMAIN, Buffer.from(String(env.doc))]);
  if (!keys.some((k) => verify(null, message, k, Buffer.from(String(env.sig), 'base64')))) fail('revert permit signature does not verify');
  return p as unknown as RevertPermit;
}
