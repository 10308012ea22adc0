import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { decodeCbor, decodeIntMap, encodeCbor, FieldReader } from './cbor.js';
import { ProtocolError, Reason } from './errors.js';
import { assertVersion } from './version.js';

/**
 * The signed release manifest: a COSE_Sign1 (RFC 9052) structure, untagged, signed with the operator's
 * Ed25519 key. The node verifies it with the operator public key it was provisioned with, so neither the
 * broker nor the gateway can change what a node installs: they only carry these bytes.
 */
export interface Manifest {
  hw: string;
  version: string;
  /** Monotonic anti-rollback counter: a node refuses any release below the value it has burned in. */
  securityVersion: number;
  size: number;
  /** SHA-256 of the complete image. */
  digest: Buffer;
  /** Seconds since the epoch when the operator signed it. */
  created: number;
  flags: number;
}

/** Manifest flags. */
export const ManifestFlag = {
  /** The operator accepts updating nodes whose bootloader cannot roll back. */
  allowNoRollback: 1,
} as const;

export const MANIFEST_FORMAT = 1;
export const HW_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
const COSE_ALG_EDDSA = -8;
const MAX_MANIFEST_BYTES = 1024;
export const MAX_IMAGE_BYTES = 64 * 1024 * 1024;

const Key = { format: 1, hw: 2, version: 3, securityVersion: 4, size: 5, digest: 6, created: 7, flags: 8 } as const;

export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

/** Key id: the first 8 bytes of SHA-256 over the raw 32-byte public key. Lets a node hold several keys. */
export function keyId(publicKey: KeyObject): Buffer {
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  return sha256(raw).subarray(0, 8);
}

export function generateOperatorKey(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ed25519');
}

export function loadPrivateKey(pem: string | Buffer): KeyObject {
  const key = createPrivateKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`operator key is ${key.asymmetricKeyType}, expected ed25519`);
  return key;
}

export function loadPublicKey(pem: string | Buffer): KeyObject {
  const key = createPublicKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`trust key is ${key.asymmetricKeyType}, expected ed25519`);
  return key;
}

function encodeBody(m: Manifest): Buffer {
  return encodeCbor(
    new Map<number, unknown>([
      [Key.format, MANIFEST_FORMAT],
      [Key.hw, m.hw],
      [Key.version, m.version],
      [Key.securityVersion, m.securityVersion],
      [Key.size, m.size],
      [Key.digest, m.digest],
      [Key.created, m.created],
      [Key.flags, m.flags],
    ]),
  );
}

function decodeBody(payload: Uint8Array): Manifest {
  const r = new FieldReader(decodeIntMap(payload, 'manifest'), 'manifest');
  const format = r.uint(Key.format, 'format');
  if (format !== MANIFEST_FORMAT) throw new ProtocolError(Reason.unsupportedVersion, `manifest format ${format} is not supported`);
  const m: Manifest = {
    hw: r.text(Key.hw, 'hw', 32, HW_PATTERN),
    version: r.text(Key.version, 'version', 32),
    securityVersion: r.uint(Key.securityVersion, 'securityVersion', 0xffffffff),
    size: r.uint(Key.size, 'size', MAX_IMAGE_BYTES),
    digest: r.bytes(Key.digest, 'digest', 32, 32),
    created: r.uint(Key.created, 'created'),
    flags: r.optUint(Key.flags, 'flags', 0xffff) ?? 0,
  };
  assertVersion(m.version, 'manifest.version');
  if (m.size === 0) throw new ProtocolError(Reason.badField, 'manifest.size: an image cannot be empty');
  return m;
}

function sigStructure(protectedHeader: Uint8Array, payload: Uint8Array): Buffer {
  return encodeCbor(['Signature1', protectedHeader, Buffer.alloc(0), payload]);
}

