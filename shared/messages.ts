import { decodeIntMap, encodeCbor, FieldReader } from './cbor.js';
import { ProtocolError, Reason } from './errors.js';
import { HW_PATTERN } from './manifest.js';
import { DEVICE_ID_PATTERN } from './topics.js';

/**
 * Protocol v1 messages. Every message is one CBOR map with small unsigned integer keys; key 0 is the
 * message type. docs/protocol.md gives the CDDL for each; this module is its executable form.
 * Decoders validate every field and throw ProtocolError naming the field that was wrong.
 */
export const PROTOCOL_VERSION = 1;

export const MsgType = {
  hello: 1,
  ack: 2,
  report: 3,
  offer: 16,
  chunk: 17,
  activate: 18,
  cancel: 19,
  error: 20,
  /** Agent → node: "say Hello now" (the agent missed it: it started or reconnected after the node). */
  query: 21,
} as const;

/** Why the agent asks a node to say Hello (Query key 1). Informational: a node answers every Query alike. */
export const QueryReason = {
  /** The agent (re)connected to the broker and knows this node from its store. */
  agentConnected: 1,
  /** The broker says the node is online, but the agent has heard no Hello from it since it started. */
  presence: 2,
} as const;

/** Image state of the running slot, as the bootloader sees it (ESP-IDF otadata names). */
export const ImageState = {
  new: 0,
  pendingVerify: 1,
  valid: 2,
  invalid: 3,
  aborted: 4,
  /** Factory image or a bootloader that keeps no state. */
  undefined: 5,
  /**
   * Recovery (safe) mode: the app failed to start several boots in a row, or the running image failed
   * and there is no previous image to return to. The node stays reachable and takes a full image.
   */
  recovery: 6,
} as const;
export type ImageStateCode = (typeof ImageState)[keyof typeof ImageState];

/** Capability flags a node announces in Hello. */
export const Capability = {
  delta: 1,
  /** Bootloader reverts to the previous image when a new one is not confirmed. */
  rollback: 2,
  /** Node enforces the manifest's security version (anti-rollback counter). */
  antiRollback: 4,
  /** Node may answer Activate with Report(stage=busy, retryAfter). */
  deferActivation: 8,
  /**
   * Delta format version 3 with instruction prediction for one instruction set (docs/delta.md,
   * "Instruction prediction"), and its pointer ranges. Each implies `delta`.
   */
  deltaThumb2: 16,
  deltaAarch64: 32,
  deltaRiscv: 64,
  deltaXtensa: 128,
  /** Delta patches whose diff stream is sparse (transform bit 3, docs/delta.md "Sparse diff"); implies `delta`. */
  deltaSparse: 256,
} as const;

/** Stages a node reports. */
export const Stage = {
  /** All chunks stored, digest and signature verified; waiting for Activate. */
  verified: 1,
  /** Activate accepted: the node is switching its boot slot and rebooting. */
  rebooting: 2,
  /** The new image passed its self-test and is marked valid. */
  confirmed: 3,
  /** The node is back on its previous image; reason says why. */
  rolledBack: 4,
  /** The offer or transfer was refused; reason says why. The running image is untouched. */
  rejected: 5,
  /** Activation deferred by the application; retryAfter says when to ask again. */
  busy: 6,
  /**
   * The new image is installed but failed (reason says how) and the node has no previous image to
   * return to (e.g. MCUboot overwrite-only): it runs it in recovery mode, waiting for a fixed image.
   */
  failed: 7,
} as const;
export type StageCode = (typeof Stage)[keyof typeof Stage];

/** Payload encodings an Offer can announce. */
export const Encoding = { full: 0, delta: 1 } as const;

export const LIMITS = {
  maxMessage: { min: 128, max: 1024 * 1024 },
  maxChunks: 65536,
  maxBitmapBytes: 8192,
  maxDetail: 128,
  maxManifest: 1024,
  maxWindow: 1024,
} as const;

