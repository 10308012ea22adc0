import { createHash } from 'node:crypto';
import { sha256 } from '../shared/manifest.js';

/**
 * What the node knows about the image in a slot: enough to report it in Hello and for the simulated
 * secure boot to check it. On ESP-IDF this is the esp_app_desc_t inside the image plus the signature
 * block the bootloader verifies; here it is kept in NVS (key slot0/slot1), with the signed manifest
 * bytes when the image came from an update.
 *
 * Encoding: u32 size, u32 securityVersion, 32-byte digest, u8 version length, version (ASCII),
 * u16 manifest length, manifest bytes.
 */
export interface SlotDescriptor {
  size: number;
  securityVersion: number;
  digest: Buffer;
  version: string;
  /** The signed manifest the image was installed from; absent for the factory image. */
  manifest?: Buffer;
}

export function encodeDescriptor(d: SlotDescriptor): Buffer {
  const version = Buffer.from(d.version, 'ascii');
  const manifest = d.manifest ?? Buffer.alloc(0);
  const out = Buffer.alloc(4 + 4 + 32 + 1 + version.length + 2 + manifest.length);
  let p = 0;
  p = out.writeUInt32LE(d.size, p);
  p = out.writeUInt32LE(d.securityVersion, p);
  p += d.digest.copy(out, p);
  p = out.writeUInt8(version.length, p);
  p += version.copy(out, p);
  p = out.writeUInt16LE(manifest.length, p);
  manifest.copy(out, p);
  return out;
}

/** Undefined when the bytes do not parse (NVS values are CRC-checked, so this is only defensive). */
export function decodeDescriptor(b: Buffer | undefined): SlotDescriptor | undefined {
  if (!b || b.length < 43) return undefined;
  let p = 0;
  const size = b.readUInt32LE(p); p += 4;
  const securityVersion = b.readUInt32LE(p); p += 4;
  const digest = Buffer.from(b.subarray(p, p + 32)); p += 32;
  const vlen = b.readUInt8(p); p += 1;
  if (p + vlen + 2 > b.length) return undefined;
  const version = b.subarray(p, p + vlen).toString('ascii'); p += vlen;
  const mlen = b.readUInt16LE(p); p += 2;
  if (p + mlen > b.length) return undefined;
  const manifest = mlen ? Buffer.from(b.subarray(p, p + mlen)) : undefined;
  return { size, securityVersion, digest, version, manifest };
}

export const FACTORY_IMAGE_SIZE = 64 * 1024;

/**
 * The image a simulated node ships with: a recognisable header and deterministic filler derived
 * from (hw, version), so two nodes of the same class and version run byte-identical firmware and the
 * agent sees the same running digest for both.
 */
export function factoryImage(hw: string, version: string, size = FACTORY_IMAGE_SIZE): Buffer {
  const out = Buffer.alloc(size);
  const header = Buffer.from(`FERRY-SIM ${hw} ${version}\n`);
  header.copy(out, 0, 0, Math.min(header.length, size));
  let block = createHash('sha256').update(`factory/${hw}/${version}`).digest();
  for (let off = header.length; off < size; off += block.length) {
    block = createHash('sha256').update(block).digest();
    block.copy(out, off, 0, Math.min(block.length, size - off));
  }
  return out;
}

export function describeImage(image: Buffer, version: string, securityVersion: number, manifest?: Buffer): SlotDescriptor {
  return { size: image.length, securityVersion, digest: sha256(image), version, manifest };
}