export function signManifest(m: Manifest, privateKey: KeyObject): Buffer {
  validateManifest(m);
  const protectedHeader = encodeCbor(new Map([[1, COSE_ALG_EDDSA]]));
  const publicKey = createPublicKey(privateKey);
  const payload = encodeBody(m);
  const signature = sign(null, sigStructure(protectedHeader, payload), privateKey);
  return encodeCbor([protectedHeader, new Map([[4, keyId(publicKey)]]), payload, signature]);
}

function validateManifest(m: Manifest): void {
  if (!HW_PATTERN.test(m.hw)) throw new ProtocolError(Reason.badField, `hardware class "${m.hw}" must be 1-32 of A-Z a-z 0-9 _ . -`);
  assertVersion(m.version, 'version');
  if (!Number.isInteger(m.securityVersion) || m.securityVersion < 0 || m.securityVersion > 0xffffffff) {
    throw new ProtocolError(Reason.badField, `security version ${m.securityVersion} must be an integer 0..4294967295`);
  }
  if (!Number.isInteger(m.size) || m.size <= 0 || m.size > MAX_IMAGE_BYTES) {
    throw new ProtocolError(Reason.oversize, `image size ${m.size} must be 1..${MAX_IMAGE_BYTES} bytes`);
  }
  if (m.digest.length !== 32) throw new ProtocolError(Reason.badField, 'digest must be 32 bytes of SHA-256');
}

interface CoseParts {
  protectedHeader: Buffer;
  kid: Buffer | undefined;
  payload: Buffer;
  signature: Buffer;
}

function splitCose(bytes: Uint8Array): CoseParts {
  if (bytes.length > MAX_MANIFEST_BYTES) throw new ProtocolError(Reason.oversize, `manifest is ${bytes.length} bytes, limit ${MAX_MANIFEST_BYTES}`);
  const v = decodeCbor(bytes);
  if (!Array.isArray(v) || v.length !== 4) throw new ProtocolError(Reason.malformed, 'manifest: expected a COSE_Sign1 array of 4');
  const [p, u, payload, signature] = v as unknown[];
  if (!(p instanceof Uint8Array) || !(payload instanceof Uint8Array) || !(signature instanceof Uint8Array)) {
    throw new ProtocolError(Reason.malformed, 'manifest: protected header, payload and signature must be byte strings');
  }
  const header = decodeCbor(p);
  if (!(header instanceof Map) || header.get(1) !== COSE_ALG_EDDSA) {
    throw new ProtocolError(Reason.badSignature, 'manifest: protected header must name alg EdDSA (-8)');
  }
  const kid = u instanceof Map && u.get(4) instanceof Uint8Array ? Buffer.from(u.get(4) as Uint8Array) : undefined;
  return { protectedHeader: Buffer.from(p), kid, payload: Buffer.from(payload), signature: Buffer.from(signature) };
}

/** Reads a manifest without checking its signature: for routing only, never for trusting. */
export function peekManifest(bytes: Uint8Array): Manifest {
  return decodeBody(splitCose(bytes).payload);
}

/** Verifies the signature against any of the trusted keys and returns the manifest it covers. */
export function verifyManifest(bytes: Uint8Array, trusted: readonly KeyObject[]): Manifest {
  const parts = splitCose(bytes);
  if (parts.signature.length !== 64) throw new ProtocolError(Reason.badSignature, 'manifest: Ed25519 signature must be 64 bytes');
  const candidates = parts.kid ? trusted.filter((k) => keyId(k).equals(parts.kid!)) : trusted;
  if (candidates.length === 0) throw new ProtocolError(Reason.unknownKey, `manifest signed by unknown key ${parts.kid?.toString('hex') ?? '(no kid)'}`);
  const tbs = sigStructure(parts.protectedHeader, parts.payload);
  if (!candidates.some((k) => verify(null, tbs, k, parts.signature))) {
    throw new ProtocolError(Reason.badSignature, 'manifest signature does not verify');
  }
  return decodeBody(parts.payload);
}

/** Digest of the manifest bytes themselves: names a release uniquely (same image re-signed = new release). */
export function manifestId(bytes: Uint8Array): string {
  return sha256(bytes).subarray(0, 8).toString('hex');
}