/** A node acks at least this often (in new chunks), however large its window. */
export const MAX_ACK_INTERVAL = 8;

/**
 * New chunks a node takes before it must send an Ack: half its window, at most MAX_ACK_INTERVAL.
 * The cap keeps acks (the sender's clock and its delivery-rate samples) coming at least every 8
 * chunks when a node advertises a large window for a long link, and keeps the smallest burst that
 * draws an ack small, so a sender can start well below a large window.
 */
export function ackInterval(window: number): number {
  return Math.max(1, Math.min(Math.floor(window / 2), MAX_ACK_INTERVAL));
}

export interface TransferState {
  session: number;
  /** SHA-256 of the payload being received (image for full, patch for delta). */
  digest: Buffer;
  chunkSize: number;
  /** Received chunks, LSB-first bitmap over the whole payload. */
  bitmap: Buffer;
}

export interface LastOutcome {
  version: string;
  stage: StageCode;
  reason: number;
}

export interface Hello {
  type: typeof MsgType.hello;
  proto: number;
  deviceId: string;
  hw: string;
  version: string;
  digest: Buffer;
  securityVersion: number;
  slot: number;
  imageState: ImageStateCode;
  /** Largest complete MQTT PUBLISH packet (header + topic + payload) the node can receive. */
  maxMessage: number;
  caps: number;
  /** Chunks the node can take in flight before it must ack (its receive window). */
  window: number;
  transfer?: TransferState;
  lastOutcome?: LastOutcome;
  bootCount?: number;
  /** Battery charge in percent (0..100); absent: mains powered. Rollouts skip nodes below --min-battery. */
  battery?: number;
}

export interface Ack {
  type: typeof MsgType.ack;
  session: number;
  /** Every chunk with index < base is stored. */
  base: number;
  /** Chunks stored at or after base: bit j = chunk base+j. */
  bitmap?: Buffer;
  /**
   * The offer-id of the Offer this Ack answers (only on the Ack a node sends at once on accepting an
   * Offer). Only such an Ack, for the latest Offer, tells the agent everything the node holds.
   */
  answers?: number;
}

export interface Report {
  type: typeof MsgType.report;
  session: number;
  stage: StageCode;
  reason: number;
  version?: string;
  detail?: string;
  /** For stage busy: seconds until the node can activate. */
  retryAfter?: number;
}

export interface Offer {
  type: typeof MsgType.offer;
  session: number;
  manifest: Buffer;
  encoding: number;
  payloadSize: number;
  /** SHA-256 of the payload (equals manifest digest for full images). */
  payloadDigest: Buffer;
  chunkSize: number;
  /** For delta: digest of the image the patch applies to. */
  baseDigest?: Buffer;
  /** Distinct for every Offer the agent sends a node (a resent Offer gets a new one); the answering Ack echoes it. */
  offerId: number;
  /** An operator-signed revert permit (shared/rollout.ts): this Offer is an authorised downgrade. */
  permit?: Buffer;
}

export interface Chunk {
  type: typeof MsgType.chunk;
  session: number;
  index: number;
  data: Buffer;
}

export interface Activate {
  type: typeof MsgType.activate;
  session: number;
}

export interface Cancel {
  type: typeof MsgType.cancel;
  session: number;
  reason: number;
}

export interface ErrorMsg {
  type: typeof MsgType.error;
  reason: number;
  detail?: string;
}

export interface Query {
  type: typeof MsgType.query;
  reason?: number;
}

export type UpMessage = Hello | Ack | Report;
export type DownMessage = Offer | Chunk | Activate | Cancel | ErrorMsg | Query;
export type Message = UpMessage | DownMessage;

const K = {
  type: 0,
  // hello
  proto: 1, deviceId: 2, hw: 3, version: 4, digest: 5, securityVersion: 6, slot: 7, imageState: 8,
  maxMessage: 9, caps: 10, window: 11, transfer: 12, lastOutcome: 13, bootCount: 14, battery: 15,
  // shared by several
  session: 1,
} as const;

