import { createHash } from 'node:crypto';

/** Pseudo-firmware: deterministic bytes with a header, so every demo run publishes the same kind of image. */
export function demoImage(hw: string, version: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  const header = Buffer.from(`FERRY-DEMO ${hw} ${version}\n`);
  header.copy(out, 0);
  let block = createHash('sha256').update(`${hw}/${version}`).digest();
  for (let off = header.length; off < size; off += block.length) {
    block = createHash('sha256').update(block).digest();
    block.copy(out, off, 0, Math.min(block.length, size - off));
  }
  return out;
}