// Transfer-state and last-outcome sub-maps.
const T = { session: 1, digest: 2, chunkSize: 3, bitmap: 4 } as const;
const O = { version: 1, stage: 2, reason: 3 } as const;
// Ack
const A = { session: 1, base: 2, bitmap: 3, answers: 4 } as const;
// Report
const R = { session: 1, stage: 2, reason: 3, version: 4, detail: 5, retryAfter: 6 } as const;
// Offer
const F = { session: 1, manifest: 2, encoding: 3, payloadSize: 4, payloadDigest: 5, chunkSize: 6, baseDigest: 7, offerId: 8, permit: 9 } as const;
// Chunk
const C = { session: 1, index: 2, data: 3 } as const;
// Cancel / Error
const X = { session: 1, reason: 2 } as const;
const E = { reason: 1, detail: 2 } as const;
// Query
const Q = { reason: 1 } as const;

function defined(entries: [number, unknown][]): Map<number, unknown> {
  return new Map(entries.filter(([, v]) => v !== undefined));
}

export function encodeMessage(m: Message): Buffer {
  switch (m.type) {
    case MsgType.hello:
      return encodeCbor(
        defined([
          [K.type, m.type], [K.proto, m.proto], [K.deviceId, m.deviceId], [K.hw, m.hw], [K.version, m.version],
          [K.digest, m.digest], [K.securityVersion, m.securityVersion], [K.slot, m.slot], [K.imageState, m.imageState],
          [K.maxMessage, m.maxMessage], [K.caps, m.caps], [K.window, m.window],
          [K.transfer, m.transfer && defined([[T.session, m.transfer.session], [T.digest, m.transfer.digest], [T.chunkSize, m.transfer.chunkSize], [T.bitmap, m.transfer.bitmap]])],
          [K.lastOutcome, m.lastOutcome && defined([[O.version, m.lastOutcome.version], [O.stage, m.lastOutcome.stage], [O.reason, m.lastOutcome.reason]])],
          [K.bootCount, m.bootCount],
          [K.battery, m.battery],
        ]),
      );
    case MsgType.ack:
      return encodeCbor(defined([[K.type, m.type], [A.session, m.session], [A.base, m.base], [A.bitmap, m.bitmap && m.bitmap.length > 0 ? m.bitmap : undefined], [A.answers, m.answers]]));
    case MsgType.report:
      return encodeCbor(
        defined([[K.type, m.type], [R.session, m.session], [R.stage, m.stage], [R.reason, m.reason], [R.version, m.version], [R.detail, m.detail], [R.retryAfter, m.retryAfter]]),
      );
    case MsgType.offer:
      return encodeCbor(
        defined([
          [K.type, m.type], [F.session, m.session], [F.manifest, m.manifest], [F.encoding, m.encoding], [F.payloadSize, m.payloadSize],
          [F.payloadDigest, m.payloadDigest], [F.chunkSize, m.chunkSize], [F.baseDigest, m.baseDigest], [F.offerId, m.offerId], [F.permit, m.permit],
        ]),
      );
    case MsgType.chunk:
      return encodeCbor(new Map<number, unknown>([[K.type, m.type], [C.session, m.session], [C.index, m.index], [C.data, m.data]]));
    case MsgType.activate:
      return encodeCbor(new Map<number, unknown>([[K.type, m.type], [K.session, m.session]]));
    case MsgType.cancel:
      return encodeCbor(new Map<number, unknown>([[K.type, m.type], [X.session, m.session], [X.reason, m.reason]]));
    case MsgType.error:
      return encodeCbor(defined([[K.type, m.type], [E.reason, m.reason], [E.detail, m.detail]]));
    case MsgType.query:
      return encodeCbor(defined([[K.type, m.type], [Q.reason, m.reason]]));
  }
}

const VERSION_TEXT = /^[0-9A-Za-z.+-]{1,32}$/;
const U32 = 0xffffffff;

function stageOf(v: number, what: string): StageCode {
  if (v < Stage.verified || v > Stage.failed) throw new ProtocolError(Reason.badField, `${what}: unknown stage ${v}`);
  return v as StageCode;
}

function decodeHello(r: FieldReader): Hello {
  const proto = r.uint(K.proto, 'proto', 255);
  if (proto !== PROTOCOL_VERSION) throw new ProtocolError(Reason.unsupportedVersion, `hello.proto: protocol ${proto} is not supported (this side speaks ${PROTOCOL_VERSION})`);
  const imageState = r.uint(K.imageState, 'imageState', ImageState.recovery) as ImageStateCode;
  let transfer: TransferState | undefined;
  if (r.has(K.transfer)) {
    const t = r.map_(K.transfer, 'transfer');
    transfer = {
      session: t.uint(T.session, 'session', U32),
      digest: t.bytes(T.digest, 'digest', 32, 32),
      chunkSize: t.uint(T.chunkSize, 'chunkSize', LIMITS.maxMessage.max),
      bitmap: t.bytes(T.bitmap, 'bitmap', LIMITS.maxBitmapBytes),
    };
  }
  let lastOutcome: LastOutcome | undefined;
  if (r.has(K.lastOutcome)) {
    const o = r.map_(K.lastOutcome, 'lastOutcome');
    lastOutcome = {
      version: o.text(O.version, 'version', 32, VERSION_TEXT),
      stage: stageOf(o.uint(O.stage, 'stage', 255), 'hello.lastOutcome.stage'),
      reason: o.uint(O.reason, 'reason', 255),
    };
  }
  return {
    type: MsgType.hello,
    proto,
    deviceId: r.text(K.deviceId, 'deviceId', 64, DEVICE_ID_PATTERN),
    hw: r.text(K.hw, 'hw', 32, HW_PATTERN),
    version: r.text(K.version, 'version', 32, VERSION_TEXT),
    digest: r.bytes(K.digest, 'digest', 32, 32),
    securityVersion: r.uint(K.securityVersion, 'securityVersion', U32),
    slot: r.uint(K.slot, 'slot', 15),
    imageState,
    maxMessage: clampCheck(r.uint(K.maxMessage, 'maxMessage', LIMITS.maxMessage.max), LIMITS.maxMessage.min, 'hello.maxMessage'),
    caps: r.uint(K.caps, 'caps', 0xffff),
    window: clampCheck(r.uint(K.window, 'window', LIMITS.maxWindow), 1, 'hello.window'),
    transfer,
    lastOutcome,
    bootCount: r.optUint(K.bootCount, 'bootCount', U32),
    battery: r.optUint(K.battery, 'battery', 100),
  };
}

function clampCheck(v: number, min: number, what: string): number {
  if (v < min) throw new ProtocolError(Reason.badField, `${what}: ${v} is below the minimum ${min}`);
  return v;
}

/** Decodes and validates a node → agent message. */
export function decodeUp(bytes: Uint8Array): UpMessage {
  const map = decodeIntMap(bytes, 'message');
  const r = new FieldReader(map, 'message');
  const type = r.uint(K.type, 'type', 255);
  switch (type) {
    case MsgType.hello:
      return decodeHello(new FieldReader(map, 'hello'));
    case MsgType.ack: {
      const a = new FieldReader(map, 'ack');
      return {
        type,
        session: a.uint(A.session, 'session', U32),
        base: a.uint(A.base, 'base', LIMITS.maxChunks),
        bitmap: a.optBytes(A.bitmap, 'bitmap', LIMITS.maxBitmapBytes),
        answers: a.has(A.answers) ? clampCheck(a.uint(A.answers, 'answers', U32), 1, 'ack.answers') : undefined,
      };
    }
    case MsgType.report: {
      const p = new FieldReader(map, 'report');
      return {
        type,
        session: p.uint(R.session, 'session', U32),
        stage: stageOf(p.uint(R.stage, 'stage', 255), 'report.stage'),
        reason: p.uint(R.reason, 'reason', 255),
        version: p.has(R.version) ? p.text(R.version, 'version', 32, VERSION_TEXT) : undefined,
        detail: p.optText(R.detail, 'detail', LIMITS.maxDetail),
        retryAfter: p.optUint(R.retryAfter, 'retryAfter', 86400),
      };
    }
    default:
      throw new ProtocolError(Reason.unknownType, `message type ${type} is not a node → agent message`);
  }
}

/** Decodes and validates an agent → node message. */
export function decodeDown(bytes: Uint8Array): DownMessage {
  const map = decodeIntMap(bytes, 'message');
  const r = new FieldReader(map, 'message');
  const type = r.uint(K.type, 'type', 255);
  switch (type) {
    case MsgType.offer: {
      const o = new FieldReader(map, 'offer');
      return {
        type,
        session: o.uint(F.session, 'session', U32),
        manifest: o.bytes(F.manifest, 'manifest', LIMITS.maxManifest),
        encoding: o.uint(F.encoding, 'encoding', Encoding.delta),
        payloadSize: o.uint(F.payloadSize, 'payloadSize', 64 * 1024 * 1024),
        payloadDigest: o.bytes(F.payloadDigest, 'payloadDigest', 32, 32),
        chunkSize: o.uint(F.chunkSize, 'chunkSize', LIMITS.maxMessage.max),
        baseDigest: o.optBytes(F.baseDigest, 'baseDigest', 32, 32),
        offerId: clampCheck(o.uint(F.offerId, 'offerId', U32), 1, 'offer.offerId'),
        permit: o.optBytes(F.permit, 'permit', 512),
      };
    }
    case MsgType.chunk: {
      const c = new FieldReader(map, 'chunk');
      return { type, session: c.uint(C.session, 'session', U32), index: c.uint(C.index, 'index', LIMITS.maxChunks - 1), data: c.bytes(C.data, 'data', LIMITS.maxMessage.max) };
    }
    case MsgType.activate:
      return { type, session: new FieldReader(map, 'activate').uint(K.session, 'session', U32) };
    case MsgType.cancel: {
      const x = new FieldReader(map, 'cancel');
      return { type, session: x.uint(X.session, 'session', U32), reason: x.uint(X.reason, 'reason', 255) };
    }
    case MsgType.error: {
      const e = new FieldReader(map, 'error');
      return { type, reason: e.uint(E.reason, 'reason', 255), detail: e.optText(E.detail, 'detail', LIMITS.maxDetail) };
    }
    case MsgType.query: {
      const reason = new FieldReader(map, 'query').optUint(Q.reason, 'reason', 255);
      return reason === undefined ? { type } : { type, reason };
    }
    default:
      throw new ProtocolError(Reason.unknownType, `message type ${type} is not an agent → node message`);
  }
}

/**
 * Bytes a Chunk message adds around its data, worst case: map header, type, a 32-bit session,
 * a 16-bit index and the byte-string header of the data.
 */
export const CHUNK_CBOR_OVERHEAD = 1 + 2 + (1 + 5) + (1 + 3) + (1 + 5);

/**
 * Chunk size for a node: the largest multiple of 64 such that the whole MQTT PUBLISH (fixed header,
 * topic, CBOR chunk message) fits the node's announced maxMessage, capped by the agent's limit.
 * Chunks go out at QoS 0, so there is no packet identifier.
 */
export function negotiateChunkSize(maxMessage: number, downTopic: string, agentMax: number): number {
  const topicBytes = 2 + Buffer.byteLength(downTopic);
  const fixedHeader = 1 + 4; // type byte + worst-case remaining length
  const room = Math.min(maxMessage - fixedHeader - topicBytes - CHUNK_CBOR_OVERHEAD, agentMax);
  const size = Math.floor(room / 64) * 64;
  if (size < 64) throw new ProtocolError(Reason.badField, `maxMessage ${maxMessage} leaves no room for a 64-byte chunk on ${downTopic}`);
  return size;
}
